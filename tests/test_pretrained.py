"""Starting from pretrained weights (issue 22): weights files written here, offline; loading is
exact outside the classifier head, the head is new, the backbone gets its own lr, bad files are
one line and exit 2, and no weights file runs code."""
from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch
import yaml
from imagefolder_fixtures import TINY, one_line_error, write_flat_folder
from safetensors.torch import load_file, save_file

from mplfast import create_model
from mplfast.cli import main
from mplfast.errors import UserError
from mplfast.models.pretrained import classifier_prefixes, head_parameters, read_input_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# fast digits runs: the digits preset (small CNN, width 16) with a few steps
FAST = ["--set", "batch_size=8", "--set", "mu=2", "--set", "warmup_steps=1",
        "--set", "log_interval=2", "--set", "progress=none", "--set", "tensorboard=false",
        "--set", "plot=false"]


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _write(model: torch.nn.Module, path, fmt: str) -> dict[str, torch.Tensor]:
    """Save ``model``'s state dict at ``path`` as safetensors or torch.save; the tensors."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return sd


def _assert_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor], num_classes: int) -> None:
    """Every tensor outside the head equals the file's; the head has the new class count."""
    got = model.state_dict()
    heads = classifier_prefixes(model)
    body = [k for k in got if not any(k.startswith(h) for h in heads)]
    assert body and all(torch.equal(got[k], sd[k]) for k in body)
    assert got["fc.weight"].shape[0] == num_classes and got["fc.bias"].shape == (num_classes,)


@pytest.mark.parametrize("name,kwargs,chans", [("small_cnn", {"width": 8}, 1), ("wrn28_2", {}, 3)])
@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("torch", ".pt"),
                                        ("torch", ".pth")])
def test_backbone_loaded_exactly_head_new(tmp_path, name, kwargs, chans, fmt, suffix):
    torch.manual_seed(1)
    src = create_model(name, 10, in_chans=chans, **kwargs)
    sd = _write(src, tmp_path / f"w{suffix}", fmt)
    torch.manual_seed(2)
    m = create_model(name, 4, in_chans=chans, pretrained=str(tmp_path / f"w{suffix}"), **kwargs)
    _assert_loaded(m, sd, 4)
    # same classes: the head is the file's too (timm's rule: only shapes that differ are new)
    same = create_model(name, 10, in_chans=chans, pretrained=str(tmp_path / f"w{suffix}"), **kwargs)
    assert all(torch.equal(v, sd[k]) for k, v in same.state_dict().items())


def test_backbone_only_file_and_wrapped_state_dicts(tmp_path):
    src = create_model("small_cnn", 10, width=8)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    save_file(sd, str(tmp_path / "backbone.safetensors"))
    m = create_model("small_cnn", 3, width=8, pretrained=str(tmp_path / "backbone.safetensors"))
    _assert_loaded(m, sd, 3)
    # {"state_dict": ...} around it, with DDP's "module." prefix
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               tmp_path / "ckpt.pth")
    _assert_loaded(create_model("small_cnn", 3, width=8, pretrained=str(tmp_path / "ckpt.pth")),
                   sd, 3)


# torchvision's ResNet-50 state dict, written out from its architecture (not from mplfast's
# mapping): the stem conv1/bn1, layer1..layer4 of 3/4/6/3 bottlenecks (conv1 1x1, conv2 3x3,
# conv3 1x1 x4, each with its batch norm; the first block of each layer has downsample.0 conv and
# downsample.1 batch norm), and fc. docs/pretrained.md lists the same key mapping.
def _torchvision_resnet50_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{n}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    cin = 64
    for i, blocks in enumerate((3, 4, 6, 3), start=1):
        planes = 64 * 2 ** (i - 1)
        for b in range(blocks):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    shapes["fc.weight"], shapes["fc.bias"] = (num_classes, 2048), (num_classes,)
    return shapes


# the documented mapping: layer<i>.<b> -> stages.<offset_i + b>
_STAGE_OFFSET = {1: 0, 2: 3, 3: 7, 4: 13}


