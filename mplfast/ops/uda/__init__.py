"""Fused UDA consistency loss: ``mplfast.uda_loss``.

The op's parts, side by side: ``op.py`` (the registered custom ops and their autograd),
``reference.py`` (plain torch, the definition), ``native.py`` (over ``mplfast._C``; kernels in
``csrc/uda/``), and the Triton kernel in ``mplfast/kernels/uda.py``. Input checks:
``mplfast.ops.contract``; backend choice: ``mplfast._backends``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mplfast import _backends
from mplfast.ops import contract
from mplfast.ops.uda import op

__all__ = ["uda_loss"]

_OP = "uda_loss"


def uda_loss(
    logits_weak: Tensor,
    logits_strong: Tensor,
    *,
    temperature: float,
    threshold: float,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused UDA consistency loss (step 3 of the MPL step, docs/DESIGN.md).

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
        (loss, mask_rate): 0-dim tensors; loss in float32 (float64 for float64 logits; the gradient is
        in ``logits_strong.dtype``) (NaN for N = 0),
        mask_rate in float32 (fraction of rows kept; not differentiable).

    A registered custom op (``mplfast::uda``, ``mplfast::uda_triton``): traced by
    ``torch.compile(fullgraph=True)`` without a graph break. No check here needs a host value.

    Raises:
        TypeError: non-tensors, unsupported or differing dtypes, non-float hyperparameters.
        ValueError: shape mismatch, mixed devices, temperature <= 0, threshold outside [0, 1].
        RuntimeError: an explicitly requested backend is unavailable.
    """
    weak, strong, tau, thr = contract.check_uda(_OP, logits_weak, logits_strong, temperature, threshold)
    name = _backends.resolve_backend(backend, strong.device, _OP, strong.dtype)
    need_grad = torch.is_grad_enabled() and strong.requires_grad
    if name == "triton":
        loss, rate, _ = op.uda_triton.get()(weak.detach(), strong, tau, thr, need_grad)
    elif torch.compiler.is_compiling():
        loss, rate, _ = op.uda(weak.detach(), strong, tau, thr, need_grad, name)
    else:  # eager: the same forward and backward without the custom op's dispatch cost
        loss, rate, _ = op.UDAEager.apply(weak.detach(), strong, tau, thr, need_grad, name)
    return loss, rate
