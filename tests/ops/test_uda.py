"""uda_loss on every backend × device × dtype against the unfused composite (the spec's UDA step).

The expected values are the composite in float64 on the same (rounded) inputs. Tolerances (max
abs error relative to the largest expected magnitude): fp32 1e-5, fp16 2e-3, bf16 1.6e-2.
The mask itself must match exactly (random inputs keep max q away from the threshold).
"""
from __future__ import annotations

import math

import pytest
import torch

import mplfast
from _helpers import BACKENDS, DEVICES, require_backend

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def composite(weak: torch.Tensor, strong: torch.Tensor, tau: float, thr: float):
    """Spec composite in float64: (loss, mask_rate, per-row mask)."""
    q = torch.softmax(weak.double() / tau, dim=1)
    keep = q.amax(dim=1) >= thr
    ce = -(q * torch.log_softmax(strong, dim=1)).sum(dim=1)
    loss = torch.where(keep, ce, torch.zeros_like(ce)).sum() / weak.shape[0]
    return loss, keep.double().mean(), keep


def assert_close(actual, expected, tol, what):
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite"
    err = (a - e).abs().max().item()
    bound = tol * max(e.abs().max().item(), 1e-30)
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


CASES = [(1, 2), (7, 10), (64, 10), (5, 37), (6, 1000), (2, 32000), (4099, 10)]


