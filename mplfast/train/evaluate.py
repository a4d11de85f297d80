"""Test-set accuracy of a model (all ranks see the whole test split; no RNG is consumed)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mplfast.train.builders import autocast


@torch.no_grad()
def accuracy(model: nn.Module, batcher: Any, *, precision: str, device: torch.device,
             batch_size: int = 512, split: str = "test") -> float:
    """Top-1 accuracy in percent on ``split``, in eval mode (mode restored afterwards).

    The forward runs under ``fork_rng`` so that evaluating never moves the global RNG: a run
    that evaluates at a step and a resumed run that does not stay bitwise identical.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for x, y in batcher.eval_batches(split, batch_size):
                with autocast(precision, device):
                    logits = model(x)
                correct += (logits.argmax(dim=1) == y).sum()
                total += int(y.numel())
    finally:
        model.train(was_training)
    return 100.0 * int(correct.item()) / max(1, total)
