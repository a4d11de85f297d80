"""``mplfast ablate``: every variant per seed, mean ± std table (markdown + CSV), runs reused."""
from __future__ import annotations

import csv
import json
import os
import statistics

from mplfast.cli import main

TINY = ["--steps", "2", "--set", "model_kwargs={width: 4}", "--set", "eval_interval=0",
        "--set", "tensorboard=false", "--set", "plot=false"]


def test_ablate_table(tmp_path, capsys):
    out = str(tmp_path / "abl")
    argv = ["ablate", "--seeds", "0,1", "--out", out,
            "--variants", "supervised,uda,mpl:none,mpl:loss_diff,mpl:grad_dot", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    md = open(os.path.join(out, "ablation.md")).read()
    assert md in printed
    assert "mplfast ablate --seeds 0,1 --out" in md  # the exact command is recorded
    rows = list(csv.DictReader(open(os.path.join(out, "ablation.csv"))))
    assert [r["variant"] for r in rows] == ["supervised", "uda", "mpl:none", "mpl:loss_diff",
                                            "mpl:grad_dot"]
    # uda and mpl:none share one run: its teacher and its (EMA) student
    uda = [json.load(open(os.path.join(out, f"uda-s{s}", "summary.json"))) for s in (0, 1)]
    by = {r["variant"]: r for r in rows}
    assert float(by["uda"]["seed_0"]) == round(uda[0]["teacher_acc"], 4)
    assert float(by["mpl:none"]["seed_1"]) == round(uda[1]["ema_acc"], 4)
    assert not os.path.exists(os.path.join(out, "mpl-none-s0"))
    # mean / std / paired delta are what the per-seed numbers say
    ld = [float(by["mpl:loss_diff"][f"seed_{s}"]) for s in (0, 1)]
    assert float(by["mpl:loss_diff"]["mean"]) == round(statistics.fmean(ld), 4)
    assert float(by["mpl:loss_diff"]["std"]) == round(statistics.stdev(ld), 4)
    ctl = [float(by["mpl:none"][f"seed_{s}"]) for s in (0, 1)]
    assert float(by["mpl:loss_diff"]["delta_vs_control_mean"]) == round(
        statistics.fmean([a - b for a, b in zip(ld, ctl)]), 4)
    assert "± " in md and "| variant |" in md
    # a second call reuses the finished runs (no new training: summaries untouched)
    mtime = os.path.getmtime(os.path.join(out, "uda-s0", "summary.json"))
    assert main(argv) == 0
    assert os.path.getmtime(os.path.join(out, "uda-s0", "summary.json")) == mtime