def weak_logits(n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    """Even rows get one class boosted so that max q ~ 0.95 at tau = 0.7 (kept at threshold
    0.6); odd rows stay flat (max q well below 0.6 for C >= 10): the mask goes both ways."""
    weak = torch.randn(n, c, generator=gen)
    rows = torch.arange(0, n, 2)
    weak[rows, torch.randint(0, c, (len(rows),), generator=gen)] += 0.7 * (math.log(c) + 5)
    return weak


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}")
def test_matches_composite(backend, dtype, case, device, seeded):
    require_backend(backend, device)
    n, c = case
    weak = weak_logits(n, c, seeded).to(dtype)
    strong = torch.randn(n, c, generator=seeded) * 40  # naive exp overflows fp32
    strong[torch.arange(n), torch.randint(0, c, (n,), generator=seeded)] = 120.0
    strong = strong.to(dtype)
    tol = TOL[dtype]
    for thr in (0.0, 0.6, 1.0):
        s = strong.to(device, copy=True).requires_grad_()
        w = weak.to(device, copy=True).requires_grad_()  # must receive no gradient
        loss, rate = mplfast.uda_loss(w, s, temperature=0.7, threshold=thr, backend=backend)
        s64 = strong.double().requires_grad_()
        ref, ref_rate, keep = composite(weak, s64, 0.7, thr)
        assert loss.dtype == torch.promote_types(dtype, torch.float32)  # float32 at least
        assert rate.dtype == torch.float32 and loss.dim() == 0
        assert loss.device.type == device and rate.device.type == device
        assert rate.item() == pytest.approx(ref_rate.item(), abs=1e-6)
        assert_close(loss.cpu(), ref, tol, f"loss thr={thr}")
        go = 1.7
        loss.backward(torch.tensor(go, dtype=loss.dtype, device=device))
        (gr,) = torch.autograd.grad(ref * go, s64)
        assert w.grad is None, "gradient must not flow to logits_weak"
        assert s.grad.dtype == dtype
        g = s.grad.cpu()
        assert_close(g, gr, tol, f"grad thr={thr}")
        assert (g[~keep] == 0).all(), "dropped rows get exactly zero gradient"
        if thr == 0.0:
            assert rate.item() == 1.0
        if thr == 0.6 and n >= 2 and c >= 10:
            assert 0.0 < rate.item() < 1.0, "the mask must keep some rows and drop others"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_extremes_and_sharp_teacher(backend, seeded):
    """Huge weak logits: q is one-hot (max q == 1), kept even at threshold 1."""
    require_backend(backend)
    weak = torch.randn(5, 20, generator=seeded)
    weak[:, 3] = 500.0
    strong = torch.randn(5, 20, generator=seeded) * 30
    loss, rate = mplfast.uda_loss(weak, strong, temperature=0.5, threshold=1.0, backend=backend)
    assert rate.item() == 1.0
    ref = -(torch.log_softmax(strong.double(), 1)[:, 3]).mean()
    assert_close(loss, ref, 1e-5, "one-hot teacher")


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_gradcheck_float64(backend, seeded):
    require_backend(backend)
    weak = torch.randn(6, 7, generator=seeded, dtype=torch.float64) * 2
    strong = (torch.randn(6, 7, generator=seeded, dtype=torch.float64) * 3).requires_grad_()
    _, rate = mplfast.uda_loss(weak, strong, temperature=0.7, threshold=0.5, backend=backend)
    assert 0.0 < rate.item() < 1.0
    assert torch.autograd.gradcheck(
        lambda s: mplfast.uda_loss(weak, s, temperature=0.7, threshold=0.5, backend=backend)[0], (strong,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    require_backend(backend)
    loss, rate = mplfast.uda_loss(torch.randn(0, 10), torch.randn(0, 10), temperature=1.0,
                                  threshold=0.5, backend=backend)
    assert torch.isnan(loss) and torch.isnan(rate)  # 0 / 0, as mean() over no rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [10, 1000, 4097, 9000])
def test_dropped_and_all_minus_inf_weak_rows_are_exactly_zero(backend, c, seeded):
    """One semantics on every backend: a row the mask drops has loss 0, mask 0 and a gradient of
    exactly 0 (never NaN), whatever its strong logits hold (NaN, all below -88); a weak row that
    is all -inf has no distribution and is dropped too, even at threshold 0 (where every row with
    a distribution is kept). Kept rows still match the composite. (Triton: also with the GPU's
    tiles, tests/ops/conftest.py.)"""
    require_backend(backend)
    from mplfast.ops.primitives import checked

    n = 6
    weak = torch.randn(n, c, generator=seeded) * 3
    strong = torch.randn(n, c, generator=seeded) * 3
    weak[1] = float("-inf")                 # no distribution: dropped
    strong[1] = -200.0                      # all below -88: exp(0 - max) of zero-loaded padding overflows
    weak[2] = float("-inf")
    strong[2, 3] = float("nan")             # a NaN in a dropped row stays out
    weak[4] = float("-inf")
    weak[4, 0] = 5.0                        # one finite class: a valid, confident row (q = e_0)
    uda = checked(backend, "uda_forward")
    for thr in (0.0, 0.5):
        loss, mask, grad = uda(weak, strong, 1.0, thr, 1.0)
        dropped = torch.tensor([False, True, True, False, False, False])
        assert torch.equal(mask[dropped], torch.zeros(2)), f"mask {mask}"
        assert torch.equal(loss[dropped], torch.zeros(2)), f"loss {loss}"
        assert torch.equal(grad[dropped], torch.zeros(2, c)), "dropped rows' gradient is not exactly 0"
        keep_ref = torch.softmax(weak[~dropped].double(), 1).amax(1) >= thr
        assert torch.equal(mask[~dropped].bool(), keep_ref)
        assert bool(mask[4] == 1)
        kept = (~dropped).nonzero().flatten()[keep_ref]
        q = torch.softmax(weak[kept].double(), 1)
        ce = -(q * torch.log_softmax(strong[kept].double(), 1)).sum(1)
        assert_close(loss[kept], ce, 1e-5, f"kept rows thr={thr}")
        assert torch.isfinite(grad[kept]).all()
    # the public op: the dropped rows' gradient through autograd is exactly 0 too
    s = strong.clone().requires_grad_()
    loss, rate = mplfast.uda_loss(weak, s, temperature=1.0, threshold=0.0, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and abs(float(rate) - 4 / 6) < 1e-7
    assert torch.equal(s.grad[1:3], torch.zeros(2, c))
