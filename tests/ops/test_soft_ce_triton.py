"""Triton soft-CE against the plain-torch reference on edge rows (issue 9, items 3 and 12), with
the interpreter's tiles and with exactly the GPU's (``MPLFAST_TRITON_TILES=gpu``), so the chunked
path a GPU takes for C > 8192 (soft targets: C > 4096) runs here too.

Edge rows: -inf entries, NaN, every logit below -88 (exp underflows in fp32), the first class
-inf with the rest below -88 (the running max must not start at the first logit), a fully -inf
row, and huge logits. The reference is evaluated in float64 on the same (fp32) logits.
"""
from __future__ import annotations

import os

import pytest
import torch

from mplfast.ops.soft_ce import reference

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernels under TRITON_INTERPRET=1")
CLASSES = [2, 10, 1000, 4097, 9000, 32003]
NINF = float("-inf")


def edge_logits(c: int, g: torch.Generator) -> torch.Tensor:
    """[9, c] fp32: normal rows and the edge rows named in the module docstring."""
    z = torch.randn(9, c, generator=g) * 3
    z[1, c // 2] = NINF  # one masked class
    z[2] = -120.0 + torch.randn(c, generator=g)  # all below -88
    z[3] = -120.0 + torch.randn(c, generator=g)
    z[3, 0] = NINF  # first class masked, the rest below -88
    z[4, :] = NINF  # fully masked: NaN, as log_softmax gives
    z[5, c - 1] = float("nan")
    z[6] = z[6] * 3e3  # huge logits
    z[7, 0] = NINF
    return z


def assert_rows_match(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    got, want = got.double(), want.double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN rows differ"
    fin = ~torch.isnan(want)
    assert torch.equal(torch.isinf(got[fin]), torch.isinf(want[fin])), f"{what}: inf differ"
    ok = fin & ~torch.isinf(want)
    err = (got[ok] - want[ok]).abs().max().item() if ok.any() else 0.0
    scale = max(1.0, want[ok].abs().max().item() if ok.any() else 1.0)
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_edge_rows_match_reference(tiles, c, soft, seeded):
    from mplfast.kernels.soft_ce import soft_ce_forward

    z = edge_logits(c, seeded)
    n = z.shape[0]
    if soft:
        t = torch.softmax(torch.randn(n, c, generator=seeded), 1)
        t[0, : c // 2] = 0.0
        t[3, 0] = 0.0  # 0 * (-inf): NaN in the reference (and in F.cross_entropy) too
    else:
        t = torch.randint(0, c, (n,), generator=seeded)
        t[1] = c // 2 if c > 2 else 0  # target on the masked class: +inf loss
        t[3] = c - 1  # not the -inf class 0
    for eps in (0.0, 0.1):
        loss, grad = soft_ce_forward(z, t, eps, 0.5)
        want_loss, want_grad = reference.soft_ce_forward(z.double(), t.double() if soft else t, eps, 0.5)
        assert_rows_match(loss, want_loss, 2e-5, f"loss eps={eps}")
        assert_rows_match(grad, want_grad, 2e-6, f"grad eps={eps}")
        # all below -88: finite; with the first class -inf too (index target, no smoothing, which
        # would put weight on that class): finite
        rows = [2] if soft or eps else [2, 3]
        assert torch.isfinite(loss[rows]).all() and torch.isfinite(grad[rows]).all()
        nograd, none = soft_ce_forward(z, t, eps, None)
        assert none is None
        assert_rows_match(nograd, want_loss, 2e-5, f"loss without gradient eps={eps}")


@pytest.mark.parametrize("c", [1000, 9000])
def test_bf16_edge_rows(tiles, c, seeded):
    from mplfast.kernels.soft_ce import soft_ce_forward

    z = edge_logits(c, seeded).bfloat16()
    t = torch.randint(0, c, (z.shape[0],), generator=seeded)
    loss, grad = soft_ce_forward(z, t, 0.1, 1.0)
    want_loss, want_grad = reference.soft_ce_forward(z.double(), t, 0.1, 1.0)
    assert grad.dtype == torch.bfloat16
    assert_rows_match(loss, want_loss, 2e-5, "loss")
    assert_rows_match(grad.float(), want_grad, 1e-2, "grad")  # bf16 rounding of the gradient


def test_gpu_tiles_switch_changes_the_tiles(monkeypatch):
    """MPLFAST_TRITON_TILES=gpu gives exactly the GPU configuration under the interpreter."""
    from mplfast.kernels._rowwise import row_config

    monkeypatch.delenv("MPLFAST_TRITON_TILES", raising=False)
    assert row_config(64, 9000, 8192)[2] > 4096  # the interpreter's wide chunk
    monkeypatch.setenv("MPLFAST_TRITON_TILES", "gpu")
    assert row_config(64, 9000, 8192) == (False, 1, 4096, 8)
    assert row_config(64, 1000, 8192) == (True, 4, 1024, 8)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert row_config(64, 9000, 8192) == (False, 1, 4096, 8)
