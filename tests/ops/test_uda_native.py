"""Native fused UDA kernels (csrc/uda/) against plain-torch math (tolerances:
tests/_native_cases.py)."""
from __future__ import annotations

import pytest
import torch

from _native_cases import (DTYPES, GRAD_TOL, LOSS_TOL, SHAPES, close as _close, logits as _logits, native,
                           native_required, ref, threshold_between as _threshold_between)

pytestmark = native_required


def _uda_inputs(gen, n, c, dtype, spread=3.0):
    weak = _logits(gen, n, c, dtype, spread)
    strong = _logits(gen, n, c, dtype, spread)
    return weak, strong


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
