"""Data sets (real on-disk formats, generated small), labeled split, MPLBatcher layout/determinism."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from mplfast.augment import params as AP
from mplfast.augment import reference as R
from mplfast.augment import rng
from mplfast.data import MPLBatcher, labeled_split, load_dataset, make_synthetic
from mplfast.data.imagefolder import CorruptImageWarning
from mplfast.errors import UserError


# ---- digits / synthetic ---------------------------------------------------------------------
def test_digits_split_and_scaling():
    d = load_dataset("digits")
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape[1:] == (8, 8, 1)
    assert d.train_images.shape[0] + d.test_images.shape[0] == 1797
    assert 400 <= d.test_images.shape[0] <= 500  # ~1/4 held out
    assert int(d.train_images.max()) == 255 and not d.hflip and d.num_classes == 10
    # fixed held-out split: identical on every load
    d2 = load_dataset("digits")
    assert torch.equal(d.test_images, d2.test_images) and torch.equal(d.test_labels, d2.test_labels)
    # every class is in the test split
    assert torch.bincount(d.test_labels, minlength=10).min() > 30


def test_synthetic_never_zero_any_size():
    d = make_synthetic(num_train=16, num_test=4, image_size=12, channels=3, num_classes=5)
    assert d.train_images.shape == (16, 12, 12, 3) and int(d.train_images.min()) >= 1
    assert d.train_labels.max() < 5 and d.num_classes == 5
    d = load_dataset("synthetic", image_size=20, num_train=8, num_test=2)
    assert d.train_images.shape[1:3] == (20, 20)


# ---- labeled split --------------------------------------------------------------------------
def test_labeled_split_balanced_seeded():
    labels = torch.arange(1000) % 10
    a = labeled_split(labels, 40, 10, seed=3)
    assert a.numel() == 40 and a.unique().numel() == 40
    assert torch.bincount(labels[a], minlength=10).tolist() == [4] * 10
    assert torch.equal(a, labeled_split(labels, 40, 10, seed=3))
    assert not torch.equal(a, labeled_split(labels, 40, 10, seed=4))


@pytest.mark.parametrize("n", [0, 15, 2000])
def test_labeled_split_rejects(n):
    with pytest.raises(ValueError, match="labels="):
        labeled_split(torch.arange(1000) % 10, n, 10, seed=0)


def test_labeled_split_rejects_small_class():
    labels = torch.cat([torch.zeros(100), torch.ones(3)]).long()
    with pytest.raises(ValueError, match="at most 6 labels"):
        labeled_split(labels, 10, 2, seed=0)


# ---- CIFAR / SVHN in their real formats ------------------------------------------------------
def _cifar_rows(rs, n):
    return rs.randint(1, 256, size=(n, 3072)).astype(np.uint8)


def test_cifar10_pickles(tmp_path):
    rs = np.random.RandomState(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rows, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _cifar_rows(rs, 3), rs.randint(0, 10, 3).tolist()
        with open(d / name, "wb") as f:  # the original files: bytes keys, pickle protocol 2
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x,
                         b"filenames": [b"f%d.png" % i for i in range(3)]}, f, protocol=2)
        rows.append(x)
        labels += y
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.test_images.shape == (3, 32, 32, 3)
    assert ds.train_labels.tolist() == labels[:15] and ds.hflip
    # row layout: 1024 R then G then B, each row-major
    r = rows[1][2]
    img = ds.train_images[5]
    assert int(img[4, 7, 0]) == r[4 * 32 + 7] and int(img[4, 7, 1]) == r[1024 + 4 * 32 + 7]
    assert int(img[31, 0, 2]) == r[2048 + 31 * 32]
    assert torch.equal(ds.test_images[0].permute(2, 0, 1).reshape(-1),
                       torch.from_numpy(rows[5][0]).long().to(torch.uint8))


def test_cifar100_pickles(tmp_path):
    rs = np.random.RandomState(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 4), ("test", 2)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": _cifar_rows(rs, n), b"fine_labels": [99, 3, 7, 0][:n],
                         b"coarse_labels": [1] * n, b"filenames": [b"x"] * n}, f, protocol=2)
    ds = load_dataset("cifar100", str(d))  # the directory itself is accepted too
    assert ds.num_classes == 100 and ds.train_labels.tolist() == [99, 3, 7, 0]
    assert ds.test_images.shape == (2, 32, 32, 3)


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rs = np.random.RandomState(2)
    xs = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rs.randint(1, 256, size=(32, 32, 3, n)).astype(np.uint8)
        y = np.array([[10], [1], [9], [10], [5]][:n], dtype=np.uint8)
        savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": x, "y": y})
        xs[split] = x
    ds = load_dataset("svhn", str(tmp_path))
    assert ds.train_labels.tolist() == [0, 1, 9, 0, 5]  # label 10 means digit 0
    assert torch.equal(ds.train_images[3], torch.from_numpy(xs["train"][..., 3]))
    assert ds.test_images.shape == (3, 32, 32, 3) and not ds.hflip


@pytest.mark.parametrize("name,expect", [("cifar10", "data_batch_1"), ("cifar100", "train"),
                                         ("svhn", "train_32x32.mat"), ("imagefolder", "train")])
def test_missing_data_names_path(tmp_path, name, expect):
    with pytest.raises(FileNotFoundError, match=expect) as e:
        load_dataset(name, str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown data set"):
        load_dataset("mnist")


# ---- imagefolder ----------------------------------------------------------------------------
def _make_tree(root, with_bad=True):
    from PIL import Image

    rs = np.random.RandomState(3)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                arr = rs.randint(1, 256, size=(20 + i, 24, 3)).astype(np.uint8)
                ext = "png" if i == 2 else "jpg"
                Image.fromarray(arr).save(root / split / c / f"{i}.{ext}")
    if with_bad:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 50)
    (root / "unl" / "deep").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rs.randint(1, 256, (16, 16, 3)).astype(np.uint8)).save(
            root / "unl" / "deep" / f"u{i}.jpg")


def test_imagefolder_skips_corrupt_and_strict(tmp_path):
    _make_tree(tmp_path)
    with pytest.warns(CorruptImageWarning, match="broken.jpg"):
        ds = load_dataset("imagefolder", str(tmp_path), image_size=16,
                          unlabeled=str(tmp_path / "unl"))
    assert ds.train_images.shape == (6, 16, 16, 3) and ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.test_images.shape == (6, 16, 16, 3) and ds.num_classes == 2
    assert ds.unlabeled_images.shape == (2, 16, 16, 3)
    assert int(ds.train_images.float().std()) > 20  # real decoded pixels, not a constant
    with pytest.raises(UserError, match="broken.jpg"):
        load_dataset("imagefolder", str(tmp_path), image_size=16, strict=True)


def test_imagefolder_pil_fallback_matches_dali_shape(tmp_path, monkeypatch):
    _make_tree(tmp_path, with_bad=False)
    from mplfast.data import dali

    monkeypatch.setattr(dali, "available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no corrupt file: no warning at all
        ds = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert ds.train_images.shape == (6, 8, 8, 3)


# ---- MPLBatcher -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _batcher(ds, **kw):
    li = labeled_split(ds.train_labels, 50, ds.num_classes, seed=0)
    args = dict(batch_size=4, mu=2, seed=7, device="cpu")
    args.update(kw)
    return MPLBatcher(ds, li, **args)


def test_batch_layout_one_buffer(digits):
    for dtype in (torch.float32, torch.bfloat16):
        b = _batcher(digits, dtype=dtype)
        x_l, y_l, x_uw, x_us = b.batch(3)
        assert x_l.shape == (4, 1, 8, 8) and x_uw.shape == x_us.shape == (8, 1, 8, 8)
        assert x_l.dtype == dtype and y_l.dtype == torch.int64
        assert x_l.is_contiguous(memory_format=torch.channels_last)
        es = x_l.element_size()
        assert x_uw.data_ptr() == x_l.data_ptr() + 4 * 64 * es
        assert x_us.data_ptr() == x_uw.data_ptr() + 8 * 64 * es
        full = torch.as_strided(x_l, (20, 1, 8, 8), x_l.stride())
        assert torch.equal(full[12:], x_us)
    b = _batcher(digits, channels_last=False)
    x_l, _, x_uw, _ = b.batch(0)
    assert x_l.is_contiguous() and x_uw.data_ptr() == x_l.data_ptr() + 4 * 64 * 4


def test_batch_labels_and_normalization(digits):
    b = _batcher(digits)
    idx_l, idx_u = b.indices(11)
    x_l, y_l, x_uw, _ = b.batch(11)
    assert torch.equal(y_l, digits.train_labels[idx_l])
    assert set(idx_l.tolist()) <= set(b.labeled_idx.tolist())
    # x_l is the reference weak view of exactly those images, normalized by the data set stats
    pol = AP.Policy(8, 8, False)
    key = rng.stream_key(7, 11, AP.VIEW_LABELED)
    px = R.augment_pixels(digits.train_images[idx_l], pol, key, torch.arange(4))
    want = (px / 255.0 - digits.mean[0]) / digits.std[0]
    torch.testing.assert_close(x_l.permute(0, 2, 3, 1), want, atol=1e-5, rtol=1e-5)
    assert x_uw.abs().max() > 0.5  # real content


def test_batch_deterministic_and_resumable(digits):
    a = _batcher(digits).batch(42)
    b = _batcher(digits).batch(42)  # fresh instance = resumed run
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    c = _batcher(digits, seed=8).batch(42)
    assert not torch.equal(a[2], c[2])
    d = _batcher(digits).batch(43)
    assert not torch.equal(a[3], d[3])


def test_batch_rank_sharding(digits):
    r0 = _batcher(digits, rank=0, world_size=2)
    r1 = _batcher(digits, rank=1, world_size=2)
    assert not torch.equal(r0.indices(5)[1], r1.indices(5)[1])
    t0 = torch.cat([y for _, y in r0.eval_batches(batch_size=100)])
    t1 = torch.cat([y for _, y in r1.eval_batches(batch_size=100)])
    assert t0.numel() + t1.numel() == digits.test_labels.numel()
    assert torch.equal(t0, digits.test_labels[0::2]) and torch.equal(t1, digits.test_labels[1::2])


def test_sampling_covers_labeled_set(digits):
    b = _batcher(digits, batch_size=64, mu=1)
    seen = torch.cat([b.indices(s)[0] for s in range(20)])
    # with-replacement uniform sampling: 1280 draws over 50 indices hit all of them
    assert set(seen.tolist()) == set(b.labeled_idx.tolist())


def test_eval_batches_normalized(digits):
    b = _batcher(digits)
    x, y = next(b.eval_batches(batch_size=10))
    want = (digits.test_images[:10].float() / 255 - digits.mean[0]) / digits.std[0]
    torch.testing.assert_close(x.permute(0, 2, 3, 1), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(y, digits.test_labels[:10])


def test_labeled_batch_weak_view(digits):
    b = _batcher(digits)
    x, y = b.labeled_batch(2, batch_size=6)
    assert x.shape == (6, 1, 8, 8) and torch.isin(y, digits.train_labels).all()
    assert torch.equal(x, b.labeled_batch(2, batch_size=6)[0])


def test_unlabeled_includes_extra():
    ds = make_synthetic(num_train=8, num_test=2, image_size=8)
    ds.unlabeled_images = torch.full((5, 8, 8, 3), 77, dtype=torch.uint8)
    b = MPLBatcher(ds, torch.arange(8), batch_size=2, mu=8, seed=0, device="cpu")
    assert b.unlabeled_images.shape[0] == 13
    hits = torch.cat([b.indices(s)[1] for s in range(10)])
    assert (hits >= 8).any() and (hits < 8).any()


def test_batcher_rejects_bad_args(digits):
    with pytest.raises(ValueError, match="rank"):
        _batcher(digits, rank=2, world_size=2)
    with pytest.raises(ValueError, match="labeled_idx"):
        MPLBatcher(digits, torch.tensor([10**6]), batch_size=2, mu=1, seed=0, device="cpu")


def test_batch_into_static_buffer(digits):
    b = _batcher(digits)
    static = torch.empty(20, 8, 8, 1).permute(0, 3, 1, 2)
    x_l, y_l, x_uw, x_us = b.batch(4, out=static)
    assert x_l.data_ptr() == static.data_ptr()
    for p, q in zip((x_l, y_l, x_uw, x_us), b.batch(4)):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="out must be"):
        b.batch(4, out=torch.empty(19, 1, 8, 8))
