"""Plain-torch definition of the UDA primitive (every other backend is tested against it).

``uda_forward`` has the signature of ``mplfast.ops.contract``; its inputs were checked there.
``uda_composite`` is the unfused loss as the algorithm states it (for benchmarks and tests).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["uda_forward", "uda_composite"]


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
    grad   = grad_scale * m_n * (softmax(strong_n) - q_n): strong.dtype [N, C] contiguous, or None.
    """
    cdt = torch.float64 if logits_strong.dtype == torch.float64 else torch.float32
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
        g = torch.where(keep.unsqueeze(1), (logp.exp() - q) * float(grad_scale),
                        torch.zeros((), dtype=cdt, device=ce.device))
        grad = g.to(logits_strong.dtype).contiguous()
    return loss, mask, grad


def uda_composite(logits_weak: Tensor, logits_strong: Tensor, temperature: float, threshold: float) -> tuple[Tensor, Tensor]:
    """Unfused UDA loss as in the spec: (mean over all rows of the masked CE, mask rate)."""
    q = torch.softmax(logits_weak.detach().float() / temperature, dim=1)
    keep = q.amax(dim=1) >= threshold
    ce = -(q * torch.log_softmax(logits_strong.float(), dim=1)).sum(dim=1)
    loss = torch.where(keep, ce, torch.zeros_like(ce)).mean()
    return loss.to(logits_strong.dtype), keep.float().mean()
