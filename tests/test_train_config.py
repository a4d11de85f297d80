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
    assert coerce_value("labels", "none") is None  # derived from the data
    for name, bad in (("steps", "1.5"), ("steps", "true"), ("nesterov", "maybe"),
                      ("teacher_lr", "fast"), ("model_kwargs", "[1, 2]"), ("batch_size", "none")):
        with pytest.raises(UserError):
            coerce_value(name, bad)


def test_named_preset_applies_only_when_asked(tmp_path):
    """A bare --dataset gets the recipe sized to the data, never a paper recipe (issue 11.1)."""
    for ds in ("cifar10", "cifar100", "svhn", "imagefolder"):
        cfg = resolve(flags={"dataset": ds, "data": str(tmp_path)})
        assert (cfg.preset, cfg.model, cfg.labels, cfg.finetune_epochs) == ("auto", "small_cnn", None, 0)
        assert (cfg.steps, cfg.batch_size, cfg.image_size) == (1000, 16, None)
    cfg = resolve(preset="cifar10-4k", flags={"dataset": "cifar10", "data": str(tmp_path)})
    assert (cfg.preset, cfg.model, cfg.labels, cfg.batch_size, cfg.mu) == ("cifar10-4k", "wrn28_2", 4000, 128, 7)
    cfg = resolve(preset="imagenet-10pct", flags={"data": str(tmp_path)})
    assert cfg.model == "resnet50"
    y = tmp_path / "p.yaml"
    y.write_text("preset: cifar100-10k\n")
    assert resolve(config_file=str(y), flags={"data": str(tmp_path)}).model == "wrn28_8"
    assert resolve().preset == "digits" and resolve().labels == 50


def test_labels_derived_from_the_data():
    import torch

    from mplfast.train.builders import default_labels

    y = torch.arange(3).repeat_interleave(80)  # 240 train images, 3 classes
    assert default_labels(y, 3, extra_unlabeled=False) == 24  # 10 %, class-balanced
    assert default_labels(y.view(3, 80)[:, :10].flatten(), 3, extra_unlabeled=False) == 12  # at least 4 per class
    assert default_labels(y, 3, extra_unlabeled=True) == 240  # all labeled, extra unlabeled set
    y2 = torch.cat([torch.zeros(100), torch.ones(5)]).long()  # the smallest class bounds it
    assert default_labels(y2, 2, extra_unlabeled=False) == 10
    assert default_labels(y2, 2, extra_unlabeled=True) == 10


def test_cifar10_4k_is_the_paper_recipe():
    p = PRESETS["cifar10-4k"]
    assert p["steps"] == 300_000 and p["batch_size"] == 128 and p["mu"] == 7
    assert p["teacher_lr"] == p["student_lr"] == 0.05 and p["student_wait_steps"] == 3000
    assert p["warmup_steps"] == 5000 and p["label_smoothing"] == 0.15
    assert (p["temperature"], p["threshold"], p["lambda_u"], p["uda_steps"]) == (0.7, 0.6, 8.0, 5000)
    assert p["finetune_epochs"] == 625 and p["finetune_lr"] == 3e-5


def test_every_preset_resolves(tmp_path):
    # an image-folder layout: a preset that names no data set (digits, auto) gets
    # --dataset imagefolder inferred from --data
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.png").write_bytes(b"")
    for name in PRESETS:
        cfg = resolve(preset=name, flags={"data": str(tmp_path)})
        assert cfg.preset == name
        assert cfg.dataset == PRESETS[name].get("dataset", "imagefolder")


def test_mpl_fields_map_onto_mplconfig():
    from mplfast.config import MPLConfig

    cfg = resolve(sets=["meta_signal=grad_dot", "pseudo_label=sample", "meta_sign=-1"])
    m = MPLConfig(**cfg.mpl_kwargs())
    assert (m.meta_signal, m.pseudo_label, m.meta_sign) == ("grad_dot", "sample", -1)
    assert TrainConfig(method="uda").mpl_kwargs()["meta_signal"] == "none"


def test_unknown_key_suggests():
    with pytest.raises(UserError, match="did you mean teacher_lr"):
        resolve(sets=["teacher_lrr=1"])


