"""The multi-tensor dot products as registered custom ops: ``mplfast::grad_dot`` and
``mplfast::grad_dot_delta`` (reference and native backends) and their ``_triton`` twins
(through ``torch.library.triton_op``). Not differentiable: the meta signal is never
differentiated through (the public ops call them under ``no_grad``). (No
``from __future__ import annotations``: ``custom_op`` reads the schema from the annotations.)
"""
from typing import List

import torch
from torch import Tensor

from mplfast.ops import primitives
from mplfast.ops._library import LazyTritonOp

__all__ = ["grad_dot", "grad_dot_delta", "grad_dot_triton", "grad_dot_delta_triton"]

_IMPLS: dict = {}


def _primitive(backend: str, name: str):
    key = (backend, name)
    impl = _IMPLS.get(key)
    if impl is None:
        impl = _IMPLS[key] = primitives.implementation(backend, name)
    return impl


def _fake(*args) -> Tensor:
    return args[0][0].new_empty((), dtype=torch.float32)


@torch.library.custom_op("mplfast::grad_dot", mutates_args=())
def grad_dot(xs: List[Tensor], ys: List[Tensor], backend: str) -> Tensor:
    """sum_i <x_i, y_i>: 0-dim float32 on the tensors' device (non-empty lists)."""
    return _primitive(backend, "grad_dot")(xs, ys)


@torch.library.custom_op("mplfast::grad_dot_delta", mutates_args=())
def grad_dot_delta(grads: List[Tensor], new: List[Tensor], old: List[Tensor], backend: str) -> Tensor:
    """sum_i <g_i, new_i - old_i>: 0-dim float32 on the tensors' device (non-empty lists)."""
    return _primitive(backend, "grad_dot_delta")(grads, new, old)


grad_dot.register_fake(_fake)
grad_dot_delta.register_fake(_fake)


def _grad_dot_triton(xs: List[Tensor], ys: List[Tensor]) -> Tensor:
    from mplfast.kernels.grad_dot import grad_dot as impl

    return impl(xs, ys)


def _grad_dot_delta_triton(grads: List[Tensor], new: List[Tensor], old: List[Tensor]) -> Tensor:
    from mplfast.kernels.grad_dot import grad_dot_delta as impl

    return impl(grads, new, old)


# registered on first use (mplfast.ops._library): grad_dot_triton.get()(xs, ys)
grad_dot_triton = LazyTritonOp("mplfast::grad_dot_triton", _grad_dot_triton, fake=_fake)
grad_dot_delta_triton = LazyTritonOp("mplfast::grad_dot_delta_triton", _grad_dot_delta_triton, fake=_fake)
