"""Data files are untrusted input: CIFAR batches go through a restricted unpickler, SVHN and CIFAR
arrays are checked for dtype, shape and label range, and the data root may be the extracted
folder itself or its parent (issues 13 and 11 item 6)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from mplfast.data.datasets import load_dataset
from mplfast.data.safe_pickle import RefusedGlobal, restricted_loads
from mplfast.errors import UserError
from untrusted_helpers import (QUICK, Evil, EvilSystem, assert_one_line, cifar_rows, py2_cifar_pickle,
                               run_cli, write_cifar10)


def test_real_py2_cifar_format_loads(tmp_path):
    """The bytes of the real (Python 2 cPickle) files: keys as bytes, numpy.core names."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rs = np.random.RandomState(1)
    want = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = cifar_rows(rs, 10), [int(v) for v in rs.randint(0, 10, 10)]
        (d / name).write_bytes(py2_cifar_pickle(x, y))
        want[name] = (x, y)
    ds = load_dataset("cifar10", str(tmp_path))
    x0, y0 = want["data_batch_1"]
    assert ds.train_images.shape == (50, 32, 32, 3)
    assert torch.equal(ds.train_images[0], torch.from_numpy(x0[0].reshape(3, 32, 32).transpose(1, 2, 0)))
    assert ds.train_labels[:10].tolist() == y0
    assert ds.test_labels.tolist() == want["test_batch"][1]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(protocol):
    a = cifar_rows(np.random.RandomState(0), 3)
    got = restricted_loads(pickle.dumps({b"data": a, "labels": [1, 2, 3], "f": np.int64(4)},
                                        protocol=protocol))
    assert np.array_equal(got[b"data"], a) and got[b"data"].dtype == np.uint8
    assert got["labels"] == [1, 2, 3] and got["f"] == 4


@pytest.mark.parametrize("payload", ["exec", "system", "object_array", "getattr", "ndarray_call"])
def test_restricted_unpickler_refuses(tmp_path, payload):
    marker = str(tmp_path / "MARKER")
    objs = {
        "exec": Evil(marker),
        "system": EvilSystem(marker),
        "object_array": np.array([1, "x"], dtype=object),
    }
    if payload in objs:
        data = pickle.dumps({b"data": objs[payload]}, protocol=2)
    elif payload == "getattr":  # builtins.getattr(os, 'system') via a crafted stream
        data = b"\x80\x02cbuiltins\ngetattr\ncos\n\nU\x06system\x86R."
    else:  # numpy.ndarray itself called with a huge shape: allocation bomb
        data = b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x7f\x85\x85R."
    with pytest.raises((RefusedGlobal, pickle.UnpicklingError, TypeError)):
        restricted_loads(data)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("kind", [Evil, EvilSystem])
@pytest.mark.parametrize("evil_file", ["data_batch_1", "test_batch"])
def test_code_in_a_cifar_batch_never_runs_train(tmp_path, capsys, kind, evil_file):
    marker = str(tmp_path / "MARKER")
    d = write_cifar10(str(tmp_path / "cifar-10-batches-py"), evil=kind(marker), evil_file=evil_file)
    rc, _, err = run_cli(["train", "--dataset", "cifar10", "--data", d, "--labels", "20",
                          "--steps", "1", "--out", str(tmp_path / "run"), "--set", "model=small_cnn",
                          *QUICK], capsys)
    line = assert_one_line(rc, err, "refusing")
    assert os.path.join(d, evil_file) in line
    assert not os.path.exists(marker)


def test_code_in_a_cifar_batch_never_runs_eval_and_ablate(tmp_path, capsys):
    """eval of a checkpoint trained on a folder that was doctored since, and ablate on it."""
    from untrusted_helpers import train_tiny

    marker = str(tmp_path / "MARKER")
    d = write_cifar10(str(tmp_path / "cifar-10-batches-py"))
    st = train_tiny(str(tmp_path / "run"), capsys)
    st["config"] = {**st["config"], "dataset": "cifar10", "data": d}
    ckpt = str(tmp_path / "c.pt")
    torch.save(st, ckpt)
    write_cifar10(d, evil=Evil(marker))  # doctored after training
    rc, _, err = run_cli(["eval", "--checkpoint", ckpt], capsys)
    assert_one_line(rc, err, "refusing")
    rc, _, err = run_cli(["ablate", "--dataset", "cifar10", "--data", d, "--labels", "20",
                          "--out", str(tmp_path / "abl"), "--seeds", "1", "--variants", "supervised",
                          "--steps", "1", "--set", "model=small_cnn", *QUICK], capsys)
    assert_one_line(rc, err, "refusing")
    assert not os.path.exists(marker)


