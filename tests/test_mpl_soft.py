"""Soft pseudo labels: the exact first-order meta-gradient against finite differences.

The teacher's gradient after one MPLStep must equal
    grad_T [ L_sup + sum_nc G_nc * softmax(z_us)_nc ],  G_nc = d L_l(theta'(p)) / d p_nc,
where G is measured by central differences of the *real* student update (a fresh copy of the
student and its SGD state, one step on CE_eps(S(x_us), p), then L_l on the labeled batch).
float64, tiny CNN with batch norm, Nesterov momentum + weight decay, with and without an
existing momentum buffer and with active gradient clipping.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mplfast import MPLConfig, MPLStep
from mpl_fixtures import mpl_batch, tiny_cnn, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")


B, M, C = 3, 4, 4


def batch(step: int):
    return mpl_batch(50 + step, B, M, C, torch.float64)


SGD_KW = dict(lr=0.5, momentum=0.9, nesterov=True, weight_decay=5e-4)


@pytest.mark.parametrize("warm,clip,dropout", [(False, None, 0.0), (True, None, 0.0), (True, 0.05, 0.0),
                                               (True, None, 0.3)])
def test_soft_meta_gradient_matches_finite_differences(warm, clip, dropout):
    torch.manual_seed(3)
    T = tiny_cnn(C, width=3, dtype=torch.float64)
    # Student dropout: the JVP must replay the update forward's dropout masks exactly.
    S = tiny_cnn(C, width=3, dropout=dropout, dtype=torch.float64)
    eps = 0.1
    cfg = MPLConfig(pseudo_label="soft", meta_signal="grad_dot", lambda_u=0.0,
                    label_smoothing=eps, grad_clip=clip, precision="fp32")
    opt_s = torch.optim.SGD(S.parameters(), **SGD_KW)
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), opt_s, cfg)
    if warm:  # a second step: momentum buffers exist, the update's derivative changes
        step(*batch(0))
    T0, S0 = copy.deepcopy(T), copy.deepcopy(S)
    opt_state = copy.deepcopy(opt_s.state_dict())
    x_l, y_l, x_uw, x_us = batch(1)
    # The teacher has no dropout and hard-label sampling is off, so after this seed the student's
    # L_old, update and L_new forwards draw the same masks here and in the reference below.
    torch.manual_seed(77)
    step(x_l, y_l, x_uw, x_us)
    got = torch.cat([p.grad.reshape(-1) for p in T.parameters()])

    def l_new_after_update(p: torch.Tensor) -> torch.Tensor:
        Sc = copy.deepcopy(S0)
        oc = torch.optim.SGD(Sc.parameters(), **SGD_KW)
        oc.load_state_dict(copy.deepcopy(opt_state))  # load_state_dict shares the buffers
        torch.manual_seed(77)
        with torch.no_grad():
            Sc(x_l)  # MPLStep's L_old forward (l_old_forward="labeled") draws the first masks
        s = Sc(torch.cat([x_l, x_us]))
        loss = F.cross_entropy(s[B:], p, label_smoothing=eps)
        oc.zero_grad()
        loss.backward()
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(Sc.parameters(), clip)
            assert norm > 2 * clip  # clipping really active: its Jacobian is being tested
        oc.step()
        with torch.no_grad():
            torch.manual_seed(77)  # L_new replays the L_old forward's dropout masks
            return F.cross_entropy(Sc(x_l), y_l)

    T0.train()
    z = T0(torch.cat([x_l, x_uw, x_us]))
    p0 = torch.softmax(z[B + M:].detach(), -1)
    G = torch.zeros_like(p0)
    h = 1e-6
    for n in range(M):
        for c in range(C):
            e = torch.zeros_like(p0)
            e[n, c] = h
            G[n, c] = (l_new_after_update(p0 + e) - l_new_after_update(p0 - e)) / (2 * h)
    l_sup = F.cross_entropy(z[:B], y_l, label_smoothing=eps)
    (g_sup,) = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(l_sup, list(T0.parameters()), retain_graph=True)])]
    l_ref = l_sup + (G * torch.softmax(z[B + M:], -1)).sum()
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(l_ref, list(T0.parameters()))])
    if clip is not None:  # grad_clip clips the teacher's gradient too
        factor = torch.clamp(clip / (want.norm() + 1e-6), max=1.0)
        want, g_sup = want * factor, g_sup * factor
    meta = want - g_sup
    assert meta.norm() > 1e-3 * g_sup.norm()  # the meta-gradient is not negligible here
    err = float((got - want).norm() / meta.norm())
    print(f"soft meta-gradient vs finite differences: relative error {err:.2e}")
    assert err < 1e-5


def test_soft_zero_student_lr_gives_zero_meta_gradient():
    """Student lr 0 (the recipe's wait phase): the student cannot move, so no meta-gradient."""
    T, S = tiny_cnn_pair(C, width=3, seed=0, dtype=torch.float64)
    T2 = copy.deepcopy(T)
    cfg = MPLConfig(pseudo_label="soft", lambda_u=0.0, precision="fp32")
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1),
                   torch.optim.SGD(S.parameters(), lr=0.0, momentum=0.9), cfg)
    m = step(*batch(0))
    assert float(m["mpl_loss"]) == 0.0
    x_l, y_l, x_uw, x_us = batch(0)
    z = T2(torch.cat([x_l, x_uw, x_us]))
    g = torch.autograd.grad(F.cross_entropy(z[:B], y_l, label_smoothing=cfg.label_smoothing), list(T2.parameters()))
    for p, gg in zip(T.parameters(), g):
        torch.testing.assert_close(p.grad, gg, rtol=1e-10, atol=1e-12)


def test_soft_refuses_non_sgd_student_optimizer():
    T, S = tiny_cnn_pair(C, width=3, seed=None)
    with pytest.raises(ValueError, match="SGD"):
        MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.Adam(S.parameters()),
                MPLConfig(pseudo_label="soft"))
    # meta_signal="none" is the explicit plain-UDA ablation: allowed with any optimizer.
    MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.Adam(S.parameters()),
            MPLConfig(pseudo_label="soft", meta_signal="none"))


def test_soft_meta_gradient_float32_dropout_runs_and_is_finite():
    """fp32 with dropout (the JVP replays the step's dropout masks) and bf16: finite updates."""
    for precision in ("fp32", "bf16"):
        T, S = tiny_cnn_pair(C, width=3, seed=0, dropout=0.3)
        step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1),
                       torch.optim.SGD(S.parameters(), lr=0.1, momentum=0.9, nesterov=True),
                       MPLConfig(pseudo_label="soft", precision=precision))
        for i in range(2):
            m = step(*[t.float() if t.is_floating_point() else t for t in batch(i)])
        assert all(torch.isfinite(v).all() for v in m.values())
        assert float(m["mpl_loss"]) != 0.0
