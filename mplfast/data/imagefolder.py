"""Image folders: layout detection, class scanning, the pre-flight check for corrupt files, loading.

Two layouts are accepted (class names are the sorted, non-hidden sub-folders):

* ``ROOT/<class>/*.{jpg,jpeg,png}`` (torchvision's ``ImageFolder``): a seeded, class-balanced
  ``test_fraction`` of every class is held out as the test split (the same for every run).
* ``ROOT/train/<class>/...`` with ``ROOT/val/<class>/...`` or ``ROOT/test/<class>/...`` as the
  test split; with both ``val/`` and ``test/``, ``val/`` is the validation split and ``test/``
  the test split. ``ROOT/train`` alone gets a held-out test split as in the flat layout.

Anything whose name starts with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``, ...) is ignored at
every depth. A layout that cannot be a classification data set (one class, a class folder
without images, classes of the test split that training does not have, or the reverse) is a
``UserError`` naming the classes. An optional unlabeled tree (any depth) adds unlabeled images.
Decoding uses a DALI CPU pipeline when DALI is installed and PIL otherwise; either way each image
is resized to ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept) and the whole set
is held as one uint8 array.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mplfast.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LAYOUT = ("ROOT/<class>/*.jpg|png, or ROOT/train/<class>/*.jpg|png with ROOT/val/<class>/... "
          "(or ROOT/test/<class>/...)")
# the flat layout's test split is the same for every run (independent of --seed), so results
# over seeds are measured on one test set
TEST_SPLIT_SEED = 0


class CorruptImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped."""


def _hidden(name: str) -> bool:
    return name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive, skipping hidden files and folders), sorted
    for reproducibility."""
    out = []
    for p in folder.rglob("*"):
        if p.suffix.lower() not in IMAGE_EXTS or any(_hidden(part) for part in
                                                     p.relative_to(folder).parts):
            continue
        if p.is_file():
            out.append(p)
    return sorted(out)


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``directory``."""
    return sorted(d.name for d in directory.iterdir() if d.is_dir() and not _hidden(d.name))


