"""The backend registry: which implementation runs each fused op and each augmentation view, and
why the others cannot (``mplfast.backends()``).

Backends:
  * ``reference``: plain torch, op by op (``mplfast/ops/<op>/reference.py``,
    ``mplfast/augment/reference.py``); every device; the definition the others are tested against.
  * ``torch``: batched, vectorized torch (``mplfast/augment/cpu.py``); augmentation only, every
    device; the augmentation's fallback. (Its old name ``"cpu"`` is still accepted.)
  * ``native``: the compiled ``mplfast._C`` (loaded by ``mplfast._native``): CPU, and CUDA when
    built with CUDA. The augmentation kernel is CPU only.
  * ``triton``: ``mplfast.kernels`` on CUDA; on CPU only under ``TRITON_INTERPRET=1`` and only when
    asked for by name (the interpreter is a debugging tool, far slower than the reference).

Each op names the backends it has, its automatic preference per device type and its fallback
(``OPS``). An automatic choice takes the first available backend of the preference order, else
the fallback with one ``FallbackWarning`` per (op, reason); a backend asked for by name that
cannot run raises RuntimeError with the reason.

This module is not called ``backends.py`` on purpose: a submodule of that name would replace the
public function ``mplfast.backends`` as soon as it was imported. Nothing here imports
``mplfast._C`` or ``triton`` at import time, so ``import mplfast`` works without either; they are
probed on first use and the answers cached (``refresh()`` forgets them). Nothing here imports
``mplfast.ops`` or ``mplfast.augment``: they import this.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field

import torch

__all__ = ["BACKENDS", "DEVICE_TYPES", "OPS", "OpSpec", "backends", "resolve_backend", "refresh",
           "supports_dtype", "FallbackWarning"]

BACKENDS: tuple[str, ...] = ("reference", "native", "triton")  # the fused ops' backends
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")
_ALIASES = {"cpu": "torch"}  # the augmentation's torch path was called "cpu" before


@dataclass(frozen=True)
class OpSpec:
    """An op's backends, its automatic preference per device type, and its fallback."""
    backends: tuple[str, ...] = BACKENDS
    prefer: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"cuda": ("triton", "native"),
                                                                         "cpu": ("native",)})
    fallback: str = "reference"
    # backend -> (device types it supports for this op, a _C symbol it needs)
    needs: dict[str, tuple[tuple[str, ...], str | None]] = field(default_factory=dict)


_FUSED = OpSpec()
OPS: dict[str, OpSpec] = {
    "soft_cross_entropy": _FUSED,
    "uda_loss": _FUSED,
    "grad_dot": _FUSED,
    "grad_dot_delta": _FUSED,
    "augment": OpSpec(backends=("reference", "torch", "native", "triton"),
                      prefer={"cuda": ("triton",), "cpu": ("native",)}, fallback="torch",
                      needs={"native": (("cpu",), "augment_cpu")}),
}


class FallbackWarning(RuntimeWarning):
    """An op fell back to a slower implementation because no faster backend is available."""


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
        val = native.status().get(device_type, f"mplfast._native.status() says nothing about {device_type}")
    except Exception as exc:  # a broken loader must not break `mplfast.backends()`
        return f"the mplfast._C loader failed ({_describe(exc)})"
    if val is True:
        return _cuda_reason() if device_type == "cuda" else True
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
    if backend in ("reference", "torch"):
        return True if device_type == "cpu" else _cuda_reason()
    if backend == "native":
        return _probe_native(device_type)
    if backend == "triton":
        return _probe_triton(device_type)
    return f"unknown backend {backend!r}"


def _available(backend: str, device_type: str) -> bool | str:
    if backend == "triton" and device_type == "cpu":
        # TRITON_INTERPRET can be flipped at run time (tests do): do not cache this one.
        return _probe(backend, device_type)
    key = (backend, device_type)
    if key not in _cache:
        _cache[key] = _probe(backend, device_type)
    return _cache[key]


def _available_for(spec: OpSpec, backend: str, device_type: str) -> bool | str:
    need = spec.needs.get(backend)
    if need is not None:
        devices, symbol = need
        if device_type not in devices:
            return f"runs on {'/'.join(devices)} tensors only (got {device_type})"
    st = _available(backend, device_type)
    if st is True and need is not None and need[1] is not None:
        from mplfast import _native

        why = _native.missing(need[1])
        if why is not None:
            return why
    return st


