"""Data sets as whole uint8 arrays (``ImageDataset``) and the seeded, class-balanced labeled split.

No data set is ever downloaded: a missing one raises ``FileNotFoundError`` naming the exact path
and layout expected (the CLI prints it as one line).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mplfast.errors import UserError

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder", "synthetic")

# Per-channel statistics of the training sets, in [0, 1] units (standard published values).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


@dataclass
class ImageDataset:
    """A data set held as whole uint8 arrays (CPU); ``MPLBatcher`` moves them to the device."""

    name: str
    train_images: Tensor      # uint8 [N, H, W, C], CPU
    train_labels: Tensor      # int64 [N]
    test_images: Tensor       # uint8 [M, H, W, C]
    test_labels: Tensor       # int64 [M]
    num_classes: int
    mean: tuple[float, ...]   # per channel, in [0, 1] units
    std: tuple[float, ...]
    hflip: bool               # flip is part of the weak view (False for digits)
    unlabeled_images: Tensor | None = None   # extra unlabeled images (imagefolder --unlabeled)
    class_names: tuple[str, ...] | None = None  # label order; None: see data.splits.class_names
    val_images: Tensor | None = None          # validation split (never trained on), uint8 NHWC
    val_labels: Tensor | None = None          # int64 [V]
    storage: str = ""                         # how an image folder is held (in memory or streamed), and why

    def __post_init__(self) -> None:
        for nm in ("train_images", "test_images", "unlabeled_images", "val_images"):
            t = getattr(self, nm)
            if t is not None and (t.dtype != torch.uint8 or t.dim() != 4):
                raise TypeError(f"{nm} must be uint8 [N, H, W, C], got {t.dtype} {tuple(t.shape)}")
        if self.train_images.shape[0] != self.train_labels.shape[0]:
            raise ValueError("train_images and train_labels differ in length")
        if self.test_images.shape[0] != self.test_labels.shape[0]:
            raise ValueError("test_images and test_labels differ in length")
        if (self.val_images is None) != (self.val_labels is None) or (
                self.val_images is not None and self.val_images.shape[0] != self.val_labels.shape[0]):
            raise ValueError("val_images and val_labels must both be given, of equal length")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)"""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def _stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units of uint8 [N, H, W, C] (float64 accumulation)."""
    x = images.reshape(-1, images.shape[-1]).to(torch.float64) / 255.0
    std = x.std(dim=0).clamp(min=1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in x.mean(dim=0)), tuple(float(v) for v in std)


def _resolve_root(root: str | None) -> Path:
    return Path(root if root is not None else os.environ.get("MPLFAST_DATA", "data")).expanduser()


def _missing(path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"data set not found: expected {path} ({layout}); mplfast never downloads, put the files "
        f"there or pass --data DIR")


# ---------------------------------------------------------------------------------------------
def load_digits(test_fraction: float = 0.25, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255 (round(v * 255 / 16)).

    Digits has no test split: a fixed, seeded, per-class-stratified 1/4 is held out (the same
    for every run, independent of the training seed)."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    rs = np.random.RandomState(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rs.permutation(idx)[: int(round(len(idx) * test_fraction))]] = True
    xt, yt = torch.from_numpy(x[~test]), torch.from_numpy(y[~test])
    mean, std = _stats(xt)
    return ImageDataset("digits", xt, yt, torch.from_numpy(x[test]), torch.from_numpy(y[test]),
                        10, mean, std, hflip=False)


def _unpickle(path: Path, what: str) -> dict[str, Any]:
    """A CIFAR python batch through the restricted unpickler (no code from the file runs);
    keys as str. ``UserError`` naming the file if it is not a dict."""
    from .safe_pickle import load_file

    d = load_file(path, what)
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a {what} (holds a {type(d).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: str, num_classes: int, what: str) -> tuple[Tensor, Tensor]:
    """(uint8 [N, 32, 32, 3], int64 [N]) of one CIFAR batch, after checking that ``data`` is a
    uint8 N x 3072 array and ``label_key`` N integers in [0, num_classes)."""
    p = _unpickle(path, what)
    for key in ("data", label_key):
        if key not in p:
            raise UserError(f"{path}: not a {what} (no {key!r} entry)")
    data = p["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != 3072 or data.shape[0] < 1:
        desc = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise UserError(f"{path}: 'data' must be a uint8 N x 3072 array (32 x 32 RGB), got {desc}")
    try:
        labels = np.asarray(p[label_key])
    except (ValueError, TypeError):
        labels = np.asarray([None])
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise UserError(f"{path}: {label_key!r} must be {data.shape[0]} integers (one per image), "
                        f"got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"{path}: {label_key!r} must lie in [0, {num_classes}), found "
                        f"{int(labels.min())}..{int(labels.max())}")
    return _cifar_images(data), torch.from_numpy(labels.astype(np.int64))


def _cifar_images(data: np.ndarray) -> Tensor:
    # rows of 3072 bytes: 1024 R, 1024 G, 1024 B, each row-major 32x32 -> NHWC
    return torch.from_numpy(np.ascontiguousarray(
        np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)))


def _find_dir(root: Path, marker: str, subdir: str, layout: str) -> Path:
    """The directory holding ``marker``: ``root`` itself (the extracted folder, whatever its
    name) or ``root/subdir`` (its parent); else the not-found error naming both."""
    for d in (root, root / subdir):
        if (d / marker).is_file():
            return d
    raise FileNotFoundError(
        f"data set not found: expected {root / marker} or {root / subdir / marker} ({layout}); "
        f"mplfast never downloads, put the files there or pass --data DIR")


def load_cifar10(root: str | None) -> ImageDataset:
    """CIFAR-10 python batches from ``root`` (the ``cifar-10-batches-py`` folder or its parent),
    read without running code from them and checked (see :func:`_cifar_batch`)."""
    layout = "the python-pickle CIFAR-10 directory with data_batch_1..data_batch_5 and test_batch"
    d = _find_dir(_resolve_root(root), "data_batch_1", "cifar-10-batches-py", layout)
    files = [d / f"data_batch_{i}" for i in range(1, 6)] + [d / "test_batch"]
    for f in files:
        if not f.is_file():
            raise _missing(f, layout)
    parts = [_cifar_batch(f, "labels", 10, "CIFAR-10 batch") for f in files]
    xs, ys = [x for x, _ in parts], [y for _, y in parts]
    return ImageDataset("cifar10", torch.cat(xs[:5]), torch.cat(ys[:5]), xs[5], ys[5], 10,
                        CIFAR10_MEAN, CIFAR10_STD, hflip=True)


def load_cifar100(root: str | None) -> ImageDataset:
    """CIFAR-100 ``train``/``test`` from ``root`` (the ``cifar-100-python`` folder or its
    parent), read without running code from them and checked; fine labels."""
    layout = "the python-pickle CIFAR-100 directory with files 'train' and 'test'"
    d = _find_dir(_resolve_root(root), "train", "cifar-100-python", layout)
    out = []
    for split in ("train", "test"):
        f = d / split
        if not f.is_file():
            raise _missing(f, layout)
        out.append(_cifar_batch(f, "fine_labels", 100, "CIFAR-100 file"))
    return ImageDataset("cifar100", out[0][0], out[0][1], out[1][0], out[1][1], 100,
                        CIFAR100_MEAN, CIFAR100_STD, hflip=True)


SVHN_MAX_IMAGES = 2_000_000   # train + extra is 604,388; the cap bounds what a header may claim


def _svhn_split(f: Path) -> tuple[Tensor, Tensor]:
    """X uint8 [32, 32, 3, N] and y [N, 1] in 1..10 (10 is the digit 0) of one SVHN .mat file;
    the header's shapes and classes are checked before any array is read."""
    from scipy.io import loadmat, whosmat

    what = "SVHN .mat file (MATLAB v5 with X uint8 [32, 32, 3, N] and y [N, 1])"
    try:
        info = {name: (tuple(shape), cls) for name, shape, cls in whosmat(str(f))}
    except Exception as e:  # noqa: BLE001 - any parse failure: not such a file
        raise UserError(f"{f}: not a readable {what}: {type(e).__name__}") from None
    if "X" not in info or "y" not in info:
        raise UserError(f"{f}: not an {what}: it holds {sorted(info)[:5]}")
    xs, xc = info["X"]
    ys, _ = info["y"]
    if len(xs) != 4 or xs[:3] != (32, 32, 3) or not 1 <= xs[3] <= SVHN_MAX_IMAGES or xc != "uint8":
        raise UserError(f"{f}: X must be uint8 [32, 32, 3, N] with 1 <= N <= {SVHN_MAX_IMAGES}, "
                        f"its header says {xc} {list(xs)}")
    n = xs[3]
    if ys not in ((n, 1), (1, n), (n,)):
        raise UserError(f"{f}: y must hold {n} labels (one per image), its header says {list(ys)}")
    try:
        m = loadmat(str(f), variable_names=["X", "y"])
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{f}: not a readable {what}: {type(e).__name__}") from None
    x, y = m.get("X"), m.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape != (32, 32, 3, n) or \
            not isinstance(y, np.ndarray) or y.size != n or y.dtype.kind not in "iuf":
        raise UserError(f"{f}: X or y do not match the header (X {getattr(x, 'shape', None)}, "
                        f"y {getattr(y, 'shape', None)})")
    y = y.reshape(-1)
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or y.min() < 0 or y.max() > 10:
        raise UserError(f"{f}: labels must be integers in 1..10 (10 is the digit 0)")
    x = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64) % 10)  # label 10 is digit 0


