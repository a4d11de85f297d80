"""Tensor-level wrappers over the compiled extension ``mplfast._C`` (the ``native`` backend).

``_C`` does not link libtorch: this module validates the tensors (dtype, device, shape,
contiguity), allocates the outputs with torch on the input's device and hands ``_C`` raw data
pointers, sizes, dtype codes and, on CUDA, the current stream. The four primitives have exactly
the signatures of docs/DESIGN.md ("Fused-op primitives") and match ``mplfast.ops.reference``.

If ``_C`` is missing or fails to load, importing this module still works; ``status()`` says why
and every primitive raises RuntimeError with that reason.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import torch
from torch import Tensor

from mplfast.ops._common import check_logits, check_same_device, check_tensor
from mplfast.ops.reference import debug_checks_enabled

__all__ = ["status", "soft_ce_forward", "uda_forward", "grad_dot", "grad_dot_delta"]

try:
    from mplfast import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built, or built for another Python / missing symbol
    _C = None
    _IMPORT_ERROR = f"mplfast._C failed to load ({type(exc).__name__}: {exc})"
    _pkg_dir = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(_pkg_dir, os.pardir, "CMakeLists.txt")):
        # The usual cause: Python found the source checkout (the current directory comes first
        # on sys.path) instead of the installed package.
        _IMPORT_ERROR += (f"; mplfast was imported from its source tree {os.path.dirname(_pkg_dir)}, "
                          "which has no compiled _C: run from another directory, or install with "
                          "`pip install -e .`")

# Must match csrc/common.h (enum DType).
_DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_TARGET = -1  # target_dtype code meaning "int64 class indices"


@functools.lru_cache(maxsize=1)
def _cuda_status() -> bool | str:
    if _C is None:
        return _IMPORT_ERROR or "mplfast._C is not available"
    if not getattr(_C, "with_cuda", False):
        return "mplfast._C was built without CUDA (no toolkit found, or MPLFAST_CUDA=OFF)"
    count, why = _C.cuda_device_count()
    if count < 0:
        return f"CUDA runtime unusable from mplfast._C ({why})"
    if count == 0:
        return "no CUDA device"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (CPU-only torch build?)"
    return True


def status() -> dict[str, bool | str]:
    """Availability of the native kernels per device type.

    Returns ``{"cpu": True | reason, "cuda": True | reason}``; a reason is a one-line string
    (``_C`` failed to load, built without CUDA, no device, ...).
    """
    cpu: bool | str = True if _C is not None else (_IMPORT_ERROR or "mplfast._C is not available")
    return {"cpu": cpu, "cuda": _cuda_status()}


# ---------------------------------------------------------------------------------------------
# validation helpers


def _require(op: str, device: torch.device) -> None:
    st = status().get(device.type, f"device type {device.type!r} is not supported")
    if st is not True:
        raise RuntimeError(f"{op}: native backend unavailable on {device.type}: {st}")


def _check_float(op: str, name: str, x: Tensor) -> None:
    if x.device.type == "cuda":
        if x.dtype not in _CUDA_DTYPES:
            extra = " (float64 is supported on CPU only)" if x.dtype == torch.float64 else ""
            raise TypeError(f"{op}: unsupported dtype {x.dtype} for {name} on CUDA; "
                            f"supported: float32, float16, bfloat16{extra}")
    elif x.dtype not in _DTYPE_CODES:
        raise TypeError(f"{op}: unsupported dtype {x.dtype} for {name}; "
                        "supported: float32, float16, bfloat16, float64")


def _check_logits(op: str, name: str, x: Any) -> Tensor:
    x = check_logits(op, name, x, _check_float)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: {name} is on {x.device}; the native backend supports cpu and cuda")
    return x


def _scalar(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    return float(value)


def _check_labels(op: str, target: Tensor, num_classes: int) -> None:
    """ValueError when a class index is outside [0, C) (host sync on CUDA, hence CPU/debug only)."""
    if target.numel() == 0:
        return
    lo, hi = torch.aminmax(target)
    lo_i, hi_i = int(lo), int(hi)
    if lo_i < 0 or hi_i >= num_classes:
        bad = int(((target < 0) | (target >= num_classes)).sum())
        raise ValueError(f"{op}: class index out of range: {bad} label(s) outside [0, {num_classes - 1}] "
                         f"(min {lo_i}, max {hi_i})")


def _stream(device: torch.device) -> tuple[int, int]:
    # The kernels run on torch's current stream of that device. Callers also enter
    # torch.cuda.device(device), so the device current in _C's own (static) CUDA runtime, which
    # shares the driver's current context with torch, is already the right one.
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, int(torch.cuda.current_stream(index).cuda_stream)


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# primitives


def soft_ce_forward(
    logits: Tensor,
    target: Tensor,
    label_smoothing: float,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor | None]:
    """Per-row (label-smoothed, soft-target) cross-entropy and, optionally, its gradient.

    Args:
        logits: [N, C] float32 | float16 | bfloat16 (float64 on CPU), any strides.
        target: int64 [N] class indices, or float [N, C] probabilities (any float dtype; rows need
            not sum to 1).
        label_smoothing: eps in [0, 1]; t' = (1 - eps) t + eps / C.
        grad_scale: None for no gradient, else grad = grad_scale * dloss_n/dlogits.

    Returns:
        loss: float32 [N] (float64 for float64 logits), -sum_c t'_nc log_softmax(z_n)_c.
        grad: logits.dtype [N, C] = grad_scale * (sum_c t'_nc softmax(z_n) - t'_n), or None.

    Invalid class index: ValueError on CPU. On CUDA the row's loss and gradient are NaN (the
    kernel never reads out of bounds); with MPLFAST_DEBUG=1 it is a ValueError on CUDA too.
    Math in float32 (float64 for float64 logits).
    """
    op = "soft_ce_forward"
    logits = check_tensor(op, "logits", logits)
    target = check_tensor(op, "target", target)
    check_same_device(op, logits=logits, target=target)
    logits = _check_logits(op, "logits", logits)
    n, c = logits.shape
    eps = _scalar(op, "label_smoothing", label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    scale = None if grad_scale is None else _scalar(op, "grad_scale", grad_scale)
    device = logits.device
    if target.dtype == torch.int64:
        if target.shape != (n,):
            raise ValueError(f"{op}: index target must have shape [{n}], got {tuple(target.shape)}")
        target_code = _INDEX_TARGET
        if device.type == "cpu" or debug_checks_enabled():
            _check_labels(op, target, c)
    elif target.dtype.is_floating_point:
        if target.shape != (n, c):
            raise ValueError(f"{op}: probability target must have shape [{n}, {c}] like the logits, "
                             f"got {tuple(target.shape)}")
        if device.type == "cuda" and target.dtype not in (torch.float32, logits.dtype):
            # The CUDA kernels read targets as float32 or in the logits dtype.
            target = target.float()
        elif target.dtype not in _DTYPE_CODES:
            target = target.float()
        target_code = _DTYPE_CODES[target.dtype]
    else:
        raise TypeError(f"{op}: target must be int64 class indices [N] or a float probability matrix "
                        f"[N, C], got dtype {target.dtype}")
    _require(op, device)

    logits = logits.detach().contiguous()
    target = target.detach().contiguous()
    loss = torch.empty(n, dtype=_loss_dtype(logits.dtype), device=device)
    grad = torch.empty_like(logits) if scale is not None else None
    if n == 0:
        return loss, grad
    grad_ptr = grad.data_ptr() if grad is not None else 0
    args = (logits.data_ptr(), _DTYPE_CODES[logits.dtype], target.data_ptr(), target_code,
            loss.data_ptr(), grad_ptr, n, c, eps, 1.0 if scale is None else scale)
    if device.type == "cpu":
        _C.soft_ce_cpu(*args, torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            _C.soft_ce_cuda(*args, *_stream(device))
    return loss, grad


def uda_forward(
    logits_weak: Tensor,
    logits_strong: Tensor,
    temperature: float,
    threshold: float,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-row masked UDA consistency loss, fused.

    Args:
        logits_weak: [N, C]; q = softmax(weak / temperature) (no gradient flows to it).
        logits_strong: [N, C], same dtype and device.
        temperature: tau > 0.  threshold: in [0, 1].
        grad_scale: None for no gradient.

    Returns:
        loss: float32 [N] (float64 for float64), m_n * (-sum_c q_nc log_softmax(strong_n)_c).
        mask: float32 [N] (float64 for float64), m_n = [max_c q_nc >= threshold].
        grad: strong.dtype [N, C] = grad_scale * m_n * (softmax(strong_n) - q_n), or None.
    """
    op = "uda_forward"
    weak = check_tensor(op, "logits_weak", logits_weak)
    strong = check_tensor(op, "logits_strong", logits_strong)
    check_same_device(op, logits_weak=weak, logits_strong=strong)
    weak = _check_logits(op, "logits_weak", weak)
    strong = _check_logits(op, "logits_strong", strong)
    if weak.shape != strong.shape:
        raise ValueError(f"{op}: shape mismatch: logits_weak {tuple(weak.shape)} vs "
                         f"logits_strong {tuple(strong.shape)}")
    if weak.dtype != strong.dtype:
        raise TypeError(f"{op}: dtype mismatch: logits_weak {weak.dtype} vs logits_strong {strong.dtype}")
    tau = _scalar(op, "temperature", temperature)
    if not tau > 0.0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    thr = _scalar(op, "threshold", threshold)
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"{op}: threshold must be in [0, 1], got {threshold}")
    scale = None if grad_scale is None else _scalar(op, "grad_scale", grad_scale)
    device = strong.device
    _require(op, device)

    weak = weak.detach().contiguous()
    strong = strong.detach().contiguous()
    n, c = strong.shape
    ldt = _loss_dtype(strong.dtype)
    loss = torch.empty(n, dtype=ldt, device=device)
    mask = torch.empty(n, dtype=ldt, device=device)
    grad = torch.empty_like(strong) if scale is not None else None
    if n == 0:
        return loss, mask, grad
    args = (weak.data_ptr(), strong.data_ptr(), _DTYPE_CODES[strong.dtype], loss.data_ptr(), mask.data_ptr(),
            grad.data_ptr() if grad is not None else 0, n, c, tau, thr, 1.0 if scale is None else scale)
    if device.type == "cpu":
        _C.uda_cpu(*args, torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            _C.uda_cuda(*args, *_stream(device))
    return loss, mask, grad


def _multi_dot(op: str, names: tuple[str, ...], lists: tuple[Sequence[Tensor], ...]) -> Tensor:
    """Shared body of grad_dot / grad_dot_delta: lists[0] . (lists[1] [- lists[2]])."""
    for name, lst in zip(names, lists):
        if isinstance(lst, Tensor) or not isinstance(lst, (list, tuple, Sequence)):
            raise TypeError(f"{op}: {name} must be a sequence of tensors, got {type(lst).__name__}")
    n = len(lists[0])
    for name, lst in zip(names[1:], lists[1:]):
        if len(lst) != n:
            raise ValueError(f"{op}: list-length mismatch: {names[0]} has {n} tensors but {name} has {len(lst)}")
    if n == 0:
        return torch.zeros((), dtype=torch.float32)
    # Fast path: this call is on the MPL step's critical path with ~100 tensors per list, so it
    # reads each attribute once per tensor in flat comprehensions and compares whole lists at C
    # level (~0.3 us per tensor). Anything unusual (non-tensors, mixed devices, strided views,
    # unsupported dtypes, ...) falls through to the slow loop, which names the offending tensor.
    try:
        x0 = lists[0]
        device = x0[0].device
        on_cpu = device.type == "cpu"
        dtypes = [t.dtype for t in x0]
        shapes = [t.shape for t in x0]
        ok = all([t.dtype for t in lst] == dtypes and [t.shape for t in lst] == shapes for lst in lists[1:])
        flat = [t for lst in lists for t in lst]
        if on_cpu:  # is_cpu is cheaper than building a torch.device per tensor
            ok = ok and all([t.is_cpu and t.is_contiguous() for t in flat])
        else:
            ok = ok and device.type == "cuda" and all([t.device == device and t.is_contiguous() for t in flat])
        codes = [_DTYPE_CODES[d] for d in dtypes]
        ok = ok and (on_cpu or 3 not in codes)
    except (AttributeError, KeyError, TypeError):
        ok = False
    if ok:
        keep: list[Tensor] = []
        ptrs = [[t.data_ptr() for t in lst] for lst in lists]
        sizes = [t.numel() for t in x0]
    else:
        device, ptrs, sizes, codes, keep = _slow_check(op, names, lists)
    _require(op, device)
    xs, ys = ptrs[0], ptrs[1]
    zs = ptrs[2] if len(ptrs) == 3 else []
    if device.type == "cpu":
        value = _C.grad_dot_cpu(xs, ys, zs, sizes, codes, torch.get_num_threads())
        return torch.scalar_tensor(value, dtype=torch.float32)  # ~3 us cheaper than torch.tensor
    index, stream = _stream(device)
    ws_len = _C.grad_dot_cuda_workspace(sizes)
    workspace = torch.empty(ws_len, dtype=torch.float64, device=device)
    out = torch.empty((), dtype=torch.float32, device=device)
    with torch.cuda.device(device):
        _C.grad_dot_cuda(xs, ys, zs, sizes, codes, workspace.data_ptr(), ws_len, out.data_ptr(), index, stream)
    # Contiguous copies in `keep` are freed on the current stream after this returns; the
    # caching allocator only reuses them for work queued behind the kernel.
    del keep
    return out


def _slow_check(op: str, names: tuple[str, ...], lists: tuple[Sequence[Tensor], ...]
                ) -> tuple[torch.device, list[list[int]], list[int], list[int], list[Tensor]]:
    """Per-tensor validation with precise errors; makes contiguous copies where needed."""
    device = None
    ptrs: list[list[int]] = [[] for _ in lists]
    sizes: list[int] = []
    codes: list[int] = []
    keep: list[Tensor] = []  # contiguous copies must outlive the (possibly asynchronous) call
    first_name = names[0]
    for i in range(len(lists[0])):
        ts = [lst[i] for lst in lists]
        x = ts[0]
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: {first_name}[{i}] must be a torch.Tensor, got {type(x).__name__}")
        if device is None:
            device = x.device
            if device.type not in ("cpu", "cuda"):
                raise ValueError(f"{op}: tensors on {device}; the native backend supports cpu and cuda")
        dt = x.dtype
        for name, t in zip(names, ts):
            if not isinstance(t, Tensor):
                raise TypeError(f"{op}: {name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
            if t.device != device:
                raise ValueError(f"{op}: mixed devices: {first_name}[0] is on {device} but {name}[{i}] is on {t.device}")
            if t.shape != x.shape:
                raise ValueError(f"{op}: shape mismatch at index {i}: {first_name} {tuple(x.shape)} vs "
                                 f"{name} {tuple(t.shape)}")
            if t.dtype != dt:
                raise TypeError(f"{op}: dtype mismatch at index {i}: {first_name} {dt} vs {name} {t.dtype}")
        code = _DTYPE_CODES.get(dt)
        if code is None or (device.type == "cuda" and code == 3):
            raise TypeError(f"{op}: unsupported dtype {dt} at index {i}; supported: float32, float16, "
                            "bfloat16 (float64 on CPU)")
        sizes.append(x.numel())
        codes.append(code)
        for k, t in enumerate(ts):
            if not t.is_contiguous():
                t = t.contiguous()
                keep.append(t)
            ptrs[k].append(t.data_ptr())
    assert device is not None
    return device, ptrs, sizes, codes, keep


def grad_dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """sum_i <x_i, y_i> as a 0-dim float32 tensor on the inputs' device.

    x_i and y_i: same shape and dtype (float32 | float16 | bfloat16; float64 on CPU); dtypes may
    differ between pairs; empty tensors allowed; an empty list gives 0 on CPU. fp64 accumulation
    over fixed chunks in a fixed order: bitwise reproducible. On CUDA: one launch for up to 320
    tensors, then one small reduce kernel.
    """
    return _multi_dot("grad_dot", ("xs", "ys"), (xs, ys))


def grad_dot_delta(grads: Sequence[Tensor], new: Sequence[Tensor], old: Sequence[Tensor]) -> Tensor:
    """sum_i <g_i, new_i - old_i> as a 0-dim float32 tensor, never materialising the difference.

    Same rules as ``grad_dot`` (g_i, new_i, old_i: same shape and dtype).
    """
    return _multi_dot("grad_dot_delta", ("grads", "new", "old"), (grads, new, old))
