"""Test-wide setup.

Without a GPU, the Triton kernels run under Triton's interpreter, which must be switched on
before ``triton`` is first imported, hence here, at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def seeded():
    """A fresh, seeded torch generator per test, so failures reproduce."""
    return torch.Generator().manual_seed(1234)
