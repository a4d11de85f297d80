"""MPLStep against a plainly written eager implementation of the spec (docs/algorithm.md).

The reference below uses only torch.nn.functional and autograd, one line per spec step, so a
reader can check it against the spec by eye. Both run on identical copies of tiny models
(batch norm + dropout, so the RNG order and the batch statistics matter), fp32 on CPU, SGD
with Nesterov momentum and weight decay, for several steps.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from mplfast import MPLConfig, MPLStep
from mpl_fixtures import mpl_batch, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_models(seed: int = 0, dropout: float = 0.2, dtype=torch.float32):
    return tiny_cnn_pair(5, width=4, seed=seed, dropout=dropout, dtype=dtype)


def make_batch(step: int, B: int = 4, M: int = 6, dtype=torch.float32):
    return mpl_batch(100 + step, B, M, 5, dtype)


def sgd(model, lr=0.05):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def labeled_forward(S, x):
    """Training-mode forward, and a function that puts the running buffers back as they were
    (call it after any backward through the output: batch norm saves them for its backward)."""
    saved = {k: b.clone() for k, b in S.named_buffers()}

    def restore():
        with torch.no_grad():
            for k, b in S.named_buffers():
                b.copy_(saved[k])

    return S(x), restore


class EagerMPL:
    """The spec, written out plainly (hard / sampled labels)."""

    def __init__(self, T, S, opt_t, opt_s, cfg: MPLConfig, seed: int = 0):
        self.T, self.S, self.opt_t, self.opt_s, self.cfg = T, S, opt_t, opt_s, cfg
        self.t = 0
        self.b = 0.0
        self.gen = torch.Generator().manual_seed(seed)

    def label(self, z):
        if self.cfg.pseudo_label == "sample":
            return torch.multinomial(F.softmax(z.detach(), -1), 1, generator=self.gen).squeeze(1)
        return z.detach().argmax(-1)

    def step(self, x_l, y_l, x_uw, x_us):
        cfg, T, S = self.cfg, self.T, self.S
        B, M = len(x_l), len(x_uw)
        T.train()
        S.train()
        # 1. teacher forward on the concatenation
        z = T(torch.cat([x_l, x_uw, x_us]))
        z_l, z_uw, z_us = z[:B], z[B:B + M], z[B + M:]
        # 2. supervised loss
        l_sup = F.cross_entropy(z_l, y_l, label_smoothing=cfg.label_smoothing)
        # 3. UDA
        q = F.softmax(z_uw.detach() / cfg.temperature, -1)
        m = (q.max(-1).values >= cfg.threshold).float()
        l_uda = (m * -(q * F.log_softmax(z_us, -1)).sum(-1)).sum() / M
        w = cfg.lambda_u * min(1.0, (self.t + 1) / cfg.uda_steps)
        # 4. pseudo labels
        if cfg.pseudo_label_view == "weak":
            y_s = self.label(z_uw)
            y_t = z_us.detach().argmax(-1)
        else:
            y_s = self.label(z_us)
            y_t = y_s
        # 5. L_old and the student forward
        if cfg.l_old_forward == "labeled":
            rng = torch.get_rng_state()
            with torch.no_grad():
                out, restore = labeled_forward(S, x_l)
                l_old = F.cross_entropy(out, y_l)
                restore()
        s = S(torch.cat([x_l, x_us]))
        s_l, s_us = s[:B], s[B:]
        if cfg.l_old_forward == "concat":
            l_old = F.cross_entropy(s_l.detach(), y_l)
        l_s = F.cross_entropy(s_us, y_s, label_smoothing=cfg.label_smoothing)
        # 6. student update
        old = [p.detach().clone() for p in S.parameters()]
        self.opt_s.zero_grad()
        l_s.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(S.parameters(), cfg.grad_clip)
        self.opt_s.step()
        # 7. L_new
        if cfg.l_old_forward == "labeled":  # the same dropout masks and buffers as L_old's forward
            live = torch.get_rng_state()
            torch.set_rng_state(rng)
            out, restore = labeled_forward(S, x_l)
            torch.set_rng_state(live)
        else:
            out, restore = S(x_l), lambda: None
        l_new_t = F.cross_entropy(out, y_l)
        # 8. h
        if cfg.meta_signal == "loss_diff":
            h = (l_old - l_new_t).detach()
        elif cfg.meta_signal == "grad_dot":
            g = torch.autograd.grad(l_new_t, list(S.parameters()))
            h = -sum((gi * (p.detach() - o)).sum() for gi, p, o in zip(g, S.parameters(), old))
        else:
            h = torch.zeros(())
        restore()
        h = cfg.meta_sign * h
        if cfg.meta_baseline_decay > 0:
            self.b = cfg.meta_baseline_decay * self.b + (1 - cfg.meta_baseline_decay) * h
            h = h - self.b
        # 9. MPL loss
        l_mpl = cfg.meta_scale * h * F.cross_entropy(z_us, y_t)
        # 10. teacher update
        self.opt_t.zero_grad()
        (l_sup + w * l_uda + l_mpl).backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(T.parameters(), cfg.grad_clip)
        self.opt_t.step()
        self.t += 1
        return {"h": h.detach(), "l_old": l_old, "l_new": l_new_t.detach()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def buffers(model) -> torch.Tensor:
    """Batch-norm running statistics and counters (training-mode forwards never read them, so
    only this shows which forwards updated them)."""
    return torch.cat([b.detach().double().reshape(-1) for b in model.buffers()])


def run_both(cfg: MPLConfig, steps: int = 3, dtype=torch.float32, dropout: float = 0.2):
    T, S = make_models(dropout=dropout, dtype=dtype)
    T2, S2 = copy.deepcopy(T), copy.deepcopy(S)
    ours = MPLStep(T, S, sgd(T), sgd(S), cfg, seed=7)
    ref = EagerMPL(T2, S2, sgd(T2), sgd(S2), cfg, seed=7)
    hs = []
    for i in range(steps):
        batch = make_batch(i, dtype=dtype)
        # Same RNG stream for the dropout masks of both implementations.
        torch.manual_seed(1000 + i)
        m = ours(*batch)
        torch.manual_seed(1000 + i)
        r = ref.step(*batch)
        hs.append((m["h"], r["h"], m["student_loss_l_old"], r["l_old"]))
    return (T, S, T2, S2, hs)


COMBOS = list(itertools.product(["loss_diff", "grad_dot", "none"], [1, -1], [0.0, 0.9],
                                ["strong", "weak"], ["hard", "sample"], ["labeled", "concat"]))


@pytest.mark.parametrize("signal,sign,decay,view,label,l_old_forward", COMBOS)
def test_matches_eager_spec(signal, sign, decay, view, label, l_old_forward):
    cfg = MPLConfig(meta_signal=signal, meta_sign=sign, meta_baseline_decay=decay,
                    pseudo_label_view=view, pseudo_label=label, precision="fp32",
                    lambda_u=1.0, uda_steps=4, threshold=0.3, label_smoothing=0.1,
                    l_old_forward=l_old_forward)
    T, S, T2, S2, hs = run_both(cfg)
    # Relative error of each model's whole parameter vector (per-tensor relative error is
    # meaningless for biases that are still ~1e-4 after a few steps).
    assert rel_err(flat(T), flat(T2)) < 1e-6
    assert rel_err(flat(S), flat(S2)) < 1e-6
    assert rel_err(buffers(S), buffers(S2)) < 1e-6
    for h, h_ref, l_old, l_old_ref in hs:
        # h is a difference of O(1) losses: compare on the scale of those losses.
        assert abs(float(h - h_ref)) <= 1e-6 * (1 + abs(float(l_old_ref))), (h, h_ref)
        assert abs(float(l_old - l_old_ref)) <= 1e-6 * abs(float(l_old_ref))
    if signal != "none":
        assert any(abs(float(h)) > 1e-6 for h, *_ in hs)  # the MPL term really acted


@pytest.mark.parametrize("signal,l_old_forward", [("grad_dot", "labeled"), ("loss_diff", "labeled"),
                                                  ("loss_diff", "concat")])
def test_matches_eager_spec_float64_tight(signal, l_old_forward):
    """Float64 models: every loss, h and update in float64, as the plain float64 reference
    computes them (no float32 rounding anywhere: that left h with relative errors ~3e-5)."""
    cfg = MPLConfig(meta_signal=signal, meta_baseline_decay=0.5, pseudo_label="sample",
                    precision="fp32", lambda_u=2.0, uda_steps=3, threshold=0.2, grad_clip=0.5,
                    meta_scale=3.0, l_old_forward=l_old_forward)
    T, S, T2, S2, hs = run_both(cfg, steps=3, dtype=torch.float64)
    assert rel_err(flat(T), flat(T2)) < 1e-12
    assert rel_err(flat(S), flat(S2)) < 1e-12
    for h, h_ref, l_old, l_old_ref in hs:
        assert h.dtype == l_old.dtype == torch.float64
        assert abs(float(h - h_ref)) <= 1e-12 * (1 + abs(float(l_old_ref))), (h, h_ref)
        assert abs(float(l_old - l_old_ref)) <= 1e-13 * abs(float(l_old_ref))


def test_consecutive_buffer_is_used_without_cat():
    """x_l, x_uw, x_us as slices of one buffer: the teacher sees that buffer (no copy)."""
    from mplfast.step import _consecutive

    buf = torch.randn(10, 1, 8, 8).to(memory_format=torch.channels_last)
    parts = (buf[:2], buf[2:6], buf[6:])
    v = _consecutive(parts)
    assert v is not None and v.data_ptr() == buf.data_ptr() and torch.equal(v, buf)
    assert _consecutive((buf[:2], buf[3:6], buf[6:])) is None  # gap
    assert _consecutive((buf[:2], buf[2:6].clone(), buf[6:])) is None  # other storage


def test_step_feeds_the_teacher_the_batch_buffer():
    T, S = make_models()
    seen = []
    T.register_forward_pre_hook(lambda mod, args: seen.append(args[0].data_ptr()))
    step = MPLStep(T, S, sgd(T), sgd(S), MPLConfig(precision="fp32"))
    buf = torch.randn(4 + 12, 1, 8, 8)
    step(buf[:4], torch.zeros(4, dtype=torch.long), buf[4:10], buf[10:])
    assert seen == [buf.data_ptr()]
    step(buf[:4].clone(), torch.zeros(4, dtype=torch.long), buf[4:10], buf[10:])  # not one buffer
    assert seen[-1] != buf.data_ptr()
