"""Test-set accuracy of a model (all ranks see the whole test split; no RNG is consumed)."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mplfast.precision import autocast


@torch.no_grad()
def accuracy(model: nn.Module, batcher: Any, *, precision: str, device: torch.device,
             batch_size: int = 512, split: str = "test") -> float:
    """Top-1 accuracy in percent on ``split``, in eval mode (mode restored afterwards).

    Under torchrun each rank evaluates its shard of the split (the batcher strides rows by
    rank) and the counts are summed over ranks, so every rank returns the whole-split number.
    The forward runs under ``fork_rng`` so that evaluating never moves the global RNG: a run
    that evaluates at a step and a resumed run that does not stay bitwise identical.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = torch.zeros((), dtype=torch.int64, device=device)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for x, y in batcher.eval_batches(split, batch_size):
                with autocast(precision, device):
                    logits = model(x)
                correct += (logits.argmax(dim=1) == y).sum()
                total += y.numel()
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts = torch.stack([correct, total])
        dist.all_reduce(counts)
        correct, total = counts[0], counts[1]
    return 100.0 * int(correct.item()) / max(1, int(total.item()))


@torch.no_grad()
def evaluate_metrics(model: nn.Module, batcher: Any, *, num_classes: int, precision: str,
                     device: torch.device, batch_size: int = 512, split: str = "test") -> Any:
    """``ClassificationMetrics`` (confusion matrix, top-5) of ``model`` on ``split``; the same
    no-RNG, eval-mode and all-rank rules as :func:`accuracy`."""
    from mplfast.train.classification_metrics import MetricsAccumulator

    was_training = model.training
    model.eval()
    acc = MetricsAccumulator(num_classes, device)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for x, y in batcher.eval_batches(split, batch_size):
                with autocast(precision, device):
                    logits = model(x)
                acc.add(logits.float(), y)
    finally:
        model.train(was_training)
    acc.all_reduce()
    return acc.result()
