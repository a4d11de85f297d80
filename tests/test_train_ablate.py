"""``mplfast ablate``: rows, pairing, statistics, chaos hook, sweep, reuse -- on tiny settings."""
from __future__ import annotations

import json
import math
import os
import statistics

import pytest
import torch
import yaml

from mplfast.cli import main
from mplfast.train import ablate
from mplfast.train.stats import binomial_se, paired, t_quantile

TINY = ["--steps", "3", "--set", "model_kwargs={width: 4}", "--set", "eval_interval=0",
        "--set", "tensorboard=false", "--set", "plot=false", "--set", "log_interval=1"]


def _rows(out: str) -> dict[str, dict]:
    doc = json.load(open(os.path.join(out, "ablation.json")))
    return {r["row"]: r for r in doc["rows"]}


def _summary(out: str, run: str, seed: int) -> dict:
    return json.load(open(os.path.join(out, f"{run}-s{seed}", "summary.json")))


@pytest.mark.slow
def test_ablate_table(tmp_path, capsys):
    out = str(tmp_path / "abl")
    argv = ["ablate", "--seeds", "0,1", "--out", out,
            "--variants", "supervised,uda,mpl:none,mpl:loss_diff,mpl:sample,flip,chaos", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    md = open(os.path.join(out, "ablation.md")).read()
    assert md in printed
    assert "mplfast ablate --seeds 0,1 --out" in md and "Machine: " in md  # command and machine
    assert os.path.isfile(os.path.join(out, "ablation.png"))
    doc = json.load(open(os.path.join(out, "ablation.json")))
    assert doc["seeds"] == [0, 1] and doc["machine"]["cpu_threads"] == 1 and doc["test_images"] == 450
    rows = _rows(out)
    # the matched control of mpl:sample came along by itself
    assert list(rows) == ["supervised", "uda", "mpl:none", "mpl:loss_diff", "mpl:sample", "flip",
                          "chaos", "none:sample"]
    # uda and mpl:none are one run: its teacher, and its student as EMA weights
    uda = [_summary(out, "uda", s) for s in (0, 1)]
    assert rows["uda"]["acc"] == [u["teacher_acc"] for u in uda]
    assert rows["mpl:none"]["acc"] == [u["ema_acc"] for u in uda]
    assert not os.path.exists(os.path.join(out, "mpl-none-s0"))
    # MPL rows: the student's EMA accuracy; the teacher's in its own column
    ld = [_summary(out, "mpl-loss_diff", s) for s in (0, 1)]
    assert rows["mpl:loss_diff"]["acc"] == [s["ema_acc"] for s in ld]
    assert rows["mpl:loss_diff"]["teacher_acc"] == [s["teacher_acc"] for s in ld]
    # mean / std / paired difference and its t-interval are what the per-seed numbers say
    acc, ctl = rows["mpl:loss_diff"]["acc"], rows["mpl:none"]["acc"]
    assert rows["mpl:loss_diff"]["mean"] == pytest.approx(statistics.fmean(acc))
    p = rows["mpl:loss_diff"]["vs_control"]
    d = [a - b for a, b in zip(acc, ctl)]
    assert p["diffs"] == pytest.approx(d) and p["mean"] == pytest.approx(statistics.fmean(d))
    if statistics.stdev(d) > 0:
        half = 12.7062047 * statistics.stdev(d) / math.sqrt(2)
        assert p["lo"] == pytest.approx(p["mean"] - half, rel=1e-6)
    assert rows["mpl:sample"]["control"] == "none:sample"
    assert rows["flip"]["control"] == "mpl:none"
    cfg = yaml.safe_load(open(os.path.join(out, "flip-s0", "config.yaml")))
    assert cfg["mpl"]["meta_sign"] == -1
    # the chaos row: seed 0 only, against the unperturbed run of the same seed
    assert rows["chaos"]["seeds"] == [0] and rows["chaos"]["chaos_of"] == "mpl:loss_diff"
    assert yaml.safe_load(open(os.path.join(out, "chaos-s0", "config.yaml")))["init_perturbation"] == 1e-7
    assert not os.path.exists(os.path.join(out, "chaos-s1"))
    # a second call reuses the finished runs (no new training: summaries untouched)
    mtime = os.path.getmtime(os.path.join(out, "uda-s0", "summary.json"))
    assert main(argv) == 0
    assert os.path.getmtime(os.path.join(out, "uda-s0", "summary.json")) == mtime


@pytest.mark.slow
def test_ablate_meta_scale_sweep(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    assert main(["ablate", "--seeds", "0,1", "--out", out, "--variants", "mpl:loss_diff",
                 "--meta-scale", "1,10", *TINY]) == 0
    rows = _rows(out)
    assert list(rows) == ["mpl:loss_diff", "mpl:loss_diff@x10", "mpl:none"]
    assert rows["mpl:loss_diff@x10"]["control"] == "mpl:none"  # the control is not swept
    cfg = yaml.safe_load(open(os.path.join(out, "mpl-loss_diff-x10-s1", "config.yaml")))
    assert cfg["mpl"]["meta_scale"] == 10.0
    cfg1 = yaml.safe_load(open(os.path.join(out, "mpl-loss_diff-s1", "config.yaml")))
    assert cfg1["mpl"]["meta_scale"] == 1.0
    # --report-only trains nothing and tabulates what finished, each row over its own seeds
    os.remove(os.path.join(out, "mpl-loss_diff-x10-s1", "summary.json"))  # as if still running
    assert main(["ablate", "--seeds", "0,1", "--out", out, "--variants", "mpl:loss_diff",
                 "--meta-scale", "1,10", "--report-only", *TINY]) == 0
    assert not os.path.exists(os.path.join(out, "mpl-loss_diff-x10-s1", "summary.json"))
    after = _rows(out)
    assert after["mpl:loss_diff@x10"]["seeds"] == [0] and after["mpl:loss_diff"]["seeds"] == [0, 1]
    assert after["mpl:loss_diff"]["acc"] == rows["mpl:loss_diff"]["acc"]
    assert "meta_scale 10" in after["mpl:loss_diff@x10"]["description"]


def test_rows_compare_students_as_ema_and_teachers_apart():
    # test_acc is the teacher for --method uda and the finetuned model with finetune on:
    # neither may be what a row compares
    s = {"test_acc": 50.0, "teacher_acc": 60.0, "student_acc": 65.0, "ema_acc": 70.0,
         "finetune_acc": 75.0}
    rows = {r.name: r for r in ablate.expand_rows(["uda", "mpl:none", "mpl:loss_diff"], [1.0], [0], [0])}
    assert ablate._acc(rows["uda"], s) == 60.0
    assert ablate._acc(rows["mpl:none"], s) == 70.0
    assert ablate._acc(rows["mpl:loss_diff"], s) == 70.0
    assert ablate.student_acc({"student_acc": 65.0, "ema_acc": None}) == 65.0


def test_init_perturbation_moves_one_student_weight(tmp_path):
    from mplfast.train import checkpoint as ckpt_io
    from mplfast.train.config import resolve
    from mplfast.train.runner import run

    states = []
    for i, eps in enumerate((0.0, 1e-7)):
        cfg = resolve(sets=[f"out={tmp_path / str(i)}", "steps=0", "model_kwargs={width: 4}",
                            "tensorboard=false", "plot=false", "progress=none",
                            f"init_perturbation={eps}"])
        run(cfg)
        states.append(ckpt_io.load(os.path.join(cfg.out, ckpt_io.CHECKPOINT_NAME)))
    a, b = states
    diffs = {k: (b["student"][k].double() - a["student"][k].double()).abs()
             for k in a["student"] if a["student"][k].is_floating_point()}
    changed = {k: d for k, d in diffs.items() if d.max() > 0}
    assert len(changed) == 1
    (d,) = changed.values()
    assert int((d > 0).sum()) == 1 and float(d.max()) == pytest.approx(1e-7, rel=0.1)
    for k in a["teacher"]:  # the teacher is untouched
        assert torch.equal(a["teacher"][k], b["teacher"][k])


def test_parse_seeds_and_scales():
    assert ablate.parse_seeds("10") == list(range(10))
    assert ablate.parse_seeds("0,1,2") == [0, 1, 2]
    assert ablate.parse_seeds("3-5,9") == [3, 4, 5, 9]
    assert ablate.parse_seeds("0", count=False) == [0]  # --chaos-seeds 0: seed 0
    assert ablate.parse_scales("1,10,10") == [1.0, 10.0]
    for bad in ("0", "a", "1,1", "5-3", ""):
        with pytest.raises(ablate.UserError):
            ablate.parse_seeds(bad)
    for bad in ("-1", "x", "nan"):
        with pytest.raises(ablate.UserError):
            ablate.parse_scales(bad)


@pytest.mark.parametrize("args", [["--seeds", "x"], ["--variants", "nope"], ["--meta-scale", "-2"],
                                  ["--cpu-threads", "0"]])
def test_ablate_user_errors_are_one_line(args, tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path), *args, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mplfast: error: ") and err.count("\n") == 1


def test_saved_config_without_no_op_fields_still_matches():
    cur = {"seed": 0, "init_perturbation": 0.0, "mpl": {"meta_scale": 1.0, "meta_sign": 1}}
    assert ablate._same_config({"seed": 0, "mpl": {"meta_sign": 1}}, cur)
    assert ablate._same_config(dict(cur), cur)
    assert not ablate._same_config({"seed": 0, "mpl": {"meta_sign": 1}},
                                   {**cur, "mpl": {"meta_scale": 2.0, "meta_sign": 1}})
    assert not ablate._same_config({"seed": 1, "mpl": {"meta_sign": 1}}, cur)


def test_t_quantile_and_paired_match_scipy():
    st = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 9, 19, 30, 99):
        assert t_quantile(0.975, df) == pytest.approx(st.t.ppf(0.975, df), rel=1e-7)
    g = torch.Generator().manual_seed(3)
    a = (torch.randn(10, generator=g) + 90).tolist()
    b = (torch.randn(10, generator=g) + 90.5).tolist()
    p = paired(a, b)
    d = [x - y for x, y in zip(a, b)]
    lo, hi = st.t.interval(0.95, len(d) - 1, loc=statistics.fmean(d), scale=st.sem(d))
    assert (p.lo, p.hi) == (pytest.approx(lo, rel=1e-7), pytest.approx(hi, rel=1e-7))
    assert p.t == pytest.approx(st.ttest_rel(a, b).statistic, rel=1e-7)
    assert p.wins + p.ties + p.losses == 10
    assert binomial_se(90.0, 450) == pytest.approx(100 * math.sqrt(0.09 / 450))
    one = paired([1.0], [0.5])
    assert one.mean == 0.5 and math.isnan(one.lo)


def test_run_lock_lets_parallel_ablations_share_an_out_dir(tmp_path):
    import subprocess
    import sys

    d = str(tmp_path / "run")
    assert ablate.claim_run(d)                       # free: taken
    assert ablate.claim_run(d)                       # ours already
    lock = os.path.join(d, ablate.LOCK_NAME)
    parent = os.getppid()                            # a live process that is not us
    with open(lock, "w") as f:
        f.write(str(parent))
    assert not ablate.claim_run(d)                   # held by a live process: wait
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        f.write(str(dead.pid))
    assert ablate.claim_run(d)                       # stale lock of a dead process: taken over
    assert open(lock).read() == str(os.getpid())
    assert sorted(os.listdir(d)) == [ablate.LOCK_NAME]  # no temporary files left behind


def test_derived_labels_match_the_saved_concrete_count():
    """An auto recipe asks for ``labels: null``; the run saved the count it derived."""
    assert ablate._same_config({"seed": 0, "labels": 12}, {"seed": 0, "labels": None})
    assert not ablate._same_config({"seed": 0, "labels": 12}, {"seed": 0, "labels": 13})
    assert not ablate._same_config({"seed": 1, "labels": 12}, {"seed": 0, "labels": None})


def test_ablate_on_an_image_folder_reuses_its_runs(tmp_path, capsys):
    """``--dataset imagefolder`` without --labels (labels derived): a rerun reuses the runs
    instead of calling them a different config."""
    from imagefolder_fixtures import write_flat_folder

    data = write_flat_folder(tmp_path / "imgs", size=8)
    out = str(tmp_path / "abl")
    argv = ["ablate", "--dataset", "imagefolder", "--data", str(data), "--seeds", "1",
            "--variants", "supervised", "--out", out, "--set", "image_size=8", *TINY]
    assert main(argv) == 0
    before = os.path.getmtime(os.path.join(out, "supervised-s0", "summary.json"))
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert os.path.getmtime(os.path.join(out, "supervised-s0", "summary.json")) == before


def test_ablate_refuses_a_hostile_config_yaml_and_huge_seed_counts(tmp_path, capsys):
    run = tmp_path / "abl" / "supervised-s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("a: " + "[" * 3000)
    (run / "summary.json").write_text("{}")
    assert main(["ablate", "--out", str(tmp_path / "abl"), "--seeds", "1", "--variants",
                 "supervised", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a readable config" in err
    for bad in ("1000000000000", "0-99999999999999", f"{2**32}"):
        with pytest.raises(ablate.UserError, match="at most|2\\^32"):
            ablate.parse_seeds(bad, count=bad.isdigit() and bad != f"{2**32}")
