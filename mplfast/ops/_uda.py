"""Public fused UDA consistency loss."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mplfast.ops._common import (
    check_logits,
    check_positive,
    check_same_device,
    check_unit_interval,
    choose_backend,
    primitive,
    scale_saved_grad,
)

_OP = "uda_loss"


class _UDAFunction(torch.autograd.Function):
    """Forward computes loss, mask and the (1/N-scaled) gradient; backward only rescales it."""

    @staticmethod
    def forward(ctx: Any, weak: Tensor, strong: Tensor, temperature: float, threshold: float,
                impl: Callable[..., tuple[Tensor, Tensor, Tensor | None]], need_grad: bool) -> tuple[Tensor, Tensor]:
        n = strong.shape[0]
        scale = (1.0 / n if n > 0 else 1.0) if need_grad else None
        rows, mask, grad = impl(weak, strong, temperature, threshold, scale)
        if grad is not None:
            ctx.save_for_backward(grad)
        # divisor: all N rows (the spec's 1/muB), not the kept ones; N = 0 gives NaN like mean().
        loss = (rows.sum() / n).to(strong.dtype)
        mask_rate = (mask.sum() / n).to(torch.float32)
        ctx.mark_non_differentiable(mask_rate)
        return loss, mask_rate

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor, grad_mask: Tensor | None) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return None, scale_saved_grad(grad, grad_loss), None, None, None, None


def uda_loss(
    logits_weak: Tensor,
    logits_strong: Tensor,
    *,
    temperature: float,
    threshold: float,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused UDA consistency loss (mpl-algorithm.md, step 3).

    q = softmax(logits_weak / temperature) (no gradient), m_n = [max_c q_nc >= threshold],
    loss = (1/N) sum_n m_n * (-sum_c q_nc log_softmax(logits_strong)_nc). The divisor is the full
    row count N, not the number of kept rows.

    Args:
        logits_weak: [N, C] teacher logits on the weak view; receives no gradient.
        logits_strong: [N, C] teacher logits on the strong view, same shape, dtype and device.
            float32 | float16 | bfloat16 (float64: reference / native on CPU); math in float32.
        temperature: tau > 0 (sharpening).
        threshold: confidence threshold in [0, 1].
        backend: ``None`` (fastest available), ``"reference"``, ``"native"`` or ``"triton"``.

    Returns:
        (loss, mask_rate): 0-dim tensors; loss in ``logits_strong.dtype`` (NaN for N = 0),
        mask_rate in float32 (fraction of rows kept; not differentiable).

    Raises:
        TypeError: non-tensors, unsupported or differing dtypes, non-float hyperparameters.
        ValueError: shape mismatch, mixed devices, temperature <= 0, threshold outside [0, 1].
        RuntimeError: an explicitly requested backend is unavailable.
    """
    logits_weak = check_logits(_OP, "logits_weak", logits_weak)
    logits_strong = check_logits(_OP, "logits_strong", logits_strong)
    if logits_weak.shape != logits_strong.shape:
        raise ValueError(
            f"{_OP}: shape mismatch: logits_weak {tuple(logits_weak.shape)} vs logits_strong "
            f"{tuple(logits_strong.shape)}"
        )
    if logits_weak.dtype != logits_strong.dtype:
        raise TypeError(
            f"{_OP}: dtype mismatch: logits_weak is {logits_weak.dtype} but logits_strong is "
            f"{logits_strong.dtype}"
        )
    device = check_same_device(_OP, logits_weak=logits_weak, logits_strong=logits_strong)
    tau = check_positive(_OP, "temperature", temperature)
    thr = check_unit_interval(_OP, "threshold", threshold)
    name = choose_backend(_OP, backend, device, logits_strong.dtype)
    impl = primitive(name, "uda_forward")
    need_grad = torch.is_grad_enabled() and logits_strong.requires_grad
    return _UDAFunction.apply(logits_weak.detach(), logits_strong, tau, thr, impl, need_grad)
