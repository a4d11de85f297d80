"""Outcome tests of `mplfast train` on a user's own image folder: the default command (the auto
recipe) learns at least as well as `--method supervised` on the same labels, as a mean over
seeds, in both folder layouts, and a run that is not learning says so while it runs.

The data is scikit-learn's digits written as PNGs by the test: 16x16 (the recipe was chosen on
32x32 folders, docs/recipe-imagefolder.md), each image tinted with its own random colour on its
own dark background, and shifted by up to a pixel, unlike any other fixture of the suite.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mplfast.cli import main

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SEEDS = (0, 1, 2)


def write_digit_folders(root: Path, size: int = 16) -> dict[str, Path]:
    """{"flat": ROOT/flat/<class>/*.png, "split": ROOT/split/{train,val}/<class>/*.png}: all
    1,797 digits in both; every 5th image is in split/val."""
    from PIL import Image
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rs = np.random.RandomState(7)
    for i in range(len(X)):
        a = np.kron(X[i].reshape(8, 8) / 16.0, np.ones((size // 8, size // 8)))
        a = np.roll(a, tuple(rs.randint(-1, 2, 2)), axis=(0, 1))
        tint, bg = rs.uniform(0.3, 1.0, 3), rs.uniform(0.0, 0.3, 3)
        im = Image.fromarray((np.clip(bg + a[..., None] * tint, 0, 1) * 255).astype(np.uint8))
        for d in (root / "flat" / NAMES[y[i]],
                  root / "split" / ("val" if i % 5 == 0 else "train") / NAMES[y[i]]):
            d.mkdir(parents=True, exist_ok=True)
            im.save(d / f"{i}.png")
    return {"flat": root / "flat", "split": root / "split"}


def train(data: Path, out: Path, seed: int, *extra: str) -> dict:
    rc = main(["train", "--dataset", "imagefolder", "--data", str(data), "--out", str(out),
               "--seed", str(seed), "--set", "progress=plain", "--set", "tensorboard=false",
               "--set", "plot=false", *extra])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "split"])
def test_default_command_at_least_supervised(tmp_path, capsys, layout):
    """The README's own-images command (1,000 steps, 120 labels) over seeds 0-2: the mean test
    accuracy of its headline model is at least supervised training's on the same labels (with
    a 2-point margin, for a mean of 3 seeds on 360 test images) and far above chance."""
    data = write_digit_folders(tmp_path / "data")[layout]
    mpl, sup, warned = [], [], []
    for seed in SEEDS:
        mpl.append(train(data, tmp_path / f"mpl{seed}", seed)["test_acc"])
        warned += [ln for ln in capsys.readouterr().out.splitlines() if "chance for" in ln]
        sup.append(train(data, tmp_path / f"sup{seed}", seed, "--method", "supervised")["test_acc"])
    with capsys.disabled():
        print(f"\n{layout}: default {mpl} supervised {sup} chance warnings {warned}")
    assert np.mean(mpl) >= np.mean(sup) - 2.0, (mpl, sup)
    assert np.mean(mpl) > 60.0, (mpl, sup)


def test_a_run_at_chance_warns(tmp_path, capsys):
    """Images that carry no class (noise, the same for every class): the headline model stays
    at chance, and the run says so at its first evaluation from half of the steps on."""
    from PIL import Image

    rs = np.random.RandomState(0)
    for c in ("a", "b", "c"):
        (tmp_path / "noise" / c).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rs.randint(0, 256, (8, 8, 3)).astype(np.uint8)).save(
                tmp_path / "noise" / c / f"{i}.png")
    rc = main(["train", "--dataset", "imagefolder", "--data", str(tmp_path / "noise"),
               "--out", str(tmp_path / "run"), "--steps", "8", "--set", "eval_interval=4",
               "--set", "image_size=8", "--set", "progress=plain", "--set", "tensorboard=false",
               "--set", "plot=false", "--set", "model_kwargs={width: 8}"])
    assert rc == 0
    out = capsys.readouterr().out
    warnings = [ln for ln in out.splitlines() if "chance for 3 classes" in ln]
    assert len(warnings) == 1, out
    assert "at step 4" in warnings[0] and "--method supervised" in warnings[0]
