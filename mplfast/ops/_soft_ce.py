"""Public fused soft-target cross-entropy."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mplfast.ops import reference
from mplfast.ops._common import (
    check_float_dtype,
    check_logits,
    check_same_device,
    check_tensor,
    check_unit_interval,
    choose_backend,
    primitive,
    scale_saved_grad,
)

_OP = "soft_cross_entropy"
_REDUCTIONS = ("none", "sum", "mean")


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    # mean over zero rows is 0/0 = NaN, as in F.cross_entropy.
    return total if reduction == "sum" else total / rows.shape[0]


class _SoftCEFunction(torch.autograd.Function):
    """Forward computes loss and (scaled) gradient in one pass; backward only rescales it."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, eps: float, reduction: str,
                impl: Callable[..., tuple[Tensor, Tensor | None]], need_grad: bool) -> Tensor:
        n = logits.shape[0]
        scale: float | None = None
        if need_grad:
            # Fold the mean's 1/N into the forward's gradient so backward is a no-op for the
            # common `loss.backward()` (grad_output == 1).
            scale = 1.0 / n if (reduction == "mean" and n > 0) else 1.0
        rows, grad = impl(logits, target, eps, scale)
        ctx.reduction = reduction
        if grad is not None:
            ctx.save_for_backward(grad)
        return _reduce(rows, reduction).to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            g = grad * grad_out.to(grad.dtype).unsqueeze(1)
        else:
            g = scale_saved_grad(grad, grad_out)
        return g, None, None, None, None, None


def soft_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """Fused cross-entropy with hard or soft targets; equals ``F.cross_entropy`` (loss and grad).

    Args:
        logits: [N, C] float32 | float16 | bfloat16 (float64 on the reference backend and the
            native backend on CPU). Math runs in float32 (float64 for float64).
        target: int64 class indices [N], or a float probability matrix [N, C] (any float dtype;
            rows need not sum to 1, exactly as in ``F.cross_entropy``).
        label_smoothing: eps in [0, 1]; the target becomes (1 - eps) t + eps / C.
        reduction: ``"none"`` ([N]), ``"sum"`` or ``"mean"`` (0-dim; mean over N rows, NaN for N = 0).
        backend: ``None`` (fastest available for the device), ``"reference"``, ``"native"`` or
            ``"triton"``.

    Returns:
        The loss in ``logits.dtype`` (as ``F.cross_entropy`` returns it).

    The gradient w.r.t. ``logits`` is computed in the forward pass and saved; backward only
    scales it. If a float ``target`` requires grad, the plain-torch composite runs instead so the
    target gets its gradient too.

    Invalid class indices (outside [0, C); ``ignore_index`` is not supported): on CPU a
    ValueError. On CUDA the indices are not checked on the host (that would force a device sync):
    the affected rows get a NaN loss and NaN gradient (no out-of-bounds read), so a reduced loss
    is NaN. Set ``MPLFAST_DEBUG=1`` to check them on CUDA too and raise ValueError.

    Raises:
        TypeError: non-tensor inputs, unsupported dtypes (e.g. int32 labels), non-float smoothing.
        ValueError: shape mismatch, mixed devices, bad reduction, smoothing outside [0, 1],
            label out of range (see above).
        RuntimeError: an explicitly requested backend is unavailable.
    """
    logits = check_logits(_OP, "logits", logits)
    target = check_tensor(_OP, "target", target)
    n, c = logits.shape
    if target.dtype == torch.int64:
        if target.shape != (n,):
            raise ValueError(
                f"{_OP}: index target must have shape [N] = [{n}] to match logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
    elif target.is_floating_point():
        check_float_dtype(_OP, "target", target)
        if target.shape != logits.shape:
            raise ValueError(
                f"{_OP}: probability target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
    else:
        raise TypeError(
            f"{_OP}: unsupported target dtype {target.dtype}; use int64 class indices [N] or a "
            f"float probability matrix [N, C]"
        )
    device = check_same_device(_OP, logits=logits, target=target)
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{_OP}: reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    eps = check_unit_interval(_OP, "label_smoothing", label_smoothing)
    if target.dtype == torch.int64 and (device.type == "cpu" or reference.debug_checks_enabled()):
        # CPU: always (free). CUDA: only under MPLFAST_DEBUG=1, as reading the result syncs;
        # otherwise the kernels turn bad rows into NaN.
        reference.check_index_target(target, c, _OP)

    grad_enabled = torch.is_grad_enabled()
    if grad_enabled and target.requires_grad:
        return reference.soft_ce_composite(logits, target, eps, reduction)

    name = choose_backend(_OP, backend, device, logits.dtype)
    impl = primitive(name, "soft_ce_forward")
    need_grad = grad_enabled and logits.requires_grad
    return _SoftCEFunction.apply(logits, target.detach(), eps, reduction, impl, need_grad)
