"""Plain-torch definitions of the multi-tensor dot products (the meta signal's primitives).

Signatures of ``mplfast.ops.contract``; inputs checked there. fp64 accumulation in list order:
deterministic.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["grad_dot", "grad_dot_delta"]


def _dot64(x: Tensor, y: Tensor) -> Tensor:
    # fp64 accumulation: the meta signal is a small difference of large sums.
    return torch.dot(x.reshape(-1).to(torch.float64), y.reshape(-1).to(torch.float64))


def grad_dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """sum_i <x_i, y_i> as a 0-dim fp32 tensor (fp64 accumulation, list order: deterministic)."""
    device = xs[0].device if len(xs) else torch.device("cpu")
    acc = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for x, y in zip(xs, ys):
            if x.numel():
                acc = acc + _dot64(x, y)
    return acc.to(torch.float32)


def grad_dot_delta(grads: Sequence[Tensor], new: Sequence[Tensor], old: Sequence[Tensor]) -> Tensor:
    """sum_i <g_i, new_i - old_i> as a 0-dim fp32 tensor; the difference is taken in fp64."""
    device = grads[0].device if len(grads) else torch.device("cpu")
    acc = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for g, a, b in zip(grads, new, old):
            if g.numel():
                d = a.reshape(-1).to(torch.float64) - b.reshape(-1).to(torch.float64)
                acc = acc + torch.dot(g.reshape(-1).to(torch.float64), d)
    return acc.to(torch.float32)
