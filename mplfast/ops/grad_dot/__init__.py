"""Multi-tensor dot products for the MPL meta signal: ``mplfast.grad_dot``, ``mplfast.grad_dot_delta``.

The op's parts, side by side: ``op.py`` (the registered custom ops), ``reference.py`` (plain
torch, the definition), ``native.py`` (over ``mplfast._C``; kernels in ``csrc/grad_dot/``), and the
Triton kernel in ``mplfast/kernels/grad_dot.py``. Input checks: ``mplfast.ops.contract``; backend
choice: ``mplfast._backends``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from mplfast import _backends
from mplfast.ops import contract
from mplfast.ops.grad_dot import native, op

__all__ = ["grad_dot", "grad_dot_delta"]


def _run(opname: str, named: list[tuple[str, Any]], backend: str | None) -> Tensor:
    eager_native = (backend is None or backend == "native") and not torch.compiler.is_compiling()
    if eager_native:
        # The same lists as a recent call (MPLStep's, every step): their checks and pointer
        # table are reused after a per-tensor look at what could have changed (native._Plan).
        seqs = tuple(seq for _, seq in named)
        hit = native.cached_call(seqs)
        if hit is not None:
            return hit
    lists, device, has64 = contract.check_lists(opname, named)
    if device is None:  # empty lists
        if backend is not None:
            _backends.resolve_backend(backend, "cpu", opname)  # still reject bad names
        return torch.zeros((), dtype=torch.float32)
    name = _backends.resolve_backend(backend, device, opname, torch.float64 if has64 else None)
    # A meta signal is never differentiated through; no_grad (not per-tensor detach(), which
    # costs ~1 us a tensor) keeps the primitives from recording a graph.
    with torch.no_grad():
        if name == "triton":
            return (op.grad_dot_triton if opname == "grad_dot" else op.grad_dot_delta_triton).get()(*lists)
        if not torch.compiler.is_compiling():
            # Eager: call the implementation the custom op wraps, directly. Passing ~160 tensors
            # through the dispatcher (List[Tensor] in and out of C++) costs ~90 us, a third of
            # the native kernel's time on WRN-28-2's parameters, every MPL step.
            if eager_native and name == "native" and device.type == "cpu":
                return native.checked_cpu_call(seqs, lists)
            return op._primitive(name, opname)(*lists)
        return (op.grad_dot if opname == "grad_dot" else op.grad_dot_delta)(*lists, name)


def grad_dot(xs: Sequence[Tensor], ys: Sequence[Tensor], *, backend: str | None = None) -> Tensor:
    """sum_i <x_i, y_i> over two equal-length lists of same-shaped tensors.

    Args:
        xs, ys: sequences (or iterables, e.g. ``model.parameters()``) of tensors; x_i and y_i
            have the same shape (any, empty allowed).
            float32 | float16 | bfloat16 (float64: reference / native on CPU); x_i and y_i share
            a dtype, different indices may differ. All on one device.
        backend: ``None`` (fastest available), ``"reference"``, ``"native"`` or ``"triton"``.

    Returns:
        0-dim float32 tensor on the tensors' device (CPU for empty lists). Deterministic: the
        reduction order is fixed. No autograd graph is recorded. A registered custom op
        (``mplfast::grad_dot``): traced by ``torch.compile(fullgraph=True)`` without a graph break.
    """
    return _run("grad_dot", [("xs", xs), ("ys", ys)], backend)


def grad_dot_delta(
    grads: Sequence[Tensor],
    new_params: Sequence[Tensor],
    old_params: Sequence[Tensor],
    *,
    backend: str | None = None,
) -> Tensor:
    """sum_i <g_i, new_i - old_i> without materialising the differences (the exact meta signal).

    Args:
        grads, new_params, old_params: equal-length sequences; the i-th tensors share one shape.
            Dtypes and devices as in :func:`grad_dot`.
        backend: ``None`` (fastest available), ``"reference"``, ``"native"`` or ``"triton"``.

    Returns:
        0-dim float32 tensor (deterministic, no autograd; custom op ``mplfast::grad_dot_delta``).
    """
    named = [("grads", grads), ("new_params", new_params), ("old_params", old_params)]
    return _run("grad_dot_delta", named, backend)
