"""End to end on a 300-image, 32x32 folder in the ImageFolder layout: train 20 steps, then
export, then predict on new images (the acceptance flow of the CLI on a user's own data)."""
from __future__ import annotations

import json

import pytest
from imagefolder_fixtures import write_flat_folder

from mplfast.cli import main


@pytest.mark.slow
def test_train_export_predict(tmp_path, capsys):
    data = write_flat_folder(tmp_path / "flat", per_class=100, size=32, ext="jpg")
    new = write_flat_folder(tmp_path / "new", per_class=2, size=32, seed=1, ext="jpg")
    out = tmp_path / "run"
    # the acceptance command: a bare --dataset imagefolder gets the data-sized recipe
    rc = main(["train", "--dataset", "imagefolder", "--data", str(data), "--steps", "20",
               "--out", str(out), "--set", "eval_interval=10", "--set", "progress=none"])
    assert rc == 0, capsys.readouterr().err
    for name in ("best.pt", "last.pt", "curves.png", "confusion.png", "summary.json",
                 "checkpoint.pt", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    s = json.load(open(out / "summary.json"))
    assert (s["train_images"], s["val_images"], s["test_images"]) == (216, 24, 60)
    capsys.readouterr()
    w = tmp_path / "export" / "model.safetensors"
    w.parent.mkdir()
    assert main(["export", str(out), "--out", str(w)]) == 0
    assert w.is_file() and (tmp_path / "export" / "model.json").is_file()
    capsys.readouterr()
    preds = tmp_path / "preds.json"
    assert main(["predict", str(w), str(new), "--output", str(preds), "--top-k", "3"]) == 0
    got = json.load(open(preds))
    assert len(got) == 6 and all(len(g["top"]) == 3 for g in got)
    assert {t["class"] for g in got for t in g["top"]} == {"ant", "bee", "cat"}
    assert all(abs(sum(t["probability"] for t in g["top"]) - 1) < 1e-4 for g in got)
