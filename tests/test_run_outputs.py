"""Where a run writes: an unwritable --out or a full disk is one line (never a traceback) and
loses nothing; written files get the umask's mode; a folder reused after a killed run holds
no stale TensorBoard events."""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from mplfast.cli import main

QUICK = ["--set", "model_kwargs={width: 4}", "--set", "eval_interval=0", "--set", "progress=none",
         "--set", "log_interval=1", "--device", "cpu"]


def _one_line(rc: int, err: str, expect: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mplfast: error:") and expect in lines[0], lines
    return lines[0]


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _can_mount_tmpfs(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    d = tmp_path / "probe"
    d.mkdir()
    p = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k none {d}"],
                       capture_output=True)
    return p.returncode == 0


# ------------------------------------------------------------------------ unwritable --out
def test_out_under_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    rc = main(["train", "--out", str(tmp_path / "notes.txt" / "run"), "--steps", "1", *QUICK])
    _one_line(rc, capsys.readouterr().err, "notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_in_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """os.access decides (the tests may run as root, whom a chmod does not stop; the real
    read-only file system is the tmpfs test below)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro)
                        else real(p, mode, **kw))
    rc = main(["train", "--out", str(ro / "a" / "run"), "--steps", "1", *QUICK])
    _one_line(rc, capsys.readouterr().err, f"cannot write in {ro} (permission denied)")
    assert os.listdir(ro) == []


def _tmpfs_script(mnt, size: str, body: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount -t tmpfs -o size={size} none {mnt} && {body}"],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_full_and_read_only_disk_on_a_real_file_system(tmp_path):
    """A tmpfs of 120 KiB fills up at the second checkpoint: one line, exit 2, the first
    checkpoint intact and no temp file left; after room is made, --resume finishes. The same
    tmpfs remounted read-only: a new --out in it is refused before the data is loaded."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs unshare -m and mount rights)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = mnt / "run"
    py = f"{sys.executable} -m mplfast train"
    args = "--steps 12 --set ckpt_interval=5 --set 'model_kwargs={width: 4}' " \
           "--set eval_interval=0 --set progress=none --set log_interval=1 --device cpu"
    body = (f"{py} --out {run} {args} 2>{tmp_path}/err1; echo $? >{tmp_path}/rc1; "
            f"ls -a {run} >{tmp_path}/ls1; cp {run}/checkpoint.pt {tmp_path}/kept.pt; "
            f"mount -o remount,size=64m {mnt} && {py} --out {run} --resume 2>{tmp_path}/err2; "
            f"echo $? >{tmp_path}/rc2; cp {run}/checkpoint.pt {tmp_path}/final.pt; "
            f"mount -o remount,ro {mnt} && {py} --out {mnt}/other {args} 2>{tmp_path}/err3; "
            f"echo $? >{tmp_path}/rc3")
    p = _tmpfs_script(mnt, "120k", body)
    assert p.returncode == 0, p.stderr
    read = lambda name: (tmp_path / name).read_text()  # noqa: E731
    line = _one_line(int(read("rc1")), read("err1"), "No space left on device")
    assert "checkpoint.pt is intact" in line and "--resume" in line, line
    assert not [n for n in read("ls1").split() if n.startswith(".tmp")], read("ls1")
    kept = torch.load(tmp_path / "kept.pt", weights_only=True)
    assert kept["step"] == 5
    assert int(read("rc2")) == 0, read("err2")
    assert torch.load(tmp_path / "final.pt", weights_only=True)["step"] == 12
    _one_line(int(read("rc3")), read("err3"), "read-only file system")


def test_full_disk_mid_run_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    """Simulated where no tmpfs can be mounted: from the second checkpoint on every write fails
    with ENOSPC (checkpoint, metrics, TensorBoard, plot). One line, no chained tracebacks; the
    first checkpoint is intact and the resumed run ends as an uninterrupted one."""
    from mplfast.train import fileio, metrics

    out, ref = tmp_path / "run", tmp_path / "ref"
    argv = ["train", "--steps", "8", "--set", "ckpt_interval=3", *QUICK]
    assert main([*argv, "--out", str(ref)]) == 0
    full = {"on": False, "saves": 0}
    real_atomic, real_write = fileio.write_atomic, metrics.MetricsWriter.write

    def enospc() -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def atomic(path, write):
        if os.path.basename(path) == "checkpoint.pt":
            full["saves"] += 1
            full["on"] = full["on"] or full["saves"] == 2
        if full["on"]:
            raise enospc()
        return real_atomic(path, write)

    def write(self, record):
        if full["on"]:
            raise enospc()
        return real_write(self, record)

    monkeypatch.setattr(fileio, "write_atomic", atomic)
    monkeypatch.setattr(metrics.MetricsWriter, "write", write)
    capsys.readouterr()
    rc = main([*argv, "--out", str(out)])
    line = _one_line(rc, capsys.readouterr().err, "No space left on device")
    assert f"{out / 'checkpoint.pt'} is intact" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", str(out), "--resume"]) == 0
    a = torch.load(ref / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k


def test_write_atomic_failure_leaves_the_old_file_and_no_temp(tmp_path):
    from mplfast.train.fileio import write_atomic

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(str(target), fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------ file modes
def test_outputs_get_the_umask_mode(tmp_path, capsys):
    """mkstemp (atomic writes) and safetensors create files 0600; every file a run, an export
    or an ablation writes has the mode open() gives (0666 less the umask: 0644 under 022)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(["train", "--out", str(out), "--steps", "2", "--set", "plot=true", *QUICK]) == 0
        w = tmp_path / "model.safetensors"
        assert main(["export", str(out), "--out", str(w)]) == 0
        os.umask(0o002)  # a group-writable umask is honoured too
        w2 = tmp_path / "group.safetensors"
        assert main(["export", str(out), "--out", str(w2)]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()] + [w, tmp_path / "model.json"]
    assert {p.name for p in files} >= {"checkpoint.pt", "last.pt", "summary.json", "curves.png",
                                      "config.yaml", "metrics.jsonl", "model.safetensors"}
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    assert oct(stat.S_IMODE(w2.stat().st_mode)) == "0o664"


def test_export_and_ablate_into_an_unwritable_place_are_one_line(tmp_path, capsys, monkeypatch):
    from mplfast.train import fileio

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "1", "--set", "plot=false", *QUICK]) == 0
    (tmp_path / "f").write_text("x")
    capsys.readouterr()
    rc = main(["ablate", "--seeds", "1", "--variants", "supervised", "--steps", "1",
               "--out", str(tmp_path / "f" / "abl")])
    _one_line(rc, capsys.readouterr().err, "Not a directory")

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "write_atomic", full)
    rc = main(["export", str(out), "--out", str(tmp_path / "m.safetensors")])
    _one_line(rc, capsys.readouterr().err, "No space left on device")
