"""The CLI as a new user meets it (issue 11): the start-up summary, the run folder's life,
reusing a run's config.yaml, the reproducibility record, and the discoverable settings."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

from mplfast.cli import main

QUICK = ["--set", "model_kwargs={width: 4}", "--set", "eval_interval=0", "--set", "plot=false",
         "--set", "tensorboard=false", "--set", "progress=plain", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _image_folder(root, classes=("cat", "dog", "fox"), n_train=20, n_val=5, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                a = (rng.random((16, 16, 3)) * 60 + ci * 80).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_summary_block_comes_first_and_names_the_recipe(tmp_path, capsys):
    data = _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "imagefolder", "--data", str(data), "--steps", "2",
               "--out", str(out), *QUICK])
    assert rc == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("mplfast train: mpl on imagefolder")
    end = next(i for i, ln in enumerate(lines) if ln.startswith("  output "))
    block = "\n".join(lines[:end + 1])
    # train/ has 20 images a class; the default val_fraction holds round(20 x 0.1) of each
    # class out of the training pool for best.pt (splits.holdout_split), val/ is the test split
    from mplfast.train.config import TrainConfig

    per_val = round(20 * TrainConfig().val_fraction)
    n_train, n_val = 3 * (20 - per_val), 3 * per_val
    assert n_val > 0
    for want in ("preset     auto", f"{n_train} train, {n_val} validation, 15 test, "
                 f"{n_train} unlabeled", f"validation {n_val} images", "classes    3",
                 "images     32x32, 3 channel(s)", "storage    ", "held in memory",
                 "labeled    12 (4 per class",
                 "teacher small_cnn", "student small_cnn", "params", "device     cpu, fp32",
                 "steps      2 (batch 16 labeled + 48 unlabeled; no finetune)", "memory",
                 f"output     {out}"):
        assert want in block, (want, block)
    # the block precedes any training output, and the storage decision is not said twice
    assert text.index("output ") < text.index("[mpl train]")
    assert text.count("held in memory") == 1
    saved = yaml.safe_load(open(out / "config.yaml"))
    assert saved["labels"] == 12 and saved["preset"] == "auto"  # concrete, reusable


def test_failed_first_step_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """A run that fails before its first step completes removes the folder it created."""
    from mplfast import step as step_mod

    def boom(self, *a, **k):
        raise RuntimeError("simulated failure in the first step")

    monkeypatch.setattr(step_mod.MPLStep, "__call__", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        main(["train", "--steps", "2", *QUICK])
    assert not (tmp_path / "runs").exists()  # not even the runs/ it created
    # a folder the user made stays, but holds nothing of the failed run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="simulated"):
        main(["train", "--steps", "2", "--out", str(mine), *QUICK])
    assert sorted(os.listdir(mine)) == ["notes.txt"]


def test_default_out_dir_is_created_only_when_the_run_starts(tmp_path, capsys):
    assert main(["train", "--set", "model=nosuchnet", "--steps", "1", *QUICK]) == 2
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--steps", "2", *QUICK]) == 0
    assert sorted(os.listdir(tmp_path / "runs")) == ["digits-mpl-seed0"]


def test_a_runs_config_yaml_reproduces_it(tmp_path, capsys):
    a = tmp_path / "a"
    assert main(["train", "--steps", "4", "--seed", "3", "--out", str(a),
                 "--set", "mpl.threshold=0.5", *QUICK]) == 0
    b = tmp_path / "b"
    assert main(["train", "--config", str(a / "config.yaml"), "--out", str(b)]) == 0
    sa = torch.load(a / "checkpoint.pt", weights_only=False)
    sb = torch.load(b / "checkpoint.pt", weights_only=False)
    for key in ("student", "teacher"):
        for name, t in sa[key].items():
            assert torch.equal(t, sb[key][name]), f"{key}.{name}"
    ca, cb = yaml.safe_load(open(a / "config.yaml")), yaml.safe_load(open(b / "config.yaml"))
    assert {k: v for k, v in ca.items() if k != "out"} == {k: v for k, v in cb.items() if k != "out"}
    # without --out the reused config starts a fresh folder instead of colliding with a/
    assert main(["train", "--config", str(a / "config.yaml")]) == 0
    assert (tmp_path / "runs" / "digits-mpl-seed3" / "checkpoint.pt").is_file()


def test_reproducibility_record(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--steps", "2", "--out", str(out), *QUICK]
    assert main(argv) == 0
    rec = json.load(open(out / "summary.json"))["provenance"]
    import mplfast

    assert rec["mplfast"] == mplfast.__version__ and rec["torch"] == torch.__version__
    assert rec["python"] and rec["cpu"]["model"] and isinstance(rec["cpu"]["flags"], list)
    assert rec["command"] == "mplfast " + " ".join(a if " " not in a and "{" not in a else f"'{a}'"
                                                     for a in argv)
    assert "decoder" in rec and "native_build" in rec and "gpu" in rec and "git_commit" in rec
    header = [ln for ln in open(out / "config.yaml") if ln.startswith("#")]
    assert any(ln.startswith(f"# mplfast {mplfast.__version__}") for ln in header)
    assert any(ln.startswith("# command: mplfast train") for ln in header)
    assert any(ln.startswith("# CPU: ") for ln in header)


def test_image_decoder_is_recorded():
    from mplfast.train.provenance import image_decoder

    assert image_decoder("imagefolder") in ("DALI", "PIL")
    assert image_decoder("digits").startswith("none")


def test_help_config_lists_every_field_and_a_presets_values(capsys):
    import dataclasses

    from mplfast.config import MPLConfig
    from mplfast.train.config import TrainConfig

    assert main(["train", "--help-config"]) == 0
    text = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in text.splitlines()[2:] if ln.strip()}
    from mplfast.train.config import FIELD_DOCS

    for f in dataclasses.fields(TrainConfig):
        if f.name != "mpl":
            assert f.name in rows, f.name
            # every field has its allowed values and a line of meaning (fields added by other
            # parts of the CLI too: test_fraction, val_fraction, stream, keep)
            allowed, meaning = FIELD_DOCS.get(f.name, ("", ""))
            assert allowed and meaning and meaning in " ".join(rows[f.name].split()), f.name
    for f in dataclasses.fields(MPLConfig):
        if f.name != "precision":
            assert f"mpl.{f.name}" in rows, f.name
    assert "[0, 1]" in rows["mpl.threshold"] and "mask" in rows["mpl.threshold"]
    assert "mpl|uda|supervised" in rows["method"]
    # the values a preset would use, marked where they differ from the defaults (no --data needed)
    assert main(["train", "--preset", "cifar10-4k", "--help-config"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[2:] if ln.strip()}
    assert "*300000" in rows["steps"] and "*'wrn28_2'" in rows["model"]
    assert "*5000" in rows["mpl.uda_steps"]


def test_print_config_is_the_merged_config_and_reusable(tmp_path, capsys):
    assert main(["train", "--steps", "7", "--set", "mpl.meta_signal=grad_dot", "--print-config"]) == 0
    text = capsys.readouterr().out
    cfg = yaml.safe_load(text)
    assert cfg["steps"] == 7 and cfg["mpl"]["meta_signal"] == "grad_dot"
    assert not (tmp_path / "runs").exists()  # printing is not running
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert main(["train", "--config", str(p), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == cfg


def test_version_models_and_help_defaults(capsys):
    import mplfast
    from mplfast.models import list_models

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mplfast {mplfast.__version__}"
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == list_models()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    help_text = help_text[help_text.index("options:"):]
    for flag, default in (("--labels", "default: 50"), ("--steps", "default: 1000"),
                          ("--seed", "default: 0")):
        i = help_text.index(flag + " ")
        assert default in help_text[i:i + 300], flag


def test_mplfast_warning_is_one_clean_line(tmp_path, capsys):
    """The corrupt-image warning: one line naming the file, no source location."""
    data = _image_folder(tmp_path / "imgs")
    (data / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "mplfast", "train", "--dataset", "imagefolder",
                        "--data", str(data), "--steps", "1", "--out", str(tmp_path / "run"), *QUICK],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    warn = [ln for ln in err if "broken.png" in ln]
    assert len(warn) == 1 and warn[0].startswith("mplfast: warning: "), err
    assert not any("warnings.warn" in ln or ".py:" in ln for ln in err), err


def test_memory_estimate_counts_module_outputs_and_parameters():
    """The estimate is 2 x (bytes of module outputs per image x images of a step) + 5 fp32
    copies of the parameters; checked on a net whose outputs are known by hand."""
    from torch import nn

    from mplfast.train.startup import estimate_step_bytes

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 6, 7))
    per_image = (4 * 5 * 6 + 4 * 5 * 6 + 7) * 4  # conv, flatten, linear outputs (fp32)
    params = sum(p.numel() for p in net.parameters())
    b, mu = 3, 2
    act = per_image * ((1 + mu) * b + 2 * b) + per_image * (1 + 2 * mu) * b
    got = estimate_step_bytes(teacher=net, student=net, image_shape=(3, 5, 6), batch=b, mu=mu,
                              device=torch.device("cpu"))
    assert got == 2 * act + 5 * 4 * 2 * params
    sup = estimate_step_bytes(teacher=None, student=net, image_shape=(3, 5, 6), batch=b, mu=0,
                              device=torch.device("cpu"))
    assert sup == 2 * per_image * b + 5 * 4 * params
    # the probe leaves the model as it was (train mode, no batch-norm statistics touched)
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    estimate_step_bytes(teacher=None, student=bn, image_shape=(3, 8, 8), batch=2, mu=0,
                        device=torch.device("cpu"))
    assert bn.training and all(torch.equal(before[k], v) for k, v in bn.state_dict().items())


def test_memory_check_paths(monkeypatch):
    from mplfast.errors import UserError
    from mplfast.train import startup

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123_000_000, 10**10))
    assert startup.available_bytes(torch.device("cuda", 0)) == 123_000_000
    monkeypatch.setenv("MPLFAST_MEMORY_LIMIT_MB", "50")
    assert startup.available_bytes(torch.device("cpu")) == 50_000_000
    startup.check_memory(10, None, batch=1, mu=1, image_size=8, model="m",
                         device=torch.device("cpu"), method="mpl")  # unknown: no refusal
    with pytest.raises(UserError, match="about 1.0 GB on cpu .* only 50 MB"):
        startup.check_memory(10**9, 50_000_000, batch=16, mu=3, image_size=32, model="m",
                             device=torch.device("cpu"), method="mpl")


def test_gpu_record_path(monkeypatch):
    """The GPU part of the record, exercised without a GPU (names, driver, CUDA runtime)."""
    from mplfast.train import provenance

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    monkeypatch.setattr(provenance, "_run", lambda cmd, cwd=None: "999.1\n999.1"
                        if cmd[0] == "nvidia-smi" else None)
    g = provenance.gpu_info()
    assert g["devices"] == ["GPU0", "GPU1"] and g["driver"] == "999.1"
    line = [ln for ln in provenance.header({**provenance.record("digits", ["mplfast"]), "gpu": g})
            .splitlines() if ln.startswith("# GPU")]
    assert line == [f"# GPU: GPU0, GPU1 (driver 999.1, CUDA {torch.version.cuda})"]


def test_data_without_dataset_infers_an_image_folder_or_refuses(tmp_path, capsys):
    """`--data DIR` alone trained on the built-in digits and printed "digits from DIR": an
    image-folder layout (flat or train/val) now means --dataset imagefolder, with the auto
    preset as for an explicit one; anything else is one line naming --dataset."""
    from imagefolder_fixtures import write_flat_folder

    from mplfast.train.config import resolve

    split = _image_folder(tmp_path / "split")
    flat = write_flat_folder(tmp_path / "flat")
    for data in (split, flat):
        cfg = resolve(flags={"data": str(data)})
        assert (cfg.dataset, cfg.preset, cfg.labels) == ("imagefolder", "auto", None)
    out = tmp_path / "run"
    assert main(["train", "--data", str(split), "--steps", "1", "--out", str(out), *QUICK]) == 0
    text = capsys.readouterr().out
    assert text.startswith("mplfast train: mpl on imagefolder"), text
    assert f"data       imagefolder from {split}: " in text and "digits" not in text
    assert yaml.safe_load(open(out / "config.yaml"))["dataset"] == "imagefolder"
    # an explicit --dataset still wins, and a config file's dataset counts as naming it
    assert resolve(flags={"data": str(flat), "dataset": "imagefolder"}).dataset == "imagefolder"
    conf = tmp_path / "c.yaml"
    conf.write_text(f"dataset: imagefolder\ndata: {flat}\n")
    assert resolve(config_file=str(conf)).dataset == "imagefolder"

    notimages = tmp_path / "notes"
    (notimages / "sub").mkdir(parents=True)
    (notimages / "sub" / "readme.txt").write_text("no images")
    for argv, expect in (
            (["train", "--data", str(notimages)], "not an image folder"),
            (["train", "--data", str(tmp_path / "missing")], "does not exist"),
            (["train", "--dataset", "digits", "--data", str(flat)], "reads no files"),
            (["train", "--set", f"data={notimages}"], "--dataset")):
        assert main(argv) == 2, argv
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("mplfast: error:") and expect in err[0], err
    assert not (tmp_path / "runs").exists()


def test_progress_bar_fits_80_columns(monkeypatch, capsys):
    """At 80 columns the step count, the elapsed time and the ETA stay on the bar's line (the
    metrics, appended to it, pushed them out); the metrics get their own line, whole."""
    import io
    import re

    from mplfast.train.progress import Progress

    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    p = Progress(100000, 0, mode="rich", desc="supervised train", stream=buf)
    p.advance(50000)
    p.log(50000, {"teacher_loss": 1.234, "student_loss": 0.5, "uda_loss": 0.1, "h": 0.0012,
                  "mask_rate": 0.8})
    p.close()
    lines = [ln.rstrip() for ln in (buf.getvalue() + capsys.readouterr().out).splitlines()
             if ln.strip()]
    assert lines and all(len(ln) <= 80 for ln in lines), lines
    bar = next(ln for ln in lines if ln.startswith("supervised train"))
    assert re.search(r" 50000/100000 [\d.]+ it/s \d+:\d\d:\d\d ETA (\d+:\d\d:\d\d|-:--:--)$", bar), bar
    assert "  T 1.234 S 0.500 uda 0.100 h +0.0012 mask 0.800" in lines, lines


def test_eval_tables_fit_80_columns(tmp_path, capsys, monkeypatch):
    """`mplfast eval` at 80 columns: no header wrapped over two lines, nothing cut; a confusion
    matrix whose class names are too wide is headed by class numbers instead."""
    from imagefolder_fixtures import TINY, write_flat_folder

    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    data = write_flat_folder(tmp_path / "data", classes=names, per_class=6, size=8)
    out = tmp_path / "a-run-folder-with-a-long-name-to-show-that-paths-are-not-broken"
    assert main(["train", "--dataset", "imagefolder", "--data", str(data), "--out", str(out),
                 "--steps", "1", "--labels", "10", *TINY]) == 0
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["eval", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out / "best.pt")  # the path whole, on its own line
    assert all(len(ln) <= 80 for ln in lines[1:]) and not any("…" in ln for ln in lines), lines
    head = next(i for i, ln in enumerate(lines) if "true \\ pred" in ln)
    assert lines[head].split()[3:] == [str(i) for i in range(10)], lines[head]
    rows = [ln.split() for ln in lines[head + 2:head + 12]]
    assert [r[:2] for r in rows] == [[str(i), n] for i, n in enumerate(sorted(names))], rows
    monkeypatch.setenv("COLUMNS", "200")  # room for the names
    assert main(["eval", str(out)]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert next(ln for ln in wide if "true \\ pred" in ln).split()[3:] == sorted(names)
