"""soft_cross_entropy on every backend against torch.nn.functional.cross_entropy.

Inputs are fresh random tensors, scaled so that a naive exp(logits) overflows in fp32.
Tolerances (max abs error relative to the largest magnitude of the expected tensor):
fp32 1e-5 (loss) / 1e-5 (grad); fp16 2e-3; bf16 1.6e-2; float64 1e-12. The expected values come
from F.cross_entropy in float64 on the same (rounded) inputs: the contract is "math in fp32", so
only fp32 rounding and the final rounding to fp16/bf16 may differ. (F.cross_entropy's own fp32
gradient is off by ~5e-5 at C = 32000 with logits near 150; ours is not, so fp32 torch is not the
yardstick.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mplfast
from _helpers import BACKENDS, DEVICES, require_backend

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
# (N, C): the required sizes plus odd ones; wide rows only with few rows (the Triton interpreter
# is slow), 9001 is wider than one chunk of the Triton kernel, so it takes the two-pass path.
SHAPES = [(0, 10), (5, 1), (1, 2), (7, 10), (7, 37), (7, 1000), (4099, 10), (3, 32000), (2, 9001)]
SCALE = 40.0  # |logits| up to ~200: exp overflows fp32 beyond 88.7


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str, floor: float = 1e-30) -> None:
    """max |actual - expected| <= tol * max(max |expected|, floor). ``floor`` is the natural
    magnitude when the expected values can all be ~0 (e.g. the gradient for C = 1, where p and
    t' are both 1 and cancel)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    if expected.numel() == 0:
        return
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = (a - e).abs().max().item()
    bound = tol * max(e.abs().max().item(), floor)
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


def make_inputs(n: int, c: int, dtype: torch.dtype, kind: str, gen: torch.Generator):
    logits = torch.randn(n, c, generator=gen) * SCALE
    if n:  # one logit per row in (100, 150): exp overflows fp32 even for tiny C
        col = torch.randint(0, c, (n,), generator=gen)
        logits[torch.arange(n), col] = 100 + 50 * torch.rand(n, generator=gen)
    logits = logits.to(dtype)
    if kind == "index":
        target = torch.randint(0, c, (n,), generator=gen)
    else:
        target = torch.softmax(torch.randn(n, c, generator=gen) * 3, dim=1)
    return logits, target


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_matches_cross_entropy(backend, dtype, shape, kind, device, seeded):
    require_backend(backend, device)
    n, c = shape
    logits, target = make_inputs(n, c, dtype, kind, seeded)
    if n:
        assert torch.isinf(torch.exp(logits.float())).any(), "inputs must overflow a naive exp"
    tol = TOL[dtype]
    target_dev = target.to(device)
    for reduction, eps in (("none", 0.0), ("sum", 0.15), ("mean", 0.1)):
        z = logits.to(device, copy=True).requires_grad_()
        loss = mplfast.soft_cross_entropy(z, target_dev, label_smoothing=eps, reduction=reduction, backend=backend)
        assert loss.device.type == device
        z32 = logits.double().requires_grad_()
        ref = F.cross_entropy(z32, target.double() if kind == "prob" else target,
                              label_smoothing=eps, reduction=reduction)
        # float32 at least, like autocast's F.cross_entropy (a bf16 loss would round it)
        assert loss.dtype == torch.promote_types(dtype, torch.float32)
        if n == 0 and reduction == "mean":
            assert torch.isnan(loss.cpu()) and torch.isnan(ref)
            continue
        if not torch.isfinite(ref.to(loss.dtype)).all():
            assert torch.equal(loss.cpu(), ref.to(loss.dtype))
        else:
            assert_close(loss.cpu(), ref, tol, f"loss[{reduction}]")
        # a random upstream gradient exercises the backward's scaling (not just the 1.0 shortcut)
        go = torch.rand(ref.shape, generator=seeded) + 0.5
        (g,) = torch.autograd.grad(loss, z, go.to(loss.dtype).to(device))
        g = g.cpu()
        (gr,) = torch.autograd.grad(ref, z32, go.to(loss.dtype).double())
        assert g.dtype == dtype
        # gradient entries are differences of terms of size |grad_output| (/N for the mean)
        floor = (go.abs().max().item() if go.numel() else 1.0) / (max(n, 1) if reduction == "mean" else 1)
        assert_close(g, gr, tol, f"grad[{reduction}]", floor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_backward_and_unnormalized_targets(backend, seeded):
    """loss.backward() (grad_output == 1 shortcut), soft targets that do not sum to 1, fp16 target."""
    require_backend(backend)
    logits = torch.randn(9, 33, generator=seeded) * SCALE
    target = (torch.rand(9, 33, generator=seeded) * 2).half()
    for eps in (0.0, 0.3, 1.0):
        z = logits.clone().requires_grad_()
        z2 = logits.double().requires_grad_()
        loss = mplfast.soft_cross_entropy(z, target, label_smoothing=eps, backend=backend)
        ref = F.cross_entropy(z2, target.double(), label_smoothing=eps)
        loss.backward()
        ref.backward()
        assert_close(loss, ref, 1e-5, "loss")
        assert_close(z.grad, z2.grad, 1e-5, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_logits(backend, seeded):
    require_backend(backend)
    base = torch.randn(50, 12, generator=seeded) * SCALE
    logits = base.t()  # [12, 50] with column stride 12
    y = torch.randint(0, 50, (12,), generator=seeded)
    z = logits.detach().requires_grad_()
    loss = mplfast.soft_cross_entropy(z, y, reduction="sum", backend=backend)
    (g,) = torch.autograd.grad(loss, z)
    z2 = logits.double().contiguous().requires_grad_()
    ref = F.cross_entropy(z2, y, reduction="sum")
    (gr,) = torch.autograd.grad(ref, z2)
    assert_close(loss, ref, 1e-5, "loss")
    assert_close(g, gr, 1e-5, "grad")


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_gradcheck_float64(backend, kind, seeded):
    require_backend(backend)
    logits = torch.randn(4, 6, generator=seeded, dtype=torch.float64) * 3
    target = (torch.randint(0, 6, (4,), generator=seeded) if kind == "index"
              else torch.softmax(torch.randn(4, 6, generator=seeded, dtype=torch.float64), 1))
    for reduction in ("none", "sum", "mean"):
        fn = lambda z: mplfast.soft_cross_entropy(  # noqa: E731
            z, target, label_smoothing=0.1, reduction=reduction, backend=backend)
        assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(),))
    z = logits.clone().requires_grad_()
    loss = mplfast.soft_cross_entropy(z, target, label_smoothing=0.1, backend=backend)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, label_smoothing=0.1), rtol=1e-12, atol=1e-12)


