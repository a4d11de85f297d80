"""Triton UDA loss against the plain-torch reference on edge rows (issue 9, items 2, 3 and 12),
with the interpreter's tiles and with exactly the GPU's (``MPLFAST_TRITON_TILES=gpu``): C > 4096
takes the chunked path, where rows the mask drops once got NaN gradients.

Weak (teacher) rows: confident, unconfident, fully -inf (no distribution: dropped, as the
reference drops its NaN row), NaN (dropped), first class -inf with the rest below -88 (confident).
Strong (student) rows: normal, all below -88 (on a dropped row: exp of the zeros the chunked pass
reads would overflow), first class -inf with the rest below -88, NaN, fully -inf.
"""
from __future__ import annotations

import os

import pytest
import torch

from mplfast.ops.uda import reference

from test_soft_ce_triton import CLASSES, NINF, assert_rows_match  # noqa: E402 (tests/ops on sys.path)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernels under TRITON_INTERPRET=1")


def edge_pair(c: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(weak, strong) [10, c] fp32 with the rows named in the module docstring."""
    weak = torch.randn(10, c, generator=g)
    strong = torch.randn(10, c, generator=g) * 2
    confident = torch.zeros(c)
    confident[c - 1] = 60.0  # max q ~ 1 at tau = 0.5, not on the -inf class 0 of rows 4 and 6
    weak[0] = confident
    weak[1] = 0.01 * torch.randn(c, generator=g)  # unconfident: dropped at threshold 0.6
    strong[1] = -120.0 + torch.randn(c, generator=g)  # dropped row, all below -88
    weak[2] = NINF  # no distribution: dropped
    strong[2] = -120.0 + torch.randn(c, generator=g)
    weak[3, 0] = float("nan")  # NaN: dropped
    weak[4] = confident
    strong[4] = -120.0 + torch.randn(c, generator=g)
    strong[4, 0] = NINF  # kept, first class -inf, the rest below -88: finite gradient (the
    # loss is NaN: q_0 is 0 in fp32, times log p_0 = -inf)
    weak[5] = confident
    strong[5] = -120.0 + torch.randn(c, generator=g)  # kept, all below -88
    weak[6] = -120.0 + confident
    weak[6, 0] = NINF  # confident teacher row with a masked first class below -88
    weak[7] = confident
    strong[7, c - 1] = float("nan")  # kept: NaN loss and gradient
    weak[8] = confident
    strong[8] = NINF  # kept, fully -inf student row: NaN, as the reference
    return weak, strong


def expected(weak, strong, tau, thr, scale):
    # the reference in fp32 for fp32 inputs (as the kernel): which probabilities underflow to 0,
    # and so which rows are NaN, depends on the precision
    loss, mask, grad = reference.uda_forward(weak.float(), strong.float(), tau, thr, scale)
    # a dropped row's gradient is exactly 0 (the reference's multiply by 0 keeps the NaN of
    # a row without a distribution)
    grad = torch.where(mask.bool()[:, None], grad, torch.zeros((), dtype=grad.dtype))
    return loss, mask, grad


@pytest.mark.parametrize("c", CLASSES)
def test_edge_rows_match_reference(tiles, c, seeded):
    from mplfast.kernels.uda import uda_forward

    weak, strong = edge_pair(c, seeded)
    tau, thr = 0.5, 0.6
    loss, mask, grad = uda_forward(weak, strong, tau, thr, 0.25)
    want_loss, want_mask, want_grad = expected(weak, strong, tau, thr, 0.25)
    assert torch.equal(mask, want_mask), (mask, want_mask)
    assert mask[[0, 4, 5, 6]].tolist() == [1.0] * 4 and mask[[1, 2, 3]].tolist() == [0.0] * 3
    assert_rows_match(loss, want_loss, 2e-5, "loss")
    assert_rows_match(grad, want_grad, 2e-6, "grad")
    dropped = ~mask.bool()
    assert torch.equal(grad[dropped], torch.zeros_like(grad[dropped])), "dropped rows: gradient 0"
    assert torch.isfinite(loss[[5, 6]]).all() and torch.isfinite(grad[[4, 5, 6]]).all()
    nl, nm, none = uda_forward(weak, strong, tau, thr, None)
    assert none is None and torch.equal(nm, mask)
    assert_rows_match(nl, want_loss, 2e-5, "loss without gradient")


@pytest.mark.parametrize("c", [1000, 9000])
def test_bf16_dropped_rows_have_zero_gradient(tiles, c, seeded):
    from mplfast.kernels.uda import uda_forward

    weak, strong = (t.bfloat16() for t in edge_pair(c, seeded))
    loss, mask, grad = uda_forward(weak, strong, 0.5, 0.6, 1.0)
    want_loss, want_mask, want_grad = expected(weak, strong, 0.5, 0.6, 1.0)
    assert grad.dtype == torch.bfloat16 and torch.equal(mask, want_mask)
    assert_rows_match(loss, want_loss, 2e-5, "loss")
    assert_rows_match(grad.float(), want_grad, 1e-2, "grad")
    assert torch.equal(grad[~mask.bool()].float(), torch.zeros_like(grad[~mask.bool()].float()))