def _documented_name(tv_key: str) -> str:
    head, rest = tv_key.split(".", 1)
    if head == "conv1":
        return "stem.0." + rest
    if head == "bn1":
        return "stem.1." + rest
    if head == "fc":
        return tv_key
    block, tail = rest.split(".", 1)
    return f"stages.{_STAGE_OFFSET[int(head[5:])] + int(block)}.{tail}"


@pytest.mark.slow
def test_resnet50_loads_torchvision_layout(tmp_path):
    shapes = _torchvision_resnet50_shapes()
    assert len(shapes) == 320  # torchvision's resnet50().state_dict() has 320 entries
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
              else torch.randn(s, generator=g)) for k, s in shapes.items()}
    torch.save(sd, tmp_path / "resnet50-torchvision.pth")
    m = create_model("resnet50", 7, pretrained=str(tmp_path / "resnet50-torchvision.pth"))
    got = m.state_dict()
    assert len(got) == len(shapes)
    for k, v in sd.items():
        name = _documented_name(k)
        if k.startswith("fc."):
            assert got[name].shape[0] == 7
        else:
            assert torch.equal(got[name], v), k
    # the project's own layout loads as well (a run's export)
    save_file({k: v.contiguous() for k, v in got.items()}, str(tmp_path / "own.safetensors"))
    again = create_model("resnet50", 7, pretrained=str(tmp_path / "own.safetensors"))
    assert all(torch.equal(v, got[k]) for k, v in again.state_dict().items())


def test_wrong_architecture_names_first_missing_and_unexpected(tmp_path):
    _write(create_model("small_cnn", 10, width=8), tmp_path / "cnn.safetensors", "safetensors")
    with pytest.raises(UserError) as e:
        create_model("wrn28_2", 10, pretrained=str(tmp_path / "cnn.safetensors"))
    msg = str(e.value)
    assert "missing 'conv1.weight'" in msg and "unexpected 'features.0.weight'" in msg
    # same names, other widths: a shape outside the head is refused, naming it
    with pytest.raises(UserError, match=r"features.0.weight has shape \(8, 3, 3, 3\) in the file, "
                                        r"the model needs \(16, 3, 3, 3\)"):
        create_model("small_cnn", 10, width=16, pretrained=str(tmp_path / "cnn.safetensors"))