def test_target_gradient_uses_composite(seeded):
    """A soft target that requires grad gets F.cross_entropy's gradient too."""
    z = (torch.randn(5, 7, generator=seeded, dtype=torch.float64) * 3).requires_grad_()
    t = torch.softmax(torch.randn(5, 7, generator=seeded, dtype=torch.float64), 1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: mplfast.soft_cross_entropy(a, b, label_smoothing=0.2, reduction="sum"), (z, t))
    loss = mplfast.soft_cross_entropy(z, t, label_smoothing=0.2)
    gz, gt = torch.autograd.grad(loss, (z, t))
    ref = F.cross_entropy(z, t, label_smoothing=0.2)
    rz, rt = torch.autograd.grad(ref, (z, t))
    torch.testing.assert_close(gz, rz)
    torch.testing.assert_close(gt, rt)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_detached(backend, seeded):
    require_backend(backend)
    logits = torch.randn(6, 11, generator=seeded) * SCALE
    y = torch.randint(0, 11, (6,), generator=seeded)
    with torch.no_grad():
        a = mplfast.soft_cross_entropy(logits.requires_grad_(), y, backend=backend)
    assert not a.requires_grad
    b = mplfast.soft_cross_entropy(logits.detach(), y, backend=backend)
    ref = F.cross_entropy(logits.detach().double(), y)
    assert_close(a, ref, 1e-5, "no_grad loss")
    assert_close(b, ref, 1e-5, "detached loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_label_raises_on_cpu(backend, seeded):
    require_backend(backend)
    logits = torch.randn(4, 5, generator=seeded)
    for bad in (5, -1, -100):
        y = torch.tensor([0, 1, bad, 2])
        with pytest.raises(ValueError, match=r"class index out of range.*\[0, 4\]"):
            mplfast.soft_cross_entropy(logits, y, backend=backend)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_invalid_label_rows_are_nan(device, seeded):
    """The kernel itself (no host check): bad rows become NaN, other rows stay exact."""
    require_backend("triton", device)
    from mplfast.kernels.soft_ce import soft_ce_forward  # validates nothing: the public op does

    for c in (10, 9001):  # single-chunk and chunked paths
        logits = torch.randn(4, c, generator=seeded) * SCALE
        y = torch.tensor([1, -1, c, 3])
        loss, grad = soft_ce_forward(logits.to(device), y.to(device), 0.1, 1.0)
        loss, grad = loss.cpu(), grad.cpu()
        assert torch.isnan(loss[1:3]).all() and torch.isnan(grad[1:3]).all()
        keep = torch.tensor([0, 3])
        ref = F.cross_entropy(logits[keep].double(), y[keep], label_smoothing=0.1, reduction="none")
        assert_close(loss[keep], ref, 1e-5, "valid rows")
        assert torch.isfinite(grad[keep]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_invalid_labels_give_nan_rows_or_raise_in_debug(backend, monkeypatch, seeded):
    """CUDA contract: no host check (no sync) -> the bad rows' loss and gradient are NaN, the
    other rows exact; MPLFAST_DEBUG=1 -> ValueError."""
    require_backend(backend, "cuda")
    for c in (10, 9001):
        logits = (torch.randn(4, c, generator=seeded) * SCALE).cuda()
        y = torch.tensor([1, -1, c, 3]).cuda()
        z = logits.clone().requires_grad_()
        loss = mplfast.soft_cross_entropy(z, y, label_smoothing=0.1, reduction="none", backend=backend)
        (g,) = torch.autograd.grad(loss.sum(), z)
        loss, g = loss.cpu(), g.cpu()
        assert torch.isnan(loss[1:3]).all() and torch.isnan(g[1:3]).all()
        keep = torch.tensor([0, 3])
        ref = F.cross_entropy(logits.cpu()[keep].double(), y.cpu()[keep], label_smoothing=0.1, reduction="none")
        assert_close(loss[keep], ref, 1e-5, "valid rows")
        assert torch.isfinite(g[keep]).all()
        monkeypatch.setenv("MPLFAST_DEBUG", "1")
        with pytest.raises(ValueError, match="class index out of range"):
            mplfast.soft_cross_entropy(logits, y, backend=backend)
        monkeypatch.delenv("MPLFAST_DEBUG")


def test_float64_rules(seeded):
    logits = torch.randn(3, 4, generator=seeded, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    # automatic choice keeps float64 on a float64-capable backend
    loss = mplfast.soft_cross_entropy(logits, y)
    assert loss.dtype == torch.float64
    with pytest.raises(TypeError, match="float64 is supported only"):
        mplfast.soft_cross_entropy(logits, y, backend="triton")


def test_backward_only_scales_the_forward_gradient(monkeypatch, seeded):
    """Backward reuses the gradient computed in the forward: with grad_output == 1 on CPU it is
    returned as is (no multiply, no recomputation); otherwise it is only scaled."""
    from mplfast.ops.soft_ce import op

    calls = []
    saved = {}

    def fake_impl(logits, target, eps, grad_scale):
        calls.append(grad_scale)
        rows = torch.zeros(logits.shape[0])
        saved["g"] = torch.randn(logits.shape, generator=seeded)
        return rows, saved["g"]

    monkeypatch.setattr(op, "_primitive", lambda backend: fake_impl)
    z = torch.randn(8, 3, generator=seeded, requires_grad=True)
    y = torch.randint(0, 3, (8,), generator=seeded)
    loss = mplfast.soft_cross_entropy(z, y)  # mean: the 1/N is folded into the forward
    assert calls == [1.0 / 8]
    (g,) = torch.autograd.grad(loss, z)
    assert g.data_ptr() == saved["g"].data_ptr()
    loss = mplfast.soft_cross_entropy(z, y, reduction="sum")
    (g,) = torch.autograd.grad(loss, z, torch.tensor(2.5))
    assert calls[-1] == 1.0 and torch.equal(g, saved["g"] * 2.5)
    loss = mplfast.soft_cross_entropy(z, y, reduction="none")
    go = torch.randn(8, generator=seeded)
    (g,) = torch.autograd.grad(loss, z, go)
    assert torch.equal(g, saved["g"] * go[:, None])
    with torch.no_grad():
        mplfast.soft_cross_entropy(z, y)
    assert calls[-1] is None  # no gradient requested, none computed


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_classes_minus_inf(backend, seeded):
    """-inf logits (masked-out classes) as F.cross_entropy handles them: a finite loss without
    smoothing, +inf with smoothing (eps/C weight on a -inf log-prob), finite gradients both ways.
    (The native kernels compute with -inf floored at -1e30 and then set the row's loss to what
    -inf gives: csrc/common/rowwise.h, mask_loss.)"""
    require_backend(backend)
    for c in (10, 9001):  # single-chunk and chunked Triton paths
        logits = torch.randn(4, c, generator=seeded) * SCALE
        logits[:, 0] = float("-inf")  # first column: the Triton kernels' shift reference
        logits[1, 5] = float("-inf")
        y = torch.tensor([1, 2, 3, 4])
        for eps in (0.0, 0.1):
            z = logits.clone().requires_grad_()
            loss = mplfast.soft_cross_entropy(z, y, label_smoothing=eps, reduction="none", backend=backend)
            loss.sum().backward()
            z2 = logits.double().requires_grad_()
            ref = F.cross_entropy(z2, y, label_smoothing=eps, reduction="none")
            ref.sum().backward()
            if eps == 0.0:
                assert_close(loss, ref, 1e-5, "loss")
            else:
                assert torch.isposinf(loss).all() and torch.isposinf(ref).all()
            assert_close(z.grad, z2.grad, 1e-5, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_losses_are_float32(backend, dtype, seeded):
    """Under autocast the fused losses come back in float32, as autocast's F.cross_entropy (a
    bf16 loss would round the loss and the backward's factors w_t and meta_scale * h); the
    gradient stays in the logits' dtype and is scaled by the fp32 factor, rounded once."""
    require_backend(backend)
    x = torch.randn(6, 16, generator=seeded)
    lin = torch.nn.Linear(16, 7)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    factor = 1.0 / 3.0 + 1e-3  # not a bf16 value: rounding it first would show in the gradient
    with torch.autocast("cpu", dtype=dtype):
        z = lin(x)
        assert z.dtype == dtype
        zd = z.detach().requires_grad_()
        want = F.cross_entropy(zd, y, label_smoothing=0.1)
        loss = mplfast.soft_cross_entropy(zd, y, label_smoothing=0.1, backend=backend)
        weak = torch.randn(6, 7, generator=seeded).to(dtype) * 4
        uda, _ = mplfast.uda_loss(weak, zd, temperature=0.7, threshold=0.0, backend=backend)
    assert want.dtype == torch.float32
    assert loss.dtype == torch.float32 and uda.dtype == torch.float32
    assert torch.allclose(loss, want, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss * factor, zd)
    (g1,) = torch.autograd.grad(mplfast.soft_cross_entropy(zd, y, label_smoothing=0.1, backend=backend), zd)
    assert g.dtype == dtype
    assert torch.equal(g, (g1.float() * torch.tensor(factor)).to(dtype))
    (gu,) = torch.autograd.grad(uda, zd)
    assert gu.dtype == dtype
