"""Bad inputs to the public ops raise ValueError/TypeError whose message names the problem."""
from __future__ import annotations

import pytest
import torch

import mplfast

Z = torch.randn(4, 5)
Y = torch.tensor([0, 1, 2, 3])
P = torch.softmax(torch.randn(4, 5), 1)


def sce(*args, **kw):
    return mplfast.soft_cross_entropy(*args, **kw)


def uda(w=Z, s=Z, **kw):
    kw.setdefault("temperature", 0.7)
    kw.setdefault("threshold", 0.6)
    return mplfast.uda_loss(w, s, **kw)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: sce(Z, torch.tensor([0, 1, 5, 2])), ValueError, r"class index out of range"),
        (lambda: sce(Z, torch.tensor([0, -1, 1, 2])), ValueError, r"class index out of range.*min -1"),
        (lambda: sce(Z, Y[:3]), ValueError, r"index target must have shape \[N\] = \[4\]"),
        (lambda: sce(Z, P[:, :4]), ValueError, r"probability target must have the logits' shape"),
        (lambda: sce(Z[0], Y[0]), ValueError, r"logits must be 2-D"),
        (lambda: sce(torch.randn(4, 0), Y), ValueError, r"no classes"),
        (lambda: sce(Z.int(), Y), TypeError, r"unsupported dtype torch.int32 for logits"),
        (lambda: sce(Z, Y.int()), TypeError, r"unsupported target dtype torch.int32"),
        (lambda: sce(Z.numpy(), Y), TypeError, r"logits must be a torch.Tensor"),
        (lambda: sce(Z, Y.to("meta")), ValueError, r"mixed devices: logits is on cpu but target is on meta"),
        (lambda: sce(Z, Y, reduction="avg"), ValueError, r"reduction must be one of none, sum, mean"),
        (lambda: sce(Z, Y, label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]"),
        (lambda: sce(Z, Y, label_smoothing=-0.1), ValueError, r"label_smoothing must be in \[0, 1\]"),
        (lambda: sce(Z, Y, label_smoothing=float("nan")), ValueError, r"label_smoothing"),
        (lambda: sce(Z, Y, label_smoothing="0.1"), TypeError, r"label_smoothing must be a float"),
        (lambda: sce(Z, Y, backend="cudnn"), ValueError, r"unknown backend 'cudnn'"),
        (lambda: uda(Z, torch.randn(4, 6)), ValueError, r"shape mismatch: logits_weak \(4, 5\) vs logits_strong \(4, 6\)"),
        (lambda: uda(Z.half(), Z), TypeError, r"dtype mismatch: logits_weak is torch.float16"),
        (lambda: uda(Z.long(), Z.long()), TypeError, r"unsupported dtype torch.int64 for logits_weak"),
        (lambda: uda(Z, Z.to("meta")), ValueError, r"mixed devices"),
        (lambda: uda(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
        (lambda: uda(temperature=-1.0), ValueError, r"temperature must be a finite number > 0"),
        (lambda: uda(threshold=1.2), ValueError, r"threshold must be in \[0, 1\]"),
        (lambda: uda(threshold=-0.2), ValueError, r"threshold must be in \[0, 1\]"),
        (lambda: uda(Z[0], Z[0]), ValueError, r"logits_weak must be 2-D"),
        (lambda: mplfast.grad_dot([Z], [Z, Z]), ValueError, r"list-length mismatch: xs has 1 tensors but ys has 2"),
        (lambda: mplfast.grad_dot([Z], [Z.t()]), ValueError, r"shape mismatch at index 0"),
        (lambda: mplfast.grad_dot([Z, Z.int()], [Z, Z.int()]), TypeError, r"unsupported dtype torch.int32 for xs\[1\]"),
        (lambda: mplfast.grad_dot([Z], [Z.half()]), TypeError, r"dtype mismatch at index 0"),
        (lambda: mplfast.grad_dot([Z, Z], [Z, Z.to("meta")]), ValueError, r"mixed devices: xs\[0\] is on cpu but ys\[1\] is on meta"),
        (lambda: mplfast.grad_dot(Z, Z), TypeError, r"xs must be a list, tuple or iterable of tensors"),
        (lambda: mplfast.grad_dot([Z], [1.0]), TypeError, r"ys\[0\] must be a torch.Tensor"),
        (lambda: mplfast.grad_dot_delta([Z], [Z], []), ValueError, r"grads has 1 tensors but old_params has 0"),
        (lambda: mplfast.grad_dot_delta([Z], [Z], [Z[:2]]), ValueError, r"shape mismatch at index 0.*old_params"),
    ],
)
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_label_check_on_every_backend_and_debug_env(monkeypatch):
    """CPU checks labels always; MPLFAST_DEBUG=1 does not change that (and enables CUDA checks)."""
    bad = torch.tensor([0, 1, 7, 2])
    for backend in ("reference", "triton", None):
        with pytest.raises(ValueError, match=r"outside \[0, 4\]"):
            mplfast.soft_cross_entropy(Z, bad, backend=backend)
    monkeypatch.setenv("MPLFAST_DEBUG", "1")
    with pytest.raises(ValueError, match="class index out of range"):
        mplfast.soft_cross_entropy(Z, bad, backend="reference")


def test_valid_edge_values_accepted():
    """The closed ends of the ranges are legal: smoothing 0 and 1, threshold 0 and 1."""
    for eps in (0, 1, 0.0, 1.0):
        assert torch.isfinite(mplfast.soft_cross_entropy(Z, Y, label_smoothing=eps))
    for thr in (0, 1):
        loss, _ = uda(threshold=thr)
        assert torch.isfinite(loss)
