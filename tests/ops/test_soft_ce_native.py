"""Native soft cross-entropy kernels (csrc/soft_ce/: CPU always, CUDA where a device is) against
plain-torch math (tolerances: tests/_native_cases.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _native_cases import (DTYPES, GRAD_TOL, LOSS_TOL, SHAPES, close as _close, gpu, logits as _logits, native,
                           native_required, ref, threshold_between as _threshold_between)

pytestmark = native_required


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
    """4099 x 1000: many row blocks per pool thread, multi-threaded path."""
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


def _edge_rows(c: int, g: torch.Generator) -> torch.Tensor:
    """[8, c] float64: ordinary rows and -inf (masked class) edge rows."""
    z = _logits(g, 8, c, torch.float64)
    z[0, 0] = float("-inf")  # the target class of row 0 (index targets): +inf loss
    z[1, 5] = float("-inf")  # a non-target class: finite without smoothing, +inf with
    z[2, :] = float("-inf")  # every class masked: NaN loss and gradient
    z[3, 2] = float("nan")
    z[3, 4] = float("-inf")  # NaN beats -inf
    z[4, 0] = float("-inf")
    z[4, 1:] = -120.0  # masked first class, the rest below exp's range
    z[5, c - 1] = float("-inf")
    return z


def _same_rows(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    """Equal NaN and +-inf patterns, finite values close."""
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN differ\n{got}\n{want}"
    assert torch.equal(torch.isposinf(got), torch.isposinf(want)), f"{what}: +inf differ\n{got}\n{want}"
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), f"{what}: -inf differ"
    fin = torch.isfinite(want)
    _close(got[fin], want[fin], tol, what)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[gpu, pytest.mark.gpu])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_masked_classes_minus_inf_as_the_reference(seeded, dtype, device):
    """-inf logits (masked classes) give what the reference (and Triton) give: +inf where a masked
    class has target weight > 0 (the target class; every class once smoothing is on; q > 0 in
    UDA), NaN where it has weight 0 (0 * -inf) and for fully masked rows, finite otherwise; the
    gradients equal the reference's (finite but for fully masked and NaN rows). Before, the
    kernels floored -inf at -1e30 and returned losses of ~1e28-1e30."""
    if dtype == torch.float64 and device == "cuda":
        pytest.skip("the CUDA kernels take fp32/fp16/bf16")
    for c in (10, 1001):
        z = _edge_rows(c, seeded).to(dtype)
        y = torch.tensor([0, 1, 2, 3, 4, 6, 7, 8])
        t = torch.rand(8, c, generator=seeded).to(dtype)
        t[1, 5] = 0.0  # weight 0 on row 1's masked class: NaN without smoothing
        for target in (y, t):
            for eps in (0.0, 0.1, 1.0):
                loss, grad = native.soft_ce_forward(z.to(device), target.to(device), eps, 1.0)
                loss_r, grad_r = ref.soft_ce_forward(z, target, eps, 1.0)
                what = f"C={c} {'index' if target is y else 'prob'} eps={eps}"
                _same_rows(loss, loss_r, LOSS_TOL[dtype], f"loss {what}")
                _same_rows(grad, grad_r, GRAD_TOL[dtype], f"grad {what}")
        # UDA: masked classes in the strong view, with q > 0 and with q == 0 (weak masked too)
        weak = _logits(seeded, 8, c, torch.float64, 3.0)
        weak[1, 5] = float("-inf")  # q == 0 on row 1's masked strong class: NaN
        weak[6, :] = float("-inf")  # no distribution: dropped
        weak = weak.to(dtype)
        for thr in (0.0, 0.5):
            loss, mask, grad = native.uda_forward(weak.to(device), z.to(device), 0.7, thr, 1.0)
            loss_r, mask_r, grad_r = ref.uda_forward(weak, z, 0.7, thr, 1.0)
            assert torch.equal(mask.cpu(), mask_r)
            _same_rows(loss, loss_r, LOSS_TOL[dtype], f"uda loss C={c} thr={thr}")
            _same_rows(grad, grad_r, GRAD_TOL[dtype], f"uda grad C={c} thr={thr}")


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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", [10, 1000, 1001])
def test_nan_logit_gives_nan_row(seeded, dtype, c):
    """A NaN logit makes its row's loss and gradient NaN, as in the reference; the -inf floor of
    the finite-math kernels must not swallow it (it did: fp32/fp64 rows became finite)."""
    z = _logits(seeded, 4, c, torch.float64)
    z[1, 3] = float("nan")
    z[2, 0] = float("-inf")  # masked non-target class: finite without smoothing, +inf with
    z = z.to(dtype)
    y = torch.tensor([0, 1, 2, 3])
    t = torch.rand(4, c, generator=seeded)
    nan_row = torch.tensor([False, True, False, False])
    for target in (y, t):
        for eps in (0.0, 0.1):
            loss, grad = native.soft_ce_forward(z, target, eps, 1.0)
            loss_r, _ = ref.soft_ce_forward(z, target, eps, 1.0)
            assert torch.equal(torch.isnan(loss), torch.isnan(loss_r)), (loss, loss_r)
            assert bool(torch.isnan(loss[nan_row]).all()) and bool(torch.isnan(grad[nan_row]).all())
            assert torch.equal(torch.isinf(loss), torch.isinf(loss_r))
            assert bool(torch.isfinite(grad[~nan_row]).all())
    # UDA: a NaN in the strong view of a kept row makes that row NaN, as in the reference
    weak = _logits(seeded, 4, c, torch.float64, 12.0).to(dtype)
    loss, mask, grad = native.uda_forward(weak, z, 0.7, 0.0, 1.0)
    loss_r, mask_r, _ = ref.uda_forward(weak, z, 0.7, 0.0, 1.0)
    assert torch.equal(mask, mask_r) and bool((mask == 1).all())
    assert torch.equal(torch.isnan(loss), torch.isnan(loss_r)) and bool(torch.isnan(loss[1]))
    assert bool(torch.isnan(grad[1]).all()) and bool(torch.isfinite(grad[~nan_row]).all())
