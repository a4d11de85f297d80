"""``ModelEMA``: exponential moving average of a model's weights (the student's EMA).

The decay warms up as in the official MPL code, min(decay, (step + 1) / (step + 10)), so the
average is not dominated by the random initial weights early in training.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mplfast.distributed import unwrap


class ModelEMA:
    """EMA copy of ``model``: ``.module`` holds the averaged weights (eval it, never train it).

    Parameters are averaged (floating point ones), buffers (batch-norm running statistics,
    counters) are copied from the live model, as in the official code and the PyTorch port.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995) -> None:
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"ModelEMA decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.module: nn.Module = copy.deepcopy(unwrap(model))
        self.module.eval()
        self.module.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Decay used at ``step`` (0-based): min(decay, (step + 1) / (step + 10))."""
        return min(self.decay, (step + 1) / (step + 10))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """ema <- d * ema + (1 - d) * model for parameters; buffers copied. No host sync."""
        d = self.decay_at(step)
        src = unwrap(model)
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in src.parameters()]
        if len(ema_p) != len(src_p):
            raise ValueError("ModelEMA.update: model does not match the EMA copy's parameters")
        fl_e = [e for e, s in zip(ema_p, src_p) if e.is_floating_point()]
        fl_s = [s for e, s in zip(ema_p, src_p) if e.is_floating_point()]
        if fl_e:
            # lerp_(s, 1 - d): e + (1 - d) * (s - e) = d * e + (1 - d) * s, one fused pass.
            torch._foreach_lerp_(fl_e, fl_s, 1.0 - d)
        for e, s in zip(self.module.buffers(), src.buffers()):
            e.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """{'decay': float, 'module': state_dict of the averaged copy}."""
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.module.load_state_dict(state["module"])