def test_code_in_a_cifar100_file_never_runs(tmp_path, capsys):
    marker = str(tmp_path / "MARKER")
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rs = np.random.RandomState(0)
    for split in ("train", "test"):
        with open(d / split, "wb") as f:
            pickle.dump({b"data": cifar_rows(rs, 4), b"fine_labels": [Evil(marker), 1, 2, 3]}, f)
    with pytest.raises(UserError, match="refusing"):
        load_dataset("cifar100", str(tmp_path))
    assert not os.path.exists(marker)


def _batch(**over):
    b = {b"data": cifar_rows(np.random.RandomState(0), 4), b"labels": [0, 1, 2, 3]}
    b.update({k.encode(): v for k, v in over.items()})
    return b


BAD_BATCHES = [
    ("float data", _batch(data=np.zeros((4, 3072), np.float32)), "uint8 N x 3072"),
    ("wrong width", _batch(data=np.zeros((4, 3000), np.uint8)), "uint8 N x 3072"),
    ("3-d data", _batch(data=np.zeros((4, 3, 1024), np.uint8)), "uint8 N x 3072"),
    ("data is a list", _batch(data=[1, 2, 3]), "uint8 N x 3072"),
    ("label out of range", _batch(labels=[0, 1, 2, 10]), "must lie in [0, 10)"),
    ("negative label", _batch(labels=[0, -1, 2, 3]), "must lie in [0, 10)"),
    ("too few labels", _batch(labels=[0, 1]), "4 integers"),
    ("string labels", _batch(labels=["a", "b", "c", "d"]), "4 integers"),
    ("ragged labels", _batch(labels=[[0], 1, [2, 3], 4]), "4 integers"),
    ("no labels", {b"data": cifar_rows(np.random.RandomState(0), 4)}, "no 'labels' entry"),
    ("not a dict", [1, 2, 3], "not a dict"),
]


@pytest.mark.parametrize("name,batch,expect", BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES])
def test_malformed_cifar_batch_is_one_line(tmp_path, capsys, name, batch, expect):
    d = write_cifar10(str(tmp_path / "cifar-10-batches-py"))
    with open(os.path.join(d, "data_batch_3"), "wb") as f:
        pickle.dump(batch, f)
    rc, _, err = run_cli(["train", "--dataset", "cifar10", "--data", d, "--labels", "20",
                          "--steps", "1", "--out", str(tmp_path / "run"), *QUICK], capsys)
    line = assert_one_line(rc, err, expect)
    assert "data_batch_3" in line


