"""best.pt is chosen on the validation split (never the test split), last.pt and --keep N
model files load with torch.load(weights_only=True), and `mplfast eval` reports per split."""
from __future__ import annotations

import json

import pytest
import torch
from imagefolder_fixtures import files_in, one_line_error, train_args, write_flat_folder

from mplfast.cli import main
from mplfast.train import runner
from mplfast.train.model_file import load_models


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_flat_folder(tmp_path_factory.mktemp("imgs") / "flat")


def _records(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def test_best_is_chosen_on_val_never_test(data, tmp_path, monkeypatch, capsys):
    splits: list[str] = []
    orig = runner._Run.evaluate_all

    def spy(self, split="test"):
        splits.append(split)
        return orig(self, split)

    monkeypatch.setattr(runner._Run, "evaluate_all", spy)
    out = tmp_path / "run"
    rc = main(train_args(data, out, "--set", "eval_interval=2", "--set", "ckpt_interval=2",
                         "--keep", "2", steps=8))
    assert rc == 0, capsys.readouterr().err
    # every evaluation before the final report is on the validation split
    assert splits[:-1] == ["val"] * (len(splits) - 1) and splits[-1] == "test"
    recs = [r for r in _records(out) if r["phase"] == "eval" and r.get("split") == "val"]
    assert [r["step"] for r in recs] == [2, 4, 6, 8]
    best_rec = max(recs, key=lambda r: (r["ema_acc"], -r["step"]))  # ties: the earlier one
    best = load_models(str(out / "best.pt"))
    assert best["step"] == best_rec["step"] and best["val_acc"] == pytest.approx(best_rec["ema_acc"])
    assert best["headline"] == "ema" and set(best["models"]) == {"teacher", "student", "ema"}
    s = json.load(open(out / "summary.json"))
    assert s["best_step"] == best_rec["step"] and s["val_images"] == 6 and s["test_images"] == 12
    # last.pt: the final models; --keep 2: the two previous last.pt files
    assert load_models(str(out / "last.pt"))["step"] == 8
    assert {f for f in files_in(out) if f.startswith("step-")} == {"step-0000004.pt",
                                                                   "step-0000006.pt"}
    for f in ("best.pt", "last.pt", "step-0000004.pt"):
        obj = torch.load(out / f, weights_only=True)  # plain tensors and primitives only
        assert obj["class_names"] == ["ant", "bee", "cat"]
    assert {"confusion.png", "curves.png"} <= files_in(out)


def test_no_validation_split_means_no_best(data, tmp_path, capsys):
    out = tmp_path / "run0"
    # periodic evaluations then run on the test split: they must never pick a best.pt
    assert main(train_args(data, out, "--val-fraction", "0", "--set", "eval_interval=2")) == 0
    assert "val_fraction=0): best.pt is not written" in capsys.readouterr().out
    assert "best.pt" not in files_in(out) and "last.pt" in files_in(out)
    s = json.load(open(out / "summary.json"))
    assert s["best_step"] is None and s["val_images"] == 0
    capsys.readouterr()
    line = one_line_error(main(["eval", str(out), "--split", "val"]), capsys.readouterr().err)
    assert "no validation split" in line


def test_eval_reports_each_split(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out, "--set", "eval_interval=3")) == 0
    capsys.readouterr()
    counts = {}
    for split in ("test", "val", "train"):
        rep = tmp_path / f"{split}.json"
        assert main(["eval", str(out), "--split", split, "--json", str(rep)]) == 0
        screen = capsys.readouterr().out
        r = json.load(open(rep))
        counts[split] = r["images"]
        assert f"split {split}, {r['images']} images, 3 classes" in screen
        assert "balanced" in screen and "confusion matrix" in screen
        assert r["class_names"] == ["ant", "bee", "cat"] and r["source"].endswith("best.pt")
        for m in r["models"].values():
            assert sum(map(sum, m["confusion"])) == r["images"]
            assert m["top5"] is None  # 3 classes
            assert set(m["per_class"]) == {"ant", "bee", "cat"}
    # 60 images: 12 test (0.2 per class), 6 val (0.1 of the rest per class), 42 train
    assert counts == {"test": 12, "val": 6, "train": 42}
    s = json.load(open(out / "summary.json"))
    r = json.load(open(tmp_path / "test.json"))
    assert r["models"]["ema"]["top1"] == pytest.approx(s["best_test_acc"])  # best.pt on test


def test_eval_bad_inputs_one_line(tmp_path, capsys):
    assert one_line_error(main(["eval"]), capsys.readouterr().err)
    line = one_line_error(main(["eval", str(tmp_path)]), capsys.readouterr().err)
    assert "best.pt" in line
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert one_line_error(main(["eval", str(junk)]), capsys.readouterr().err)


def test_eval_model_file_with_wrong_weights_one_line(data, tmp_path, capsys):
    from mplfast.train.model_file import save_models

    out = tmp_path / "run"
    assert main(train_args(data, out, "--val-fraction", "0")) == 0
    saved = load_models(str(out / "last.pt"))
    sd = saved["models"]["student"]
    key = next(iter(sd))
    sd["bogus.weight"] = torch.ones(2)
    save_models(saved, str(tmp_path / "extra.pt"))
    del sd["bogus.weight"]
    sd[key] = torch.ones(1, 2, 3)
    save_models(saved, str(tmp_path / "shape.pt"))
    capsys.readouterr()
    line = one_line_error(main(["eval", str(tmp_path / "extra.pt")]), capsys.readouterr().err)
    assert "unexpected 'bogus.weight'" in line and "extra.pt" in line
    line = one_line_error(main(["eval", str(tmp_path / "shape.pt")]), capsys.readouterr().err)
    assert f"{key} has shape" in line
