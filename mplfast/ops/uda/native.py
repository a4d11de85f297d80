"""The native (``mplfast._C``) UDA primitive: outputs allocated with torch, raw pointers to _C.

Signature of ``mplfast.ops.contract``; the inputs were checked there. Kernels run on torch's
current stream.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mplfast import _native

__all__ = ["uda_forward"]


def uda_forward(
    logits_weak: Tensor,
    logits_strong: Tensor,
    temperature: float,
    threshold: float,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-row masked UDA consistency loss, fused.

    Args:
        logits_weak, logits_strong: [N, C], one dtype (float32 | float16 | bfloat16; float64 on
            CPU) and device, any strides.
        temperature: tau > 0.  threshold: in [0, 1].  grad_scale: None for no gradient.

    Returns:
        loss: float32 [N] (float64 for float64), m_n * (-sum_c q_nc log_softmax(strong_n)_c).
        mask: float32 [N] (float64 for float64), m_n = [max_c q_nc >= threshold].
        grad: strong.dtype [N, C] contiguous = grad_scale * m_n * (softmax(strong_n) - q_n), or None.
    """
    device = logits_strong.device
    lib = _native.lib("uda_forward", device.type)
    weak = logits_weak.detach().contiguous()
    strong = logits_strong.detach().contiguous()
    n, c = strong.shape
    ldt = torch.float64 if strong.dtype == torch.float64 else torch.float32
    loss = torch.empty(n, dtype=ldt, device=device)
    mask = torch.empty(n, dtype=ldt, device=device)
    grad = torch.empty_like(strong) if grad_scale is not None else None
    if n == 0:
        return loss, mask, grad
    args = (weak.data_ptr(), strong.data_ptr(), _native.DTYPE_CODES[strong.dtype], loss.data_ptr(),
            mask.data_ptr(), grad.data_ptr() if grad is not None else 0, n, c, float(temperature),
            float(threshold), 1.0 if grad_scale is None else float(grad_scale))
    if device.type == "cpu":
        lib.uda_cpu(*args, torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            lib.uda_cuda(*args, *_native.stream(device))
    return loss, mask, grad
