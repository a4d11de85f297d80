"""mplfast._native (the compiled ``_C`` kernels) against plain-torch math.

Every case draws fresh random inputs (never zeros) and compares with ``mplfast.ops.reference``
and, for the gradients, with torch autograd through ``F.cross_entropy``. Tolerances per dtype
(loss in fp32 math for fp32/fp16/bf16, fp64 for fp64; the gradient is additionally rounded to
the logits dtype), relative to the largest reference magnitude:

    float64: 1e-10   float32: 2e-5   float16: 2e-3 (one fp16 rounding)   bfloat16: 1.6e-2

CUDA tests (marked ``gpu``) run only where a device is present.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from types import SimpleNamespace

from mplfast import _native as nat  # the one loader of _C: status(), _C
from mplfast.ops.primitives import checked
from mplfast.ops.grad_dot import reference as _ref_dot
from mplfast.ops.soft_ce import reference as _ref_ce
from mplfast.ops.uda import reference as _ref_uda

# the native primitives behind the op contract's checks (what the public ops run), and the references
native = SimpleNamespace(**{p: checked("native", p)
                            for p in ("soft_ce_forward", "uda_forward", "grad_dot", "grad_dot_delta")})
ref = SimpleNamespace(soft_ce_forward=_ref_ce.soft_ce_forward, uda_forward=_ref_uda.uda_forward,
                      grad_dot=_ref_dot.grad_dot, grad_dot_delta=_ref_dot.grad_dot_delta)

pytestmark = pytest.mark.skipif(nat.status()["cpu"] is not True, reason=f"native backend: {nat.status()['cpu']}")

HAS_CUDA = nat.status()["cuda"] is True
gpu = pytest.mark.skipif(not HAS_CUDA, reason=f"native CUDA: {nat.status()['cuda']}")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOSS_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """|actual - expected| <= tol * max(1, max|expected|) elementwise (both upcast to fp64)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.numel() == 0:
        return
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    scale = max(1.0, float(e.abs().max()))
    err = float((a - e).abs().max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:.1g} * {scale:.3g}"


def _logits(gen: torch.Generator, n: int, c: int, dtype: torch.dtype, spread: float = 4.0) -> torch.Tensor:
    return (torch.randn(n, c, generator=gen, dtype=torch.float64) * spread + 0.5).to(dtype)


SHAPES = [(0, 10), (1, 2), (7, 10), (7, 1000), (4099, 10), (5, 1001), (33, 37), (3, 32000)]


