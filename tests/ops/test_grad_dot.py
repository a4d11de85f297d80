"""grad_dot / grad_dot_delta on every backend against a float64 loop of torch ops.

Tolerance: |error| <= 1e-5 * sum_i |x_i| . |y_i| (the scale of the dot product's rounding
error in fp32 accumulation) for fp32; inputs in fp16/bf16 are exact in fp32, so the same bound
applies to them (the products are accumulated in fp32).
"""
from __future__ import annotations

import pytest
import torch

import mplfast
from _helpers import BACKENDS, DEVICES, require_backend


def expected(xs, ys, zs=None):
    """(value, error scale) in float64."""
    val, scale = 0.0, 0.0
    for i, (x, y) in enumerate(zip(xs, ys)):
        x64, y64 = x.double().reshape(-1), y.double().reshape(-1)
        if zs is not None:
            y64 = y64 - zs[i].double().reshape(-1)
        val += float(x64 @ y64)
        scale += float(x64.abs() @ y64.abs())
    return val, scale


# Ragged: empty tensors (leading, inner, trailing), a 0-dim scalar, sizes around and above the
# Triton chunk (16384), odd sizes, conv-like 4-D shapes.
SHAPES = [(0,), (3, 3, 16, 16), (), (1,), (0, 5), (7, 11), (16384,), (16385,), (65536,), (150001,), (64,), (2, 0, 3), (0,)]


def ragged(gen, dtypes=(torch.float32,)):
    out = []
    for k in range(3):
        out.append([(torch.randn(s, generator=gen) * (1 + k)).to(dtypes[i % len(dtypes)])
                    for i, s in enumerate(SHAPES)])
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_ragged_lists(backend, dtype, device, seeded):
    require_backend(backend, device)
    xs, ys, zs = ragged(seeded, (dtype,))
    dx, dy, dz = ([t.to(device) for t in lst] for lst in (xs, ys, zs))
    out = mplfast.grad_dot(dx, dy, backend=backend)
    assert out.dtype == torch.float32 and out.dim() == 0 and not out.requires_grad
    assert out.device.type == device
    val, scale = expected(xs, ys)
    assert abs(out.item() - val) <= 1e-5 * scale + 1e-6
    out = mplfast.grad_dot_delta(dx, dy, dz, backend=backend)
    assert out.dtype == torch.float32 and out.dim() == 0
    val, scale = expected(xs, ys, zs)
    assert abs(out.item() - val) <= 1e-5 * scale + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_in_one_call(backend, seeded):
    """Several dtype groups in one call (Triton: one launch per group)."""
    require_backend(backend)
    xs, ys, zs = ragged(seeded, (torch.float32, torch.bfloat16, torch.float16))
    val, scale = expected(xs, ys)
    assert abs(mplfast.grad_dot(xs, ys, backend=backend).item() - val) <= 1e-5 * scale + 1e-6
    val, scale = expected(xs, ys, zs)
    assert abs(mplfast.grad_dot_delta(xs, ys, zs, backend=backend).item() - val) <= 1e-5 * scale + 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_tensors_and_determinism(backend, device, seeded):
    """More tensors than apex's per-launch table (110); the result is bit-identical across calls.
    (Kept at 130 tensors: the Triton interpreter pays ~10 ms per program.)"""
    require_backend(backend, device)
    sizes = torch.randint(0, 300, (130,), generator=seeded).tolist()
    xs = [torch.randn(s, generator=seeded).to(device) for s in sizes]
    ys = [torch.randn(s, generator=seeded).to(device) for s in sizes]
    zs = [torch.randn(s, generator=seeded).to(device) for s in sizes]
    a = mplfast.grad_dot(xs, ys, backend=backend)
    b = mplfast.grad_dot(xs, ys, backend=backend)
    assert torch.equal(a, b)
    val, scale = expected(xs, ys)
    assert abs(a.item() - val) <= 1e-5 * scale + 1e-6
    d1 = mplfast.grad_dot_delta(xs, ys, zs, backend=backend)
    d2 = mplfast.grad_dot_delta(xs, ys, zs, backend=backend)
    assert torch.equal(d1, d2)
    val, scale = expected(xs, ys, zs)
    assert abs(d1.item() - val) <= 1e-5 * scale + 1e-6


