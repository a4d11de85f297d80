"""Checkpoints are untrusted input: nothing in one runs when any CLI command opens it, and a
malformed one is one line and exit 2 (issue 13)."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from mplfast.errors import UserError
from mplfast.train import checkpoint as ckpt_io
from untrusted_helpers import QUICK, Evil, EvilSystem, assert_one_line, run_cli

REFUSE = "not an mplfast checkpoint, or one that would run code when loaded; refusing"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished 2-step digits run (its folder); tests copy from it."""
    out = str(tmp_path_factory.mktemp("tiny") / "run")
    from mplfast.cli import main

    assert main(["train", "--out", out, "--steps", "2", "--device", "cpu", *QUICK]) == 0
    return out


@pytest.fixture
def good(tiny_run):
    return torch.load(os.path.join(tiny_run, "checkpoint.pt"), weights_only=True)


def _evil_checkpoint(path: str, marker: str, kind: type = Evil, base: dict | None = None) -> None:
    """A checkpoint whose unpickling runs code: a real one with the payload hidden inside."""
    st = dict(base or {"version": 2, "step": 1, "config": {}})
    st["results"] = {"teacher_acc": kind(marker)}
    torch.save(st, path)


def _argv(command: str, run_dir: str, ckpt: str, tmp: str) -> list[str] | None:
    """How ``command`` opens the files of a run (``run_dir``, whose checkpoint.pt, best.pt and
    last.pt all hold the payload) or the checkpoint ``ckpt``; None if it never opens one."""
    if command == "eval":
        return ["eval", "--checkpoint", ckpt]
    if command == "train":
        return ["train", "--out", run_dir, "--resume"]
    if command == "convert-checkpoint":
        return ["convert-checkpoint", ckpt]
    if command == "export":
        return ["export", run_dir, "--out", os.path.join(tmp, "m.safetensors")]
    if command == "predict":
        img = os.path.join(tmp, "x.png")
        from PIL import Image

        Image.new("RGB", (8, 8), (10, 20, 30)).save(img)
        return ["predict", run_dir, img]
    return None


# subcommands that open no checkpoint or model file (ablate: its own test below)
NO_CHECKPOINT = {"models", "ablate"}


def _subcommands() -> list[str]:
    from mplfast.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_every_subcommand_is_covered(tmp_path):
    """A new subcommand must say how it opens a checkpoint (or be listed as opening none), so
    that the marker test below covers it."""
    missing = [c for c in _subcommands()
               if c not in NO_CHECKPOINT and _argv(c, "d", "c", str(tmp_path)) is None]
    assert not missing, f"add {missing} to _argv or NO_CHECKPOINT"


@pytest.mark.parametrize("kind", [Evil, EvilSystem])
@pytest.mark.parametrize("command", [c for c in _subcommands() if c not in NO_CHECKPOINT])
def test_code_in_a_checkpoint_never_runs(tmp_path, capsys, good, command, kind):
    marker = str(tmp_path / "MARKER")
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    for name in ("checkpoint.pt", "best.pt", "last.pt"):  # whichever file a command reads
        _evil_checkpoint(os.path.join(run_dir, name), marker, kind, base=good)
    argv = _argv(command, run_dir, ckpt, str(tmp_path))
    assert argv is not None
    rc, _, err = run_cli(argv, capsys)
    line = assert_one_line(rc, err)
    assert not os.path.exists(marker), "code from the checkpoint ran"
    if command == "convert-checkpoint":  # without --trust it refuses before reading anything
        assert "--trust" in line
    elif command in ("eval", "train"):
        assert REFUSE in line and ckpt in line
    else:  # export / predict read the run's best.pt (model files): the same refusal line
        assert REFUSE in line and os.path.join(run_dir, "best.pt") in line, line


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_code_in_a_model_file_is_refused_with_the_one_line(tmp_path, capsys, good, name):
    """eval of a run folder, and model_file.load_models itself, refuse a best.pt / last.pt
    whose pickle would run code with the checkpoint loader's line."""
    from mplfast.errors import UserError
    from mplfast.train.model_file import load_models

    marker = str(tmp_path / "MARKER")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _evil_checkpoint(str(run_dir / name), marker, base=good)
    with pytest.raises(UserError) as e:
        load_models(str(run_dir / name))
    assert str(e.value) == f"cannot read checkpoint {run_dir / name}: {REFUSE}"
    rc, _, err = run_cli(["eval", str(run_dir)], capsys)
    assert REFUSE in assert_one_line(rc, err)
    assert not os.path.exists(marker)