# --------------------------------------------------------------------------------------------
# soft cross-entropy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_soft_ce_matches_reference(seeded, dtype, shape, kind):
    n, c = shape
    z = _logits(seeded, n, c, dtype)
    if kind == "index":
        target = torch.randint(0, c, (n,), generator=seeded)
    else:
        # unnormalised on purpose: torch does not renormalise soft targets
        target = torch.rand(n, c, generator=seeded, dtype=torch.float64).to(dtype) + 0.01
    for eps, scale in [(0.0, 1.0), (0.15, 0.37), (1.0, None)]:
        loss, grad = native.soft_ce_forward(z, target, eps, scale)
        loss_r, grad_r = ref.soft_ce_forward(z, target, eps, scale)
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        _close(loss, loss_r, LOSS_TOL[dtype], f"loss eps={eps}")
        if scale is None:
            assert grad is None
        else:
            assert grad.dtype == dtype and grad.shape == z.shape
            _close(grad, grad_r, GRAD_TOL[dtype], f"grad eps={eps} scale={scale}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_soft_ce_and_uda_large_batch(seeded, dtype):
    """4099 x 1000: many rows per OpenMP thread, multi-threaded path."""
    n, c = 4099, 1000
    z = _logits(seeded, n, c, dtype)
    y = torch.randint(0, c, (n,), generator=seeded)
    t = torch.rand(n, c, generator=seeded)
    for target in (y, t):
        loss, grad = native.soft_ce_forward(z, target, 0.1, 1.0)
        loss_r, grad_r = ref.soft_ce_forward(z, target, 0.1, 1.0)
        _close(loss, loss_r, LOSS_TOL[dtype], "loss")
        _close(grad, grad_r, GRAD_TOL[dtype], "grad")
    weak = _logits(seeded, n, c, dtype, 12.0)
    thr = _threshold_between(weak, 0.7)
    loss, mask, grad = native.uda_forward(weak, z, 0.7, thr, 1.0)
    loss_r, mask_r, grad_r = ref.uda_forward(weak, z, 0.7, thr, 1.0)
    assert torch.equal(mask, mask_r) and 0 < float(mask.sum()) < n
    _close(loss, loss_r, LOSS_TOL[dtype], "uda loss")
    _close(grad, grad_r, GRAD_TOL[dtype], "uda grad")


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_soft_ce_float64_equals_cross_entropy_autograd(seeded, kind, eps):
    """The native gradient is exactly d F.cross_entropy(reduction='none').sum() / dz (fp64)."""
    n, c = 13, 29
    z = _logits(seeded, n, c, torch.float64).requires_grad_()
    if kind == "index":
        target = torch.randint(0, c, (n,), generator=seeded)
    else:
        target = torch.rand(n, c, generator=seeded, dtype=torch.float64) * 0.9  # rows do not sum to 1
    expected = F.cross_entropy(z, target, label_smoothing=eps, reduction="none")
    (g_expected,) = torch.autograd.grad(expected.sum() * 0.5, z)
    loss, grad = native.soft_ce_forward(z.detach(), target, eps, 0.5)
    _close(loss, expected.detach(), 1e-12, "loss")
    _close(grad, g_expected, 1e-12, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_soft_ce_huge_logits(seeded, dtype):
    """|z| ~ 1e4: naive exp overflows; finite-math kernels must still be exact and finite."""
    n, c = 64, 1000
    z = torch.randn(n, c, generator=seeded, dtype=torch.float64) * 3
    z[0::4] *= 1e4 / 3                                   # every logit huge, both signs
    z[1::4, 0] = 1e4                                     # one-hot-ish: one logit dominates
    z[2::4] = 1e4                                        # a whole row equal and huge
    z[3::4, 5] = -1e4
    z = z.to(dtype)
    y = torch.randint(0, c, (n,), generator=seeded)
    y[1::4] = 0
    y[3::4] = 5                                          # target on the hugely negative logit
    for eps in (0.0, 0.1):
        loss, grad = native.soft_ce_forward(z, y, eps, 1.0)
        assert torch.isfinite(loss).all() and torch.isfinite(grad.float()).all()
        zz = z.double().clone().requires_grad_()
        expected = F.cross_entropy(zz, y, label_smoothing=eps, reduction="none")
        (g_expected,) = torch.autograd.grad(expected.sum(), zz)
        # loss up to ~2e4: fp32 resolves that to ~2e-3 absolute
        tol = 1e-10 if dtype == torch.float64 else 2e-6
        _close(loss, expected.detach(), tol, f"loss eps={eps}")
        _close(grad, g_expected, GRAD_TOL[dtype], f"grad eps={eps}")
        # one-hot-ish rows with the target on the dominant logit: loss exactly ~0, not ~1e-3
        if eps == 0.0 and dtype != torch.bfloat16:
            assert float(loss[1::4].abs().max()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_masked_classes_minus_inf(seeded, dtype):
    """-inf logits (masked classes) are treated as -1e30: probability 0, finite gradients; the
    loss equals F.cross_entropy's without smoothing and is huge but finite with smoothing (torch
    gives +inf there)."""
    for c in (10, 1001):
        z = _logits(seeded, 5, c, torch.float64)
        z[:, 0] = float("-inf")
        z[1, 5] = float("-inf")
        z = z.to(dtype)
        y = torch.tensor([1, 2, 3, 4, 6])
        for eps in (0.0, 0.1):
            loss, grad = native.soft_ce_forward(z, y, eps, 1.0)
            zz = z.double().clone().requires_grad_()
            expected = F.cross_entropy(zz, y, label_smoothing=eps, reduction="none")
            (g_expected,) = torch.autograd.grad(expected.sum(), zz)
            _close(grad, g_expected, GRAD_TOL[dtype], f"grad eps={eps}")
            if eps == 0.0:
                _close(loss, expected.detach(), LOSS_TOL[dtype], "loss")
            else:
                assert torch.isfinite(loss).all() and bool((loss > 1e20).all())
        # UDA: masked in both views; compare with the reference on explicitly floored logits
        weak = _logits(seeded, 5, c, torch.float64, 12.0)
        weak[:, 0] = float("-inf")
        strong = z.double().clone()
        weak, strong = weak.to(dtype), strong.to(dtype)
        loss, mask, grad = native.uda_forward(weak, strong, 0.7, 0.0, 1.0)
        floor = lambda t: t.double().clamp(min=-1e30).to(dtype)  # noqa: E731
        loss_r, mask_r, grad_r = ref.uda_forward(floor(weak), floor(strong), 0.7, 0.0, 1.0)
        assert torch.isfinite(loss).all() and torch.isfinite(grad.float()).all()
        _close(grad, grad_r, GRAD_TOL[dtype], "uda grad")


def test_soft_ce_prob_targets_mixed_dtypes(seeded):
    z = _logits(seeded, 9, 17, torch.bfloat16)
    for tdt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        t = torch.softmax(torch.randn(9, 17, generator=seeded), 1).to(tdt)
        loss, grad = native.soft_ce_forward(z, t, 0.05, 2.0)
        loss_r, grad_r = ref.soft_ce_forward(z, t, 0.05, 2.0)
        _close(loss, loss_r, 2e-5, f"loss target {tdt}")
        _close(grad, grad_r, GRAD_TOL[torch.bfloat16], f"grad target {tdt}")


def test_soft_ce_non_contiguous_inputs(seeded):
    base = _logits(seeded, 20, 30, torch.float32)
    z = base[::2, ::3]                                   # strided view
    y = torch.randint(0, z.shape[1], (z.shape[0] * 2,), generator=seeded)[::2]
    loss, grad = native.soft_ce_forward(z, y, 0.1, 1.0)
    loss_r, grad_r = ref.soft_ce_forward(z, y, 0.1, 1.0)
    _close(loss, loss_r, 2e-5, "loss")
    _close(grad, grad_r, 2e-5, "grad")
    t = torch.rand(30, 20, generator=seeded).t()         # transposed prob target
    loss, grad = native.soft_ce_forward(base, t, 0.0, 1.0)
    loss_r, grad_r = ref.soft_ce_forward(base, t, 0.0, 1.0)
    _close(loss, loss_r, 2e-5, "loss prob")
    _close(grad, grad_r, 2e-5, "grad prob")


def test_soft_ce_ignores_requires_grad(seeded):
    z = _logits(seeded, 4, 6, torch.float32).requires_grad_()
    y = torch.randint(0, 6, (4,), generator=seeded)
    loss, grad = native.soft_ce_forward(z, y, 0.0, 1.0)
    assert not loss.requires_grad and not grad.requires_grad


# --------------------------------------------------------------------------------------------
# UDA


def _uda_inputs(gen, n, c, dtype, spread=3.0):
    weak = _logits(gen, n, c, dtype, spread)
    strong = _logits(gen, n, c, dtype, spread)
    return weak, strong


def _threshold_between(weak: torch.Tensor, tau: float) -> float:
    """A threshold that keeps some rows and drops others, away from any row's max q."""
    maxq = torch.softmax(weak.double() / tau, 1).amax(1).sort().values
    if maxq.numel() < 2:
        return float(maxq[0]) * 0.5 if maxq.numel() else 0.5
    i = maxq.numel() // 2
    gaps = maxq[1:] - maxq[:-1]
    j = int(torch.argmax(gaps[max(0, i - 3): i + 3])) + max(0, i - 3)  # widest gap near the middle
    return float((maxq[j] + maxq[j + 1]) / 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_uda_matches_reference(seeded, dtype, shape):
    n, c = shape
    tau = 0.7
    spread = 3.0 if c < 1000 else 12.0  # large C: spread wider so some rows are confident
    weak, strong = _uda_inputs(seeded, n, c, dtype, spread)
    thr = _threshold_between(weak, tau)
    for scale in (1.0, 0.125, None):
        loss, mask, grad = native.uda_forward(weak, strong, tau, thr, scale)
        loss_r, mask_r, grad_r = ref.uda_forward(weak, strong, tau, thr, scale)
        assert torch.equal(mask, mask_r), "mask differs"
        if n >= 7:
            assert 0 < float(mask.sum()) < n, "test must keep some rows and drop others"
        _close(loss, loss_r, LOSS_TOL[dtype], "loss")
        assert bool((loss[mask == 0] == 0).all()), "dropped rows must have loss exactly 0"
        if scale is None:
            assert grad is None
        else:
            assert grad.dtype == dtype
            _close(grad, grad_r, GRAD_TOL[dtype], f"grad scale={scale}")
            assert bool((grad[mask == 0] == 0).all()), "dropped rows must have a zero gradient"


def test_uda_threshold_extremes(seeded):
    weak, strong = _uda_inputs(seeded, 50, 10, torch.float32)
    _, mask, _ = native.uda_forward(weak, strong, 1.0, 0.0, 1.0)
    assert bool((mask == 1).all())
    weak[:, 0] = 1e4                                     # max q == 1 exactly
    _, mask, grad = native.uda_forward(weak, strong, 1.0, 1.0, 1.0)
    assert bool((mask == 1).all()) and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_uda_huge_logits(seeded, dtype):
    n, c = 40, 1000
    weak = torch.randn(n, c, generator=seeded, dtype=torch.float64)
    strong = torch.randn(n, c, generator=seeded, dtype=torch.float64) * 1e4
    if dtype == torch.float16:
        strong = strong.clamp(-6e4, 6e4)
    weak[::2, 3] = 50.0                                   # confident rows
    strong[1::4] = 1e4
    weak, strong = weak.to(dtype), strong.to(dtype)
    loss, mask, grad = native.uda_forward(weak, strong, 0.5, 0.6, 1.0)
    loss_r, mask_r, grad_r = ref.uda_forward(weak, strong, 0.5, 0.6, 1.0)
    assert torch.equal(mask, mask_r)
    assert torch.isfinite(loss).all() and torch.isfinite(grad.float()).all()
    _close(loss, loss_r, 1e-10 if dtype == torch.float64 else 2e-6, "loss")
    _close(grad, grad_r, GRAD_TOL[dtype], "grad")


def test_uda_gradient_equals_autograd_float64(seeded):
    weak, strong = _uda_inputs(seeded, 11, 13, torch.float64)
    thr = _threshold_between(weak, 0.5)
    s = strong.clone().requires_grad_()
    q = torch.softmax(weak / 0.5, 1)
    keep = (q.amax(1) >= thr).double()
    expected = keep * -(q * torch.log_softmax(s, 1)).sum(1)
    (g_expected,) = torch.autograd.grad(expected.sum() * 3.0, s)
    loss, mask, grad = native.uda_forward(weak, strong, 0.5, thr, 3.0)
    _close(loss, expected.detach(), 1e-12, "loss")
    _close(grad, g_expected, 1e-12, "grad")
    assert torch.equal(mask, keep)


# --------------------------------------------------------------------------------------------
# grad_dot / grad_dot_delta


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


# --------------------------------------------------------------------------------------------
# errors


def test_errors(seeded):
    z = _logits(seeded, 4, 5, torch.float32)
    y = torch.randint(0, 5, (4,), generator=seeded)
    with pytest.raises(ValueError, match="class index out of range"):
        native.soft_ce_forward(z, torch.tensor([0, 1, 5, 2]), 0.0, 1.0)
    with pytest.raises(ValueError, match="class index out of range"):
        native.soft_ce_forward(z, torch.tensor([0, -1, 2, 2]), 0.0, None)
    with pytest.raises(ValueError, match="mixed devices"):
        native.soft_ce_forward(z, y.to("meta"), 0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        native.soft_ce_forward(z, y[:3], 0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        native.soft_ce_forward(z, torch.rand(4, 6), 0.0, 1.0)
    with pytest.raises(TypeError, match="unsupported dtype"):
        native.soft_ce_forward(z.to(torch.int32), y, 0.0, 1.0)
    with pytest.raises(TypeError, match="int64"):
        native.soft_ce_forward(z, y.to(torch.int32), 0.0, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        native.soft_ce_forward(z[0], y, 0.0, 1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        native.soft_ce_forward(z, y, 1.5, 1.0)
    with pytest.raises(ValueError, match="no classes"):
        native.soft_ce_forward(torch.empty(3, 0), torch.zeros(3, dtype=torch.int64), 0.0, 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        native.soft_ce_forward(z.tolist(), y, 0.0, 1.0)

    w = _logits(seeded, 4, 5, torch.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        native.uda_forward(w, z[:, :4], 1.0, 0.5, 1.0)
    with pytest.raises(TypeError, match="dtype mismatch"):
        native.uda_forward(w, z.double(), 1.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        native.uda_forward(w, z, 0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="threshold"):
        native.uda_forward(w, z, 1.0, 1.5, 1.0)
    with pytest.raises(ValueError, match="mixed devices"):
        native.uda_forward(w, z.to("meta"), 1.0, 0.5, 1.0)

    xs = _ragged(seeded, [(3,), (4,)])
    with pytest.raises(ValueError, match="list-length mismatch"):
        native.grad_dot(xs, xs[:1])
    with pytest.raises(ValueError, match="list-length mismatch"):
        native.grad_dot_delta(xs, xs, xs[:1])
    with pytest.raises(ValueError, match="shape mismatch"):
        native.grad_dot(xs, [xs[0], torch.randn(5)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        native.grad_dot(xs, [xs[0], xs[1].half()])
    with pytest.raises(TypeError, match="unsupported dtype"):
        native.grad_dot([torch.ones(3, dtype=torch.int64)], [torch.ones(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="mixed devices"):
        native.grad_dot(xs, [xs[0], xs[1].to("meta")])
    with pytest.raises(TypeError, match="sequence"):
        native.grad_dot(xs[0], xs[0])


def test_status_and_no_denormal_flush():
    st = nat.status()
    assert st["cpu"] is True
    assert st["cuda"] is True or (isinstance(st["cuda"], str) and st["cuda"])
    # -ffast-math must stay a compile flag: linking crtfastmath would set FTZ/DAZ process-wide
    # when _C is imported, silently changing torch's numerics.
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert float(tiny * 1.0) != 0.0


def test_status_when_extension_missing(monkeypatch, seeded):
    """Without _C every primitive raises RuntimeError carrying the load failure's reason."""
    monkeypatch.setattr(nat, "_C", None)
    monkeypatch.setattr(nat, "_IMPORT_ERROR", "mplfast._C failed to load (ImportError: test)")
    nat._cuda_status.cache_clear()
    try:
        st = nat.status()
        assert st["cpu"] == st["cuda"] == "mplfast._C failed to load (ImportError: test)"
        z = _logits(seeded, 2, 3, torch.float32)
        with pytest.raises(RuntimeError, match="ImportError: test"):
            native.soft_ce_forward(z, torch.tensor([0, 1]), 0.0, 1.0)
        with pytest.raises(RuntimeError, match="ImportError: test"):
            native.grad_dot([z], [z])
    finally:
        nat._cuda_status.cache_clear()


# --------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 2), (7, 10), (4099, 1000), (5, 1001), (33, 4097), (3, 32000), (2, 7)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_cuda_matches_reference(seeded, dtype, shape):
    n, c = shape
    z = _logits(seeded, n, c, dtype).cuda()
    y = torch.randint(0, c, (n,), generator=seeded).cuda()
    t = torch.rand(n, c, generator=seeded).cuda()
    tol_g = max(GRAD_TOL[dtype], 1e-4)  # fast-math exp on the GPU
    for target in (y, t, t.to(dtype)):
        for eps, scale in ((0.0, 1.0), (0.1, 0.5)):
            loss, grad = native.soft_ce_forward(z, target, eps, scale)
            loss_r, grad_r = ref.soft_ce_forward(z, target, eps, scale)
            _close(loss, loss_r, 1e-4, "cuda loss")
            _close(grad, grad_r, tol_g, "cuda grad")
    weak = _logits(seeded, n, c, dtype, 12.0).cuda()
    thr = _threshold_between(weak, 0.7)
    loss, mask, grad = native.uda_forward(weak, z, 0.7, thr, 2.0)
    loss_r, mask_r, grad_r = ref.uda_forward(weak, z, 0.7, thr, 2.0)
    assert torch.equal(mask, mask_r)
    _close(loss, loss_r, 1e-4, "cuda uda loss")
    _close(grad, grad_r, tol_g, "cuda uda grad")


@gpu
@pytest.mark.gpu
def test_cuda_misaligned_and_huge(seeded):
    buf = _logits(seeded, 1, 8 * 1000 + 1, torch.float32).cuda()
    z = buf[0, 1:].view(8, 1000)                          # 4-byte offset: scalar path
    z[::2] *= 2500.0                                      # |z| ~ 1e4
    y = torch.randint(0, 1000, (8,), generator=seeded).cuda()
    loss, grad = native.soft_ce_forward(z, y, 0.1, 1.0)
    loss_r, grad_r = ref.soft_ce_forward(z, y, 0.1, 1.0)
    _close(loss, loss_r, 1e-5, "loss")
    _close(grad, grad_r, 1e-4, "grad")


@gpu
@pytest.mark.gpu
def test_cuda_invalid_label_gives_nan_rows(seeded, monkeypatch):
    monkeypatch.delenv("MPLFAST_DEBUG", raising=False)
    z = _logits(seeded, 4, 2000, torch.float32).cuda()
    for c in (10, 2000):
        zz = z[:, :c].contiguous()
        y = torch.tensor([0, c, -3, 1], device="cuda")
        loss, grad = native.soft_ce_forward(zz, y, 0.0, 1.0)
        bad = torch.tensor([False, True, True, False], device="cuda")
        assert bool(torch.isnan(loss[bad]).all()) and bool(torch.isnan(grad[bad]).all())
        assert bool(torch.isfinite(loss[~bad]).all()) and bool(torch.isfinite(grad[~bad]).all())
    monkeypatch.setenv("MPLFAST_DEBUG", "1")
    with pytest.raises(ValueError, match="class index out of range"):
        native.soft_ce_forward(z, torch.tensor([0, 2000, 1, 1], device="cuda"), 0.0, 1.0)


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
