"""The precision rule shared by MPLStep and the training driver.

``precision`` is one of "auto", "fp32", "bf16", "fp16"; "auto" means bf16 autocast on CUDA
devices that support it and fp32 everywhere else (issue 3's definition).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA devices with bf16 support, else "fp32"; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device) -> ContextManager[object]:
    """Autocast context for a resolved precision (a no-op context for fp32)."""
    dtype = AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
