"""Plain-torch definition of the soft-CE primitive (every other backend is tested against it).

``soft_ce_forward`` has the signature of ``mplfast.ops.contract``; its inputs were checked there.
Also ``soft_ce_composite``: the same loss through ordinary torch autograd, which the public op uses
when a soft target itself needs a gradient (the fused primitive gives the logits' gradient only).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_ce_forward", "soft_ce_composite"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 math for fp32/fp16/bf16 (the contract), fp64 kept for fp64 so gradcheck is meaningful.
    return torch.float64 if dtype == torch.float64 else torch.float32


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
        grad: [N, C] logits.dtype, contiguous, = grad_scale * (sum_c t'_nc * softmax(z_n) - t'_n),
        or None.
    A class index outside [0, C) makes its row's loss and gradient NaN (the range itself is
    checked, once, by ``mplfast.ops.contract.check_labels``).
    """
    cdt = _compute_dtype(logits.dtype)
    z = logits.to(cdt)
    n, c = z.shape
    eps = float(label_smoothing)
    logp = torch.log_softmax(z, dim=1)
    bad: Tensor | None = None
    if target.dtype == torch.int64:
        bad = (target < 0) | (target >= c)
        y = target.clamp(0, max(c - 1, 0))
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
        nan = torch.full((), float("nan"), dtype=cdt, device=z.device)
        loss = torch.where(bad, nan, loss)
        if grad is not None:
            grad = torch.where(bad.unsqueeze(1), nan, grad)
    if grad is not None:
        grad = grad.to(logits.dtype).contiguous()
    return loss, grad


def soft_ce_composite(logits: Tensor, target: Tensor, label_smoothing: float, reduction: str) -> Tensor:
    """Differentiable composite of soft_cross_entropy (gradients to logits *and* float targets).

    Returns the reduced loss in logits.dtype, like ``F.cross_entropy``.
    """
    cdt = _compute_dtype(logits.dtype)
    logp = torch.log_softmax(logits.to(cdt), dim=1)
    c = logits.shape[1]
    eps = float(label_smoothing)
    if target.dtype == torch.int64:
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
