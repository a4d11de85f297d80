"""Where each backend implements each fused-op primitive, and the primitives behind the contract's
checks.

``implementation(backend, primitive)`` is what the custom ops (``mplfast/ops/<op>/op.py``) call:
the unchecked function of ``mplfast/ops/<op>/reference.py``, ``mplfast/ops/<op>/native.py`` or
``mplfast/kernels/<op>.py``, imported on first use (triton and ``_C`` are optional).
``checked(backend, primitive)`` adds ``mplfast.ops.contract``'s checks in front, for callers that
use a primitive directly (tests, benchmarks).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from mplfast.ops import contract

__all__ = ["implementation", "checked"]

_BACKEND_MODULES = {
    "reference": "mplfast.ops.{op}.reference",
    "native": "mplfast.ops.{op}.native",
    "triton": "mplfast.kernels.{op}",
}


def implementation(backend: str, primitive: str) -> Callable[..., Any]:
    """The unchecked implementation of ``primitive`` in ``backend`` (imported on first use, so
    the optional pieces, triton and ``_C``, are only needed when chosen)."""
    pkg = contract.PRIMITIVES[primitive][0]
    try:
        path = _BACKEND_MODULES[backend].format(op=pkg)
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}") from None
    return getattr(importlib.import_module(path), primitive)


def checked(backend: str, primitive: str) -> Callable[..., Any]:
    """``primitive`` of ``backend`` behind ``mplfast.ops.contract``'s checks (what the public ops run, for
    callers that use a primitive directly: tests, benchmarks). Availability is the caller's
    business (``mplfast.backends()``); the native wrappers raise RuntimeError with the reason."""
    impl = implementation(backend, primitive)
    op = primitive

    if primitive == "soft_ce_forward":
        def run(logits, target, label_smoothing, grad_scale):
            logits, target, eps = contract.check_soft_ce(op, logits, target, label_smoothing)
            contract.check_backend_dtype(op, backend, logits.device, logits.dtype)
            contract.check_labels(op, target, logits.shape[1])
            return impl(logits, target, eps, contract.grad_scale(op, grad_scale))
    elif primitive == "uda_forward":
        def run(logits_weak, logits_strong, temperature, threshold, grad_scale):
            weak, strong, tau, thr = contract.check_uda(op, logits_weak, logits_strong, temperature, threshold)
            contract.check_backend_dtype(op, backend, strong.device, strong.dtype)
            return impl(weak, strong, tau, thr, contract.grad_scale(op, grad_scale))
    else:
        names = contract.PRIMITIVES[primitive][1]

        def run(*lists):
            if len(lists) != len(names):
                raise TypeError(f"{op} takes {len(names)} lists, got {len(lists)}")
            lists_, device, has64 = contract.check_lists(op, list(zip(names, lists)))
            if device is None:
                return torch.zeros((), dtype=torch.float32)
            if has64:
                contract.check_backend_dtype(op, backend, device, torch.float64)
            with torch.no_grad():
                return impl(*lists_)

    run.__name__ = run.__qualname__ = f"checked_{backend}_{primitive}"
    run.__doc__ = f"{primitive} of the {backend} backend, inputs checked by mplfast.ops.contract."
    return run
