"""Backward of the fused losses: scale the gradient their forward already computed.

The custom ops (``mplfast/ops/<op>/op.py``) save the gradient of their forward; backward only
multiplies it by the upstream gradient ``grad_out``:

* CPU: a one-element ``grad_out`` equal to 1 (the common ``loss.backward()``) is free to read,
  and the saved gradient is returned as is; otherwise ``grad * grad_out`` (out of place, so a
  graph kept with ``retain_graph=True`` can run backward again).
* CUDA: reading ``grad_out`` would sync the device, and ``grad * grad_out`` would read and write
  the whole [N, C] gradient once more and allocate a second one. The saved gradient is scaled in
  place instead, on the current stream, with no host sync: ``_C.scale_inplace_cuda`` (returns at
  once when ``*grad_out == 1``) when the extension has it, else ``grad.mul_(grad_out)``. The
  saved gradient is consumed: a second backward through the same graph raises autograd's
  "modified by an inplace operation" error rather than returning a wrong gradient.
* Under ``torch.compile`` (the backward is traced by AOTAutograd): ``grad * grad_out``, an
  elementwise op the compiler schedules and fuses like any other.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mplfast import _native

__all__ = ["loss_dtype", "scale_saved_grad", "scale_rows"]

try:  # both exist in torch >= 2.6; without them only torch.compiler.is_compiling() is consulted
    from torch._subclasses.fake_tensor import is_fake as _is_fake
    from torch.fx.experimental.proxy_tensor import get_proxy_mode as _get_proxy_mode
except ImportError:  # pragma: no cover
    _is_fake = lambda t: False  # noqa: E731
    _get_proxy_mode = lambda: None  # noqa: E731


def _traced(t: Tensor) -> bool:
    """True while the backward is being traced (Dynamo, AOTAutograd, make_fx, opcheck) rather
    than run: then no value may be read and nothing may be done in place behind the tracer."""
    return torch.compiler.is_compiling() or _is_fake(t) or _get_proxy_mode() is not None


def loss_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """The fused losses' dtype: float32, or float64 for float64 logits (never bf16/fp16, as
    autocast's cross-entropy). Their saved gradient stays in the logits' dtype."""
    return torch.promote_types(logits_dtype, torch.float32)


def _is_cpu_one(t: Tensor) -> bool:
    """True when ``t`` is a one-element CPU tensor equal to 1 (reading it is free, no device sync)."""
    return t.device.type == "cpu" and t.numel() == 1 and bool(t.reshape(()) == 1)


def _scale_inplace_cuda(grad: Tensor, scale: Tensor) -> Tensor:
    codes = _native.DTYPE_CODES
    if (_native.has("scale_inplace_cuda") and grad.is_contiguous() and grad.dtype in codes
            and scale.device == grad.device and scale.numel() == 1 and scale.dtype in codes):
        s = scale.reshape(1)
        if not s.is_contiguous():
            s = s.contiguous()
        index, stream = _native.stream(grad.device)
        with torch.cuda.device(grad.device):
            _native._C.scale_inplace_cuda(grad.data_ptr(), codes[grad.dtype], grad.numel(), s.data_ptr(),
                                          codes[s.dtype], stream)
        # A write through a raw pointer is invisible to autograd: bump the saved tensor's version
        # counter as an in-place torch op would, so a second backward through a retained graph
        # raises "modified by an inplace operation" instead of scaling the gradient twice.
        torch.autograd.graph.increment_version(grad)
        return grad
    return grad.mul_(scale)  # the product in the wider dtype, rounded once (scale may be fp32)


def scale_saved_grad(grad: Tensor, grad_out: Tensor) -> Tensor:
    """``grad * grad_out`` for a one-element ``grad_out``, by the rules in the module docstring."""
    if _traced(grad_out):
        return grad * grad_out.reshape(())
    if grad.device.type == "cuda":
        return _scale_inplace_cuda(grad, grad_out)
    if _is_cpu_one(grad_out):
        return grad
    # a 0-dim fp32 grad_out (the loss is fp32) keeps grad's dtype but multiplies in fp32: the
    # factor (w_t, meta_scale * h) is not rounded to bf16 first
    return grad * grad_out.reshape(())


def scale_rows(grad: Tensor, grad_out: Tensor) -> Tensor:
    """``grad * grad_out[:, None]`` for a per-row ``grad_out`` [N] (reduction "none"); in place
    on CUDA, as above."""
    g = grad_out.to(grad.dtype).unsqueeze(1)
    if grad.device.type == "cuda" and not _traced(grad_out):
        return grad.mul_(g)
    return grad * g