def load_svhn(root: str | None) -> ImageDataset:
    """train_32x32.mat / test_32x32.mat from ``root`` (the folder holding them or its parent
    with an ``svhn`` folder): X uint8 [32, 32, 3, N], y [N, 1] with 10 meaning 0, checked."""
    layout = "SVHN cropped-digits files train_32x32.mat and test_32x32.mat"
    d = _find_dir(_resolve_root(root), "train_32x32.mat", "svhn", layout)
    out = []
    for split in ("train", "test"):
        f = d / f"{split}_32x32.mat"
        if not f.is_file():
            raise _missing(f, layout)
        out.append(_svhn_split(f))
    # no flip: digits are not mirror symmetric (as in the MPL/UDA SVHN recipe)
    return ImageDataset("svhn", out[0][0], out[0][1], out[1][0], out[1][1], 10, SVHN_MEAN,
                        SVHN_STD, hflip=False)


def make_synthetic(num_train: int = 1024, num_test: int = 256, image_size: int = 32,
                   channels: int = 3, num_classes: int = 10, seed: int = 0) -> ImageDataset:
    """Random uint8 images in 1..255 (never zeros) with a class-dependent mean, so a model can
    learn something; for benchmarks and tests."""
    if min(num_train, num_test, image_size, channels, num_classes) < 1:
        raise UserError("synthetic sizes must all be >= 1")
    g = torch.Generator().manual_seed(seed)

    def gen(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        base = 40 + (y * 173 // max(num_classes, 1)) % 180
        noise = torch.randint(-30, 31, (n, image_size, image_size, channels), generator=g)
        x = (base[:, None, None, None] + noise).clamp(1, 255).to(torch.uint8)
        return x, y

    xt, yt = gen(num_train)
    xe, ye = gen(num_test)
    mean, std = _stats(xt)
    return ImageDataset("synthetic", xt, yt, xe, ye, num_classes, mean, std,
                        hflip=channels == 3)


def load_dataset(name: str, root: str | None = None, *, unlabeled: str | None = None,
                 image_size: int | None = None, strict: bool = False,
                 test_fraction: float = 0.2, **synthetic_kw: Any) -> ImageDataset:
    """Load a data set by name (``DATASETS``); ``root`` defaults to $MPLFAST_DATA or ./data.

    ``unlabeled`` and ``strict`` apply to ``imagefolder`` (extra unlabeled image tree; corrupt
    files raise instead of being skipped); ``image_size`` to imagefolder and synthetic;
    ``synthetic_kw`` go to ``make_synthetic``."""
    name = name.lower()
    if name != "imagefolder" and unlabeled is not None:
        raise UserError(f"--unlabeled is only supported for imagefolder, not {name}")
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        return load_cifar10(root)
    if name == "cifar100":
        return load_cifar100(root)
    if name == "svhn":
        return load_svhn(root)
    if name == "synthetic":
        if image_size is not None:
            synthetic_kw["image_size"] = image_size
        return make_synthetic(**synthetic_kw)
    if name == "imagefolder":
        from .imagefolder import load_imagefolder

        if root is None:
            raise UserError("imagefolder needs a root directory (--data DIR with DIR/<class>/"
                            "*.jpg, or DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg)")
        return load_imagefolder(root, unlabeled=unlabeled, image_size=image_size or 32,
                                strict=strict, test_fraction=test_fraction)
    raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def labeled_split(labels: Tensor, num_labels: int, num_classes: int, seed: int) -> Tensor:
    """Seeded class-balanced labeled subset: int64 [num_labels] indices into ``labels``, sorted.

    num_labels must be a positive multiple of num_classes (num_labels / num_classes per class)
    and no class may have fewer images than that; otherwise ValueError saying what is allowed."""
    labels = labels.to(torch.int64).cpu()
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_labels < num_classes or num_labels % num_classes:
        raise ValueError(
            f"labels={num_labels} must be a positive multiple of the number of classes "
            f"({num_classes}) so each class gets the same count, e.g. {num_classes * 4} or "
            f"{num_classes * 40}")
    if num_labels > labels.numel():
        raise ValueError(f"labels={num_labels} is more than the {labels.numel()} training images")
    per = num_labels // num_classes
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) < per:
        c = int(counts.argmin())
        allowed = int(counts.min()) * num_classes
        raise ValueError(
            f"labels={num_labels} needs {per} images per class but class {c} has only "
            f"{int(counts[c])}; at most {allowed} labels are allowed for this data set")
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(idx.numel(), generator=g)[:per]])
    return torch.sort(torch.cat(picked)).values
