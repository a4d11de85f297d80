"""Shared by the native-kernel tests (tests/ops/test_*_native.py): the backend skip rule, dtype
tolerances and input builders.

Every case draws fresh random inputs (never zeros) and compares with each op's ``mplfast.ops.<op>.reference``
and, for the gradients, with torch autograd through ``F.cross_entropy``. Tolerances per dtype
(loss in fp32 math for fp32/fp16/bf16, fp64 for fp64; the gradient is additionally rounded to
the logits dtype), relative to the largest reference magnitude:

    float64: 1e-10   float32: 2e-5   float16: 2e-3 (one fp16 rounding)   bfloat16: 1.6e-2

CUDA tests (marked ``gpu``) run only where a device is present. Imported as
``from _native_cases import ...`` (tests/ is on sys.path, as for _helpers.py).
"""
from __future__ import annotations

import pytest
import torch

from types import SimpleNamespace

from mplfast import _native as nat  # the one loader of _C: status(), _C
from mplfast.ops.grad_dot import reference as _ref_dot
from mplfast.ops.primitives import checked
from mplfast.ops.soft_ce import reference as _ref_ce
from mplfast.ops.uda import reference as _ref_uda

# the native primitives behind the op contract's checks (what the public ops run), and the references
native = SimpleNamespace(**{p: checked("native", p)
                            for p in ("soft_ce_forward", "uda_forward", "grad_dot", "grad_dot_delta")})
ref = SimpleNamespace(soft_ce_forward=_ref_ce.soft_ce_forward, uda_forward=_ref_uda.uda_forward,
                      grad_dot=_ref_dot.grad_dot, grad_dot_delta=_ref_dot.grad_dot_delta)

__all__ = ["nat", "native", "ref", "native_required", "HAS_CUDA", "gpu", "DTYPES", "GRAD_TOL", "LOSS_TOL", "SHAPES",
           "close", "logits", "threshold_between"]

native_required = pytest.mark.skipif(nat.status()["cpu"] is not True, reason=f"native backend: {nat.status()['cpu']}")

HAS_CUDA = nat.status()["cuda"] is True


gpu = pytest.mark.skipif(not HAS_CUDA, reason=f"native CUDA: {nat.status()['cuda']}")


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


GRAD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


LOSS_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """|actual - expected| <= tol * max(1, max|expected|) elementwise (both upcast to fp64)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.numel() == 0:
        return
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    scale = max(1.0, float(e.abs().max()))
    err = float((a - e).abs().max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:.1g} * {scale:.3g}"


def logits(gen: torch.Generator, n: int, c: int, dtype: torch.dtype, spread: float = 4.0) -> torch.Tensor:
    return (torch.randn(n, c, generator=gen, dtype=torch.float64) * spread + 0.5).to(dtype)


SHAPES = [(0, 10), (1, 2), (7, 10), (7, 1000), (4099, 10), (5, 1001), (33, 37), (3, 32000)]


def threshold_between(weak: torch.Tensor, tau: float) -> float:
    """A threshold that keeps some rows and drops others, away from any row's max q."""
    maxq = torch.softmax(weak.double() / tau, 1).amax(1).sort().values
    if maxq.numel() < 2:
        return float(maxq[0]) * 0.5 if maxq.numel() else 0.5
    i = maxq.numel() // 2
    gaps = maxq[1:] - maxq[:-1]
    j = int(torch.argmax(gaps[max(0, i - 3): i + 3])) + max(0, i - 3)  # widest gap near the middle
    return float((maxq[j] + maxq[j + 1]) / 2)
