"""Shared pieces of the untrusted-input tests: pickles that would run code, tiny checkpoints and
CIFAR batches, and the one-line / exit-2 check of a CLI call.

Imported as ``from untrusted_helpers import ...`` (tests/ has no __init__.py)."""
from __future__ import annotations

import os
import pickle
import struct
from typing import Any

import numpy as np
import pytest
import torch

def _hypothesis_home_outside_the_tree() -> None:
    # hypothesis caches example constants under ./.hypothesis even with database=None; tests
    # must leave the work tree as they found it
    import atexit
    import shutil
    import tempfile

    from hypothesis.configuration import set_hypothesis_home_dir

    home = tempfile.mkdtemp(prefix="mplfast-hypothesis-")
    set_hypothesis_home_dir(home)
    atexit.register(shutil.rmtree, home, ignore_errors=True)


_hypothesis_home_outside_the_tree()

QUICK = ["--set", "model_kwargs={width: 4}", "--set", "eval_interval=0", "--set", "tensorboard=false",
         "--set", "plot=false", "--set", "progress=none"]


class Evil:
    """Unpickling it runs ``exec``: it writes ``marker`` (the proof that code ran)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class EvilSystem:
    """Unpickling it calls ``os.system`` (a shell command that creates ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``mplfast.cli.main`` in-process: (exit status, stdout, stderr)."""
    from mplfast.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit through parser.exit
        rc = int(e.code or 0)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line(rc: int, err: str, expect: str = "") -> str:
    """Exit 2 and exactly one ``mplfast: error:`` line on stderr (containing ``expect``)."""
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("mplfast: error:"), err
    assert expect.lower() in lines[0].lower(), err
    return lines[0]


def train_tiny(out: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    """A 2-step digits run in ``out``; its checkpoint (safely loaded)."""
    rc, _, err = run_cli(["train", "--out", out, "--steps", "2", "--device", "cpu", *QUICK, *extra],
                         capsys)
    assert rc == 0, err
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def cifar_rows(rs: np.random.RandomState, n: int) -> np.ndarray:
    return rs.randint(1, 256, size=(n, 3072)).astype(np.uint8)


def write_cifar10(d: str, n: int = 20, evil: Any = None, evil_file: str = "data_batch_1") -> str:
    """A tiny CIFAR-10 batch folder ``d`` (created); ``evil`` replaces ``evil_file``'s labels."""
    os.makedirs(d, exist_ok=True)
    rs = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch: dict[bytes, Any] = {b"data": cifar_rows(rs, n), b"labels": [i % 10 for i in range(n)],
                                   b"batch_label": b"x"}
        if evil is not None and name == evil_file:
            batch[b"labels"] = [evil] + batch[b"labels"][1:]
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return d


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for a CIFAR batch, built opcode by opcode:
    str keys and file names as SHORT_BINSTRING/BINSTRING (bytes under encoding='bytes'),
    ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` + ``numpy.dtype`` for the array.
    (Python 3's pickler cannot write py2 ``str``, so the real files' format is assembled here.)"""
    def s(b: bytes) -> bytes:  # py2 str
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    arr = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
           + s(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
           + b"(" + i(1) + i(data.shape[0]) + b"M" + struct.pack("<H", data.shape[1]) + b"\x86"
           + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
           + b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" + b"J\xff\xff\xff\xff" + i(0)
           + b"tb"  # dtype state
           + b"\x89" + s(data.tobytes()) + b"tb")  # (1, shape, dtype, False, raw) BUILD
    lab = b"](" + b"".join(i(v) for v in labels) + b"e"
    names = b"](" + b"".join(s(f"img_{k}.png".encode()) for k in range(len(labels))) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5") + s(b"labels") + lab
            + s(b"data") + arr + s(b"filenames") + names + b"u.")


def mutate_bytes(data: bytes, ops: list, extra: dict[str, Any] | None = None) -> bytes:
    """Apply hypothesis-drawn mutations ``(op, where in [0, 1), blob)`` to ``data``: the common
    ``flip``/``insert``/``delete``/``truncate``, plus ``extra[op](buffer, i, blob)`` for the ops
    one fuzz target adds (it edits the bytearray in place)."""
    b = bytearray(data)
    for op, where, blob in ops:
        i = int(where * len(b)) if b else 0
        if op == "flip" and b:
            b[i] ^= blob[0] or 1
        elif op == "insert":
            b[i:i] = blob
        elif op == "delete":
            del b[i:i + len(blob)]
        elif op == "truncate":
            del b[i:]
        elif extra and op in extra:
            extra[op](b, i, blob)
    return bytes(b)
