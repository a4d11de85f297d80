"""A generated CIFAR-format directory and a generated image folder each train a few steps, and
the outputs of ``--out`` are all there and consistent."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml

from mplfast.cli import main

TINY = ["--set", "model_kwargs={width: 8}", "--set", "batch_size=10", "--set", "mu=2",
        "--set", "log_interval=2", "--set", "eval_interval=2", "--set", "ckpt_interval=2",
        "--set", "warmup_steps=1", "--set", "progress=plain", "--set", "finetune_epochs=0"]


def _write_cifar10(root: str, n_per_batch: int = 20, n_test: int = 20) -> str:
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    rs = np.random.RandomState(0)

    def batch(n: int) -> dict[bytes, object]:
        labels = [i % 10 for i in range(n)]  # every class present (balanced split)
        data = rs.randint(1, 256, size=(n, 3072)).astype(np.uint8)
        return {b"data": data, b"labels": labels, b"batch_label": b"x"}

    for i in range(1, 6):
        with open(os.path.join(d, f"data_batch_{i}"), "wb") as f:
            pickle.dump(batch(n_per_batch), f)
    with open(os.path.join(d, "test_batch"), "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def _write_imagefolder(root: str, classes: int = 3, per_class: int = 6) -> str:
    from PIL import Image

    rs = np.random.RandomState(0)
    for split, n in (("train", per_class), ("val", 3)):
        for c in range(classes):
            d = os.path.join(root, split, f"class{c}")
            os.makedirs(d)
            for i in range(n):
                arr = rs.randint(1, 256, size=(12, 12, 3)).astype(np.uint8)
                Image.fromarray(arr).save(os.path.join(d, f"{i}.png"))
    return root


def _check_outputs(out: str, *, steps: int, method: str, dataset: str) -> dict:
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "curves.png",
                 "last.pt", "best.pt", "confusion.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tb")))
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    for key in ("method", "dataset", "labels", "seed", "steps", "world_size", "test_acc",
                "wall_s", "images_per_s"):
        assert key in s, key
    assert (s["method"], s["dataset"], s["steps"], s["world_size"]) == (method, dataset, steps, 1)
    assert 0.0 <= s["test_acc"] <= 100.0
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["phase"] == "train"] == list(range(2, steps + 1, 2))
    with open(os.path.join(out, "config.yaml")) as f:
        assert yaml.safe_load(f)["steps"] == steps
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    for key in ("step", "teacher", "student", "teacher_optimizer", "student_optimizer",
                "teacher_scheduler", "student_scheduler", "scalers", "ema", "rng", "config"):
        assert key in ckpt, key
    assert ckpt["step"] == steps
    return s


def test_cifar_format_dir_trains(tmp_path, capsys):
    root = _write_cifar10(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    rc = main(["train", "--dataset", "cifar10", "--data", root, "--labels", "20", "--steps", "4",
               "--out", out, "--set", "model=small_cnn", *TINY])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "test_acc" in stdout and "teacher_acc" in stdout
    s = _check_outputs(out, steps=4, method="mpl", dataset="cifar10")
    assert {"teacher_acc", "student_acc", "ema_acc"} <= set(s)
    assert s["test_acc"] == s["ema_acc"]  # mpl headline: the student's EMA weights


def test_imagefolder_trains_supervised_and_eval(tmp_path, capsys):
    root = _write_imagefolder(str(tmp_path / "imgs"))
    out = str(tmp_path / "run")
    rc = main(["train", "--dataset", "imagefolder", "--data", root, "--labels", "6", "--steps", "4",
               "--method", "supervised", "--out", out, "--set", "model=small_cnn",
               "--set", "image_size=12", *TINY])
    assert rc == 0
    s = _check_outputs(out, steps=4, method="supervised", dataset="imagefolder")
    assert "teacher_acc" not in s
    capsys.readouterr()
    # eval reproduces the accuracies from the resume checkpoint and from last.pt
    for f in ("checkpoint.pt", "last.pt"):
        rep = str(tmp_path / f"{f}.json")
        assert main(["eval", "--checkpoint", os.path.join(out, f), "--json", rep]) == 0
        with open(rep) as fh:
            r = json.load(fh)
        assert r["models"]["ema"]["top1"] == pytest.approx(s["ema_acc"], abs=0.005)
        assert r["images"] == s["test_images"] and r["split"] == "test"


def test_uda_with_finetune(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "--method", "uda", "--steps", "4", "--out", out, *TINY,
               "--set", "finetune_epochs=2", "--set", "finetune_batch_size=25"])
    assert rc == 0
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert s["test_acc"] == s["finetune_acc"]
    assert s["meta_signal"] == "none"
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    # 2 epochs over 50 labels at batch 25: 4 finetune steps logged after the 4 training steps
    assert [r["step"] for r in records if r["phase"] == "finetune"] == [6, 8]
    capsys.readouterr()
    rep = str(tmp_path / "eval.json")
    assert main(["eval", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--json", rep]) == 0
    with open(rep) as fh:
        r = json.load(fh)
    assert r["headline"] == "finetuned"
    assert r["models"]["finetuned"]["top1"] == pytest.approx(s["finetune_acc"], abs=0.005)


def test_default_out_dir_is_fresh_and_never_reused(tmp_path, monkeypatch, capsys):
    """Without --out a run still keeps its checkpoint and summary, each run in a new directory."""
    monkeypatch.chdir(tmp_path)
    args = ["train", "--steps", "2", *TINY]
    for expected in ("digits-mpl-seed0", "digits-mpl-seed0-2"):
        assert main(args) == 0
        assert f"outputs in {os.path.join('runs', expected)}" in capsys.readouterr().out
        out = tmp_path / "runs" / expected
        assert (out / "checkpoint.pt").is_file() and (out / "summary.json").is_file()


def test_corrupt_image_is_skipped_or_fatal_with_strict(tmp_path, capsys):
    """One bad JPEG never kills a run; with --strict it is one clear error naming the file."""
    root = _write_imagefolder(str(tmp_path / "imgs"))
    bad = os.path.join(root, "train", "class1", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["train", "--dataset", "imagefolder", "--data", root, "--labels", "6", "--steps", "2",
            "--method", "supervised", "--set", "model=small_cnn", "--set", "image_size=8", *TINY]
    assert main([*args, "--strict", "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0] and "Traceback" not in err[0]
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main([*args, "--out", str(tmp_path / "lenient")]) == 0
