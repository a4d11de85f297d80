"""ImageNet-style JPEG/PNG trees: scanning, the pre-flight check for corrupt files, loading.

Layout: ``ROOT/train/<class>/*.{jpg,jpeg,png}`` and ``ROOT/val/<class>/...`` (``ROOT/test`` is
accepted instead of ``val``); class names are the sorted sub-folders of ``train``. An optional
unlabeled tree (any depth) adds unlabeled images. Decoding uses a DALI CPU pipeline when DALI is
installed and PIL otherwise; either way each image is resized to ``image_size`` x ``image_size``
(bilinear, aspect ratio not kept) and the whole set is held as one uint8 array.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mplfast.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class CorruptImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped."""


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted for reproducibility."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def scan_classes(split_dir: Path, classes: list[str] | None = None
                 ) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of ``split_dir/<class>/...``."""
    if classes is None:
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
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


def load_imagefolder(root: str | Path, *, unlabeled: str | None = None, image_size: int = 32,
                     strict: bool = False):
    """``ImageDataset`` from an ImageNet-style tree (see module docstring)."""
    from .datasets import ImageDataset, _stats

    root = Path(root).expanduser()
    train = root / "train"
    layout = "ROOT/train/<class>/*.jpg|png and ROOT/val/<class>/*.jpg|png"
    if not train.is_dir():
        raise FileNotFoundError(f"data set not found: expected {train} ({layout})")
    test = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if test is None:
        raise FileNotFoundError(f"data set not found: expected {root / 'val'} ({layout})")
    files, labels, classes = scan_classes(train)
    if not classes or not files:
        raise UserError(f"no class folders with images under {train} ({layout})")
    tfiles, tlabels, _ = scan_classes(test, classes)
    files, labels = preflight(files, labels, strict=strict)
    tfiles, tlabels = preflight(tfiles, tlabels, strict=strict)
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
                        decode(tfiles, image_size), torch.tensor(tlabels or [], dtype=torch.int64),
                        len(classes), mean, std, hflip=True, unlabeled_images=extra)
