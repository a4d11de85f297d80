"""Public multi-tensor dot products for the MPL meta signal."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from mplfast.ops._common import check_float_dtype, choose_backend, primitive


def _check_lists(op: str, named: list[tuple[str, Any]]) -> list[list[Tensor]]:
    lists: list[list[Tensor]] = []
    for name, seq in named:
        if isinstance(seq, Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{op}: {name} must be a list or tuple of tensors, got {type(seq).__name__}")
        lists.append(list(seq))
    n0 = len(lists[0])
    for (name, _), lst in zip(named[1:], lists[1:]):
        if len(lst) != n0:
            raise ValueError(
                f"{op}: list-length mismatch: {named[0][0]} has {n0} tensors but {name} has {len(lst)}"
            )
    device = None
    first = None
    for i in range(n0):
        for (name, _), lst in zip(named, lists):
            t = lst[i]
            if not isinstance(t, Tensor):
                raise TypeError(f"{op}: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
            check_float_dtype(op, f"{name}[{i}]", t)
            if device is None:
                device, first = t.device, f"{name}[{i}]"
            elif t.device != device:
                raise ValueError(f"{op}: mixed devices: {first} is on {device} but {name}[{i}] is on {t.device}")
        shape0, dtype0 = lists[0][i].shape, lists[0][i].dtype
        for (name, _), lst in zip(named[1:], lists[1:]):
            if lst[i].dtype != dtype0:
                # one contract for every backend: the native kernels take one dtype per index
                raise TypeError(
                    f"{op}: dtype mismatch at index {i}: {named[0][0]}[{i}] is {dtype0} but "
                    f"{name}[{i}] is {lst[i].dtype}"
                )
            if lst[i].shape != shape0:
                raise ValueError(
                    f"{op}: shape mismatch at index {i}: {named[0][0]}[{i}] is {tuple(shape0)} but "
                    f"{name}[{i}] is {tuple(lst[i].shape)}"
                )
    return lists


def _run(op: str, prim: str, lists: list[list[Tensor]], backend: str | None) -> Tensor:
    if not lists[0]:
        if backend is not None:
            choose_backend(op, backend, torch.device("cpu"), torch.float32)  # still reject bad names
        return torch.zeros((), dtype=torch.float32)
    device = lists[0][0].device
    has64 = any(t.dtype == torch.float64 for lst in lists for t in lst)
    name = choose_backend(op, backend, device, torch.float64 if has64 else torch.float32)
    impl = primitive(name, prim)
    with torch.no_grad():  # a meta signal is never differentiated through
        out = impl(*[[t.detach() for t in lst] for lst in lists])
    return out


def grad_dot(xs: Sequence[Tensor], ys: Sequence[Tensor], *, backend: str | None = None) -> Tensor:
    """sum_i <x_i, y_i> over two equal-length lists of same-shaped tensors.

    Args:
        xs, ys: sequences of tensors; x_i and y_i have the same shape (any, empty allowed).
            float32 | float16 | bfloat16 (float64: reference / native on CPU); x_i and y_i share
            a dtype, different indices may differ. All on one device.
        backend: ``None`` (fastest available), ``"reference"``, ``"native"`` or ``"triton"``.

    Returns:
        0-dim float32 tensor on the tensors' device (CPU for empty lists). Deterministic: the
        reduction order is fixed. No autograd graph is recorded.
    """
    lists = _check_lists("grad_dot", [("xs", xs), ("ys", ys)])
    return _run("grad_dot", "grad_dot", lists, backend)


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
        0-dim float32 tensor (deterministic, no autograd).
    """
    lists = _check_lists(
        "grad_dot_delta", [("grads", grads), ("new_params", new_params), ("old_params", old_params)]
    )
    return _run("grad_dot_delta", "grad_dot_delta", lists, backend)
