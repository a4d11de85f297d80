"""Fuzz the CIFAR restricted unpickler and the image-folder scan (hypothesis). Property: a data
set, or one ``UserError`` line (the CLI: exit 2) naming the file; never a traceback, never
code from the file."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mplfast.data.datasets import _cifar_batch
from mplfast.errors import UserError
from untrusted_helpers import (Evil, assert_one_line, cifar_rows, mutate_bytes, py2_cifar_pickle,
                              run_cli, write_cifar10)

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
MARKER = os.path.join(tempfile.gettempdir(), f"mplfast-fuzz-data-marker-{os.getpid()}")


@pytest.fixture(scope="module")
def scratch():
    d = tempfile.mkdtemp(prefix="mplfast-fuzz-data-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _batches() -> list[bytes]:
    rs = np.random.RandomState(0)
    x, y = cifar_rows(rs, 3), [1, 5, 9]
    evil = pickle.dumps({b"data": x, b"labels": [Evil(MARKER), 5, 9]}, protocol=2)
    return ([py2_cifar_pickle(x, y)]
            + [pickle.dumps({b"data": x, b"labels": y}, protocol=p) for p in (0, 2, 4, 5)] + [evil])


BATCHES = _batches()
mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "opcode"]),
                     st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=6))
OPCODES = [bytes([c]) for c in b"c\x93RbeutsaoiN}](\x85\x86\x87\x94hjqrIJKMLFGX\x8c\x8e\x8d\x96\x97\x98"]


def _opcode(b: bytearray, i: int, blob: bytes) -> None:
    b[i:i] = OPCODES[blob[0] % len(OPCODES)] + blob[1:]  # a pickle opcode with a few argument bytes


def _mutate(data: bytes, ops: list) -> bytes:
    return mutate_bytes(data, ops, {"opcode": _opcode})


@FUZZ
@given(which=st.integers(0, len(BATCHES) - 1), ops=st.lists(mutation, min_size=1, max_size=4))
@example(which=0, ops=[("opcode", 0.5, b"\x00os\nsystem\n")])
def test_fuzz_cifar_unpickler(scratch, which, ops):
    p = Path(scratch) / "data_batch_1"
    p.write_bytes(_mutate(BATCHES[which], ops))
    try:
        x, y = _cifar_batch(p, "labels", 10, "CIFAR-10 batch")
    except UserError as e:
        assert "\n" not in str(e) and str(p) in str(e)
    else:  # what gets through is a checked batch
        assert x.dtype.is_floating_point is False and x.shape[1:] == (32, 32, 3)
        assert y.shape == (x.shape[0],) and int(y.min()) >= 0 and int(y.max()) < 10
    assert not os.path.exists(MARKER)


@settings(FUZZ, max_examples=20)
@given(ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_cifar_through_the_cli(scratch, ops, capsys):
    d = os.path.join(scratch, "cifar")
    if not os.path.isdir(d):
        write_cifar10(d)
    p = Path(d) / "data_batch_2"
    p.write_bytes(_mutate(pickle.dumps({b"data": cifar_rows(np.random.RandomState(0), 20),
                                        b"labels": [i % 10 for i in range(20)]}, protocol=2), ops))
    import tempfile

    out = tempfile.mkdtemp(dir=scratch)  # a fresh run folder per example, never ./runs
    rc, _, err = run_cli(["train", "--dataset", "cifar10", "--data", d, "--labels", "20", "--steps", "0",
                          "--out", out, "--set", "model=small_cnn", "--set", "model_kwargs={width: 2}",
                          "--set", "eval_batch_size=200", "--set", "finetune_epochs=0", "--set", "tensorboard=false",
                          "--set", "plot=false", "--set", "progress=none"], capsys)
    if rc != 0:
        assert_one_line(rc, err)
    assert not os.path.exists(MARKER)


# --------------------------------------------------------------------------- image folders
def _image_bytes() -> list[bytes]:
    import io

    from PIL import Image

    out = []
    rs = np.random.RandomState(0)
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "LA")):
        a = rs.randint(0, 256, (9, 7, 3), dtype=np.uint8)
        im = Image.fromarray(a)
        im = im.convert("L").convert("I;16") if mode == "I;16" else im.convert(mode)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


IMAGES = _image_bytes()
image_file = st.one_of(
    st.tuples(st.integers(0, len(IMAGES) - 1), st.lists(mutation, max_size=3)).map(
        lambda t: _mutate(IMAGES[t[0]], t[1])),
    st.binary(max_size=300),
)


@settings(FUZZ, max_examples=120)
@given(files=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([".png", ".jpg", ".JPEG"]),
                                image_file), min_size=1, max_size=8))
def test_fuzz_image_folder_scan(scratch, files):
    """Random and mutated files with image extensions among a few good ones."""
    from mplfast.data.imagefolder import load_imagefolder

    root = Path(scratch) / "folder"
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            (root / split / c / "good.png").write_bytes(IMAGES[0])
    for i, (c, ext, data) in enumerate(files):
        (root / "train" / c / f"f{i}{ext}").write_bytes(data)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            ds = load_imagefolder(root, image_size=6)
        except (UserError, FileNotFoundError) as e:
            assert "\n" not in str(e)
        else:
            assert ds.train_images.shape[1:] == (6, 6, 3)
            assert 2 <= ds.train_images.shape[0] <= 2 + len(files)
    for w in rec:  # the skip warning: one line naming files
        assert "\n" not in str(w.message)
