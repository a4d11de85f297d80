"""The op tests' Triton cases run twice: with the interpreter's own tiles and with exactly the
tiles a GPU uses (``MPLFAST_TRITON_TILES=gpu``, kernels/_launch.py), so the normal pytest run
covers the GPU tile paths (chunked rows for C > 4096, vector widths, row groups) without a GPU.

Applies to every test in tests/ops/test_{soft_ce,uda,grad_dot}.py that takes a ``backend``
parameter: a ``triton_tiles`` parameter is added, and its ``gpu`` variant is kept only for the
``triton`` backend (the others ignore the switch). Tests that take the ``tiles`` fixture (the
test_*_triton.py files) run both tile configurations through it instead.
"""
from __future__ import annotations

import pytest

_OP_MODULES = {"test_soft_ce", "test_uda", "test_grad_dot"}


def _is_op_test(metafunc_or_item) -> bool:
    module = getattr(metafunc_or_item, "module", None)
    return module is not None and module.__name__.rsplit(".", 1)[-1] in _OP_MODULES


def pytest_generate_tests(metafunc):
    if (_is_op_test(metafunc) and "backend" in metafunc.fixturenames
            and "tiles" not in metafunc.fixturenames):
        metafunc.fixturenames.append("triton_tiles")
        metafunc.parametrize("triton_tiles", ["default", "gpu-tiles"], indirect=True)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("triton_tiles") == "gpu-tiles" and params.get("backend") != "triton":
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _use_gpu_tiles(monkeypatch, on: bool) -> None:
    """MPLFAST_TRITON_TILES=gpu for this test when ``on``, unset otherwise (read at every launch)."""
    if on:
        monkeypatch.setenv("MPLFAST_TRITON_TILES", "gpu")
    else:
        monkeypatch.delenv("MPLFAST_TRITON_TILES", raising=False)


@pytest.fixture
def triton_tiles(request, monkeypatch):
    """``gpu-tiles``: the GPU's tile configuration for this test (added by pytest_generate_tests)."""
    _use_gpu_tiles(monkeypatch, request.param == "gpu-tiles")
    return request.param


@pytest.fixture(params=["interpreter", "gpu"])
def tiles(request, monkeypatch):
    """The test_*_triton.py files' own switch: every test taking it runs with the interpreter's
    tiles and with the GPU's."""
    _use_gpu_tiles(monkeypatch, request.param == "gpu")
    return request.param