def backends(kind: str = "ops") -> dict[str, dict[str, bool | str]]:
    """Availability of every backend on every device type (what ``mplfast.backends()`` returns).

    Args:
        kind: ``"ops"`` (the fused ops: ``reference``, ``native``, ``triton``) or ``"augment"``
            (also ``torch``; ``native`` there is the C++ augmentation kernel).
    Returns:
        ``{backend: {device_type: True | "reason it is unavailable"}}`` for device types
        ``cpu`` and ``cuda``.
    """
    if kind == "ops":
        return {b: {d: _available(b, d) for d in DEVICE_TYPES} for b in BACKENDS}
    if kind == "augment":
        spec = OPS["augment"]
        return {b: {d: _available_for(spec, b, d) for d in DEVICE_TYPES} for b in spec.backends}
    raise ValueError(f"backends(): kind must be 'ops' or 'augment', got {kind!r}")


def supports_dtype(backend: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``backend`` computes in ``dtype`` on ``device_type``: float64 only on the reference
    backend and the native backend on CPU; fp32/fp16/bf16 everywhere."""
    if dtype == torch.float64:
        return backend == "reference" or (backend == "native" and device_type == "cpu")
    return True


def _warn_once(op: str, device_type: str, reason: str, fallback: str) -> None:
    key = (op, reason)
    if key in _warned:
        return
    _warned.add(key)
    what = "the reference implementation" if fallback == "reference" else f"the {fallback} backend"
    warnings.warn(
        f"mplfast.{op}: no fast backend on {device_type} ({reason}); using {what}",
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


def resolve_backend(requested: str | None, device: torch.device | str, op: str,
                    dtype: torch.dtype | None = None) -> str:
    """The backend name that runs ``op`` on ``device``.

    Args:
        requested: ``None`` (the first available of the op's preference order: for the fused ops
            cuda triton > native, cpu native; else the op's fallback) or a backend name.
        device: where the op's tensors live.
        op: a key of ``OPS`` (other names get the fused ops' rules), used in messages and to warn
            once per (op, reason).
        dtype: the tensors' dtype when it matters (float64, see ``supports_dtype``): an automatic
            choice then keeps float64 on the reference backend unless native runs it; a named
            backend that cannot raises TypeError.
    Raises:
        ValueError: ``requested`` is not one of the op's backends.
        RuntimeError: ``requested`` names a backend that is unavailable on this device (the
            message says why).
        TypeError: ``requested`` cannot compute ``dtype``.
    """
    return _resolve(requested, torch.device(device).type, op, dtype == torch.float64)


def _resolve(requested: str | None, device_type: str, op: str, float64: bool) -> str:
    spec = OPS.get(op, _FUSED)
    dtype = torch.float64 if float64 else None
    if requested is not None:
        requested = _ALIASES.get(requested, requested) if "torch" in spec.backends else requested
        if requested not in spec.backends:
            raise ValueError(f"{op}: unknown backend {requested!r}; choose one of "
                             f"{', '.join(spec.backends)} or None")
        if device_type not in DEVICE_TYPES:
            if requested in ("reference", "torch"):
                return requested
            raise RuntimeError(f"{op}: backend {requested!r} does not support device type {device_type!r}")
        st = _available_for(spec, requested, device_type)
        if st is not True:
            raise RuntimeError(f"{op}: backend {requested!r} is not available on {device_type}: {st}")
        if dtype is not None and not supports_dtype(requested, device_type, dtype):
            raise TypeError(f"{op}: float64 is supported only by the reference backend and the native "
                            f"backend on CPU, not by {requested!r} on {device_type}")
        return requested
    if device_type not in DEVICE_TYPES:
        return spec.fallback  # plain torch runs anywhere (e.g. mps, meta); nothing faster to offer
    reasons = []
    for name in spec.prefer.get(device_type, ()):
        st = _available_for(spec, name, device_type)
        if st is True:
            if dtype is not None and not supports_dtype(name, device_type, dtype):
                return "reference"  # float64 is an accuracy choice; the reference keeps it exact
            return name
        reasons.append(f"{name}: {st}")
    _warn_once(op, device_type, "; ".join(reasons), spec.fallback)
    return spec.fallback


# Under torch.compile, Dynamo calls _resolve at trace time and keeps its answer as a constant
# instead of tracing the probes (imports, the extension's device query, warnings), which would
# break the graph. This is what torch._dynamo.assume_constant_result does, without importing
# torch._dynamo at `import mplfast`. Backend availability is a fact of the process; a compiled
# graph keeps the backend it was traced with.
_resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]
