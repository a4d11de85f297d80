"""Mixed precision on CPU: bf16 / fp16 stay close to fp32; a skipped fp16 student step gives h = 0."""
from __future__ import annotations

import copy

import pytest
import torch

from mplfast import MPLConfig, MPLStep
from mpl_fixtures import mpl_batch, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")


B, M, C = 8, 16, 5


def batch(i: int):
    return mpl_batch(10 + i, B, M, C)


def models():
    return tiny_cnn_pair(C, width=8, seed=0)


def lower_scales(step: MPLStep) -> None:
    # The default initial scale 2**16 overflows on the first step here (a legitimate skip);
    # start lower so the trajectories are comparable step for step.
    step.student_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    step.teacher_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)


def flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def run(precision: str, signal: str, steps: int = 3, T=None, S=None):
    if T is None:
        T, S = models()
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.05, momentum=0.9),
                   torch.optim.SGD(S.parameters(), lr=0.05, momentum=0.9),
                   MPLConfig(precision=precision, meta_signal=signal, threshold=0.3))
    if precision == "fp16":
        lower_scales(step)
    ms = [step(*batch(i)) for i in range(steps)]
    assert all(float(m["student_moved"]) == 1.0 for m in ms)
    hs = [m["h"] for m in ms]
    return T, S, torch.stack(hs), step


@pytest.mark.parametrize("precision,tol", [("bf16", 0.1), ("fp16", 0.06)])
@pytest.mark.parametrize("signal", ["loss_diff", "grad_dot"])
def test_half_precision_close_to_fp32(precision, tol, signal):
    T0, S0 = models()
    T32, S32, h32, _ = run("fp32", signal, T=copy.deepcopy(T0), S=copy.deepcopy(S0))
    Th, Sh, hh, step = run(precision, signal, T=copy.deepcopy(T0), S=copy.deepcopy(S0))
    assert step.precision == precision
    for a, b, init in ((Th, T32, T0), (Sh, S32, S0)):
        upd = (flat(b) - flat(init)).norm()
        assert upd > 0
        # distance between the runs, relative to how far fp32 moved the weights
        assert float((flat(a) - flat(b)).norm() / upd) < tol
    assert torch.isfinite(hh).all()
    assert float((hh - h32).abs().max()) < tol * float(h32.abs().max()) + 1e-3


def test_auto_precision_is_fp32_on_cpu():
    T, S = models()
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.SGD(S.parameters(), lr=0.1),
                   MPLConfig(precision="auto"))
    assert step.precision == "fp32" and step.student_scaler is None


@pytest.mark.parametrize("signal", ["loss_diff", "grad_dot"])
def test_fp16_forced_inf_skips_student_and_zeroes_h(signal):
    T, S = models()
    calls = {"n": 0, "poison": False}
    first = next(S.parameters())

    def hook(g):
        calls["n"] += 1
        # Poison only the first backward of the step (the student update), not L_new's.
        if calls["poison"] and calls["n"] == 1:
            return torch.full_like(g, float("inf"))
        return g

    first.register_hook(hook)
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.05, momentum=0.9),
                   torch.optim.SGD(S.parameters(), lr=0.05, momentum=0.9),
                   MPLConfig(precision="fp16", meta_signal=signal, threshold=0.3))
    lower_scales(step)
    calls["n"] = 0
    m0 = step(*batch(0))
    assert float(m0["student_moved"]) == 1.0 and float(m0["h"]) != 0.0
    before = flat(S).clone()
    calls.update(n=0, poison=True)
    m1 = step(*batch(1))
    assert float(m1["student_moved"]) == 0.0
    assert float(m1["h"]) == 0.0 and float(m1["mpl_loss"]) == 0.0
    assert torch.equal(flat(S), before)  # the scaler skipped the student's step
    calls.update(n=0, poison=False)
    m2 = step(*batch(2))
    assert float(m2["student_moved"]) == 1.0
    for m in (m0, m1, m2):
        assert all(torch.isfinite(v).all() for v in m.values())
    for model in (T, S):
        assert torch.isfinite(flat(model)).all()
        assert all(torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point())


def test_fp16_skipped_step_leaves_baseline_alone():
    T, S = models()
    first = next(S.parameters())
    poison = {"on": False, "n": 0}
    first.register_hook(lambda g: torch.full_like(g, float("inf")) if poison["on"] else g)
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.05), torch.optim.SGD(S.parameters(), lr=0.05),
                   MPLConfig(precision="fp16", meta_baseline_decay=0.9, threshold=0.3))
    lower_scales(step)
    step(*batch(0))
    b = step.baseline.clone()
    assert float(b) != 0.0
    poison["on"] = True
    m = step(*batch(1))
    assert float(m["h"]) == 0.0 and torch.equal(step.baseline, b)


def test_supervised_step_float64_is_not_rounded_to_float32():
    """SupervisedStep (the supervised baseline and the finetune stage) on a float64 model: the
    loss and the update are float64, equal to a plain float64 step to ~1e-15."""
    import torch.nn.functional as F

    from mplfast.train.supervised import SupervisedStep

    T, _ = tiny_cnn_pair(C, width=4, seed=3, dropout=0.2)
    T = T.double()
    ref = copy.deepcopy(T)
    opt = torch.optim.SGD(T.parameters(), lr=0.3, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9)
    step = SupervisedStep(T, opt, label_smoothing=0.1, precision="fp32")
    for i in range(3):
        x, y, _, _ = mpl_batch(40 + i, B, 1, C, torch.float64)
        torch.manual_seed(i)
        loss = step(x, y)["loss"]
        torch.manual_seed(i)
        ref.train()
        want = F.cross_entropy(ref(x), y, label_smoothing=0.1)
        opt_ref.zero_grad()
        want.backward()
        opt_ref.step()
        assert loss.dtype == torch.float64
        assert abs(float(loss - want)) <= 1e-14 * float(want)
    for p, q in zip(T.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)
