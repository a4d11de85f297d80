"""Shared by the op tests (test_ops_*.py): the backends and devices they run on, and the rule
for which cases skip and which must run.

Imported as ``from _helpers import ...``: tests/ has no __init__.py, so pytest puts tests/
itself on sys.path.
"""
from __future__ import annotations

import os

import pytest
import torch

from mplfast._backends import backends

BACKENDS = ["reference", "native", "triton"]
DEVICES = ["cpu", "cuda"]  # cuda cases skip without a GPU


def require_backend(backend: str, device: str = "cpu") -> None:
    """Skip what this machine cannot run; fail where the backend must work: the reference
    everywhere, Triton on CPU when the interpreter is on (tests/conftest.py turns it on
    without a GPU). Native skips only while mplfast._native / _C is unavailable."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    st = backends()[backend][device]
    if st is True:
        return
    if backend == "reference" or (backend == "triton" and device == "cpu"
                                  and os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.fail(f"{backend} should be available on {device} here: {st}")
    pytest.skip(f"{backend} backend unavailable on {device}: {st}")
