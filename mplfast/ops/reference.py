"""Plain-torch definitions of mplfast's fused-op primitives.

This module *is* the definition every other backend (``mplfast._native``, ``mplfast.kernels``) is
tested against. The signatures are fixed by docs/DESIGN.md ("Fused-op primitives"). Each
primitive returns per-row results and, when asked, the gradient computed in the same pass, so the
autograd Functions in ``mplfast.ops`` only have to scale it in backward.

Also here: differentiable composites (``soft_ce_composite``, ``uda_composite``) that go through
ordinary torch autograd. The public ops use ``soft_ce_composite`` when a soft target itself needs a
gradient, which the fused primitives (gradient w.r.t. the logits only) cannot provide.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "soft_ce_forward",
    "uda_forward",
    "grad_dot",
    "grad_dot_delta",
    "soft_ce_composite",
    "uda_composite",
    "check_index_target",
    "debug_checks_enabled",
]


def debug_checks_enabled() -> bool:
    """True when ``MPLFAST_DEBUG=1``: validate class indices on CUDA too (costs a host sync)."""
    return os.environ.get("MPLFAST_DEBUG", "0") not in ("", "0")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 math for fp32/fp16/bf16 (the contract), fp64 kept for fp64 so gradcheck is meaningful.
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_index_target(target: Tensor, num_classes: int, op: str = "soft_cross_entropy") -> Tensor | None:
    """Validate int64 class indices against ``[0, num_classes)``.

    On CPU (or on any device with ``MPLFAST_DEBUG=1``) an index out of range raises ValueError.
    Otherwise (CUDA without debug) nothing is checked on the host, to avoid a device sync; the
    returned bool mask [N] marks invalid rows so the caller can make their loss and gradient NaN.
    Returns None when the indices were checked on the host and all are valid.
    """
    if target.numel() == 0:
        return None
    if target.device.type == "cpu" or debug_checks_enabled():
        lo, hi = torch.aminmax(target)
        lo_i, hi_i = int(lo), int(hi)
        if lo_i < 0 or hi_i >= num_classes:
            bad = int(((target < 0) | (target >= num_classes)).sum())
            raise ValueError(
                f"{op}: class index out of range: {bad} label(s) outside [0, {num_classes - 1}] "
                f"(min {lo_i}, max {hi_i}; ignore_index is not supported)"
            )
        return None
    return (target < 0) | (target >= num_classes)


def soft_ce_forward(
    logits: Tensor,
    target: Tensor,
    label_smoothing: float,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor | None]:
    """Per-row (label-smoothed) cross-entropy and, optionally, its gradient.

    Args:
        logits: [N, C] fp32 | fp16 | bf16 | fp64.
        target: int64 [N] class indices, or float [N, C] probabilities (any float dtype; rows
            need not sum to 1).
        label_smoothing: eps in [0, 1]; t' = (1 - eps) t + eps / C.
        grad_scale: None for no gradient, else grad = grad_scale * dloss_n/dlogits.

    Returns:
        loss: [N] fp32 (fp64 for fp64 logits), loss_n = -sum_c t'_nc log_softmax(z_n)_c.
        grad: [N, C] logits.dtype = grad_scale * (sum_c t'_nc * softmax(z_n) - t'_n), or None.
    Invalid class index: ValueError on CPU; NaN loss/grad rows on CUDA unless MPLFAST_DEBUG=1.
    """
    cdt = _compute_dtype(logits.dtype)
    z = logits.to(cdt)
    n, c = z.shape
    eps = float(label_smoothing)
    logp = torch.log_softmax(z, dim=1)
    bad: Tensor | None = None
    if target.dtype == torch.int64:
        bad = check_index_target(target, c)
        y = target.clamp(0, max(c - 1, 0)) if bad is not None else target
        nll = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
        loss = (1.0 - eps) * nll
        if eps != 0.0:
            loss = loss - (eps / c) * logp.sum(dim=1)
        tprime = None
    else:
        t = target.to(cdt)
        tprime = t * (1.0 - eps) + eps / c if eps != 0.0 else t
        loss = -(tprime * logp).sum(dim=1)

    grad: Tensor | None = None
    if grad_scale is not None:
        p = logp.exp()
        if tprime is None:
            # one-hot target: t' sums to 1 per row, so grad = p - t'.
            g = p
            g.scatter_add_(1, y.unsqueeze(1), torch.full((n, 1), -(1.0 - eps), dtype=cdt, device=z.device))
            if eps != 0.0:
                g = g - eps / c
        else:
            g = p * tprime.sum(dim=1, keepdim=True) - tprime
        if grad_scale != 1.0:
            g = g * grad_scale
        grad = g
    if bad is not None:
        nan = torch.tensor(float("nan"), dtype=cdt, device=z.device)
        loss = torch.where(bad, nan, loss)
        if grad is not None:
            grad = torch.where(bad.unsqueeze(1), nan, grad)
    if grad is not None:
        grad = grad.to(logits.dtype)
    return loss, grad


def uda_forward(
    logits_weak: Tensor,
    logits_strong: Tensor,
    temperature: float,
    threshold: float,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-row masked UDA consistency loss.

    q = softmax(weak / tau) (no gradient); m_n = [max_c q_nc >= threshold];
    loss_n = m_n * (-sum_c q_nc log_softmax(strong_n)_c): fp32 [N] (fp64 for fp64)
    mask   = m_n: fp32 [N] (fp64 for fp64)
    grad   = grad_scale * m_n * (softmax(strong_n) - q_n): strong.dtype [N, C], or None.
    """
    cdt = _compute_dtype(logits_strong.dtype)
    q = torch.softmax(logits_weak.to(cdt) / float(temperature), dim=1)
    if q.shape[0] == 0:
        keep = torch.zeros(0, dtype=torch.bool, device=q.device)
    else:
        keep = q.amax(dim=1) >= float(threshold)
    logp = torch.log_softmax(logits_strong.to(cdt), dim=1)
    ce = -(q * logp).sum(dim=1)
    # where, not multiply: a dropped row must be exactly 0 even if its CE is inf/NaN.
    loss = torch.where(keep, ce, torch.zeros((), dtype=cdt, device=ce.device))
    mask = keep.to(cdt)
    grad: Tensor | None = None
    if grad_scale is not None:
        g = (logp.exp() - q) * (mask * float(grad_scale)).unsqueeze(1)
        grad = g.to(logits_strong.dtype)
    return loss, mask, grad


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


