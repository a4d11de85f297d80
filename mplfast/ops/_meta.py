"""Public multi-tensor dot products for the MPL meta signal."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from mplfast.ops._common import FLOAT_DTYPES, check_float_dtype, choose_backend, primitive


def _fast_check(lists: list[list[Tensor]]) -> tuple[torch.device, bool] | None:
    """(device, any float64) when every check passes, else None (then ``_check_lists`` finds the
    problem and names it). This runs every MPL step over every parameter, so it touches each
    tensor's dtype/shape/device once and nothing else (~1 us per tensor)."""
    try:
        devices = set()
        has64 = False
        for ts in zip(*lists):
            x = ts[0]
            dt = x.dtype
            if dt not in FLOAT_DTYPES:
                return None
            has64 = has64 or dt == torch.float64
            sh = x.shape
            for t in ts[1:]:
                if t.dtype != dt or t.shape != sh:
                    return None
            for t in ts:
                devices.add(t.device)
    except AttributeError:  # not a tensor
        return None
    if len(devices) != 1:
        return None
    return devices.pop(), has64


def _check_lists(op: str, named: list[tuple[str, Any]]) -> list[list[Tensor]]:
    """Slow, thorough validation with messages that name the offending list and index."""
    lists: list[list[Tensor]] = []
    for name, seq in named:
        if isinstance(seq, Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{op}: {name} must be a list, tuple or iterable of tensors, got {type(seq).__name__}")
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


def _run(op: str, prim: str, named: list[tuple[str, Any]], backend: str | None) -> Tensor:
    # Accept any iterable of tensors (e.g. model.parameters()), materialised once; a tensor or a
    # string is not a list of tensors.
    named = [(name, seq if isinstance(seq, (list, tuple, Tensor, str, bytes)) or not isinstance(seq, Iterable)
              else list(seq)) for name, seq in named]
    lists = None
    if all(isinstance(seq, (list, tuple)) for _, seq in named):
        lists = [list(seq) for _, seq in named]
        n0 = len(lists[0])
        x0 = lists[0][0] if n0 else None
        if isinstance(x0, Tensor) and x0.is_cpu and choose_backend(op, backend, x0.device, x0.dtype) == "native":
            # The native wrapper validates every tensor itself (and names the offending one),
            # and on CPU it takes every dtype we accept; checking here as well would double the
            # per-tensor Python cost, which is most of this op's time on an MPL step.
            try:
                with torch.no_grad():
                    return primitive("native", prim)(*lists)
            except (TypeError, ValueError):
                _check_lists(op, named)  # re-raises the problem in this op's own argument names
                raise
        fast = _fast_check(lists) if n0 and all(len(lst) == n0 for lst in lists) else None
    else:
        fast = None
    if fast is None:
        lists = _check_lists(op, named)  # raises, naming the problem; or the lists are empty
        if lists[0]:
            fast = _fast_check(lists)
            assert fast is not None, "_check_lists accepted what _fast_check rejected"
    if fast is None:  # empty lists
        if backend is not None:
            choose_backend(op, backend, torch.device("cpu"), torch.float32)  # still reject bad names
        return torch.zeros((), dtype=torch.float32)
    device, has64 = fast
    name = choose_backend(op, backend, device, torch.float64 if has64 else torch.float32)
    impl = primitive(name, prim)
    # A meta signal is never differentiated through; no_grad (not per-tensor detach(), which
    # costs ~1 us a tensor) keeps the primitives from recording a graph.
    with torch.no_grad():
        return impl(*lists)


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
        reduction order is fixed. No autograd graph is recorded.
    """
    return _run("grad_dot", "grad_dot", [("xs", xs), ("ys", ys)], backend)


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
    named = [("grads", grads), ("new_params", new_params), ("old_params", old_params)]
    return _run("grad_dot_delta", "grad_dot_delta", named, backend)
