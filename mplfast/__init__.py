"""mplfast: fast, trustworthy Meta Pseudo Labels.

Public names are imported lazily (PEP 562): ``import mplfast`` stays cheap and keeps working
even when an optional piece (the native extension, Triton, DALI) is missing; each piece
reports what is missing when it is used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # fused ops
    "soft_cross_entropy": "mplfast.ops",
    "uda_loss": "mplfast.ops",
    "grad_dot": "mplfast.ops",
    "grad_dot_delta": "mplfast.ops",
    "backends": "mplfast._backends",
    # the MPL step and its pieces
    "MPLConfig": "mplfast.config",
    "MPLStep": "mplfast.step",
    "ModelEMA": "mplfast.ema",
    "warmup_cosine_schedule": "mplfast.schedule",
    "param_groups": "mplfast.optim",
    # models
    "create_model": "mplfast.models",
    "list_models": "mplfast.models",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mplfast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
