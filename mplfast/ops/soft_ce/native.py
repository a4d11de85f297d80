"""The native (``mplfast._C``) soft-CE primitive: outputs allocated with torch, raw pointers to _C.

Signature of ``mplfast.ops.contract``; the inputs were checked there, so this only adapts them to
what the kernels read (contiguous rows, float32 or logits-dtype targets on CUDA). Kernels run on
torch's current stream.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mplfast import _native

__all__ = ["soft_ce_forward"]


def soft_ce_forward(
    logits: Tensor,
    target: Tensor,
    label_smoothing: float,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor | None]:
    """Per-row (label-smoothed, soft-target) cross-entropy and, optionally, its gradient.

    Args:
        logits: [N, C] float32 | float16 | bfloat16 (float64 on CPU), any strides.
        target: int64 [N] class indices, or float [N, C] probabilities (any float dtype).
        label_smoothing: eps in [0, 1].  grad_scale: None for no gradient.

    Returns:
        loss: float32 [N] (float64 for float64 logits); grad: logits.dtype [N, C] contiguous, or
        None. A class index outside [0, C) gives a NaN row (never an out-of-bounds read).
    """
    device = logits.device
    lib = _native.lib("soft_ce_forward", device.type)
    n, c = logits.shape
    if target.dtype == torch.int64:
        target_code = _native.INDEX_TARGET
    else:
        if device.type == "cuda" and target.dtype not in (torch.float32, logits.dtype):
            target = target.float()  # the CUDA kernels read targets as float32 or in the logits dtype
        target_code = _native.DTYPE_CODES[target.dtype]
    logits = logits.detach().contiguous()
    target = target.detach().contiguous()
    loss = torch.empty(n, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32, device=device)
    grad = torch.empty_like(logits) if grad_scale is not None else None
    if n == 0:
        return loss, grad
    args = (logits.data_ptr(), _native.DTYPE_CODES[logits.dtype], target.data_ptr(), target_code,
            loss.data_ptr(), grad.data_ptr() if grad is not None else 0, n, c, float(label_smoothing),
            1.0 if grad_scale is None else float(grad_scale))
    if device.type == "cpu":
        lib.soft_ce_cpu(*args, torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            lib.soft_ce_cuda(*args, *_native.stream(device))
    return loss, grad
