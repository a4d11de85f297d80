"""Fuzz the checkpoint loader (hypothesis): random bytes, mutated files, a mutated pickle inside
a well-formed archive, and mutated contents. Property: ``mplfast eval`` / ``--resume`` either
work or print one line and exit 2; nothing else escapes, nothing from the file runs."""
from __future__ import annotations

import copy
import io
import os
import shutil
import tempfile
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mplfast.errors import UserError
from mplfast.train import checkpoint as ckpt_io
from untrusted_helpers import QUICK, assert_one_line, mutate_bytes

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(folder of a finished 2-step run, its checkpoint bytes, its checkpoint dict)."""
    from mplfast.cli import main

    out = str(tmp_path_factory.mktemp("fz") / "run")
    assert main(["train", "--out", out, "--steps", "2", "--device", "cpu", *QUICK]) == 0
    path = os.path.join(out, "checkpoint.pt")
    return out, open(path, "rb").read(), torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def scratch():
    d = tempfile.mkdtemp(prefix="mplfast-fuzz-ckpt-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _eval(path: str, capsys) -> None:
    from mplfast.cli import main

    rc = main(["eval", "--checkpoint", path])
    err = capsys.readouterr().err
    if rc != 0:
        assert_one_line(rc, err)


def _load(path: str) -> None:
    try:
        ckpt_io.load_checkpoint(path, expect="resume")
    except UserError as e:
        assert "\n" not in str(e)


mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "zero"]),
                     st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8))


def _zero(b: bytearray, i: int, blob: bytes) -> None:
    b[i:i + 4 * len(blob)] = bytes(len(b[i:i + 4 * len(blob)]))


def _mutate(data: bytes, ops: list) -> bytes:
    return mutate_bytes(data, ops, {"zero": _zero})


@FUZZ
@given(data=st.binary(max_size=3000))
@example(data=b"PK\x05\x06" + b"\x00" * 18)  # an empty zip
@example(data=b"\x80\x02]q\x00(K\x01K\x02e.")  # a legacy pickle of a list
def test_fuzz_random_bytes(data, scratch, capsys):
    p = os.path.join(scratch, "r.pt")
    with open(p, "wb") as f:
        f.write(data)
    _load(p)
    _eval(p, capsys)


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_file(base, ops, scratch, capsys):
    p = os.path.join(scratch, "m.pt")
    with open(p, "wb") as f:
        f.write(_mutate(base[1], ops))
    _load(p)
    _eval(p, capsys)


def _rezip(original: bytes, pkl: bytes) -> bytes:
    """The archive with its ``data.pkl`` replaced (correct CRCs, so the unpickler sees it)."""
    src = zipfile.ZipFile(io.BytesIO(original))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = pkl if info.filename.endswith("/data.pkl") else src.read(info.filename)
            dst.writestr(info.filename, body)
    return buf.getvalue()


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_mutated_pickle_in_a_valid_archive(base, ops, scratch, capsys):
    src = zipfile.ZipFile(io.BytesIO(base[1]))
    name = next(n for n in src.namelist() if n.endswith("/data.pkl"))
    p = os.path.join(scratch, "p.pt")
    with open(p, "wb") as f:
        f.write(_rezip(base[1], _mutate(src.read(name), ops)))
    _load(p)
    _eval(p, capsys)


leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=8), st.binary(max_size=8),
                 st.lists(st.integers(0, 5), max_size=4).map(lambda s: torch.zeros(tuple(s))),
                 st.sampled_from([torch.zeros(5056, dtype=torch.uint8), torch.tensor(3),
                                  torch.zeros(624, dtype=torch.int64)]))
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), inner,
                                                                    max_size=3)), max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) < 50:
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def all_paths(base):
    return [p for p in _paths(base[2]) if p]


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_fuzz_mutated_contents(base, all_paths, data, scratch, capsys):
    """Replace or delete entries anywhere in a real checkpoint (weights, optimizer state, RNG
    states, config values): eval and resume either work or say what is wrong in one line."""
    st_ = copy.deepcopy(base[2])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(all_paths))
        parent = st_
        try:
            for k in path[:-1]:
                parent = parent[k]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(value)
        except (KeyError, IndexError, TypeError):
            continue
    d = os.path.join(scratch, "run")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, "checkpoint.pt")
    torch.save(st_, p)
    _load(p)
    _eval(p, capsys)


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_fuzz_mutated_contents_resume(base, all_paths, data, scratch, capsys):
    """The same for ``train --resume`` (fewer examples: each builds a run)."""
    from mplfast.cli import main

    st_ = copy.deepcopy(base[2])
    path = data.draw(st.sampled_from([p for p in all_paths if p[0] not in ("config",)]))
    parent = st_
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = data.draw(value)
    d = os.path.join(scratch, "resume")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base[0], d)
    torch.save(st_, os.path.join(d, "checkpoint.pt"))
    rc = main(["train", "--out", d, "--resume"])
    err = capsys.readouterr().err
    if rc != 0:
        assert_one_line(rc, err)