def soft_ce_composite(logits: Tensor, target: Tensor, label_smoothing: float, reduction: str) -> Tensor:
    """Differentiable composite of soft_cross_entropy (gradients to logits *and* float targets).

    Returns the reduced loss in logits.dtype, like ``F.cross_entropy``.
    """
    cdt = _compute_dtype(logits.dtype)
    logp = torch.log_softmax(logits.to(cdt), dim=1)
    c = logits.shape[1]
    eps = float(label_smoothing)
    if target.dtype == torch.int64:
        check_index_target(target, c)
        t = torch.nn.functional.one_hot(target, c).to(cdt)
    else:
        t = target.to(cdt)
    if eps != 0.0:
        t = t * (1.0 - eps) + eps / c
    loss = -(t * logp).sum(dim=1)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / loss.shape[0]  # zero rows: 0 / 0 = NaN, as F.cross_entropy
    return loss.to(logits.dtype)


def uda_composite(logits_weak: Tensor, logits_strong: Tensor, temperature: float, threshold: float) -> tuple[Tensor, Tensor]:
    """Unfused UDA loss as in the spec: (mean over all rows of the masked CE, mask rate)."""
    q = torch.softmax(logits_weak.detach().float() / temperature, dim=1)
    keep = q.amax(dim=1) >= threshold
    ce = -(q * torch.log_softmax(logits_strong.float(), dim=1)).sum(dim=1)
    loss = torch.where(keep, ce, torch.zeros_like(ce)).mean()
    return loss.to(logits_strong.dtype), keep.float().mean()
