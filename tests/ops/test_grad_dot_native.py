"""Native multi-tensor dot kernels (csrc/grad_dot/) against fp64 sums."""
from __future__ import annotations

import pytest
import torch

from _native_cases import DTYPES, gpu, native, native_required, ref

pytestmark = native_required


def _ragged(gen, shapes, dtype=torch.float32):
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


RAGGED = [(3, 4), (0,), (100_003,), (7,), (64, 32, 3, 3), (1,), (0, 5), (40_000,), (16,)]


def _dot64(xs, ys):
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(xs, ys))


def _abs64(xs, ys):
    return sum(float((x.double() * y.double()).abs().sum()) for x, y in zip(xs, ys))


def _assert_sum_close(got: float, exact: float, abs_sum: float, tol: float = 1e-6) -> None:
    """A dot product's error bound scales with sum |x_i y_i|, not with the (cancelling) result."""
    assert abs(got - exact) <= tol * abs_sum + 1e-30, f"{got} vs {exact} (sum|xy| {abs_sum:.3g})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_dot_ragged(seeded, dtype):
    xs, ys, zs = (_ragged(seeded, RAGGED, dtype) for _ in range(3))
    out = native.grad_dot(xs, ys)
    assert out.dtype == torch.float32 and out.dim() == 0
    _assert_sum_close(float(out), _dot64(xs, ys), _abs64(xs, ys))
    delta = native.grad_dot_delta(xs, ys, zs)
    ds = [a.double() - b.double() for a, b in zip(ys, zs)]
    explicit = _dot64(xs, ds)
    _assert_sum_close(float(delta), explicit, _abs64(xs, ds))
    _assert_sum_close(float(delta), float(ref.grad_dot_delta(xs, ys, zs)), _abs64(xs, ds))


def test_grad_dot_many_tensors_mixed_dtypes_and_determinism(seeded):
    """700 tensors (more than one CUDA table of 320), mixed dtypes between pairs, mixed sizes."""
    shapes = [(int(s),) for s in torch.randint(0, 3000, (700,), generator=seeded)]
    shapes[::97] = [(70_000,)] * len(shapes[::97])       # a few multi-chunk tensors
    dts = [DTYPES[i % 4] for i in range(700)]
    xs = [torch.randn(s, generator=seeded).to(d) for s, d in zip(shapes, dts)]
    ys = [torch.randn(s, generator=seeded).to(d) for s, d in zip(shapes, dts)]
    a = native.grad_dot(xs, ys)
    b = native.grad_dot(xs, ys)
    assert torch.equal(a, b) and a.numpy().tobytes() == b.numpy().tobytes()  # bitwise
    _assert_sum_close(float(a), _dot64(xs, ys), _abs64(xs, ys))
    # thread count must not change the result (fixed chunking, ordered final sum)
    nthreads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = native.grad_dot(xs, ys)
    finally:
        torch.set_num_threads(nthreads)
    assert torch.equal(a, c)


def test_grad_dot_every_half_and_bfloat16_value(seeded):
    """Exercises the hand-written 16-bit conversions on every finite bit pattern."""
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
    for dtype in (torch.float16, torch.bfloat16):
        x = bits.view(dtype)
        x = x[torch.isfinite(x)]
        x = x[x.abs() < 1e30]  # bf16 reaches 3e38: keep the fp32 result itself finite
        ones = torch.ones_like(x)
        w = torch.rand(x.shape, generator=seeded).to(dtype)
        for y in (ones, w):
            got = float(native.grad_dot([x], [y]))
            _assert_sum_close(got, _dot64([x], [y]), _abs64([x], [y]))


def test_grad_dot_non_contiguous_and_empty_list(seeded):
    x = torch.randn(50, 40, generator=seeded)
    y = torch.randn(40, 50, generator=seeded).t()
    _assert_sum_close(float(native.grad_dot([x], [y])), _dot64([x], [y]), _abs64([x], [y]))
    assert float(native.grad_dot([], [])) == 0.0
    assert float(native.grad_dot_delta([], [], [])) == 0.0


