"""examples/twomoon.py: the TwoMoon illustration runs end to end at a tiny size."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_twomoon_smoke(twomoon, tmp_path, capsys):
    out = tmp_path / "tm"
    assert twomoon.main(["--out", str(out), "--seeds", "2", "--steps", "4", "--workers", "1",
                         "--explore"]) == 0
    for name in ("twomoon.md", "twomoon.json", "twomoon.png", "explore.md", "explore.json"):
        assert (out / name).is_file(), name
    doc = json.load(open(out / "twomoon.json"))
    rows = {r["name"]: r for r in doc["rows"]}
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
