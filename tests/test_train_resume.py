"""SIGTERM / SIGINT mid-run, then ``--resume``: on CPU the final weights are bitwise identical to
an uninterrupted run (all RNG states restored; data keyed by (seed, step))."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

STEPS = 60
# dropout and sampled pseudo labels: the global RNG and the step's own generator both matter;
# evaluations and periodic checkpoints fall between the signal and the end; log lines average
# 3 steps, so a stop inside an interval checks that the partial sums are resumed too
ARGS = ["train", "--device", "cpu", "--steps", str(STEPS), "--set", "model_kwargs={width: 8, dropout: 0.3}",
        "--set", "pseudo_label=sample", "--set", "log_interval=3", "--set", "eval_interval=9",
        "--set", "ckpt_interval=7", "--set", "warmup_steps=5", "--set", "uda_steps=10",
        "--set", "tensorboard=false", "--set", "plot=false", "--set", "progress=plain"]


def _cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "mplfast", *ARGS, *extra]


def _last_step(metrics: str) -> int:
    if not os.path.isfile(metrics):
        return 0
    steps = []
    with open(metrics) as f:
        for line in f:
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                pass
    return max(steps, default=0)


def _assert_same_state(a: dict, b: dict) -> None:
    for key in ("student", "teacher"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for name, t in a["ema"]["module"].items():
        assert torch.equal(t, b["ema"]["module"][name]), f"ema.{name} differs"


@pytest.mark.slow
def test_sigterm_and_resume_is_bitwise_identical(tmp_path):
    sig = signal.SIGTERM
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    subprocess.run(_cmd("--out", ref), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_cmd("--out", cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while _last_step(os.path.join(cut, "metrics.jsonl")) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err  # 128 + SIGTERM: schedulers see an interruption
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(sig).name}" in err, err
    stopped = torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=False)
    assert 3 <= stopped["step"] < STEPS, "the signal must land mid-run for this test to mean anything"
    assert not os.path.exists(os.path.join(cut, "summary.json"))

    done = subprocess.run([sys.executable, "-m", "mplfast", "train", "--out", cut, "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a = torch.load(os.path.join(ref, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=False)
    assert a["step"] == b["step"] == STEPS
    _assert_same_state(a, b)
    # the logs of the resumed run line up with the uninterrupted one
    ra = [json.loads(x) for x in open(os.path.join(ref, "metrics.jsonl"))]
    rb = [json.loads(x) for x in open(os.path.join(cut, "metrics.jsonl"))]
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for k in ("teacher_loss", "student_loss", "h", "teacher_acc", "student_acc"):
            if k in x:
                assert x[k] == y[k], (x["step"], k)
    sa = json.load(open(os.path.join(ref, "summary.json")))
    sb = json.load(open(os.path.join(cut, "summary.json")))
    assert sa["test_acc"] == sb["test_acc"]


def test_resume_of_finished_run_changes_nothing(tmp_path, capsys):
    """--resume on a finished run says so and touches nothing: same weights, same logs, no
    second TensorBoard events file (TensorBoard would drop points)."""
    out = str(tmp_path / "run")
    quick = ["--steps", "3", "--set", "model_kwargs={width: 4}", "--set", "eval_interval=0",
             "--set", "plot=false", "--set", "progress=none"]
    from mplfast.cli import main

    assert main(["train", "--out", out, *quick]) == 0
    capsys.readouterr()

    def snapshot() -> dict:
        files = {}
        for root, _, names in os.walk(out):
            for n in names:
                p = os.path.join(root, n)
                files[os.path.relpath(p, out)] = open(p, "rb").read()
        return files

    before = snapshot()
    assert any(k.startswith("tb" + os.sep) for k in before)
    assert main(["train", "--out", out, "--resume"]) == 0
    assert "finished run" in capsys.readouterr().out
    assert snapshot() == before


def test_resume_with_other_steps_refuses(tmp_path, capsys):
    """--resume --steps N with another N would silently rescale the lr schedule: refused."""
    out = str(tmp_path / "run")
    from mplfast.cli import main

    args = ["--set", "model_kwargs={width: 4}", "--set", "eval_interval=0", "--set", "plot=false",
            "--set", "progress=none", "--set", "tensorboard=false"]
    assert main(["train", "--out", out, "--steps", "3", *args]) == 0
    capsys.readouterr()
    before = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    assert main(["train", "--out", out, "--resume", "--steps", "6"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "3-step learning-rate schedule" in err[0] and "--steps 6" in err[0]
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == before


def test_sigint_stops_cleanly_in_process(tmp_path, capsys):
    """Ctrl-C: the current step finishes, the checkpoint is written, main returns 130."""
    import threading

    from mplfast.cli import main

    out = str(tmp_path / "run")
    metrics = os.path.join(out, "metrics.jsonl")

    def interrupt_after_first_log() -> None:
        deadline = time.monotonic() + 120
        while _last_step(metrics) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt_after_first_log, daemon=True)
    t.start()
    rc = main(["train", "--out", out, "--steps", "100000", "--set", "model_kwargs={width: 4}",
               "--set", "log_interval=1", "--set", "eval_interval=0", "--set", "tensorboard=false",
               "--set", "progress=none"])
    t.join()
    assert rc == 130
    assert "stopped by SIGINT" in capsys.readouterr().err
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert 2 <= ckpt["step"] < 100000
    assert ckpt["phase"] == "train"
    assert os.path.isfile(os.path.join(out, "curves.png"))


@pytest.mark.slow
def test_sigterm_during_finetune_resumes_bitwise(tmp_path):
    """A stop inside the finetune stage resumes the finetune, not the training."""
    args = ["train", "--device", "cpu", "--steps", "12", "--set", "model_kwargs={width: 8, dropout: 0.2}",
            "--set", "finetune_epochs=120", "--set", "finetune_batch_size=25",
            "--set", "log_interval=5", "--set", "eval_interval=0", "--set", "tensorboard=false",
            "--set", "plot=false", "--set", "progress=plain"]
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    subprocess.run([sys.executable, "-m", "mplfast", *args, "--out", ref], check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "mplfast", *args, "--out", cut],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _last_step(os.path.join(cut, "metrics.jsonl")) < 12 + 20:  # 20 finetune steps in
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143 and "after finetune step" in err, err
    stopped = torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=False)
    assert stopped["phase"] == "finetune" and 20 <= stopped["finetune"]["step"] < 240
    done = subprocess.run([sys.executable, "-m", "mplfast", "train", "--out", cut, "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a = torch.load(os.path.join(ref, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=False)
    _assert_same_state(a, b)
    for name, t in a["finetuned"].items():
        assert torch.equal(t, b["finetuned"][name]), f"finetuned.{name} differs"
    sa = json.load(open(os.path.join(ref, "summary.json")))
    sb = json.load(open(os.path.join(cut, "summary.json")))
    assert sa["finetune_acc"] == sb["finetune_acc"] == sa["test_acc"]


def _stopped_run(out: str, monkeypatch, capsys, argv: list[str], stop_at: int = 3) -> int:
    """Run ``argv``, stopped as by a signal after ``stop_at`` more steps (its checkpoint written
    there); returns the checkpoint's step."""
    from mplfast.cli import main
    from mplfast.train import runner

    calls = {"n": 0}
    real = runner.any_flag

    def stop_after(flag, info):  # the per-step "was a signal received?" poll
        calls["n"] += 1
        return real(flag, info) or calls["n"] == stop_at

    monkeypatch.setattr(runner, "any_flag", stop_after)
    assert main(argv) == 130
    monkeypatch.setattr(runner, "any_flag", real)
    capsys.readouterr()
    return int(torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"])


QUICK = ["--set", "model_kwargs={width: 4}", "--set", "eval_interval=0", "--set", "plot=false",
         "--set", "progress=none", "--set", "tensorboard=false", "--set", "log_interval=1"]


def test_resume_refuses_a_change_to_what_defines_the_run(tmp_path, capsys, monkeypatch):
    """--resume --seed 5 / --labels 100 / ... redrew the labeled set mid-run and reported the
    run under the new settings: refused, one line naming the setting and both values, nothing
    touched. Settings of where/how it runs (device, logging cadence) may change."""
    from mplfast.cli import main

    out = str(tmp_path / "run")
    first = ["train", "--out", out, "--steps", "6", "--seed", "1", *QUICK]
    assert _stopped_run(out, monkeypatch, capsys, first) == 3
    files = ("checkpoint.pt", "config.yaml", "metrics.jsonl", "last.pt")
    before = {n: open(os.path.join(out, n), "rb").read() for n in files}
    saved = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["config"]
    labels, thr, lr = saved["labels"], saved["mpl"]["threshold"], saved["student_lr"]
    for extra, key, old, new in (
            (["--seed", "5"], "seed", "1", "5"),
            (["--labels", str(labels + 10)], "labels", labels, labels + 10),
            (["--method", "uda"], "method", saved["method"], "uda"),
            (["--dataset", "synthetic"], "dataset", "digits", "synthetic"),
            (["--set", f"batch_size={saved['batch_size'] // 2}"], "batch_size",
             saved["batch_size"], saved["batch_size"] // 2),
            (["--set", "model_kwargs={width: 8}"], "model_kwargs", "{width: 4}", "{width: 8}"),
            (["--set", f"mpl.threshold={thr / 2}"], "mpl.threshold", thr, thr / 2),
            (["--set", f"student_lr={lr * 2}"], "student_lr", lr, lr * 2),
            (["--set", "precision=bf16"], "precision", saved["precision"], "bf16")):
        assert str(old) != str(new)
        rc = main(["train", "--out", out, "--resume", *extra])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 2 and len(err) == 1, (extra, err)
        assert f"trained with {key} {old}; this command gives {key} {new}," in err[0], err[0]
        assert {n: open(os.path.join(out, n), "rb").read() for n in files} == before, extra
    # the same value again, and settings that do not define the run, are accepted
    resume = ["train", "--out", out, "--resume", "--seed", "1", "--device", "cpu",
              "--set", "log_interval=2", "--set", "ckpt_interval=4"]
    assert main(resume) == 0
    s = json.load(open(os.path.join(out, "summary.json")))
    assert (s["seed"], s["labels"], s["steps"]) == (1, labels, 6)


def test_resume_keeps_the_record_of_the_command_that_started_the_run(tmp_path, capsys,
                                                                    monkeypatch):
    """config.yaml's header and summary.json keep the first command; each --resume is
    appended (`resumed:`), also across two resumes and from a checkpoint without `commands`."""
    import shlex

    import yaml

    from mplfast.cli import main

    out = str(tmp_path / "run")
    first = ["train", "--out", out, "--steps", "9", *QUICK]
    assert _stopped_run(out, monkeypatch, capsys, first) == 3
    second = ["train", "--out", out, "--resume", "--device", "cpu"]
    assert _stopped_run(out, monkeypatch, capsys, second) == 6
    # a checkpoint written before the history was kept: config.yaml's header is read instead
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ck["commands"] == [shlex.join(["mplfast", *first]), shlex.join(["mplfast", *second])]
    del ck["commands"]
    torch.save(ck, os.path.join(out, "checkpoint.pt"))
    third = ["train", "--out", out, "--resume"]
    assert main(third) == 0
    want = [shlex.join(["mplfast", *a]) for a in (first, second, third)]
    header = [ln for ln in open(os.path.join(out, "config.yaml")) if ln.startswith("# ")]
    assert [ln[2:].rstrip("\n") for ln in header if ln.startswith(("# command:", "# resumed:"))] \
        == [f"command: {want[0]}", f"resumed: {want[1]}", f"resumed: {want[2]}"]
    prov = json.load(open(os.path.join(out, "summary.json")))["provenance"]
    assert prov["command"] == want[0] and prov["resumed"] == want[1:]
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["steps"] == 9


def _tb_steps(tb_dir: str, tag: str = "train/teacher_loss") -> list[int]:
    """The steps TensorBoard shows for ``tag`` (its own reader: all event files of the folder,
    purge_step honoured)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_tensorboard_after_resume_shows_each_step_once(tmp_path, capsys, monkeypatch):
    """The killed run's events after its checkpoint are purged, those up to and including the
    checkpoint's step kept (as metrics.jsonl keeps them): steps 1..6, each once."""
    from mplfast.cli import main

    out = str(tmp_path / "run")
    tb = ["--set", "tensorboard=true"]
    assert _stopped_run(out, monkeypatch, capsys, ["train", "--out", out, "--steps", "6",
                                                     *QUICK, *tb]) == 3
    assert _tb_steps(os.path.join(out, "tb")) == [1, 2, 3]
    assert main(["train", "--out", out, "--resume"]) == 0
    assert _tb_steps(os.path.join(out, "tb")) == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))
            if r.get("phase") == "train"] == [1, 2, 3, 4, 5, 6]


def test_fresh_run_in_a_reused_folder_drops_the_old_runs_events(tmp_path, capsys):
    """A folder whose run was killed before its first checkpoint (so a fresh run may use it):
    the old run's TensorBoard events, logs and figures go, the user's own files stay."""
    from mplfast.cli import main

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *QUICK, "--set", "tensorboard=true", "--set", "plot=true"]
    assert main([*argv, "--steps", "5"]) == 0
    for name in ("checkpoint.pt", "last.pt"):  # as if killed before its first checkpoint
        os.remove(out / name)
    (out / "tb" / "notes.txt").write_text("mine")
    (out / "mine.txt").write_text("mine")
    old_events = set(os.listdir(out / "tb")) - {"notes.txt"}
    assert main([*argv, "--steps", "2", "--set", "plot=false"]) == 0
    events = set(os.listdir(out / "tb")) - {"notes.txt"}
    assert len(events) == 1 and not events & old_events
    assert _tb_steps(str(out / "tb")) == [1, 2]
    assert (out / "tb" / "notes.txt").read_text() == "mine" and (out / "mine.txt").exists()
    assert not (out / "curves.png").exists()  # the old run's figure is not this run's