class _RunsCode:
    """Unpickling this calls exec: what a hostile weights file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_weights_file_never_runs_code(tmp_path, how, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    payload = {"conv.weight": torch.zeros(1), "x": _RunsCode(str(marker))}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="would run code"):
        create_model("small_cnn", 10, pretrained=str(path))
    rc = main(["train", "--pretrained", str(path), "--out", str(tmp_path / "run"), *FAST])
    assert "would run code" in one_line_error(rc, capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "run").exists()


def _bad_inputs(tmp_path) -> list[tuple[list[str], str]]:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "nodict.pt")
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    _write(create_model("wrn", 10, depth=10, widen_factor=1), tmp_path / "wrn.pt", "torch")
    return [
        (["--pretrained", str(tmp_path / "missing.pt")], "pretrained weights file not found"),
        (["--pretrained", str(tmp_path)], "must be a file"),
        (["--pretrained", str(tmp_path / "list.pt")], "is not a state dict"),
        (["--pretrained", str(tmp_path / "nodict.pt")], "values are not all tensors"),
        (["--pretrained", str(tmp_path / "text.safetensors")], "cannot read"),
        (["--pretrained", str(tmp_path / "wrn.pt")], "missing 'features.0.weight'"),
        (["--pretrained", "timm"], "works only with timm/<name> models"),
        (["--pretrained", str(tmp_path / "wrn.pt"), "--pretrained-student", "both"],
         "invalid choice"),
        (["--backbone-lr-scale", "-1"], "backbone_lr_scale must be a finite number >= 0"),
        (["--mean", "0.5,0.5", "--std", "0.2"], "mean and std need one value per channel"),
        (["--mean", "0.5"], "give both mean and std"),
        (["--mean", "0.4,0.4,0.4", "--std", "0.2,0.2,0.2"], "the digits images have 1 channel"),
    ]


def _exit_status(argv: list[str]) -> int:
    """main()'s status, also for argparse's refusals (which exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    for extra, expected in _bad_inputs(tmp_path):
        out = tmp_path / "run"
        rc = _exit_status(["train", "--out", str(out), "--steps", "2", *extra, *FAST])
        line = one_line_error(rc, capsys.readouterr().err)
        assert expected in line, (extra, line)
        assert not out.exists(), extra  # refused before the run folder is made


def test_timm_without_timm_is_one_line(tmp_path, capsys):
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a torchvision built for another torch
        pass
    else:
        pytest.skip("timm is importable here; the message for a missing timm cannot be shown")
    rc = main(["train", "--model", "timm/resnet18", "--pretrained", "timm",
               "--out", str(tmp_path / "run"), *FAST])
    line = one_line_error(rc, capsys.readouterr().err)
    assert "needs timm" in line and "--no-deps" in line


def test_param_groups_backbone_lr(tmp_path):
    from mplfast.train.builders import make_optimizer, make_scheduler
    from mplfast.train.config import TrainConfig

    m = create_model("small_cnn", 5, width=8)
    opt = make_optimizer(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         backbone_lr_scale=0.1)
    head = {id(p) for p in head_parameters(m)}
    assert head == {id(m.fc.weight), id(m.fc.bias)}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in m.parameters())  # each exactly once
    for g in opt.param_groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1
        assert g["lr"] == pytest.approx(0.05 if in_head.pop() else 0.005)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # what the metrics log
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd[id(m.fc.weight)] == 5e-4 and wd[id(m.fc.bias)] == 0.0
    assert wd[id(m.features[0].weight)] == 5e-4 and wd[id(m.features[1].weight)] == 0.0
    # the schedule scales every group alike: the 10x ratio holds through warmup and decay
    sched = make_scheduler(opt, TrainConfig(warmup_steps=2), 10, 0)
    for _ in range(5):
        opt.step()
        sched.step()
        lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        assert lrs[id(m.fc.weight)] > 0
        assert lrs[id(m.features[0].weight)] == pytest.approx(0.1 * lrs[id(m.fc.weight)])
    # scale 1: the two weight-decay groups as before, no lr of their own
    plain = make_optimizer(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert len(plain.param_groups) == 2 and "lr_scale" not in plain.param_groups[0]


def _digits_weights(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    """A digits-sized small CNN (the preset's width 16), 10 classes, as safetensors."""
    torch.manual_seed(5)
    path = tmp_path / "digits-cnn.safetensors"
    return str(path), _write(create_model("small_cnn", 10, in_chans=1, width=16), path,
                             "safetensors")


def _models(out) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(os.path.join(out, "last.pt"), weights_only=True)["models"]


def test_digits_run_starts_from_weights_and_records_them(tmp_path, capsys):
    path, sd = _digits_weights(tmp_path)
    # steps=0: last.pt holds the models as they start
    out = tmp_path / "start"
    assert main(["train", "--pretrained", path, "--steps", "0", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    models = _models(out)
    for key in ("teacher", "student"):
        body = {k: v for k, v in models[key].items() if not k.startswith("fc.")}
        assert all(torch.equal(v, sd[k]) for k, v in body.items()), key
    # --pretrained-student none: the student starts from scratch, the teacher from the file
    out = tmp_path / "scratch-student"
    assert main(["train", "--pretrained", path, "--pretrained-student", "none", "--steps", "0",
                 "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    models = _models(out)
    assert torch.equal(models["teacher"]["features.0.weight"], sd["features.0.weight"])
    assert not torch.equal(models["student"]["features.0.weight"], sd["features.0.weight"])
    # a short run: summary.json and config.yaml record the source and its sha256
    out = tmp_path / "run"
    assert main(["train", "--pretrained", path, "--steps", "6", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    s = json.load(open(out / "summary.json"))
    assert s["pretrained"]["source"] == path and s["pretrained"]["sha256"] == _sha256(path)
    assert s["pretrained"]["backbone_lr_scale"] == {"teacher": 0.1, "student": 0.1}
    cfg = yaml.safe_load(open(out / "config.yaml"))
    assert cfg["pretrained"] == path and cfg["pretrained_sha256"] == _sha256(path)
    assert "test_acc" in text
    # the recorded hash guards a rerun of the config against a changed file
    _write(create_model("small_cnn", 10, in_chans=1, width=16), path, "safetensors")
    rc = main(["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again")])
    assert "have changed since this config recorded them" in one_line_error(
        rc, capsys.readouterr().err)


def test_resume_needs_no_weights_file(tmp_path, capsys):
    """A resumed run's weights come from its checkpoint: the pretrained file may be gone."""
    path, _ = _digits_weights(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--pretrained", path, "--steps", "4", "--out", str(out), *FAST]) == 0
    os.remove(path)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert "holds a finished run" in capsys.readouterr().out


def test_imagefolder_takes_size_and_normalization_from_the_weights(tmp_path, capsys):
    """A timm-style folder (weights + config.json with pretrained_cfg): the image folder is
    resized to the weights' input size and normalized with their mean/std; the export says so."""
    data = write_flat_folder(tmp_path / "flat", per_class=12, size=20)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    _write(create_model("small_cnn", 1000, in_chans=3, width=8), wdir / "model.safetensors",
           "safetensors")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (wdir / "config.json").write_text(json.dumps({"architecture": "small_cnn", "pretrained_cfg": {
        "input_size": [3, 12, 12], "mean": mean, "std": std, "num_classes": 1000}}))
    got = read_input_config(str(wdir / "model.safetensors"))
    assert (got.image_size, got.mean, got.std) == (12, tuple(mean), tuple(std))
    out = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data", str(data), "--out", str(out),
            "--steps", "4", "--labels", "6", "--pretrained", str(wdir / "model.safetensors"),
            *TINY]
    assert main(args) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "images     12x12, 3 channel(s)" in text and "new head" in text
    cfg = yaml.safe_load(open(out / "config.yaml"))
    assert cfg["image_size"] == 12 and cfg["mean"] == mean and cfg["std"] == std
    export = tmp_path / "export.safetensors"
    assert main(["export", str(out), "--out", str(export)]) == 0
    meta = json.load(open(tmp_path / "export.json"))
    assert meta["image_size"] == [12, 12] and meta["mean"] == pytest.approx(mean)
    # flags win over the weights' config
    out2 = tmp_path / "run2"
    assert main([*args[:6], str(out2), *args[7:], "--image-size", "10", "--mean", "0.5,0.5,0.5",
                 "--std", "0.25,0.25,0.25"]) == 0
    cfg = yaml.safe_load(open(out2 / "config.yaml"))
    assert cfg["image_size"] == 10 and cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.25] * 3


def test_export_of_a_run_feeds_the_next(tmp_path, capsys):
    """mplfast export -> --pretrained: the export header's normalization is the next run's."""
    out = tmp_path / "sup"
    assert main(["train", "--method", "supervised", "--steps", "4", "--out", str(out),
                 *FAST]) == 0
    export = tmp_path / "sup.safetensors"
    assert main(["export", str(out), "--out", str(export)]) == 0
    meta = json.load(open(tmp_path / "sup.json"))
    out2 = tmp_path / "mpl"
    assert main(["train", "--pretrained", str(export), "--steps", "2", "--out", str(out2),
                 "--backbone-lr-scale", "0.5", *FAST]) == 0
    capsys.readouterr()
    s = json.load(open(out2 / "summary.json"))
    assert s["pretrained"]["mean"] == meta["mean"] and s["pretrained"]["std"] == meta["std"]
    assert s["pretrained"]["backbone_lr_scale"] == {"teacher": 0.5, "student": 0.5}


def test_model_flag_drops_the_presets_model_kwargs(tmp_path, capsys):
    rc = main(["train", "--model", "wrn", "--print-config", "--out", str(tmp_path / "r")])
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"] == "wrn" and cfg["model_kwargs"] == {}
    rc = main(["train", "--model", "wrn", "--set", "model_kwargs={depth: 10}", "--print-config"])
    assert rc == 0 and yaml.safe_load(capsys.readouterr().out)["model_kwargs"] == {"depth": 10}


def test_ablate_with_pretrained_reuses_its_runs(tmp_path, capsys):
    path, _ = _digits_weights(tmp_path)
    args = ["ablate", "--seeds", "1", "--variants", "supervised", "--steps", "3",
            "--pretrained", path, "--out", str(tmp_path / "abl"), *FAST]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "starting from" in first and _sha256(path)[:12] in first
    assert main(args) == 0
    assert "reused finished run" in capsys.readouterr().out


# ------------------------------------------------------------------------------- timm
def _timm():
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision built for another torch
        pytest.skip(f"timm is not importable here ({type(e).__name__}: {str(e)[:80]}); the "
                    "timm path is tested where it is (see README for the install)")
    return timm


def test_timm_model_from_a_file_and_from_timm_weights(tmp_path):
    timm = _timm()
    torch.manual_seed(0)
    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    sd = _write(src, tmp_path / "model.safetensors", "safetensors")
    m = create_model("timm/resnet18", 6, pretrained=str(tmp_path / "model.safetensors"))
    _assert_loaded(m, sd, 6)
    assert classifier_prefixes(m) == ["fc."]
    # "timm": timm's own loader, pointed at a local file (timm's pretrained_cfg_overlay), so
    # the test needs no download; the file that timm loaded is the one hashed
    from mplfast.models.pretrained import inspect_source

    overlay = {"pretrained_cfg_overlay": {"file": str(tmp_path / "model.safetensors")}}
    m = create_model("timm/resnet18", 6, pretrained="timm", **overlay)
    _assert_loaded(m, sd, 6)
    info = inspect_source("timm", "timm/resnet18", overlay)
    assert info.sha256 == _sha256(tmp_path / "model.safetensors")
    assert info.input.image_size == 224 and info.input.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.slow
def test_timm_resnet50_weights_load_into_the_projects_resnet50(tmp_path):
    """timm's ResNet-50 uses torchvision's layout: its state dict loads into mplfast's."""
    timm = _timm()
    sd = _write(timm.create_model("resnet50", pretrained=False), tmp_path / "r50.safetensors",
                "safetensors")
    m = create_model("resnet50", 4, pretrained=str(tmp_path / "r50.safetensors"))
    got = m.state_dict()
    assert all(torch.equal(got[_documented_name(k)], v) for k, v in sd.items()
               if not k.startswith("fc."))


@pytest.mark.slow
def test_sigterm_resume_with_pretrained_is_bitwise_and_needs_no_file(tmp_path):
    """Stopped mid-run and resumed after the weights file is gone: the same final models as an
    uninterrupted run (the resumed optimizers get the same per-group lrs from the config)."""
    import signal
    import subprocess
    import sys
    import time

    path, _ = _digits_weights(tmp_path)
    cmd = [sys.executable, "-m", "mplfast", "train", "--steps", "40", "--pretrained", path,
           "--set", "ckpt_interval=7", "--set", "warmup_steps=5", "--set", "log_interval=1",
           "--set", "tensorboard=false", "--set", "plot=false", "--set", "progress=plain"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run([*cmd, "--out", str(ref)], check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([*cmd, "--out", str(cut)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (cut / "metrics.jsonl").is_file() or len(open(cut / "metrics.jsonl").readlines()) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    stopped = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert 3 <= stopped["step"] < 40
    os.remove(path)
    done = subprocess.run([sys.executable, "-m", "mplfast", "train", "--out", str(cut), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = _models(ref), _models(cut)
    for key in ("teacher", "student", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.slow
def test_pretrained_digits_example_smoke(tmp_path, capsys):
    """examples/pretrained_digits.py (the README's measurement) runs end to end at a tiny size."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "pretrained_digits.py"
    spec = importlib.util.spec_from_file_location("pretrained_digits_example", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        out = tmp_path / "pd"
        assert mod.main(["--seeds", "2", "--steps", "4", "--pretrain-steps", "4",
                         "--out", str(out)]) == 0
    finally:
        sys.modules.pop(spec.name, None)
    r = json.load(open(out / "results.json"))
    assert [x["seed"] for x in r["rows"]] == [0, 1] and r["paired"]["n"] == 2
    for x in r["rows"]:
        assert x["backbone_sha256"] == _sha256(x["backbone"])
        assert not any(k.startswith("fc.") for k in load_file(x["backbone"]))
    assert "paired difference" in (out / "results.md").read_text()