def test_code_in_a_checkpoint_never_runs_in_ablate(tmp_path, capsys, good):
    """ablate resumes a half-done run from its folder's checkpoint: refused too."""
    marker = str(tmp_path / "MARKER")
    out = str(tmp_path / "abl")
    run_dir = os.path.join(out, "supervised-s0")
    os.makedirs(run_dir)
    _evil_checkpoint(os.path.join(run_dir, "checkpoint.pt"), marker, base=good)
    rc, _, err = run_cli(["ablate", "--out", out, "--seeds", "1", "--variants", "supervised",
                          "--steps", "2", *QUICK], capsys)
    line = assert_one_line(rc, err, REFUSE)
    assert "supervised-s0" in line
    assert not os.path.exists(marker)


def test_code_in_a_checkpoint_never_runs_subprocess(tmp_path, good):
    """The real console path, for a checkpoint that calls os.system."""
    marker = str(tmp_path / "MARKER")
    ckpt = str(tmp_path / "evil.pt")
    _evil_checkpoint(ckpt, marker, EvilSystem, base=good)
    p = subprocess.run([sys.executable, "-m", "mplfast", "eval", "--checkpoint", ckpt],
                       capture_output=True, text=True, timeout=120)
    assert_one_line(p.returncode, p.stderr, REFUSE)
    assert not os.path.exists(marker)


def test_convert_with_trust_runs_nothing_new_and_refuses_foreign_objects(tmp_path, capsys, good):
    """--trust means the user accepts the risk; an object other than plain data left in the
    file after converting is still refused (and never written)."""
    marker = str(tmp_path / "MARKER")
    ckpt = str(tmp_path / "c.pt")
    st = dict(good)
    st["results"] = {"x": Evil(marker)}
    torch.save(st, ckpt)
    before = open(ckpt, "rb").read()
    rc, _, err = run_cli(["convert-checkpoint", "--trust", ckpt], capsys)
    assert os.path.exists(marker)  # the trusted full unpickler ran it: what --trust warns about
    assert_one_line(rc, err)
    assert open(ckpt, "rb").read() == before


# --------------------------------------------------------------------------- malformed files
@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04" + os.urandom(200),
                                     b"\x80\x02}q\x00."])
def test_garbage_is_refused(tmp_path, capsys, content):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(content)
    rc, _, err = run_cli(["eval", "--checkpoint", str(p)], capsys)
    line = assert_one_line(rc, err)
    assert str(p) in line


