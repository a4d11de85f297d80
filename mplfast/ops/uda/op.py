"""UDA loss as registered custom ops: ``mplfast::uda`` (reference and native backends) and
``mplfast::uda_triton`` (Triton, through ``torch.library.triton_op``).

Forward-with-gradient: returns the loss (mean over all N rows of the masked CE), the mask rate
and the gradient of the loss w.r.t. the strong logits (1/N folded in); backward only scales the
saved gradient (``mplfast.ops._backward``). The weak logits get no gradient. (No
``from __future__ import annotations``: ``custom_op`` reads the schema from the annotations.)
"""
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mplfast.ops import primitives
from mplfast.ops._backward import loss_dtype, scale_saved_grad
from mplfast.ops._library import LazyTritonOp

__all__ = ["uda", "uda_triton", "UDAEager"]

_IMPLS: dict = {}


def _primitive(backend: str):
    """The unchecked ``uda_forward`` of ``backend`` (cached lookup)."""
    impl = _IMPLS.get(backend)
    if impl is None:
        impl = _IMPLS[backend] = primitives.implementation(backend, "uda_forward")
    return impl


def _forward(impl, weak: Tensor, strong: Tensor, temperature: float, threshold: float,
             need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    n = strong.shape[0]
    scale = (1.0 / n if n > 0 else 1.0) if need_grad else None
    rows, mask, grad = impl(weak, strong, temperature, threshold, scale)
    # divisor: all N rows (the spec's 1/muB), not the kept ones; N = 0 gives NaN like mean().
    loss = (rows.sum() / n).to(loss_dtype(strong.dtype))  # float32 at least, as in soft_ce/op.py
    mask_rate = (mask.sum() / n).to(torch.float32)
    if grad is None:
        grad = strong.new_empty((0,))  # placeholder: no gradient was asked for
    return loss, mask_rate, grad


def _fake(weak: Tensor, strong: Tensor, temperature: float, threshold: float, need_grad: bool,
          *backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return (strong.new_empty((), dtype=loss_dtype(strong.dtype)), strong.new_empty((), dtype=torch.float32),
            strong.new_empty(strong.shape if need_grad else (0,)))


def _setup_context(ctx, inputs, output) -> None:
    # Only the loss is differentiable: without this, autograd hands backward a zero-filled
    # [N, C] gradient for the saved-gradient output, a whole extra write of the logits' size.
    ctx.set_materialize_grads(False)
    ctx.need_grad = inputs[4]
    ctx.n_inputs = len(inputs)
    ctx.save_for_backward(output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_loss: Tensor, _grad_rate: Tensor, _grad_grad: Tensor):
    if grad_loss is None:  # no gradient reached the loss (grads are not materialized)
        return (None,) * ctx.n_inputs
    (grad,) = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError("mplfast uda: backward through a call made without need_grad")
    return (None, scale_saved_grad(grad, grad_loss)) + (None,) * (ctx.n_inputs - 2)


@torch.library.custom_op("mplfast::uda", mutates_args=())
def uda(logits_weak: Tensor, logits_strong: Tensor, temperature: float, threshold: float,
        need_grad: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(loss: float32 0-dim (float64 for float64 logits); mask_rate: float32 0-dim; grad: strong.dtype [N, C], or an empty
    [0] placeholder without need_grad). backend "reference" | "native"."""
    return _forward(_primitive(backend), logits_weak, logits_strong, temperature, threshold, need_grad)


uda.register_fake(_fake)
uda.register_autograd(_backward, setup_context=_setup_context)


class UDAEager(torch.autograd.Function):
    """The same forward, autograd context and backward as ``mplfast::uda``, as a plain autograd
    Function for eager calls (the custom op's Python dispatch costs ~50 us a call on CPU)."""

    @staticmethod
    def forward(ctx, logits_weak, logits_strong, temperature, threshold, need_grad, backend):
        out = _forward(_primitive(backend), logits_weak, logits_strong, temperature, threshold, need_grad)
        _setup_context(ctx, (logits_weak, logits_strong, temperature, threshold, need_grad, backend), out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_rate, grad_grad):
        return _backward(ctx, grad_loss, grad_rate, grad_grad)


def _uda_triton(logits_weak: Tensor, logits_strong: Tensor, temperature: float, threshold: float,
                need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """As ``mplfast::uda`` on the Triton backend (``mplfast.kernels.uda``)."""
    from mplfast.kernels.uda import uda_forward

    return _forward(uda_forward, logits_weak, logits_strong, temperature, threshold, need_grad)


# registered on first use (mplfast.ops._library): uda_triton.get()(weak, strong, ...)
uda_triton = LazyTritonOp("mplfast::uda_triton", _uda_triton, fake=_fake, backward=_backward,
                          setup_context=_setup_context)
