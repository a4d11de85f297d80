"""examples/twomoon.py: the TwoMoon illustration runs end to end at a tiny size."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "twomoon.py"


@pytest.fixture(scope="module")
def twomoon():
    spec = importlib.util.spec_from_file_location("twomoon_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _tiny_run(twomoon, out, flag: str, doc_name: str, files: tuple[str, ...], steps: int):
    """main() on 2 seeds, one process, ``steps`` steps, with ``flag``; every file in ``files``
    written; returns the JSON ``doc_name`` and its rows by name."""
    assert twomoon.main(["--out", str(out), "--seeds", "2", "--steps", str(steps),
                         "--workers", "1", flag]) == 0
    for name in files + (doc_name,):
        assert (out / name).is_file(), name
    doc = json.load(open(out / doc_name))
    return doc, {r["name"]: r for r in doc["rows"]}


@pytest.mark.slow
def test_twomoon_smoke(twomoon, tmp_path, capsys):
    out = tmp_path / "tm"
    _, rows = _tiny_run(twomoon, out, "--explore", "twomoon.json",
                        ("twomoon.md", "twomoon.png", "explore.md", "explore.json"), steps=4)
    assert list(rows) == ["supervised", "pl:hard", "mpl:hard", "pl:sample", "mpl:sample",
                          "pl:soft", "mpl:soft"]
    for mode in ("hard", "sample", "soft"):
        r = rows[f"mpl:{mode}"]
        assert r["control"] == f"pl:{mode}" and len(r["student_acc"]) == 2
        assert r["vs_control"]["diffs"] == pytest.approx(
            [a - b for a, b in zip(r["student_acc"], rows[f"pl:{mode}"]["student_acc"])])
        assert rows[f"pl:{mode}"]["mean_abs_h"] == 0.0  # the control has no feedback at all
    explore = json.load(open(out / "explore.json"))["rows"]
    assert all(r["control"].startswith("pl:") for r in explore)
    assert "| `flip:soft:x10` |" in (out / "explore.md").read_text()
    # the same command again trains nothing: every run is read back from runs.jsonl
    n_runs = len((out / "runs.jsonl").read_text().splitlines())
    before = (out / "explore.md").read_text()
    assert twomoon.main(["--out", str(out), "--seeds", "2", "--steps", "4", "--workers", "1",
                         "--explore", "--cached-only"]) == 0
    assert len((out / "runs.jsonl").read_text().splitlines()) == n_runs
    assert (out / "explore.md").read_text() == before and "Not run" not in before
    # --confirm: chosen settings judged on fresh seeds, each against its own control
    assert twomoon.main(["--out", str(out), "--seeds", "2", "--steps", "4", "--workers", "1",
                         "--confirm", "soft:x10", "--first-seed", "5"]) == 0
    conf = json.load(open(out / "confirm-5-6.json"))
    assert conf["seeds"] == [5, 6] and [r["name"] for r in conf["rows"]] == ["soft:x10"]
    assert twomoon.main(["--out", str(out), "--confirm", "nope"]) == 2


def test_seeds_pair_data_and_init(twomoon):
    a, b = twomoon.make_data(3), twomoon.make_data(3)
    assert (a["x_l"] == b["x_l"]).all() and a["y_l"].tolist().count(0) == 3
    assert not (twomoon.make_data(4)["x_l"] == a["x_l"]).all()


def test_mpl_only_gate_stops_the_labeled_loss(twomoon):
    # with the gate on from step 0, no UDA and no MPL term, nothing trains the teacher
    import torch

    s = twomoon.Setting("gate", mode="hard", meta_signal="none", mpl_only_after=0, steps=30)
    r = twomoon.run_one(s, 0)
    d = twomoon.make_data(0)
    torch.manual_seed(0)
    teacher = twomoon.mlp()
    assert r["teacher_acc"] == twomoon._accuracy(teacher, d["x_test"], d["y_test"])
    moved = twomoon.run_one(twomoon.Setting("nogate", mode="hard", meta_signal="none", steps=30), 0)
    assert moved["teacher_acc"] != r["teacher_acc"]


def test_uda_rows_run(twomoon, tmp_path, capsys):
    # --uda at a tiny size: the jitter selection, then the UDA-teacher rows, each paired by seed
    # with its h = 0 control, with the same 95 % t-interval as scipy's
    from scipy import stats

    doc, rows = _tiny_run(twomoon, tmp_path / "tm", "--uda", "uda.json",
                          ("uda-select.md", "uda.md", "uda.png", "uda-worst.png", "twomoon.md"), steps=3)
    assert (doc["jitter"]["weak"], doc["jitter"]["strong"]) in twomoon.JITTER_GRID
    assert set(doc["selection_seeds"]).isdisjoint(doc["seeds"])
    assert list(rows) == ["supervised", "uda-pl:hard", "uda-pl:soft", "uda-mpl:hard",
                          "uda-mpl:soft", "uda-soft:x10", "uda-flip:soft:x10"]
    for name, ctl in (("uda-mpl:hard", "uda-pl:hard"), ("uda-mpl:soft", "uda-pl:soft"),
                      ("uda-soft:x10", "uda-pl:soft"), ("uda-flip:soft:x10", "uda-pl:soft")):
        r = rows[name]
        diffs = [a - b for a, b in zip(r["student_acc"], rows[ctl]["student_acc"])]
        assert r["control"] == ctl and r["vs_control"]["diffs"] == pytest.approx(diffs)
        if r["vs_control"]["lo"] is not None:  # a NaN interval (all diffs equal) is stored as None
            lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs),
                                      scale=stats.sem(diffs))
            assert (r["vs_control"]["lo"], r["vs_control"]["hi"]) == pytest.approx((lo, hi))
        assert r["setting"]["lambda_u"] == 8.0 and r["setting"]["meta_signal"] == "loss_diff"
    for ctl in ("uda-pl:hard", "uda-pl:soft"):
        assert rows[ctl]["mean_abs_h"] == 0.0 and rows[ctl]["mean_uda_term"] > 0.0
    assert rows["uda-flip:soft:x10"]["setting"]["meta_sign"] == -1
    assert rows["uda-soft:x10"]["setting"]["meta_scale"] == 10.0
    # runs that were never trained: one clear line and exit 2, not a traceback
    capsys.readouterr()
    assert twomoon.main(["--out", str(tmp_path / "empty"), "--seeds", "2", "--steps", "3",
                         "--uda", "--cached-only"]) == 2
    assert "default rows' runs are not all in" in capsys.readouterr().err
    tiny = ["--seeds", "2", "--steps", "3", "--workers", "1"]
    assert twomoon.main(["--out", str(tmp_path / "tm"), "--uda", "--cached-only"] + tiny) == 0
    assert twomoon.main(["--out", str(tmp_path / "base")] + tiny) == 0  # no UDA runs in it
    capsys.readouterr()
    assert twomoon.main(["--out", str(tmp_path / "base"), "--uda", "--cached-only"] + tiny) == 2
    assert "--uda --cached-only: the jitter selection's runs" in capsys.readouterr().err


def test_uda_term_trains_the_teacher(twomoon):
    # The same run with lambda_u = 8 and with lambda_u = 0 (same jittered views, no MPL term):
    # the teacher must end up elsewhere. Fails if the example or MPLStep drops the UDA weight.
    s = twomoon.uda_setting("u", 0.05, 0.2, 60, mode="hard", meta_signal="none")
    with_uda = twomoon.run_one(s, 0, grid=True)
    without = twomoon.run_one(twomoon.replace(s, lambda_u=0.0), 0, grid=True)
    assert with_uda["mean_uda_term"] > 0.0 and without["mean_uda_term"] == 0.0
    assert with_uda["teacher_grid"] != without["teacher_grid"]
    # jitter alone (lambda_u = 0) only changes the student's inputs, never the teacher's loss
    plain = twomoon.run_one(twomoon.replace(s, lambda_u=0.0, weak_jitter=0.0, strong_jitter=0.0),
                            0, grid=True)
    assert plain["teacher_grid"] == without["teacher_grid"]


def test_jitter_is_chosen_on_validation_draws_only(twomoon, monkeypatch):
    # Fake runs whose test accuracy ranks the candidates the other way round from their
    # validation accuracy: the choice must follow validation.
    grid = [(0.02, 0.05), (0.02, 0.1), (0.05, 0.2)]
    val = {0.05: 70.0, 0.1: 90.0, 0.2: 80.0}

    def fake_run_all(settings, seeds, *a, **k):
        return {(s.name, seed): {"student_val_acc": val[s.strong_jitter] + seed,
                                 "teacher_val_acc": 0.0,
                                 "student_acc": 200.0 - val[s.strong_jitter]}
                for s in settings for seed in seeds}

    monkeypatch.setattr(twomoon, "run_all", fake_run_all)
    (w, s), md = twomoon.select_jitter(10, 1, None, grid=grid, seeds=[100, 101])
    assert (w, s) == (0.02, 0.1) and "Chosen: weak σ = 0.02, strong σ = 0.1." in md
