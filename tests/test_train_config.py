"""TrainConfig layering (defaults -> preset -> YAML -> flags -> --set), typed parsing, presets."""
from __future__ import annotations

import pytest

from mplfast.errors import UserError
from mplfast.train.config import TrainConfig, coerce_value, resolve
from mplfast.train.presets import PRESETS


def test_defaults_are_the_digits_preset():
    cfg = resolve()
    assert cfg == resolve(preset="digits")
    assert (cfg.dataset, cfg.labels, cfg.method, cfg.model) == ("digits", 50, "mpl", "small_cnn")


def test_layer_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: digits\nsteps: 7\nseed: 3\nthreshold: 0.9\n")
    cfg = resolve(config_file=str(f), flags={"steps": 11}, sets=["seed=5"])
    assert (cfg.steps, cfg.seed, cfg.threshold) == (11, 5, 0.9)  # flag > file, --set > file
    cfg = resolve(config_file=str(f), flags={"steps": 11}, sets=["steps=13"])
    assert cfg.steps == 13  # --set is applied last


def test_typed_parsing():
    assert coerce_value("steps", "3e5") == 300000
    assert coerce_value("teacher_lr", "1e-3") == pytest.approx(1e-3)
    assert coerce_value("teacher_lr", "2") == 2.0 and isinstance(coerce_value("teacher_lr", "2"), float)
    assert coerce_value("nesterov", "false") is False
    assert coerce_value("nesterov", "yes") is True
    assert coerce_value("grad_clip", "none") is None
    assert coerce_value("grad_clip", "5") == 5.0
    assert coerce_value("data", "123") == "123"  # strings stay strings (no YAML number)
    assert coerce_value("model_kwargs", "{dropout: 0.2, widen_factor: 4}") == {"dropout": 0.2,
                                                                             "widen_factor": 4}
    assert coerce_value("compile", "true") == "default"
    for name, bad in (("steps", "1.5"), ("steps", "true"), ("nesterov", "maybe"),
                      ("teacher_lr", "fast"), ("model_kwargs", "[1, 2]"), ("labels", "none")):
        with pytest.raises(UserError):
            coerce_value(name, bad)


def test_dataset_picks_its_preset(tmp_path):
    cfg = resolve(flags={"dataset": "cifar10", "data": str(tmp_path)})
    assert (cfg.preset, cfg.model, cfg.labels, cfg.batch_size, cfg.mu) == ("cifar10-4k", "wrn28_2", 4000, 128, 7)
    cfg = resolve(flags={"dataset": "cifar100", "data": str(tmp_path)})
    assert (cfg.model, cfg.labels) == ("wrn28_8", 10000)
    cfg = resolve(flags={"dataset": "imagefolder", "data": str(tmp_path)})
    assert cfg.model == "resnet50"


def test_cifar10_4k_is_the_paper_recipe():
    p = PRESETS["cifar10-4k"]
    assert p["steps"] == 300_000 and p["batch_size"] == 128 and p["mu"] == 7
    assert p["teacher_lr"] == p["student_lr"] == 0.05 and p["student_wait_steps"] == 3000
    assert p["warmup_steps"] == 5000 and p["label_smoothing"] == 0.15
    assert (p["temperature"], p["threshold"], p["lambda_u"], p["uda_steps"]) == (0.7, 0.6, 8.0, 5000)
    assert p["finetune_epochs"] == 625 and p["finetune_lr"] == 3e-5


def test_every_preset_resolves(tmp_path):
    for name in PRESETS:
        cfg = resolve(preset=name, flags={"data": str(tmp_path)})
        assert cfg.preset == name


def test_mpl_fields_map_onto_mplconfig():
    from mplfast.config import MPLConfig

    cfg = resolve(sets=["meta_signal=grad_dot", "pseudo_label=sample", "meta_sign=-1"])
    m = MPLConfig(**cfg.mpl_kwargs())
    assert (m.meta_signal, m.pseudo_label, m.meta_sign) == ("grad_dot", "sample", -1)
    assert TrainConfig(method="uda").mpl_kwargs()["meta_signal"] == "none"


def test_unknown_key_suggests():
    with pytest.raises(UserError, match="did you mean teacher_lr"):
        resolve(sets=["teacher_lrr=1"])