def test_triton_table_split_is_bit_identical(monkeypatch, seeded):
    """Tables larger than one launch's capacity are split into several launches; the partials
    and their summation order do not change, so the result is bit-identical."""
    require_backend("triton")
    import mplfast.kernels.grad_dot as kg

    sizes = (5, 0, 4 * kg._CHUNK + 7, 3, 8 * kg._CHUNK + 1, 9, 11, 1)
    chunks = sum(-(-n // kg._CHUNK) for n in sizes)
    xs = [torch.randn(n, generator=seeded) for n in sizes]
    ys = [torch.randn(x.shape, generator=seeded) for x in xs]
    whole = kg.grad_dot(xs, ys)
    launches = []
    real = kg._multi_dot_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(kg, "_multi_dot_kernel", Counting())
    monkeypatch.setattr(kg, "_TABLE_CAPACITY", 2)
    kg._TABLE_CACHE.clear()
    split = kg.grad_dot(xs, ys)
    assert chunks == 19 and len(launches) == 10  # 2 chunks per launch, the last one alone
    assert torch.equal(whole, split)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_dot_delta_equals_grad_dot_of_difference(backend, seeded):
    require_backend(backend)
    g = [torch.randn(33, 7, generator=seeded), torch.randn(1000, generator=seeded)]
    new = [torch.randn(33, 7, generator=seeded), torch.randn(1000, generator=seeded)]
    old = [n + 1e-3 * torch.randn(n.shape, generator=seeded) for n in new]  # a small step
    a = mplfast.grad_dot_delta(g, new, old, backend=backend)
    b = mplfast.grad_dot([x.double() for x in g], [n.double() - o.double() for n, o in zip(new, old)],
                         backend="reference")
    assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)


def test_empty_and_no_autograd(seeded):
    out = mplfast.grad_dot([], [])
    assert out.dtype == torch.float32 and out.item() == 0.0
    assert mplfast.grad_dot_delta([], [], []).item() == 0.0
    for backend in ("reference", "triton"):
        assert mplfast.grad_dot([torch.empty(0)], [torch.empty(0)], backend=backend).item() == 0.0
    x = torch.randn(10, generator=seeded, requires_grad=True)
    out = mplfast.grad_dot([x], [x * 2])
    assert not out.requires_grad


def test_float64_on_cpu(seeded):
    xs = [torch.randn(100, generator=seeded, dtype=torch.float64)]
    ys = [torch.randn(100, generator=seeded, dtype=torch.float64)]
    val, _ = expected(xs, ys)
    assert mplfast.grad_dot(xs, ys).item() == pytest.approx(val, rel=1e-6)
    with pytest.raises(TypeError, match="float64"):
        mplfast.grad_dot(xs, ys, backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unaligned_and_strided_views(backend, seeded):
    """Views at odd element offsets (not 16-byte aligned) and non-contiguous views, mixed with
    aligned tensors in one call (Triton: separate aligned / unaligned launches)."""
    require_backend(backend)
    base = torch.randn(3 * 70001, generator=seeded)
    other = torch.randn(3 * 70001, generator=seeded)
    xs = [base[1:70002], torch.randn(64, 3, generator=seeded), base[::3], base[5:12]]
    ys = [other[3:70004], torch.randn(64, 3, generator=seeded), other[1::3], other[7:14]]
    zs = [other[:70001], torch.randn(64, 3, generator=seeded), other[2::3], base[:7]]
    val, scale = expected(xs, ys)
    assert abs(mplfast.grad_dot(xs, ys, backend=backend).item() - val) <= 1e-5 * scale + 1e-6
    val, scale = expected(xs, ys, zs)
    assert abs(mplfast.grad_dot_delta(xs, ys, zs, backend=backend).item() - val) <= 1e-5 * scale + 1e-6


def test_iterables_accepted(seeded):
    """Generators such as model.parameters() work; parameters need no detach()."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    grads = [torch.randn(p.shape, generator=seeded) for p in model.parameters()]
    out = mplfast.grad_dot(model.parameters(), (g for g in grads))
    val, _ = expected([p.detach() for p in model.parameters()], grads)
    assert out.item() == pytest.approx(val, rel=1e-5)
    assert not out.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_plan_serves_every_stream_with_its_own_scratch():
    """Triton grad_dot, the same lists on two streams: one plan (tables shared), one partials buffer per stream,
    both results right, also when the two streams run at once."""
    pytest.importorskip("triton")
    import mplfast.kernels.grad_dot as kg
    from mplfast.ops.grad_dot import reference

    kg._TABLE_CACHE.clear()
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(n, device="cuda", generator=g) for n in (5, 70000, 33, 1 << 20)]
    ys = [torch.randn(x.shape, device="cuda", generator=g) for x in xs]
    want = reference.grad_dot(xs, ys).item()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    for s in (s1, s2):
        s.wait_stream(torch.cuda.current_stream())
    outs = []
    for _ in range(20):
        for s in (s1, s2):
            with torch.cuda.stream(s):
                outs.append(kg.grad_dot(xs, ys))
    torch.cuda.synchronize()
    assert len(kg._TABLE_CACHE) == 1
    plan = next(iter(kg._TABLE_CACHE.values()))
    assert set(plan.partials) == {s1.cuda_stream, s2.cuda_stream}
    assert all(o.item() == pytest.approx(want, rel=1e-5) for o in outs)
    kg._TABLE_CACHE.clear()
