"""soft-CE forward + backward: mplfast (public op; native on CPU, Triton and native on CUDA) vs torch.

Run:  pytest benchmarks/ops/bench_soft_ce.py --benchmark-only -q
Ratios print at the end of the session (benchmarks/conftest.py); MPLFAST_BENCH_ASSERT=1 fails
the run when a target is missed: native >= 1.3x F.cross_entropy eager on CPU at (4096, 1000) fp32.
CUDA groups (skipped without a device): (8192, 32000) bf16, bytes = logits read once + gradient
written once + whatever backward moves (``_common.backward_extra_bytes``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mplfast
from _common import backward_extra_bytes, cuda_timed, gen, native_status, skip_unavailable

pytestmark = pytest.mark.skipif(native_status("cpu") is not True, reason=f"native: {native_status('cpu')}")

N, C = 4096, 1000
GROUP = "soft_ce_fwd_bwd[4096x1000 fp32]"


@pytest.fixture(scope="module", autouse=True)
def _targets(ratios):
    ratios.target(GROUP, "native", "eager", 1.3)
    ratios.target(GROUP, "native", "compile")
    ratios.target("cuda_soft_ce", "native", "eager", 2.0)
    ratios.target("cuda_soft_ce", "triton", "eager", 2.0)


@pytest.fixture(scope="module")
def ce_inputs():
    g = gen()
    z = torch.randn(N, C, generator=g) * 3
    y = torch.randint(0, C, (N,), generator=g)
    return z, y


def _ce_native(z, y, backend="native"):
    z = z.detach().requires_grad_()
    mplfast.soft_cross_entropy(z, y, label_smoothing=0.1, backend=backend).backward()
    return z.grad


def _ce_eager(z, y):
    z = z.detach().requires_grad_()
    F.cross_entropy(z, y, label_smoothing=0.1).backward()
    return z.grad


@pytest.mark.benchmark(group=GROUP)
def test_soft_ce_native(benchmark, ratios, ce_inputs):
    g = benchmark(_ce_native, *ce_inputs)
    torch.testing.assert_close(g, _ce_eager(*ce_inputs), rtol=1e-4, atol=1e-7)
    ratios.record(benchmark, GROUP, "native")


@pytest.mark.benchmark(group=GROUP)
def test_soft_ce_eager(benchmark, ratios, ce_inputs):
    benchmark(_ce_eager, *ce_inputs)
    ratios.record(benchmark, GROUP, "eager")


@pytest.mark.benchmark(group=GROUP)
def test_soft_ce_torch_compile(benchmark, ratios, ce_inputs):
    loss_fn = torch.compile(lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1))

    def run(z, y):
        z = z.detach().requires_grad_()
        loss_fn(z, y).backward()
        return z.grad

    try:
        run(*ce_inputs)  # compile outside the timing
    except Exception as exc:  # no compiler toolchain, unsupported platform, ...
        pytest.skip(f"torch.compile does not work here: {type(exc).__name__}: {exc}")
    benchmark(run, *ce_inputs)
    ratios.record(benchmark, GROUP, "compile")


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a device)

GN, GC = 8192, 32000


@pytest.fixture(scope="module")
def gpu_ce():
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (torch.randn(GN, GC, generator=g, device="cuda") * 3).bfloat16()
    y = torch.randint(0, GC, (GN,), generator=g, device="cuda")
    return z, y


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "native", "eager"])
@pytest.mark.benchmark(group="cuda_soft_ce_fwd_bwd[8192x32000 bf16]")
def test_cuda_soft_ce(benchmark, ratios, gpu_ce, impl):
    """Triton (CUDA's automatic choice, what MPLStep runs), native, and F.cross_entropy."""
    skip_unavailable("soft_cross_entropy", impl)
    z, y = gpu_ce
    fn = _ce_eager if impl == "eager" else (lambda a, b: _ce_native(a, b, impl))
    nbytes = 2 * z.numel() * z.element_size() + backward_extra_bytes(z.numel(), z.element_size())
    cuda_timed(benchmark, ratios, fn, z, y, nbytes=nbytes, group="cuda_soft_ce", name=impl)
