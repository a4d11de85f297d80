"""The contract of the fused-op primitives: their signatures and their input checks, in one place.

Every backend implements these four primitives with exactly these signatures (docs/DESIGN.md,
"Fused-op primitives"):

    soft_ce_forward(logits, target, label_smoothing, grad_scale) -> (loss [N], grad [N, C] | None)
    uda_forward(logits_weak, logits_strong, temperature, threshold, grad_scale)
        -> (loss [N], mask [N], grad [N, C] | None)
    grad_dot(xs, ys) -> 0-dim float32
    grad_dot_delta(grads, new, old) -> 0-dim float32

The checks below run once per public call (``mplfast.soft_cross_entropy`` etc.), before a backend
is chosen; the backends (``mplfast/ops/<op>/reference.py``, ``native.py``,
``mplfast/kernels/<op>.py``) trust their inputs and do not check them again.
``mplfast.ops.primitives.checked()`` wraps a backend's primitive in the same checks for callers
that use a primitive directly (tests, benchmarks).

Checks that need values on the host (the class-index range) are in ``check_labels``: eager mode
only (see its docstring for the rule under ``torch.compile``).

This module imports only ``mplfast._backends`` (for the dtype capabilities), which imports
nothing of ``mplfast.ops``: every op module may import it.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from mplfast import _backends

__all__ = [
    "FLOAT_DTYPES", "PRIMITIVES", "debug_checks_enabled", "check_soft_ce", "check_uda",
    "check_lists", "check_labels", "check_backend_dtype", "grad_scale",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_NAMES = "float32, float16, bfloat16 (float64: reference, and native on CPU)"

# primitive -> (op package whose backends implement it, its argument names)
PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "soft_ce_forward": ("soft_ce", ("logits", "target", "label_smoothing", "grad_scale")),
    "uda_forward": ("uda", ("logits_weak", "logits_strong", "temperature", "threshold", "grad_scale")),
    "grad_dot": ("grad_dot", ("xs", "ys")),
    "grad_dot_delta": ("grad_dot", ("grads", "new", "old")),
}


def debug_checks_enabled() -> bool:
    """True when ``MPLFAST_DEBUG=1``: check class indices on CUDA too (costs a host sync)."""
    return os.environ.get("MPLFAST_DEBUG", "0") not in ("", "0")


# ---------------------------------------------------------------------------------------------
# scalars and single tensors


def _tensor(op: str, name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _float_dtype(op: str, name: str, x: Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: unsupported dtype {x.dtype} for {name}; supported: {_DTYPE_NAMES}")


def _logits(op: str, name: str, x: Any) -> Tensor:
    """``x`` as a 2-D float [N, C] tensor with C >= 1."""
    x = _tensor(op, name, x)
    if x.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [N, C], got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: {name} has no classes (shape {tuple(x.shape)})")
    _float_dtype(op, name, x)
    return x


def _same_device(op: str, a: tuple[str, Tensor], b: tuple[str, Tensor]) -> torch.device:
    if a[1].device != b[1].device:
        raise ValueError(f"{op}: mixed devices: {a[0]} is on {a[1].device} but {b[0]} is on {b[1].device}")
    return a[1].device


def _number(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    return float(value)


def _unit_interval(op: str, name: str, value: Any) -> float:
    v = _number(op, name, value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{op}: {name} must be in [0, 1], got {value}")
    return v


def _positive(op: str, name: str, value: Any) -> float:
    v = _number(op, name, value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value}")
    return v


def grad_scale(op: str, value: Any) -> float | None:
    """``grad_scale`` of a primitive: None or a number."""
    return None if value is None else _number(op, "grad_scale", value)


# ---------------------------------------------------------------------------------------------
# the primitives' checks


def check_soft_ce(op: str, logits: Any, target: Any, label_smoothing: Any) -> tuple[Tensor, Tensor, float]:
    """Checks of ``soft_ce_forward``'s inputs: (logits, target, eps) or TypeError/ValueError.

    logits: float [N, C], C >= 1. target: int64 [N] or float [N, C] (any float dtype), on the
    logits' device. label_smoothing: a number in [0, 1]. The class-index range is not checked
    here (``check_labels``).
    """
    logits = _logits(op, "logits", logits)
    target = _tensor(op, "target", target)
    n, c = logits.shape
    if target.dtype == torch.int64:
        if target.shape != (n,):
            raise ValueError(
                f"{op}: index target must have shape [N] = [{n}] to match logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
    elif target.is_floating_point():
        _float_dtype(op, "target", target)
        if target.shape != logits.shape:
            raise ValueError(
                f"{op}: probability target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
    else:
        raise TypeError(
            f"{op}: unsupported target dtype {target.dtype}; use int64 class indices [N] or a "
            f"float probability matrix [N, C]"
        )
    _same_device(op, ("logits", logits), ("target", target))
    eps = _unit_interval(op, "label_smoothing", label_smoothing)
    return logits, target, eps


def check_uda(op: str, logits_weak: Any, logits_strong: Any, temperature: Any,
              threshold: Any) -> tuple[Tensor, Tensor, float, float]:
    """Checks of ``uda_forward``'s inputs: (weak, strong, tau, thr) or TypeError/ValueError.

    Two float [N, C] tensors of one shape, dtype and device; temperature > 0 (finite);
    threshold in [0, 1].
    """
    weak = _logits(op, "logits_weak", logits_weak)
    strong = _logits(op, "logits_strong", logits_strong)
    if weak.shape != strong.shape:
        raise ValueError(f"{op}: shape mismatch: logits_weak {tuple(weak.shape)} vs logits_strong "
                         f"{tuple(strong.shape)}")
    if weak.dtype != strong.dtype:
        raise TypeError(f"{op}: dtype mismatch: logits_weak is {weak.dtype} but logits_strong is "
                        f"{strong.dtype}")
    _same_device(op, ("logits_weak", weak), ("logits_strong", strong))
    tau = _positive(op, "temperature", temperature)
    thr = _unit_interval(op, "threshold", threshold)
    return weak, strong, tau, thr


def _fast_lists(lists: list[list[Tensor]]) -> tuple[torch.device, bool] | None:
    """(device, any float64) when every list check passes, else None. Runs every MPL step over
    every parameter, so it reads each tensor's dtype, shape and device once, in comprehensions
    that compare whole lists at C speed (~0.2 us a tensor)."""
    try:
        x0 = lists[0]
        dtypes = [t.dtype for t in x0]
        shapes = [t.shape for t in x0]
        for lst in lists[1:]:
            if [t.dtype for t in lst] != dtypes or [t.shape for t in lst] != shapes:
                return None
        if not set(dtypes) <= _FLOAT_SET:
            return None
        device = x0[0].device
        if device.type == "cpu":  # is_cpu is cheaper than a torch.device per tensor
            if not all([t.is_cpu for lst in lists for t in lst]):
                return None
        elif not all([t.device == device for lst in lists for t in lst]):
            return None
    except AttributeError:  # not a tensor
        return None
    return device, torch.float64 in dtypes


_FLOAT_SET = frozenset(FLOAT_DTYPES)


def _as_lists(op: str, named: Sequence[tuple[str, Any]]) -> list[list[Tensor]]:
    lists: list[list[Tensor]] = []
    for name, seq in named:
        if isinstance(seq, (Tensor, str, bytes)) or not isinstance(seq, Iterable):
            raise TypeError(f"{op}: {name} must be a list, tuple or iterable of tensors (a sequence), "
                            f"got {type(seq).__name__}")
        # any iterable (e.g. model.parameters()) is materialised once
        lists.append(seq if isinstance(seq, list) else list(seq))
    return lists


def check_lists(op: str, named: Sequence[tuple[str, Any]]
                ) -> tuple[list[list[Tensor]], torch.device | None, bool]:
    """Checks of ``grad_dot`` / ``grad_dot_delta``'s inputs.

    ``named``: (argument name, list or iterable of tensors) pairs, the first being the list the
    others are compared with. Returns (the lists as Python lists, their device (None when they
    are empty), whether any tensor is float64). Raises TypeError/ValueError naming the list and
    index: not a list; lengths differ; i-th tensors differ in shape or dtype; unsupported dtype;
    mixed devices.
    """
    lists = _as_lists(op, named)
    n0 = len(lists[0])
    for (name, _), lst in zip(named[1:], lists[1:]):
        if len(lst) != n0:
            raise ValueError(f"{op}: list-length mismatch: {named[0][0]} has {n0} tensors but {name} "
                             f"has {len(lst)}")
    if n0 == 0:
        return lists, None, False
    fast = _fast_lists(lists)
    if fast is not None:
        return lists, fast[0], fast[1]
    _explain_lists(op, named, lists)  # raises, naming the problem
    raise AssertionError("unreachable: the fast list check rejected lists the slow one accepts")


def _explain_lists(op: str, named: Sequence[tuple[str, Any]], lists: list[list[Tensor]]) -> None:
    """Slow, thorough validation with messages that name the offending list and index."""
    device = first = None
    names = [name for name, _ in named]
    for i in range(len(lists[0])):
        for name, lst in zip(names, lists):
            t = lst[i]
            if not isinstance(t, Tensor):
                raise TypeError(f"{op}: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
            _float_dtype(op, f"{name}[{i}]", t)
            if device is None:
                device, first = t.device, f"{name}[{i}]"
            elif t.device != device:
                raise ValueError(f"{op}: mixed devices: {first} is on {device} but {name}[{i}] is on {t.device}")
        shape0, dtype0 = lists[0][i].shape, lists[0][i].dtype
        for name, lst in zip(names[1:], lists[1:]):
            if lst[i].dtype != dtype0:
                # one contract for every backend: the native kernels take one dtype per index
                raise TypeError(f"{op}: dtype mismatch at index {i}: {names[0]}[{i}] is {dtype0} but "
                                f"{name}[{i}] is {lst[i].dtype}")
            if lst[i].shape != shape0:
                raise ValueError(f"{op}: shape mismatch at index {i}: {names[0]}[{i}] is {tuple(shape0)} "
                                 f"but {name}[{i}] is {tuple(lst[i].shape)}")


# ---------------------------------------------------------------------------------------------
# value checks and backend capabilities


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_labels(op: str, target: Tensor, num_classes: int) -> None:
    """The class-index range check, written once for every backend.

    Eager: on CPU always (free), on CUDA only with ``MPLFAST_DEBUG=1`` (reading the result syncs
    the device): ValueError naming how many labels are outside [0, C). Unchecked indices never
    address memory: every backend turns their rows' loss and gradient into NaN.

    Under ``torch.compile`` no value reaches the host (that would break the graph): without
    ``MPLFAST_DEBUG`` nothing is checked (bad rows are NaN, as above); with ``MPLFAST_DEBUG=1``
    the graph carries ``torch._assert_async``, which fails the run (a RuntimeError on CPU, a
    device-side assert on CUDA) when a label is out of range.
    """
    if target.dtype != torch.int64 or target.numel() == 0:
        return
    if _compiling():
        if debug_checks_enabled():
            ok = ((target >= 0) & (target < num_classes)).all()
            torch._assert_async(ok, f"{op}: class index out of range [0, {num_classes - 1}]")
        return
    if not (target.device.type == "cpu" or debug_checks_enabled()):
        return
    lo, hi = torch.aminmax(target)
    lo_i, hi_i = int(lo), int(hi)
    if lo_i < 0 or hi_i >= num_classes:
        bad = int(((target < 0) | (target >= num_classes)).sum())
        raise ValueError(
            f"{op}: class index out of range: {bad} label(s) outside [0, {num_classes - 1}] "
            f"(min {lo_i}, max {hi_i}; ignore_index is not supported)"
        )


def check_backend_dtype(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """TypeError unless ``backend`` computes ``dtype`` on ``device`` (``mplfast._backends.supports_dtype``:
    float64 runs only on the reference backend and the native backend on CPU)."""
    if not _backends.supports_dtype(backend, device.type, dtype):
        raise TypeError(f"{op}: unsupported dtype torch.float64 on backend {backend!r} ({device.type}): "
                        "float64 is supported only by the reference backend and the native backend on CPU")