def _quote(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def scan_classes(split_dir: Path, classes: list[str] | None = None
                 ) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of ``split_dir/<class>/...``; ``classes`` fixes the names
    and their order (a class missing from ``split_dir`` simply has no files)."""
    if classes is None:
        classes = class_folders(split_dir)
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            continue
        fs = list_images(d)
        files += fs
        labels += [i] * len(fs)
    return files, labels, classes


def check_classes(split_dir: Path, classes: list[str], labels: list[int], *,
                  what: str = "training") -> None:
    """``UserError`` unless ``split_dir`` has at least 2 classes and every one has images."""
    if not classes:
        raise UserError(f"no class folders under {split_dir} (expected {LAYOUT})")
    if len(classes) < 2:
        raise UserError(f"only one class folder ({classes[0]!r}) under {split_dir}: a classifier "
                        f"needs at least 2 classes")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    empty = [c for c, k in zip(classes, counts) if k == 0]
    if empty:
        raise UserError(f"class folder(s) {_quote(empty)} under {split_dir} hold no readable "
                        f"{what} images (.jpg/.jpeg/.png); add images or remove the folder(s)")


def check_same_classes(train_dir: Path, train_classes: list[str], other_dir: Path) -> None:
    """``UserError`` naming the classes ``other_dir`` has that ``train_dir`` lacks, or the
    reverse: a class the model never trains on cannot be tested, and the reverse is a sign of a
    mislabeled or half-copied tree."""
    other = class_folders(other_dir)
    extra = [c for c in other if c not in set(train_classes)]
    if extra:
        raise UserError(f"class(es) {_quote(extra)} are in {other_dir} but not in {train_dir}; "
                        f"every class must be in both")
    missing = [c for c in train_classes if c not in set(other)]
    if missing:
        raise UserError(f"class(es) {_quote(missing)} of {train_dir} are missing from "
                        f"{other_dir}; every class must be in both")


@dataclass
class FolderScan:
    """What a scan of an image-folder root found (files not yet pre-flight checked)."""

    root: Path
    train_dir: Path                 # ROOT (flat layout) or ROOT/train
    classes: list[str]
    train_files: list[Path]
    train_labels: list[int]
    test_dir: Path | None           # None: the test split is held out of train_dir
    test_files: list[Path]
    test_labels: list[int]
    val_dir: Path | None = None     # ROOT/val when ROOT/test is the test split
    val_files: list[Path] | None = None
    val_labels: list[int] | None = None

    @property
    def layout(self) -> str:
        """``flat`` (ROOT/<class>), ``train-only`` or ``split`` (ROOT/train + ROOT/val|test)."""
        if self.train_dir == self.root:
            return "flat"
        return "split" if self.test_dir is not None else "train-only"

    def all_files(self) -> list[Path]:
        """Every labeled file of the scan (train, test and val)."""
        return self.train_files + self.test_files + (self.val_files or [])


def looks_like_imagefolder(root: str | Path) -> bool:
    """Whether ``root`` has one of the two layouts: a non-hidden sub-folder of ``root`` (or of
    ``root/train``) holding at least one .jpg/.jpeg/.png file at any depth. Cheap: stops at the
    first image found. Whether the folder is a usable data set is :func:`scan_imagefolder`'s
    to say, with its own messages."""
    root = Path(root).expanduser()
    base = root / "train" if (root / "train").is_dir() else root
    if not base.is_dir():
        return False
    for name in class_folders(base):
        for p in (base / name).rglob("*"):
            if p.suffix.lower() in IMAGE_EXTS and not _hidden(p.name) and p.is_file():
                return True
    return False


def scan_imagefolder(root: str | Path) -> FolderScan:
    """Find the layout of ``root`` and list its classes and files (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data set not found: expected {root / 'train'} or {root}/<class> "
                                f"({LAYOUT})")
    train = root / "train"
    if not train.is_dir():
        subdirs = class_folders(root)
        if not subdirs:
            raise FileNotFoundError(f"data set not found: expected {train} or class folders in "
                                    f"{root} ({LAYOUT})")
        if set(subdirs) & {"val", "test"}:
            raise UserError(f"{root} has {'/'.join(sorted(set(subdirs) & {'val', 'test'}))}/ but "
                            f"no train/ folder (expected {LAYOUT})")
        files, labels, classes = scan_classes(root)
        check_classes(root, classes, labels)
        return FolderScan(root, root, classes, files, labels, None, [], [])
    files, labels, classes = scan_classes(train)
    check_classes(train, classes, labels)
    val, test = root / "val", root / "test"
    val_dir = test_dir = None
    if val.is_dir() and test.is_dir():
        val_dir, test_dir = val, test
    elif val.is_dir() or test.is_dir():
        test_dir = val if val.is_dir() else test
    scan = FolderScan(root, train, classes, files, labels, test_dir, [], [])
    for d, kind in ((test_dir, "test"), (val_dir, "val")):
        if d is None:
            continue
        check_same_classes(train, classes, d)
        f, lab, _ = scan_classes(d, classes)
        check_classes(d, classes, lab, what=kind)
        if kind == "test":
            scan.test_files, scan.test_labels = f, lab
        else:
            scan.val_dir, scan.val_files, scan.val_labels = d, f, lab
    return scan


def check_image(path: Path) -> str | None:
    """None if ``path`` decodes completely, else the reason (checks: :mod:`mplfast.data.decode`)."""
    from .decode import check_image as _check

    return _check(path)


def preflight(files: list[Path], labels: list[int] | None = None, *, strict: bool = False
              ) -> tuple[list[Path], list[int] | None]:
    """Drop unreadable/corrupt files, warning once with their names (first 20); ``strict``
    raises ``UserError`` instead. One bad JPEG must never kill a long run."""
    bad = [(f, why) for f in files if (why := check_image(f)) is not None]
    if not bad:
        return files, labels
    listing = "; ".join(f"{f}: {why}" for f, why in bad[:20])
    more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
    if strict:
        raise UserError(f"{len(bad)} unreadable image file(s) (strict mode): {listing}{more}")
    warnings.warn(f"skipping {len(bad)} unreadable image file(s): {listing}{more}",
                  CorruptImageWarning, stacklevel=2)
    badset = {f for f, _ in bad}
    keep = [i for i, f in enumerate(files) if f not in badset]
    return [files[i] for i in keep], (None if labels is None else [labels[i] for i in keep])


def decode_pil(files: list[Path], image_size: int) -> Tensor:
    """uint8 [N, S, S, 3] via PIL (bilinear resize; modes converted: :mod:`mplfast.data.decode`)."""
    from .decode import decode_pil as _decode_pil

    return _decode_pil(files, image_size)


def decode(files: list[Path], image_size: int) -> Tensor:
    """uint8 [N, S, S, 3]: DALI CPU pipeline if DALI is installed, else PIL (see
    :func:`mplfast.data.decode.decode_images`)."""
    from .decode import decode_images

    return decode_images(files, image_size)


def _checked(files: list[Path], labels: list[int], strict: bool, directory: Path,
             classes: list[str], what: str) -> tuple[list[Path], list[int]]:
    files, lab = preflight(files, labels, strict=strict)
    assert lab is not None
    check_classes(directory, classes, lab, what=what)  # skipping corrupt files may empty a class
    return files, lab


def train_test_files(scan: Any, strict: bool, test_fraction: float
                     ) -> tuple[list[str], list[int], list[str], list[int]]:
    """Pre-flight checked (train files, labels, test files, labels) of a scanned folder: its
    ``val/`` or ``test/`` folder, or else a class-balanced ``test_fraction`` of every class held
    out (seeded by ``TEST_SPLIT_SEED``, the same for every run). Shared by the in-memory and the
    streamed loaders, so both split a folder identically."""
    from .splits import holdout_split

    classes = scan.classes
    files, labels = _checked(scan.train_files, scan.train_labels, strict, scan.train_dir, classes,
                             "training")
    if scan.test_dir is not None:
        tfiles, tlabels = _checked(scan.test_files, scan.test_labels, strict, scan.test_dir,
                                   classes, "test")
        return files, labels, tfiles, tlabels
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1) for {scan.train_dir}, which has no "
                        f"val/ or test/ folder to test on; got {test_fraction}")
    keep, held = holdout_split(torch.tensor(labels, dtype=torch.int64), test_fraction,
                               classes, TEST_SPLIT_SEED, what="test")
    return ([files[i] for i in keep.tolist()], [labels[i] for i in keep.tolist()],
            [files[i] for i in held.tolist()], [labels[i] for i in held.tolist()])