@gpu
@pytest.mark.gpu
def test_cuda_grad_dot(seeded):
    shapes = [(int(s),) for s in torch.randint(0, 5000, (700,), generator=seeded)]
    shapes[::50] = [(300_001,)] * len(shapes[::50])
    dts = [(torch.float32, torch.float16, torch.bfloat16)[i % 3] for i in range(700)]
    xs = [torch.randn(s, generator=seeded).to(d).cuda() for s, d in zip(shapes, dts)]
    ys = [torch.randn(s, generator=seeded).to(d).cuda() for s, d in zip(shapes, dts)]
    zs = [torch.randn(s, generator=seeded).to(d).cuda() for s, d in zip(shapes, dts)]
    xs[3] = xs[3][1:]                                       # misaligned: scalar path
    ys[3] = ys[3][1:]
    zs[3] = zs[3][1:]
    a, b = native.grad_dot(xs, ys), native.grad_dot(xs, ys)
    assert a.device.type == "cuda" and torch.equal(a, b)
    # fp32 sums of <= 32 products per thread and chunk, then fp64: well inside 5e-6 * sum|xy|
    _assert_sum_close(float(a), _dot64(xs, ys), _abs64(xs, ys), 5e-6)
    d = native.grad_dot_delta(xs, ys, zs)
    ds = [y.double() - z.double() for y, z in zip(ys, zs)]
    _assert_sum_close(float(d), float(ref.grad_dot_delta(xs, ys, zs)), _abs64(xs, ds), 5e-6)
    with pytest.raises(TypeError, match="unsupported dtype"):
        native.grad_dot([xs[0].double()], [ys[0].double()])


# ---------------------------------------------------------------------------------------------
# The eager CPU plan cache (mplfast.ops.grad_dot.native._Plan): a repeated call over the same
# list objects skips the contract's checks; every in-place change that would make the kept
# table wrong must be seen, and the checked path must still raise.


def _fresh_plans(monkeypatch):
    from mplfast.ops.grad_dot import native as gd_native

    monkeypatch.setattr(gd_native, "_PLANS", {})
    monkeypatch.setattr(gd_native, "_SEEN", {})
    return gd_native._PLANS


def _dot(xs, ys):
    import mplfast

    return float(mplfast.grad_dot(xs, ys, backend="native"))


def test_plan_cache_sees_in_place_changes(monkeypatch, seeded):
    plans = _fresh_plans(monkeypatch)
    xs = _ragged(seeded, RAGGED[:4])
    ys = _ragged(seeded, RAGGED[:4])
    first = _dot(xs, ys)
    assert plans == {}  # made the second time the same lists come through
    assert _dot(xs, ys) == first and len(plans) == 1
    assert _dot(xs, ys) == first  # the hit gives the same bits
    xs[2].data = torch.randn(xs[2].shape, generator=seeded)  # swapped storage
    _assert_sum_close(_dot(xs, ys), _dot64(xs, ys), _abs64(xs, ys))
    xs[0] = torch.randn(xs[0].shape, generator=seeded)  # another tensor in the list
    _assert_sum_close(_dot(xs, ys), _dot64(xs, ys), _abs64(xs, ys))
    with torch.no_grad():
        ys[2].resize_(17)  # same storage, fewer elements: the contract must see the shape mismatch
    with pytest.raises(ValueError, match="shape mismatch at index 2"):
        _dot(xs, ys)
    with torch.no_grad():
        xs[2].resize_(17)
    _assert_sum_close(_dot(xs, ys), _dot64(xs, ys), _abs64(xs, ys))
    xs[3].data = xs[3].data.view(torch.int32)  # same address, another dtype
    with pytest.raises(TypeError):
        _dot(xs, ys)
    xs.append(torch.ones(2))  # list grown
    with pytest.raises(ValueError, match="list-length mismatch"):
        _dot(xs, ys)


def test_plan_cache_only_for_lists_of_contiguous_tensors(monkeypatch, seeded):
    plans = _fresh_plans(monkeypatch)
    a = torch.randn(6, 5, generator=seeded)
    b = torch.randn(5, 6, generator=seeded).t()  # non-contiguous
    expected = float((a.double() * b.double()).sum())
    assert abs(_dot([a], [b]) - expected) < 1e-5 and plans == {}
    assert abs(_dot((a,), (a,)) - float((a.double() ** 2).sum())) < 1e-4 and plans == {}  # tuples
    assert abs(_dot(iter([a]), iter([a])) - float((a.double() ** 2).sum())) < 1e-4 and plans == {}


def test_plan_cache_keeps_nothing_alive_and_skips_one_off_lists(monkeypatch, seeded):
    import gc
    import weakref

    plans = _fresh_plans(monkeypatch)
    xs, ys = _ragged(seeded, RAGGED[:3]), _ragged(seeded, RAGGED[:3])
    for _ in range(4):
        _dot(list(xs), list(ys))  # new list objects every call (MPLStep's gradient list)
    assert all(len(p.refs[0]) == 3 for p in plans.values())  # at most plans for recycled ids
    _dot(xs, ys)
    _dot(xs, ys)
    assert any(p.refs[0][0]() is xs[0] for p in plans.values())
    dead = weakref.ref(xs[0])
    del xs, ys
    gc.collect()
    assert dead() is None  # the plan held the tensors weakly and the lists not at all
