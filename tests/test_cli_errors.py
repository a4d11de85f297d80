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
def _cwd_outside_the_tree(tmp_path, monkeypatch):
    """The CLI's default output directory is runs/ under the current directory, and a failing
    `train` may already have written its config.yaml there: run from a temporary directory so
    the suite never writes inside the work tree."""
    monkeypatch.chdir(tmp_path)


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
                           text=True, env=env, timeout=120)
        _assert_one_line(p.returncode, p.stderr, "")