def test_truncated_checkpoint(tmp_path, capsys, tiny_run):
    data = open(os.path.join(tiny_run, "checkpoint.pt"), "rb").read()
    p = tmp_path / "t.pt"
    p.write_bytes(data[: len(data) // 2])
    rc, _, err = run_cli(["eval", "--checkpoint", str(p)], capsys)
    assert REFUSE in assert_one_line(rc, err)


def _mutated(tmp_path, good, mutate) -> str:
    st = {k: v for k, v in good.items()}
    mutate(st)
    p = str(tmp_path / "m.pt")
    torch.save(st, p)
    return p


def _drop(*keys):
    def f(st):
        for k in keys:
            st.pop(k)
    return f


def _set(key, value):
    def f(st):
        st[key] = value
    return f


def _reshape_student(st):
    sd = dict(st["student"])
    k = next(k for k, v in sd.items() if v.dim() == 4)
    sd[k] = torch.zeros(sd[k].shape[0] + 1, *sd[k].shape[1:])
    st["student"] = sd


def _extra_student_key(st):
    st["student"] = {**st["student"], "bogus.weight": torch.zeros(3)}


def _cfg(**kv):
    def f(st):
        st["config"] = {**st["config"], **kv}
    return f


MALFORMED = [
    ("no weights", _drop("student", "teacher", "ema"), "no model weights"),
    ("no config", _drop("config"), "missing 'config'"),
    ("weights are a string", _set("student", "weights"), "not a non-empty dict of tensors"),
    ("student wrong shape", _reshape_student, "has shape"),
    ("student extra key", _extra_student_key, "unexpected 'bogus.weight'"),
    ("bad step", _set("step", -3), "'step' must be an integer >= 0"),
    ("bad phase", _set("phase", "sideways"), "'phase' must be one of"),
    ("unknown config key", _cfg(not_a_field=1), "unknown checkpoint config key 'not_a_field'"),
    ("config value out of range", _cfg(threshold=2.5), "threshold"),
    ("config wrong type", _cfg(steps="many"), "steps"),
    ("method mismatch", _set("method", "uda"), "does not match its config"),
    ("old version", _set("version", 1), "convert-checkpoint --trust"),
    ("future version", _set("version", 99), "format version 99"),
    ("not a dict", lambda st: st.clear(), "missing"),
    # found by the fuzzer: a tensor where the format has an int or a str raised "Boolean value
    # of Tensor ... is ambiguous", and a value's multi-line repr broke the one-line rule
    ("version is a tensor", _set("version", torch.zeros(624, dtype=torch.int64)),
     "format version a torch.int64 tensor of shape (624,)"),
    ("phase is a tensor", _set("phase", torch.zeros(5056, dtype=torch.uint8)), "'phase' must be"),
    ("config value is a tensor", _cfg(batch_size=torch.zeros(624, dtype=torch.int64)), "batch_size"),
    ("config with an int key", lambda st: st["config"].update({1: 2}), "config field names"),
    ("data moved", _cfg(dataset="cifar10", data="/no/such/dir"), "pass --data DIR"),
]


@pytest.mark.parametrize("name,mutate,expect", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_checkpoint_eval(tmp_path, capsys, good, name, mutate, expect):
    p = _mutated(tmp_path, good, mutate)
    rc, _, err = run_cli(["eval", "--checkpoint", p], capsys)
    line = assert_one_line(rc, err, expect)
    if name != "data moved":  # that line names the missing data root instead
        assert p in line


RESUME_MALFORMED = [m for m in MALFORMED if m[0] != "data moved"] + [  # resume: --set data=...
    ("rng missing", _drop("rng"), "'rng' is missing"),
    ("rng numpy key short", lambda st: st["rng"][0]["numpy"].update(key=torch.zeros(3, dtype=torch.int64)),
     "numpy.key"),
    ("rng python wrong", lambda st: st["rng"][0].update(python={"version": 3, "state": [1, 2]}),
     "python random state"),
    ("optimizer missing", _drop("student_optimizer"), "student_optimizer"),
    ("momentum wrong shape", lambda st: st["student_optimizer"]["state"].update(
        {0: {"momentum_buffer": torch.zeros(1, 2, 3)}}), "student_optimizer.state[0]"),
    ("scheduler foreign key", lambda st: st["student_scheduler"].update(optimizer="x"),
     "student_scheduler keys differ"),
    ("step state wrong type", lambda st: st["step_state"].update(t="x"), "step_state.t"),
]


@pytest.mark.parametrize("name,mutate,expect", RESUME_MALFORMED, ids=[m[0] for m in RESUME_MALFORMED])
def test_malformed_checkpoint_resume(tmp_path, capsys, good, name, mutate, expect):
    import copy

    st = _mid_run(copy.deepcopy(good))
    mutate(st)
    d = tmp_path / "run"
    d.mkdir()
    torch.save(st, d / "checkpoint.pt")
    rc, _, err = run_cli(["train", "--out", str(d), "--resume"], capsys)
    assert_one_line(rc, err, expect)


def _mid_run(st: dict) -> dict:
    """A finished 2-step checkpoint as if stopped after step 1 (so --resume trains on)."""
    st["step"], st["phase"], st["results"] = 1, "train", {}
    return st


def test_resume_with_a_different_model_is_one_line(tmp_path, capsys, good):
    d = tmp_path / "run"
    d.mkdir()
    torch.save(_mid_run(dict(good)), d / "checkpoint.pt")
    # asked for on the command line: refused as a change to what defines the run
    rc, _, err = run_cli(["train", "--out", str(d), "--resume", "--set", "model_kwargs={width: 8}"],
                         capsys)
    assert_one_line(rc, err, "this command gives model_kwargs {width: 8}")
    # a checkpoint whose config does not build its own weights: the structure check
    st = _mid_run(dict(good))
    st["config"] = {**st["config"], "model_kwargs": {"width": 8}}
    torch.save(st, d / "checkpoint.pt")
    rc, _, err = run_cli(["train", "--out", str(d), "--resume"], capsys)
    assert_one_line(rc, err, "the model its config builds")


def test_shared_reference_bomb_is_refused(tmp_path, capsys, good):
    """Pickle memo references let a small file describe a structure with 2^40 leaves; walking
    or copying it must not hang."""
    x: list = [1, 2]
    for _ in range(40):
        x = [x, x]
    p = _mutated(tmp_path, good, _set("results", {"a": x}))
    rc, _, err = run_cli(["eval", "--checkpoint", p], capsys)
    assert_one_line(rc, err, "too large")


# --------------------------------------------------------------------------- RNG and the format
def test_rng_state_roundtrips_bitwise_through_the_safe_loader(tmp_path):
    torch.manual_seed(3)
    np.random.seed(5)
    random.seed(7)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)           # and python's
    st = ckpt_io.rng_state()
    p = str(tmp_path / "r.pt")
    ckpt_io.save_checkpoint({"rng": st}, p)
    want = (torch.rand(5), np.random.standard_normal(4), np.random.randint(0, 2**31, 4),
            random.random(), random.gauss(0, 1))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    back = torch.load(p, weights_only=True)["rng"]
    ckpt_io._check_rng(back, "rng")
    ckpt_io.set_rng_state(back)
    got = (torch.rand(5), np.random.standard_normal(4), np.random.randint(0, 2**31, 4),
           random.random(), random.gauss(0, 1))
    assert torch.equal(want[0], got[0])
    assert np.array_equal(want[1], got[1]) and np.array_equal(want[2], got[2])
    assert want[3] == got[3] and want[4] == got[4]


def test_checkpoints_load_with_weights_only(tiny_run):
    st = ckpt_io.load_checkpoint(os.path.join(tiny_run, "checkpoint.pt"), expect="resume")
    assert st["version"] == ckpt_io.CKPT_VERSION


def _legacy(st: dict) -> dict:
    """``st`` as the version-1 format wrote it (numpy RNG state with an ndarray)."""
    old = dict(st)
    old["version"] = 1
    rngs = []
    for r in st["rng"]:
        n, p = r["numpy"], r["python"]
        rngs.append({"torch": r["torch"],
                     "numpy": (n["name"], n["key"].numpy().astype(np.uint32), n["pos"],
                               n["has_gauss"], n["cached_gaussian"]),
                     "python": (p["version"], tuple(p["state"]), p["gauss"])})
    old["rng"] = rngs
    return old


def test_old_format_is_refused_then_converted_with_trust(tmp_path, capsys, tiny_run, good):
    import shutil

    d = str(tmp_path / "run")
    shutil.copytree(tiny_run, d)
    ckpt = os.path.join(d, "checkpoint.pt")
    torch.save(_legacy(_mid_run(dict(good))), ckpt)
    rc, _, err = run_cli(["eval", "--checkpoint", ckpt], capsys)
    line = assert_one_line(rc, err, REFUSE)
    assert "convert-checkpoint --trust" in line
    rc, _, err = run_cli(["convert-checkpoint", ckpt], capsys)
    assert_one_line(rc, err, "--trust")
    rc, out, err = run_cli(["convert-checkpoint", "--trust", ckpt], capsys)
    assert rc == 0, err
    assert "converted" in out
    conv = ckpt_io.load_checkpoint(ckpt, expect="resume")
    for a, b in zip(conv["rng"][0]["python"]["state"], good["rng"][0]["python"]["state"]):
        assert a == b
    assert torch.equal(conv["rng"][0]["numpy"]["key"], good["rng"][0]["numpy"]["key"])
    rc, out, err = run_cli(["eval", "--checkpoint", ckpt], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["convert-checkpoint", "--trust", ckpt], capsys)
    assert rc == 0 and "already" in out
    rc, out, err = run_cli(["train", "--out", d, "--resume"], capsys)
    assert rc == 0, err
    assert torch.load(ckpt, weights_only=True)["step"] == 2


def test_load_checkpoint_api_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt_io.load_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt_io.load_checkpoint(str(tmp_path))  # a directory
