"""UDA loss forward + backward (gradient to the strong logits): mplfast native vs the eager composite.

Run:  pytest benchmarks/ops/bench_uda.py --benchmark-only -q
Target (printed at the end of the session, enforced with MPLFAST_BENCH_ASSERT=1): native >= 1.5x
the eager composite on CPU at (4096, 1000) fp32. CUDA group: (8192, 32000) bf16, bytes = both
logits read once + gradient written once + whatever backward moves.
"""
from __future__ import annotations

import pytest
import torch

import mplfast
from _common import backward_extra_bytes, cuda_timed, gen, native_status, skip_unavailable
from mplfast.ops.uda.reference import uda_composite

pytestmark = pytest.mark.skipif(native_status("cpu") is not True, reason=f"native: {native_status('cpu')}")

N, C = 4096, 1000
TAU, THRESHOLD = 0.7, 0.6
GROUP = "uda_fwd_bwd[4096x1000 fp32]"


@pytest.fixture(scope="module", autouse=True)
def _targets(ratios):
    ratios.target(GROUP, "native", "eager", 1.5)
    ratios.target("cuda_uda", "native", "eager", 2.0)
    ratios.target("cuda_uda", "triton", "eager", 2.0)


@pytest.fixture(scope="module")
def uda_inputs():
    g = gen()
    weak = torch.randn(N, C, generator=g) * 6  # wide enough that some rows pass the threshold
    strong = torch.randn(N, C, generator=g) * 3
    return weak, strong


def _uda_native(weak, strong, backend="native"):
    s = strong.detach().requires_grad_()
    loss, _ = mplfast.uda_loss(weak, s, temperature=TAU, threshold=THRESHOLD, backend=backend)
    loss.backward()
    return s.grad


def _uda_eager(weak, strong):
    s = strong.detach().requires_grad_()
    loss, _ = uda_composite(weak, s, TAU, THRESHOLD)
    loss.backward()
    return s.grad


@pytest.mark.benchmark(group=GROUP)
def test_uda_native(benchmark, ratios, uda_inputs):
    g = benchmark(_uda_native, *uda_inputs)
    torch.testing.assert_close(g, _uda_eager(*uda_inputs), rtol=1e-4, atol=1e-7)
    ratios.record(benchmark, GROUP, "native")


@pytest.mark.benchmark(group=GROUP)
def test_uda_eager_composite(benchmark, ratios, uda_inputs):
    benchmark(_uda_eager, *uda_inputs)
    ratios.record(benchmark, GROUP, "eager")


GN, GC = 8192, 32000


@pytest.fixture(scope="module")
def gpu_uda():
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (torch.randn(GN, GC, generator=g, device="cuda") * 3).bfloat16()
    w = (torch.randn(GN, GC, generator=g, device="cuda") * 12).bfloat16()
    return w, z


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "native", "eager"])
@pytest.mark.benchmark(group="cuda_uda_fwd_bwd[8192x32000 bf16]")
def test_cuda_uda(benchmark, ratios, gpu_uda, impl):
    """Triton (CUDA's automatic choice, what MPLStep runs), native, and the eager composite."""
    skip_unavailable("uda_loss", impl)
    w, z = gpu_uda
    fn = _uda_eager if impl == "eager" else (lambda a, b: _uda_native(a, b, impl))
    nbytes = 3 * z.numel() * z.element_size() + backward_extra_bytes(z.numel(), z.element_size())
    cuda_timed(benchmark, ratios, fn, w, z, nbytes=nbytes, group="cuda_uda", name=impl)
