"""Every user mistake ends as ONE line on stderr with exit status 2, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mplfast.cli import main


def _run_inprocess(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit through parser.exit
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def _assert_one_line(rc: int, err: str, expect: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("mplfast: error:"), err
    assert expect.lower() in lines[0].lower(), err


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Run every case from a scratch directory: a default `runs/` must never land in the
    repository, and a failed run must leave no folder behind (checked after each case)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert not (cwd / "runs").exists() or not any((cwd / "runs").iterdir()), \
        f"a failed run left {sorted(p.name for p in (cwd / 'runs').iterdir())}"


@pytest.fixture
def empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("argv, expect", [
    (["train", "--dataset", "cifar10", "--data", "/definitely/not/here"], "does not exist"),
    (["train", "--dataset", "nosuchset"], "invalid choice"),
    (["train", "--preset", "nosuchpreset"], "unknown preset"),
    (["train", "--set", "thresold=0.5"], "did you mean threshold"),
    (["train", "--set", "threshold=2.5"], "threshold"),
    (["train", "--steps", "-5"], "steps must be >= 0"),
    (["train", "--set", "steps=abc"], "expected int"),
    (["train", "--set", "lambda_u=-1"], "lambda_u"),
    (["train", "--set", "temperature=0"], "temperature"),
    (["train", "--set", "meta_signal=magic"], "meta_signal"),
    (["train", "--set", "novalue"], "key=value"),
    (["train", "--labels", "5000"], "more than the"),
    (["train", "--labels", "55"], "multiple"),
    (["train", "--method", "uda", "--set", "meta_signal=grad_dot"], "incompatible"),
    (["train", "--unlabeled", "/tmp"], "imagefolder"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--resume", "--out", "/tmp", "--preset", "cifar10-4k"], "cannot be combined"),
    (["train", "--config", "/no/such/file.yaml"], "config file not found"),
    (["train", "--set", "model=nosuchnet", "--steps", "1"], "unknown model"),
    (["train", "--set", "model_kwargs={bogus: 1}", "--steps", "1"], "bogus"),
    (["train", "--dataset", "synthetic", "--set", "synthetic_kw={bogus: 1}"], "bogus"),
    (["eval", "--checkpoint", "/no/such/ckpt.pt"], "checkpoint not found"),
    (["ablate", "--seeds", "x"], "--seeds"),
    (["ablate", "--variants", "mpl:magic"], "--variants"),
    (["train", "--stpes", "3"], "did you mean --steps"),
    (["train", "--step", "3"], "unrecognized arguments: --step"),  # no abbreviations
    (["train", "--set", "mpl.thresold=0.5"], "did you mean mpl.threshold"),
    (["train", "--set", "mpl.threshold=2.5"], "threshold must be in [0, 1]"),
    (["train", "--dataset", "synthetic", "--labels", "100000"], "more than the"),
])
def test_bad_input_one_line(argv, expect, capsys):
    rc, err = _run_inprocess(argv, capsys)
    _assert_one_line(rc, err, expect)


def test_missing_data_files(empty_dir, capsys):
    rc, err = _run_inprocess(["train", "--dataset", "cifar10", "--data", empty_dir], capsys)
    _assert_one_line(rc, err, "cifar-10-batches-py")


def test_resume_without_checkpoint(empty_dir, capsys):
    rc, err = _run_inprocess(["train", "--out", empty_dir, "--resume"], capsys)
    _assert_one_line(rc, err, "no checkpoint")


def test_bad_yaml_and_unknown_yaml_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    rc, err = _run_inprocess(["train", "--config", str(bad)], capsys)
    _assert_one_line(rc, err, "cannot parse config file")
    unk = tmp_path / "unk.yaml"
    unk.write_text("batchsize: 3\n")
    rc, err = _run_inprocess(["train", "--config", str(unk)], capsys)
    _assert_one_line(rc, err, "did you mean batch_size")


def test_existing_checkpoint_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"precious")
    rc, err = _run_inprocess(["train", "--out", str(out)], capsys)
    _assert_one_line(rc, err, "already holds a checkpoint")
    assert (out / "checkpoint.pt").read_bytes() == b"precious"


def test_garbage_checkpoint(tmp_path, capsys):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(b"not a checkpoint")
    rc, err = _run_inprocess(["eval", "--checkpoint", str(p)], capsys)
    _assert_one_line(rc, err, "cannot read checkpoint")


def test_subprocess_no_traceback():
    """The real console path (python -m mplfast): status 2, one line, no traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for argv in (["train", "--set", "threshold=2.5"], ["train", "--labels", "100000"]):
        p = subprocess.run([sys.executable, "-m", "mplfast", *argv], capture_output=True,
                           text=True, env=env, timeout=120, cwd=os.getcwd())
        _assert_one_line(p.returncode, p.stderr, "")


def test_error_names_no_number_the_user_never_typed(tmp_path, capsys):
    """Without --labels, a data set smaller than a preset's label count is never reported as
    `labels=128000`: a bare --dataset derives the count; a named preset says it set it."""
    rc, err = _run_inprocess(["train", "--dataset", "synthetic", "--set", "synthetic_kw={num_train: 40}",
                              "--preset", "imagenet-10pct", "--steps", "1"], capsys)
    _assert_one_line(rc, err, "comes from --preset imagenet-10pct")


def test_memory_estimate_refuses_before_an_oom_kill(capsys, monkeypatch):
    monkeypatch.setenv("MPLFAST_MEMORY_LIMIT_MB", "1")
    rc, err = _run_inprocess(["train", "--steps", "1"], capsys)
    _assert_one_line(rc, err, "lower --set batch_size")
    assert not os.path.exists("runs")


def test_no_command_is_a_usage_error():
    """`mplfast` alone prints the usage on stderr and exits 2 (a script that lost its
    arguments must fail, not succeed having done nothing)."""
    p = subprocess.run([sys.executable, "-m", "mplfast"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("usage: mplfast") and "train" in p.stderr


@pytest.mark.parametrize("doc, where, expect", [
    ("steps: [1, 2\n", "2:1", "expected ',' or ']'"),
    ("steps: 3\n  seed: 1\n", "2:7", "mapping values are not allowed here"),
    ("seed: 1\nsteps: {a: 1\nmu: 2\n", "3:3", "while parsing a flow mapping started at 2:8"),
    ("seed: 1\n\tsteps: 2\n", "2:1", "cannot start any token"),
])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys, doc, where, expect):
    bad = tmp_path / "bad.yaml"
    bad.write_text(doc)
    rc, err = _run_inprocess(["train", "--config", str(bad)], capsys)
    _assert_one_line(rc, err, f"{bad}:{where}: cannot parse config file: ")
    assert expect in err, err
