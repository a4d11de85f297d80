"""Meta signals: grad_dot against autograd, the paper's plain-SGD form, and its small-lr limit."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mplfast import MPLConfig, MPLStep
from mpl_fixtures import mpl_batch, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")


B, M, C = 4, 6, 5


def batch(seed: int = 0):
    return mpl_batch(seed, B, M, C, torch.float64)


def mlp() -> nn.Module:
    # No batch norm: L_old (from the joint [x_l; x_us] forward) and L_new (x_l alone) then
    # differ only through the parameters, so loss_diff -> grad_dot as lr -> 0.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, C)).double()


def test_grad_dot_plain_sgd_is_paper_h():
    """Plain SGD: h = -<grad L_new(theta'), theta' - theta> = lr <grad L_new(theta'), g_u>."""
    T, S = tiny_cnn_pair(C, width=4, seed=0, dtype=torch.float64)
    T0, S0 = copy.deepcopy(T), copy.deepcopy(S)
    lr, eps = 0.2, 0.1
    cfg = MPLConfig(meta_signal="grad_dot", label_smoothing=eps, precision="fp32")
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.SGD(S.parameters(), lr=lr), cfg)
    x_l, y_l, x_uw, x_us = batch()
    h = step(x_l, y_l, x_uw, x_us)["h"]

    # The same quantities by hand with autograd.
    y_hat = T0(torch.cat([x_l, x_uw, x_us]))[B + M:].argmax(-1)
    s = S0(torch.cat([x_l, x_us]))
    g_u = torch.autograd.grad(F.cross_entropy(s[B:], y_hat, label_smoothing=eps), list(S0.parameters()))
    with torch.no_grad():
        for p, g in zip(S0.parameters(), g_u):
            p.sub_(lr * g)
    v = torch.autograd.grad(F.cross_entropy(S0(x_l), y_l), list(S0.parameters()))
    want = lr * sum((a * b).sum() for a, b in zip(v, g_u))
    assert abs(float(want)) > 1e-4
    torch.testing.assert_close(h.double(), want, rtol=1e-6, atol=0)
    # The step really updated the student to theta' = theta - lr g_u.
    for p, q in zip(S.parameters(), S0.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_grad_dot_with_momentum_matches_autograd():
    """Nesterov + weight decay + clipping, second step: h = -<grad L_new(theta'), theta' - theta>."""
    T, S = tiny_cnn_pair(C, width=4, seed=1, dtype=torch.float64)
    cfg = MPLConfig(meta_signal="grad_dot", precision="fp32", grad_clip=0.5)
    opt_s = torch.optim.SGD(S.parameters(), lr=0.3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), opt_s, cfg)
    step(*batch(1))
    before = [p.detach().clone() for p in S.parameters()]
    x_l, y_l, x_uw, x_us = batch(2)
    h = step(x_l, y_l, x_uw, x_us)["h"]
    S_new = copy.deepcopy(S)
    v = torch.autograd.grad(F.cross_entropy(S_new(x_l), y_l), list(S_new.parameters()))
    want = -sum((g * (p.detach() - o)).sum() for g, p, o in zip(v, S.parameters(), before))
    torch.testing.assert_close(h.double(), want, rtol=1e-6, atol=0)


def test_grad_dot_approaches_loss_diff_for_small_lr():
    errs = []
    for lr in (1e-1, 1e-2, 1e-3):
        hs = {}
        for signal in ("loss_diff", "grad_dot"):
            torch.manual_seed(2)
            T, S = mlp(), mlp()
            step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1),
                           torch.optim.SGD(S.parameters(), lr=lr, momentum=0.9, nesterov=True),
                           MPLConfig(meta_signal=signal, precision="fp32"))
            hs[signal] = float(step(*batch(3))["h"])
        errs.append(abs(hs["grad_dot"] - hs["loss_diff"]) / abs(hs["loss_diff"]))
    # First-order agreement: the relative gap shrinks ~linearly with lr.
    assert errs[-1] < 1e-2, errs
    assert errs[0] > errs[1] > errs[2], errs


def test_meta_signal_none_trains_teacher_as_plain_uda():
    torch.manual_seed(0)
    T, S = mlp(), mlp()
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.SGD(S.parameters(), lr=0.1),
                   MPLConfig(meta_signal="none", precision="fp32"))
    m = step(*batch(4))
    assert float(m["h"]) == 0.0 and float(m["mpl_loss"]) == 0.0
    torch.testing.assert_close(m["teacher_loss"], m["teacher_loss_l"] + m["uda_weight"] * m["uda_loss"])


def _teacher_after_one_step(cfg: MPLConfig, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, dict]:
    T, S = tiny_cnn_pair(C, width=4, seed=seed, dropout=0.2, dtype=torch.float64)
    T0 = torch.cat([p.detach().reshape(-1).clone() for p in T.parameters()])
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.SGD(S.parameters(), lr=0.5), cfg)
    torch.manual_seed(11)  # the same dropout masks in every run
    m = step(*batch(6))
    return T0, torch.cat([p.detach().reshape(-1) for p in T.parameters()]), m


@pytest.mark.parametrize("label,signal", [("hard", "loss_diff"), ("sample", "grad_dot"), ("soft", "grad_dot")])
def test_meta_scale_multiplies_the_mpl_term(label, signal):
    """Plain SGD, one step: the teacher's move is lr * (g_sup + w g_uda + meta_scale g_mpl), so
    its part beyond the meta_scale=0 run is linear in meta_scale; h itself is not scaled."""
    kw = dict(pseudo_label=label, meta_signal=signal, precision="fp32", threshold=0.2, label_smoothing=0.1)
    _, t0, m0 = _teacher_after_one_step(MPLConfig(meta_scale=0.0, **kw))
    _, t1, m1 = _teacher_after_one_step(MPLConfig(meta_scale=1.0, **kw))
    _, t3, m3 = _teacher_after_one_step(MPLConfig(meta_scale=3.0, **kw))
    d1, d3 = t1 - t0, t3 - t0
    assert float(d1.norm()) > 1e-8 * float(t0.norm())  # the MPL term moved the teacher
    torch.testing.assert_close(d3, 3.0 * d1, rtol=1e-6, atol=1e-12)
    assert float(m0["mpl_loss"]) == 0.0
    torch.testing.assert_close(m3["mpl_loss"], 3.0 * m1["mpl_loss"], rtol=1e-6, atol=0)
    assert torch.equal(m1["h"], m3["h"]) and torch.equal(m0["h"], m1["h"])
    # meta_scale=0 trains the teacher as meta_signal="none" does
    _, tn, _ = _teacher_after_one_step(MPLConfig(**{**kw, "meta_signal": "none"}))
    torch.testing.assert_close(t0, tn, rtol=0, atol=1e-14)
