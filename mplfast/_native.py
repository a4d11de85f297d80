"""The one loader of the compiled extension ``mplfast._C`` (in the spirit of bitsandbytes'
``cextension.py``).

Everything in mplfast that needs ``_C`` gets it from here (``lib()``), never by importing it
itself, so there is one place that knows whether it loaded, what it carries (CPU kernels, CUDA
kernels, the augmentation kernel) and why a part is missing. Importing this module never fails:
a missing or broken ``_C`` becomes a reason string in ``status()`` and in the RuntimeError that
``lib()`` raises.

``_C`` does not link libtorch: the per-op wrappers (``mplfast/ops/<op>/native.py``) hand it raw
data pointers, sizes, the dtype codes below and, on CUDA, torch's current stream (``stream()``).

This module imports nothing from mplfast, so every other module may import it.
"""
from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

__all__ = ["status", "lib", "has", "missing", "report", "stream", "DTYPE_CODES", "INDEX_TARGET"]

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
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}
_DTYPE_CODES = DTYPE_CODES  # the name the native tests and older code use
INDEX_TARGET = -1  # target dtype code meaning "int64 class indices"


def _load_error() -> str:
    return _IMPORT_ERROR or "mplfast._C is not available"


@functools.lru_cache(maxsize=1)
def _cuda_status() -> bool | str:
    if _C is None:
        return _load_error()
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
    cpu: bool | str = True if _C is not None else _load_error()
    return {"cpu": cpu, "cuda": _cuda_status()}


def has(symbol: str) -> bool:
    """True when ``_C`` loaded and exports ``symbol`` (e.g. ``"augment_cpu"``)."""
    return _C is not None and hasattr(_C, symbol)


def missing(symbol: str) -> str | None:
    """None when ``_C`` exports ``symbol``, else why not (load failure, or an older build)."""
    if _C is None:
        return _load_error()
    if not hasattr(_C, symbol):
        return f"mplfast._C has no {symbol} (built from other sources: rebuild with `pip install -e .`)"
    return None


def lib(op: str = "native", device_type: str = "cpu") -> ModuleType:
    """``_C`` when its kernels for ``device_type`` are usable; else RuntimeError naming ``op``
    and the reason."""
    st = status().get(device_type, f"device type {device_type!r} is not supported")
    if st is not True:
        raise RuntimeError(f"{op}: native backend unavailable on {device_type}: {st}")
    return _C  # type: ignore[return-value]


def report() -> str:
    """A few human-readable lines: what loaded, what did not and why (for bug reports)."""
    st = status()
    lines = [f"mplfast._C: {'loaded from ' + str(getattr(_C, '__file__', '?')) if _C is not None else _load_error()}"]
    for dev in ("cpu", "cuda"):
        lines.append(f"  {dev}: {'available' if st[dev] is True else st[dev]}")
    if _C is not None:
        aug = missing("augment_cpu")
        lines.append(f"  augment (cpu): {'available' if aug is None else aug}")
    return "\n".join(lines)


def stream(device: torch.device) -> tuple[int, int]:
    """(device index, torch's current CUDA stream on it as an integer handle): native kernels run
    on torch's current stream. Callers also enter ``torch.cuda.device(device)``, so the device
    current in ``_C``'s own (static) CUDA runtime, which shares the driver's current context
    with torch, is the right one."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, int(torch.cuda.current_stream(index).cuda_stream)
