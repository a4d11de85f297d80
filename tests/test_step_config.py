"""MPLConfig validation and MPLStep state (resume) behaviour."""
from __future__ import annotations

import copy

import pytest
import torch

from mplfast import MPLConfig, MPLStep, create_model


@pytest.mark.parametrize("field,value,msg", [
    ("temperature", 0.0, r"temperature must be in \(0, inf\)"),
    ("temperature", -1.0, "temperature"),
    ("temperature", float("nan"), "temperature"),
    ("threshold", 2.5, r"threshold must be in \[0, 1\]"),
    ("threshold", -0.1, "threshold"),
    ("lambda_u", -1.0, r"lambda_u must be in \[0, inf\)"),
    ("uda_steps", 0, "uda_steps must be an integer >= 1"),
    ("uda_steps", 1.5, "uda_steps"),
    ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
    ("meta_signal", "dot", "meta_signal must be one of"),
    ("meta_sign", 0, "meta_sign must be 1 or -1"),
    ("meta_sign", True, "meta_sign"),
    ("meta_baseline_decay", 1.0, r"meta_baseline_decay must be in \[0, 1\)"),
    ("pseudo_label", "argmax", "pseudo_label must be one of"),
    ("pseudo_label_view", "both", "pseudo_label_view must be one of"),
    ("grad_clip", 0.0, r"grad_clip must be None or in \(0, inf\)"),
    ("precision", "fp8", "precision must be one of"),
    ("temperature", "0.7", "temperature must be a real number"),
    ("l_old_forward", "joint", "l_old_forward must be one of"),
    ("meta_scale", -0.5, r"meta_scale must be in \[0, inf\)"),
    ("meta_scale", float("inf"), "meta_scale"),
    ("meta_scale", float("nan"), "meta_scale"),
    ("meta_scale", True, "meta_scale must be a real number"),
])
def test_config_rejects_bad_values(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        MPLConfig(**{field: value})


def test_config_defaults_and_roundtrip():
    cfg = MPLConfig()
    assert (cfg.meta_signal, cfg.pseudo_label, cfg.pseudo_label_view, cfg.precision) == (
        "loss_diff", "hard", "strong", "auto")
    assert (cfg.l_old_forward, cfg.meta_scale) == ("labeled", 1.0)
    assert MPLConfig(meta_scale=10).meta_scale == 10.0 and isinstance(MPLConfig(meta_scale=10).meta_scale, float)
    assert MPLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        MPLConfig.from_dict({"tau": 1.0})
    with pytest.raises(ValueError, match="weak"):
        MPLConfig(pseudo_label="soft", pseudo_label_view="weak")


def test_step_rejects_non_config_and_bad_shapes():
    T = create_model("small_cnn", 3, in_chans=1, width=2)
    S = create_model("small_cnn", 3, in_chans=1, width=2)
    with pytest.raises(TypeError, match="MPLConfig"):
        MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.SGD(S.parameters(), lr=0.1), {})
    step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.1), torch.optim.SGD(S.parameters(), lr=0.1),
                   MPLConfig())
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match="x_us"):
        step(x, torch.zeros(4, dtype=torch.long), x, x[:3])


def _setup(precision="fp32"):
    torch.manual_seed(0)
    T = create_model("small_cnn", 4, in_chans=1, width=4, dropout=0.1)
    S = create_model("small_cnn", 4, in_chans=1, width=4, dropout=0.1)
    ot = torch.optim.SGD(T.parameters(), lr=0.05, momentum=0.9)
    os_ = torch.optim.SGD(S.parameters(), lr=0.05, momentum=0.9)
    cfg = MPLConfig(pseudo_label="sample", meta_baseline_decay=0.9, precision=precision, threshold=0.3)
    return T, S, ot, os_, MPLStep(T, S, ot, os_, cfg, seed=3)


def _batch(i):
    g = torch.Generator().manual_seed(i)
    buf = torch.randn(4 + 12, 1, 8, 8, generator=g)
    return buf[:4], torch.randint(0, 4, (4,), generator=g), buf[4:10], buf[10:]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_state_dict_resume_is_exact(precision):
    """Save after 2 steps, continue 2 more; a fresh step loaded from the save does the same."""
    T, S, ot, os_, step = _setup(precision)
    for i in range(2):
        step(*_batch(i))
    saved = copy.deepcopy({"T": T.state_dict(), "S": S.state_dict(), "ot": ot.state_dict(),
                           "os": os_.state_dict(), "step": step.state_dict(),
                           "rng": torch.get_rng_state()})
    assert saved["step"]["t"] == 2 and float(saved["step"]["baseline"]) != 0.0
    if precision == "fp16":
        assert saved["step"]["student_scaler"] is not None
    ref = [step(*_batch(i)) for i in (2, 3)]

    T2, S2, ot2, os2, step2 = _setup(precision)
    T2.load_state_dict(saved["T"])
    S2.load_state_dict(saved["S"])
    ot2.load_state_dict(saved["ot"])
    os2.load_state_dict(saved["os"])
    step2.load_state_dict(saved["step"])
    torch.set_rng_state(saved["rng"])
    got = [step2(*_batch(i)) for i in (2, 3)]
    for a, b in zip(ref, got):
        for k in ("h", "teacher_loss", "student_loss"):
            assert torch.equal(a[k], b[k]), k
    for p, q in zip(list(T.parameters()) + list(S.parameters()), list(T2.parameters()) + list(S2.parameters())):
        assert torch.equal(p, q)
    assert step2.t == 4
