"""The installed extension matches what the build was asked for.

`.ci/run` builds with MPLFAST_CUDA=ON, so CI fails here unless every .cu file compiled into
`mplfast._C` (CI has nvcc but no GPU: compiled, never run).
"""
import os

import pytest


def test_extension_imports():
    import mplfast._C as C  # a missing or broken build must fail loudly in CI, not fall back

    assert isinstance(C.with_cuda, bool)


@pytest.mark.skipif(os.environ.get("MPLFAST_CUDA", "").upper() != "ON", reason="MPLFAST_CUDA=ON not requested")
def test_cuda_kernels_were_built_when_required():
    import mplfast._C as C

    assert C.with_cuda, "MPLFAST_CUDA=ON but mplfast._C was built without its CUDA kernels"