def test_cifar_garbage_and_truncated_files(tmp_path):
    d = write_cifar10(str(tmp_path / "c"))
    raw = open(os.path.join(d, "data_batch_2"), "rb").read()
    for content in (b"", os.urandom(300), raw[: len(raw) // 2]):
        with open(os.path.join(d, "data_batch_2"), "wb") as f:
            f.write(content)
        with pytest.raises(UserError, match="data_batch_2"):
            load_dataset("cifar10", d)


# --------------------------------------------------------------------------- where the data is
def test_cifar_root_may_be_the_folder_or_its_parent_whatever_its_name(tmp_path):
    d = write_cifar10(str(tmp_path / "my-cifar"))  # renamed extracted folder
    assert load_dataset("cifar10", d).train_images.shape[0] == 100
    write_cifar10(str(tmp_path / "parent" / "cifar-10-batches-py"))
    assert load_dataset("cifar10", str(tmp_path / "parent")).train_images.shape[0] == 100
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar100_and_svhn_roots(tmp_path):
    from scipy.io import savemat

    rs = np.random.RandomState(0)
    for root in (tmp_path / "c100" / "cifar-100-python", tmp_path / "renamed100"):
        root.mkdir(parents=True)
        for split in ("train", "test"):
            with open(root / split, "wb") as f:
                pickle.dump({b"data": cifar_rows(rs, 4), b"fine_labels": [99, 0, 5, 7]}, f)
    assert load_dataset("cifar100", str(tmp_path / "c100")).num_classes == 100
    assert load_dataset("cifar100", str(tmp_path / "renamed100")).train_labels.tolist() == [99, 0, 5, 7]
    for root in (tmp_path / "s" / "svhn", tmp_path / "my-svhn"):
        root.mkdir(parents=True)
        for split in ("train", "test"):
            savemat(str(root / f"{split}_32x32.mat"),
                    {"X": rs.randint(0, 256, (32, 32, 3, 5)).astype(np.uint8),
                     "y": np.array([[1], [10], [3], [4], [5]], dtype=np.uint8)})
    assert load_dataset("svhn", str(tmp_path / "s")).train_labels.tolist() == [1, 0, 3, 4, 5]
    assert load_dataset("svhn", str(tmp_path / "my-svhn")).train_images.shape == (5, 32, 32, 3)


BAD_SVHN = [
    ("float X", {"X": np.zeros((32, 32, 3, 2), np.float64), "y": np.ones((2, 1))}, "X must be uint8"),
    ("wrong image size", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))}, "X must be uint8"),
    ("label count", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, "must hold 2 labels"),
    ("label range", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])}, "1..10"),
    ("fractional label", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.5], [2.0]])}, "1..10"),
    ("no y", {"X": np.zeros((32, 32, 3, 2), np.uint8)}, "holds"),
]


@pytest.mark.parametrize("name,mat,expect", BAD_SVHN, ids=[b[0] for b in BAD_SVHN])
def test_malformed_svhn_is_one_line(tmp_path, capsys, name, mat, expect):
    from scipy.io import savemat

    savemat(str(tmp_path / "train_32x32.mat"), mat)
    savemat(str(tmp_path / "test_32x32.mat"), mat)
    rc, _, err = run_cli(["train", "--dataset", "svhn", "--data", str(tmp_path), "--labels", "10",
                          "--steps", "1", "--out", str(tmp_path / "run"), *QUICK], capsys)
    line = assert_one_line(rc, err, expect)
    assert "train_32x32.mat" in line


def test_svhn_garbage(tmp_path):
    for content in (b"", os.urandom(400), b"MATLAB 5.0 MAT-file" + os.urandom(200)):
        (tmp_path / "train_32x32.mat").write_bytes(content)
        (tmp_path / "test_32x32.mat").write_bytes(content)
        with pytest.raises(UserError, match="train_32x32.mat"):
            load_dataset("svhn", str(tmp_path))


def test_huge_memo_index_costs_nothing(tmp_path):
    """``LONG_BINPUT 2**32-1``: the C unpickler sizes an array by the index; the restricted
    one (pure Python, dict memo) just stores it."""
    data = b"\x80\x02]r\xff\xff\xff\xff."  # an empty list, memoised at index 2**32 - 1
    assert restricted_loads(data) == []
    p = tmp_path / "data_batch_1"
    p.write_bytes(data)
    from mplfast.data.datasets import _cifar_batch

    with pytest.raises(UserError, match="not a dict"):
        _cifar_batch(p, "labels", 10, "CIFAR-10 batch")


def test_code_in_a_cifar_batch_never_runs_subprocess(tmp_path):
    """The real console path (python -m mplfast), for a batch that calls os.system."""
    import subprocess
    import sys

    marker = str(tmp_path / "MARKER")
    d = write_cifar10(str(tmp_path / "cifar-10-batches-py"), evil=EvilSystem(marker))
    p = subprocess.run([sys.executable, "-m", "mplfast", "train", "--dataset", "cifar10", "--data", d,
                        "--labels", "20", "--steps", "1", "--out", str(tmp_path / "run"), *QUICK],
                       capture_output=True, text=True, timeout=120)
    assert_one_line(p.returncode, p.stderr, "refusing")
    assert not os.path.exists(marker)
