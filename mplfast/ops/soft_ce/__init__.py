"""Fused soft-target cross-entropy: ``mplfast.soft_cross_entropy``.

The op's parts, side by side: ``op.py`` (the registered custom ops and their autograd),
``reference.py`` (plain torch, the definition), ``native.py`` (over ``mplfast._C``; kernels in
``csrc/soft_ce/``), and the Triton kernel in ``mplfast/kernels/soft_ce.py``. Input checks:
``mplfast.ops.contract``; backend choice: ``mplfast._backends``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mplfast import _backends
from mplfast.ops import contract
from mplfast.ops.soft_ce import op, reference

__all__ = ["soft_cross_entropy"]

_OP = "soft_cross_entropy"


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
        The loss in float32 (float64 for float64 logits) whatever the logits' dtype, as autocast's
        ``F.cross_entropy`` returns it; the gradient w.r.t. ``logits`` is in ``logits.dtype``.

    The gradient w.r.t. ``logits`` is computed in the forward pass and saved; backward only
    scales it. If a float ``target`` requires grad, the plain-torch composite runs instead so the
    target gets its gradient too. The op is a registered custom op (``mplfast::soft_ce``,
    ``mplfast::soft_ce_triton``): ``torch.compile(fullgraph=True)`` traces it without a graph break.

    Invalid class indices (outside [0, C); ``ignore_index`` is not supported): in eager mode on
    CPU a ValueError. On CUDA the indices are not checked on the host (that would force a device
    sync): the affected rows get a NaN loss and NaN gradient (no out-of-bounds read), so a reduced
    loss is NaN. ``MPLFAST_DEBUG=1`` checks them on CUDA too and raises ValueError. Under
    ``torch.compile`` nothing is read on the host: bad rows are NaN on every device, and with
    ``MPLFAST_DEBUG=1`` the graph asserts the range (``torch._assert_async``: a RuntimeError on
    CPU, a device-side assert on CUDA).

    Raises:
        TypeError: non-tensor inputs, unsupported dtypes (e.g. int32 labels), non-float smoothing.
        ValueError: shape mismatch, mixed devices, bad reduction, smoothing outside [0, 1],
            label out of range (see above).
        RuntimeError: an explicitly requested backend is unavailable.
    """
    logits, target, eps = contract.check_soft_ce(_OP, logits, target, label_smoothing)
    if not isinstance(reduction, str) or reduction not in op.REDUCTIONS:
        raise ValueError(f"{_OP}: reduction must be one of {', '.join(op.REDUCTIONS)}, got {reduction!r}")
    contract.check_labels(_OP, target, logits.shape[1])

    grad_enabled = torch.is_grad_enabled()
    if grad_enabled and target.requires_grad:
        return reference.soft_ce_composite(logits, target, eps, reduction)

    name = _backends.resolve_backend(backend, logits.device, _OP, logits.dtype)
    need_grad = grad_enabled and logits.requires_grad
    if name == "triton":
        loss, _ = op.soft_ce_triton.get()(logits, target.detach(), eps, reduction, need_grad)
    elif torch.compiler.is_compiling():
        loss, _ = op.soft_ce(logits, target.detach(), eps, reduction, need_grad, name)
    else:  # eager: the same forward and backward without the custom op's dispatch cost
        loss, _ = op.SoftCEEager.apply(logits, target.detach(), eps, reduction, need_grad, name)
    return loss
