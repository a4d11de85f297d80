"""Shared input validation and backend dispatch for the public ops."""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch
from torch import Tensor

from mplfast.dispatch import resolve_backend

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_NAMES = "float32, float16, bfloat16 (float64: reference, and native on CPU)"

# Triton modules are imported only when the triton backend is chosen: triton is optional.
_TRITON_MODULE = {
    "soft_ce_forward": "mplfast.kernels.soft_ce",
    "uda_forward": "mplfast.kernels.uda",
    "grad_dot": "mplfast.kernels.grad_dot",
    "grad_dot_delta": "mplfast.kernels.grad_dot",
}


def primitive(backend: str, name: str) -> Callable[..., Any]:
    """The implementation of primitive ``name`` (DESIGN.md signature) in ``backend``."""
    if backend == "reference":
        from mplfast.ops import reference as mod
    elif backend == "native":
        mod = importlib.import_module("mplfast._native")
    elif backend == "triton":
        mod = importlib.import_module(_TRITON_MODULE[name])
    else:  # resolve_backend already rejects unknown names
        raise ValueError(f"unknown backend {backend!r}")
    return getattr(mod, name)


def choose_backend(op: str, requested: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """resolve_backend plus the dtype rule: float64 only on reference and native-on-CPU."""
    name = resolve_backend(requested, device, op)
    if dtype == torch.float64 and not (name == "reference" or (name == "native" and device.type == "cpu")):
        if requested is not None:
            raise TypeError(
                f"{op}: float64 is supported only by the reference backend and the native backend "
                f"on CPU, not by {name!r} on {device.type}"
            )
        name = "reference"  # float64 is an accuracy choice; the reference keeps it exact
    return name


def check_tensor(op: str, name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float_dtype(op: str, name: str, x: Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: unsupported dtype {x.dtype} for {name}; supported: {_DTYPE_NAMES}")


def check_logits(op: str, name: str, x: Any,
                 check_dtype: Callable[[str, str, Tensor], None] = check_float_dtype) -> Tensor:
    """``x`` as a 2-D [N, C] tensor with C >= 1 whose dtype passes ``check_dtype`` (the public
    ops' float rule; the native backend passes its per-device one)."""
    x = check_tensor(op, name, x)
    if x.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [N, C], got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: {name} has no classes (shape {tuple(x.shape)})")
    check_dtype(op, name, x)
    return x


def check_same_device(op: str, **tensors: Tensor) -> torch.device:
    items = list(tensors.items())
    dev = items[0][1].device
    for name, t in items[1:]:
        if t.device != dev:
            raise ValueError(f"{op}: mixed devices: {items[0][0]} is on {dev} but {name} is on {t.device}")
    return dev


def check_unit_interval(op: str, name: str, value: Any, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and (0.0 < v if open_low else 0.0 <= v) and v <= 1.0):
        rng = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{op}: {name} must be in {rng}, got {value}")
    return v


def check_positive(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value}")
    return v


def is_cpu_one(t: Tensor) -> bool:
    """True when ``t`` is a one-element CPU tensor equal to 1 (reading it is free, no device sync)."""
    return t.device.type == "cpu" and t.numel() == 1 and bool(t.reshape(()) == 1)


def scale_saved_grad(grad: Tensor, grad_out: Tensor) -> Tensor:
    """Backward of a fused op whose forward saved ``grad``: ``grad * grad_out`` for a one-element
    ``grad_out``. A CPU 1 is free to check and skips the multiply; on CUDA reading ``grad_out``
    would force a host sync, so there it is always multiplied (one cheap elementwise kernel)."""
    if is_cpu_one(grad_out):
        return grad
    return grad * grad_out.to(grad.dtype)