# ---- MPLConfig nested in TrainConfig (every MPLConfig field configurable, flat aliases kept) ----
def _example_value(name: str):
    """A valid non-default value for each MPLConfig field (written generically over fields)."""
    import dataclasses

    from mplfast.config import MPLConfig

    f = {x.name: x for x in dataclasses.fields(MPLConfig)}[name]
    d = f.default
    if isinstance(d, bool):
        return not d
    if name == "meta_sign":
        return -1
    if name == "uda_steps":
        return 123
    if isinstance(d, float):
        return 0.5 if d != 0.5 else 0.25
    if name == "grad_clip":
        return 2.0
    if isinstance(d, str):  # pick another allowed value from the module's choice tuples
        import mplfast.config as mc

        for tup in (mc.META_SIGNALS, mc.PSEUDO_LABELS, mc.PSEUDO_LABEL_VIEWS, mc.PRECISIONS,
                    getattr(mc, "L_OLD_FORWARDS", ())):
            if d in tup:
                return next(v for v in tup if v != d)
    if isinstance(d, int):
        return d + 1
    return None  # a field this helper cannot invent a value for (checked by name below)


def test_every_mplconfig_field_is_configurable_three_ways(tmp_path):
    import dataclasses

    from mplfast.config import MPLConfig

    tried = []
    for f in dataclasses.fields(MPLConfig):
        v = _example_value(f.name)
        if v is None:
            continue
        tried.append(f.name)
        if f.name == "pseudo_label" and v == "soft":
            v = "sample"
        flat = resolve(sets=[f"{f.name}={v}"])
        dotted = resolve(sets=[f"mpl.{f.name}={v}"])
        y = tmp_path / f"{f.name}.yaml"
        y.write_text(f"mpl: {{{f.name}: {v}}}\n")
        nested = resolve(config_file=str(y))
        for cfg in (flat, dotted, nested):
            assert getattr(cfg.mpl, f.name) == v, f.name
            assert getattr(cfg, f.name) == v  # the flat read alias
            assert cfg.mpl_kwargs()[f.name] == v
    assert len(tried) >= len(dataclasses.fields(MPLConfig)) - 1, tried


def test_nested_yaml_and_flat_yaml_agree(tmp_path):
    nested = tmp_path / "n.yaml"
    nested.write_text("mpl: {meta_signal: grad_dot, threshold: 0.8}\nsteps: 3\n")
    flat = tmp_path / "f.yaml"
    flat.write_text("meta_signal: grad_dot\nthreshold: 0.8\nsteps: 3\n")  # an old run's config.yaml
    a, b = resolve(config_file=str(nested)), resolve(config_file=str(flat))
    assert a == b and a.mpl.meta_signal == "grad_dot" and a.mpl.threshold == 0.8
    assert a.mpl.temperature == TrainConfig().mpl.temperature  # a partial mapping merges


def test_saved_config_round_trips(tmp_path):
    from mplfast.train.config import save_yaml

    cfg = resolve(sets=["mpl.threshold=0.9", "pseudo_label=sample", "steps=7"])
    p = tmp_path / "c.yaml"
    save_yaml(cfg, str(p))
    assert resolve(config_file=str(p)) == cfg


def test_mpl_errors_name_the_users_field():
    for s, want in (("threshold=2.5", "threshold must be in [0, 1]"),
                    ("mpl.threshold=2.5", "threshold must be in [0, 1]"),
                    ("mpl.meta_sign=3", "meta_sign must be 1 or -1")):
        with pytest.raises(UserError) as ei:
            resolve(sets=[s])
        assert want in str(ei.value) and "MPLConfig" not in str(ei.value)
    with pytest.raises(UserError, match="did you mean mpl.threshold"):
        resolve(sets=["mpl.thresold=0.5"])
    with pytest.raises(UserError, match="mpl: expected a mapping"):
        resolve(sets=["mpl=3"])


def test_uda_forces_meta_signal_none_and_precision_is_shared():
    cfg = resolve(flags={"method": "uda"})
    assert cfg.mpl_kwargs()["meta_signal"] == "none"
    cfg = resolve(sets=["precision=bf16"])
    assert cfg.mpl_kwargs()["precision"] == "bf16" == cfg.precision
    cfg = resolve(sets=["mpl.precision=fp32"])
    assert cfg.precision == "fp32" == cfg.mpl.precision


def test_flat_mpl_keywords_in_constructor_and_replace():
    import dataclasses

    cfg = TrainConfig(threshold=0.9)
    assert cfg.mpl.threshold == 0.9 and cfg.mpl.uda_steps == TrainConfig().mpl.uda_steps
    cfg2 = dataclasses.replace(cfg, meta_signal="grad_dot")  # what ablate does
    assert (cfg2.mpl.meta_signal, cfg2.mpl.threshold) == ("grad_dot", 0.9)