def load_imagefolder(root: str | Path, *, unlabeled: str | None = None, image_size: int = 32,
                     strict: bool = False, test_fraction: float = 0.2):
    """``ImageDataset`` from an image folder in either layout (see the module docstring).

    ``test_fraction``: the part of every class held out as the test split when the folder has
    no ``val/`` or ``test/`` folder (class-balanced, seeded by ``TEST_SPLIT_SEED``)."""
    from .datasets import ImageDataset, _stats

    scan = scan_imagefolder(root)
    classes = scan.classes
    files, labels, tfiles, tlabels = train_test_files(scan, strict, test_fraction)
    val_x = val_y = None
    if scan.val_dir is not None:
        vfiles, vlabels = _checked(scan.val_files or [], scan.val_labels or [], strict,
                                   scan.val_dir, classes, "val")
        val_x, val_y = decode(vfiles, image_size), torch.tensor(vlabels, dtype=torch.int64)
    extra = None
    if unlabeled is not None:
        ud = Path(unlabeled).expanduser()
        if not ud.is_dir():
            raise FileNotFoundError(f"unlabeled folder not found: expected {ud} (a tree of "
                                    f"JPEG/PNG files, any depth)")
        ufiles, _ = preflight(list_images(ud), None, strict=strict)
        extra = decode(ufiles, image_size)
    x = decode(files, image_size)
    mean, std = _stats(x)
    return ImageDataset("imagefolder", x, torch.tensor(labels, dtype=torch.int64),
                        decode(tfiles, image_size), torch.tensor(tlabels, dtype=torch.int64),
                        len(classes), mean, std, hflip=True, unlabeled_images=extra,
                        class_names=tuple(classes), val_images=val_x, val_labels=val_y)
