"""soft-CE as registered custom ops: ``mplfast::soft_ce`` (reference and native backends) and
``mplfast::soft_ce_triton`` (Triton, through ``torch.library.triton_op`` so that Inductor sees
the kernel).

Each op is forward-with-gradient: it returns the reduced loss and the gradient of that loss with
respect to the logits, computed in the same pass (the mean's 1/N folded in, so backward is a
no-op for ``loss.backward()``). ``register_autograd``'s backward only scales the saved gradient
(``mplfast.ops._backward``); ``register_fake`` gives shapes and dtypes to the compiler.

Not called directly: ``mplfast.soft_cross_entropy`` checks the inputs (``mplfast.ops.contract``)
and picks the backend first. (No ``from __future__ import annotations`` here: ``custom_op``
reads the schema from the annotations.)
"""
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mplfast.ops import primitives
from mplfast.ops._backward import loss_dtype, scale_rows, scale_saved_grad
from mplfast.ops._library import LazyTritonOp

__all__ = ["soft_ce", "soft_ce_triton", "SoftCEEager", "REDUCTIONS"]

REDUCTIONS = ("none", "sum", "mean")
_IMPLS: dict = {}


def _primitive(backend: str):
    """The unchecked ``soft_ce_forward`` of ``backend`` (cached lookup)."""
    impl = _IMPLS.get(backend)
    if impl is None:
        impl = _IMPLS[backend] = primitives.implementation(backend, "soft_ce_forward")
    return impl


def _forward(impl, logits: Tensor, target: Tensor, eps: float, reduction: str,
             need_grad: bool) -> tuple[Tensor, Tensor]:
    n = logits.shape[0]
    scale = None
    if need_grad:
        scale = 1.0 / n if (reduction == "mean" and n > 0) else 1.0
    rows, grad = impl(logits, target, eps, scale)
    if reduction == "none":
        loss = rows
    else:
        loss = rows.sum()
        if reduction == "mean":
            loss = loss / n  # zero rows: 0 / 0 = NaN, as F.cross_entropy
    # float32 (float64 for float64) whatever the logits' dtype, as autocast's cross-entropy: a
    # bf16 loss would round the loss, and the factors that scale backward (w_t, meta_scale * h)
    loss = loss.to(loss_dtype(logits.dtype))
    if grad is None:
        grad = logits.new_empty((0,))  # placeholder: no gradient was asked for
    return loss, grad


def _fake(logits: Tensor, target: Tensor, label_smoothing: float, reduction: str,
          need_grad: bool, *backend: str) -> tuple[Tensor, Tensor]:
    n, c = logits.shape
    loss = logits.new_empty((n,) if reduction == "none" else (), dtype=loss_dtype(logits.dtype))
    grad = logits.new_empty((n, c) if need_grad else (0,))
    return loss, grad


def _setup_context(ctx, inputs, output) -> None:
    # Only the loss is differentiable: without this, autograd hands backward a zero-filled
    # [N, C] gradient for the saved-gradient output, a whole extra write of the logits' size.
    ctx.set_materialize_grads(False)
    ctx.reduction = inputs[3]
    ctx.need_grad = inputs[4]
    ctx.n_inputs = len(inputs)
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss: Tensor, _grad_grad: Tensor):
    if grad_loss is None:  # no gradient reached the loss (grads are not materialized)
        return (None,) * ctx.n_inputs
    (grad,) = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError("mplfast soft_ce: backward through a call made without need_grad")
    if ctx.reduction == "none":
        g = scale_rows(grad, grad_loss)
    else:
        g = scale_saved_grad(grad, grad_loss)
    return (g,) + (None,) * (ctx.n_inputs - 1)


@torch.library.custom_op("mplfast::soft_ce", mutates_args=())
def soft_ce(logits: Tensor, target: Tensor, label_smoothing: float, reduction: str, need_grad: bool,
            backend: str) -> tuple[Tensor, Tensor]:
    """(loss: float32 (float64 for float64 logits), [N] for reduction "none" else 0-dim; grad: logits.dtype [N, C], the
    gradient of that loss w.r.t. the logits, or an empty [0] placeholder without need_grad).

    logits [N, C] float; target int64 [N] or float [N, C]; backend "reference" | "native"."""
    return _forward(_primitive(backend), logits, target, label_smoothing, reduction, need_grad)


soft_ce.register_fake(_fake)
soft_ce.register_autograd(_backward, setup_context=_setup_context)


class SoftCEEager(torch.autograd.Function):
    """The same forward, autograd context and backward as ``mplfast::soft_ce``, as a plain
    autograd Function: what eager calls run (the custom op's Python dispatch costs ~50 us a
    call on CPU); ``torch.compile`` traces the custom op instead."""

    @staticmethod
    def forward(ctx, logits, target, label_smoothing, reduction, need_grad, backend):
        out = _forward(_primitive(backend), logits, target, label_smoothing, reduction, need_grad)
        _setup_context(ctx, (logits, target, label_smoothing, reduction, need_grad, backend), out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_grad):
        return _backward(ctx, grad_loss, grad_grad)


def _soft_ce_triton(logits: Tensor, target: Tensor, label_smoothing: float, reduction: str,
                    need_grad: bool) -> tuple[Tensor, Tensor]:
    """As ``mplfast::soft_ce`` on the Triton backend (``mplfast.kernels.soft_ce``)."""
    from mplfast.kernels.soft_ce import soft_ce_forward

    return _forward(soft_ce_forward, logits, target, label_smoothing, reduction, need_grad)


# registered on first use (mplfast.ops._library): soft_ce_triton.get()(logits, target, ...)
soft_ce_triton = LazyTritonOp("mplfast::soft_ce_triton", _soft_ce_triton, fake=_fake, backward=_backward,
                              setup_context=_setup_context)
