"""Which backend runs each fused op, and why the others cannot.

Backends (docs/DESIGN.md, "Backends"):
  * ``reference``: plain torch (``mplfast.ops.reference``), every device.
  * ``native``: ``mplfast._native`` over the compiled ``mplfast._C`` (CPU, and CUDA when built
    with CUDA).
  * ``triton``: ``mplfast.kernels`` on CUDA; on CPU only under ``TRITON_INTERPRET=1`` and only when
    asked for by name (the interpreter is a debugging tool, far slower than the reference).

Nothing here imports ``mplfast._C`` or ``triton`` at module import time, so ``import mplfast``
works without either; they are probed on first use and the answers cached (``refresh()`` forgets
them).
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
import torch

__all__ = ["BACKENDS", "DEVICE_TYPES", "backends", "resolve_backend", "refresh", "FallbackWarning"]

BACKENDS: tuple[str, ...] = ("reference", "native", "triton")
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")


class FallbackWarning(RuntimeWarning):
    """An op fell back to the reference implementation because no faster backend is available."""


_cache: dict[tuple[str, str], bool | str] = {}
_warned: set[tuple[str, str]] = set()


def refresh() -> None:
    """Forget cached availability answers and which fallbacks were already warned about."""
    _cache.clear()
    _warned.clear()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _cuda_reason() -> bool | str:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return True


def _probe_native(device_type: str) -> bool | str:
    try:
        native = importlib.import_module("mplfast._native")
    except Exception as exc:  # missing module, or _C failing to load inside it
        return f"mplfast._native cannot be imported ({_describe(exc)})"
    status = getattr(native, "status", None)
    if status is None:
        return "mplfast._native has no status()"
    try:
        st = status()
    except Exception as exc:
        return f"mplfast._native.status() failed ({_describe(exc)})"
    # Accept a per-device dict (the documented shape), or one answer for every device.
    if isinstance(st, dict):
        val = st.get(device_type, f"mplfast._native.status() says nothing about {device_type}")
    else:
        val = st
    if val is True:
        if device_type == "cuda":
            return _cuda_reason()
        return True
    if val is False or val is None:
        return f"mplfast._native reports {device_type} unavailable"
    return str(val)


def _probe_triton(device_type: str) -> bool | str:
    if device_type == "cuda":
        cuda = _cuda_reason()
        if cuda is not True:
            return cuda
    elif os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "Triton runs on CPU only under TRITON_INTERPRET=1"
    try:
        importlib.import_module("triton")
    except Exception as exc:
        return f"triton cannot be imported ({_describe(exc)})"
    return True


def _probe(backend: str, device_type: str) -> bool | str:
    """Uncached availability of ``backend`` on ``device_type``: True or why not."""
    if backend == "reference":
        return True if device_type == "cpu" else _cuda_reason()
    if backend == "native":
        return _probe_native(device_type)
    if backend == "triton":
        return _probe_triton(device_type)
    return f"unknown backend {backend!r}"


def _available(backend: str, device_type: str) -> bool | str:
    key = (backend, device_type)
    if backend == "triton" and device_type == "cpu":
        # TRITON_INTERPRET can be flipped at run time (tests do): do not cache this one.
        return _probe(backend, device_type)
    if key not in _cache:
        _cache[key] = _probe(backend, device_type)
    return _cache[key]


def backends() -> dict[str, dict[str, bool | str]]:
    """Availability of every backend on every device type (what ``mplfast.backends()`` returns).

    Returns ``{backend: {device_type: True | "reason it is unavailable"}}`` for backends
    ``reference``, ``native``, ``triton`` and device types ``cpu``, ``cuda``.
    """
    return {b: {d: _available(b, d) for d in DEVICE_TYPES} for b in BACKENDS}


def _warn_once(op: str, device_type: str, reason: str) -> None:
    key = (op, reason)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(
        f"mplfast.{op}: no fast backend on {device_type} ({reason}); using the reference implementation",
        FallbackWarning,
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """warnings.warn stacklevel of the first frame outside mplfast (the user's call site)."""
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1  # level 1 = the caller of this function (_warn_once)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


def resolve_backend(requested: str | None, device: torch.device | str, op: str) -> str:
    """The backend name that runs ``op`` on ``device``.

    Args:
        requested: ``None`` (pick the fastest available: cuda triton > native > reference; cpu
            native > reference) or one of ``"reference"``, ``"native"``, ``"triton"``.
        device: where the op's tensors live.
        op: the public op's name, used in messages and to warn once per (op, reason).
    Raises:
        ValueError: ``requested`` is not a backend name.
        RuntimeError: ``requested`` names a backend that is unavailable on this device (the
            message says why).
    An automatic choice that finds no fast backend falls back to ``reference`` and emits one
    ``FallbackWarning`` per (op, reason).
    """
    device_type = torch.device(device).type
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"{op}: unknown backend {requested!r}; choose one of {', '.join(BACKENDS)} or None")
        if device_type not in DEVICE_TYPES:
            if requested == "reference":
                return "reference"
            raise RuntimeError(f"{op}: backend {requested!r} does not support device type {device_type!r}")
        st = _available(requested, device_type)
        if st is True:
            return requested
        raise RuntimeError(f"{op}: backend {requested!r} is not available on {device_type}: {st}")
    if device_type not in DEVICE_TYPES:
        return "reference"  # plain torch runs anywhere (e.g. mps, meta); nothing faster to offer
    order = ("triton", "native") if device_type == "cuda" else ("native",)
    reasons = []
    for name in order:
        st = _available(name, device_type)
        if st is True:
            return name
        reasons.append(f"{name}: {st}")
    _warn_once(op, device_type, "; ".join(reasons))
    return "reference"

