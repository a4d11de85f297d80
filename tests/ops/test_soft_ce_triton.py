"""Triton soft-CE: the tile switch (issue 9, item 12): ``MPLFAST_TRITON_TILES=gpu`` makes the
interpreter use exactly the GPU's tiles, so the chunked path a GPU takes for C > 8192 runs here.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernels under TRITON_INTERPRET=1")


def test_gpu_tiles_switch_changes_the_tiles(monkeypatch):
    """MPLFAST_TRITON_TILES=gpu gives exactly the GPU configuration under the interpreter."""
    from mplfast.kernels._rowwise import row_config

    monkeypatch.delenv("MPLFAST_TRITON_TILES", raising=False)
    assert row_config(64, 9000, 8192)[2] > 4096  # the interpreter's wide chunk
    monkeypatch.setenv("MPLFAST_TRITON_TILES", "gpu")
    assert row_config(64, 9000, 8192) == (False, 1, 4096, 8)
    assert row_config(64, 1000, 8192) == (True, 4, 1024, 8)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert row_config(64, 9000, 8192) == (False, 1, 4096, 8)
