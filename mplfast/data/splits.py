"""Seeded, class-balanced hold-out splits (test split of a flat image folder, validation split of
the training pool) and the class names errors and exports use.

Every error names classes by their names (folder names for image folders), never by index.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from mplfast.errors import UserError

# Names of the built-in data sets' classes, in label order (standard published orders).
_KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "svhn": tuple(str(i) for i in range(10)),
    "digits": tuple(str(i) for i in range(10)),
}


def class_names(dataset: Any) -> list[str]:
    """The class names of an ``ImageDataset`` in label order: its own ``class_names`` if it has
    them (image folders: the folder names), the standard names of CIFAR-10/SVHN/digits, else
    ``"class<i>"``."""
    own = getattr(dataset, "class_names", None)
    if own:
        return [str(c) for c in own]
    n = int(dataset.num_classes)
    known = _KNOWN_NAMES.get(str(getattr(dataset, "name", "")))
    if known is not None and len(known) == n:
        return list(known)
    return [f"class{i}" for i in range(n)]


def _quote(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def holdout_split(labels: Tensor, fraction: float, names: Sequence[str], seed: int, *,
                  what: str = "test", require_all: bool = True) -> tuple[Tensor, Tensor]:
    """Split ``labels`` (int64 [N], values in [0, len(names))) into (kept, held) index tensors
    (int64, sorted, disjoint, together all of 0..N-1).

    Per class c with n_c images, ``round(n_c * fraction)`` are held out, at least 1 and at most
    n_c - 1, so every class is in both parts (class-balanced in proportion); the choice is a
    seeded permutation per class. ``fraction == 0`` holds out nothing. A class with fewer than 2
    images cannot be split: with ``require_all`` a ``UserError`` naming it (``what`` names the
    held-out part), else it stays whole on the kept side."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"{what}_fraction must be in [0, 1), got {fraction}")
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    n = labels.numel()
    if fraction == 0.0:
        return torch.arange(n), torch.empty(0, dtype=torch.int64)
    counts = torch.bincount(labels, minlength=len(names))
    small = [names[c] for c in range(len(names)) if int(counts[c]) < 2]
    if small and require_all:
        raise UserError(f"class(es) {_quote(small)} have fewer than 2 images: cannot hold out a "
                        f"{what} image and still train on the class (add images or remove the "
                        f"class)")
    g = torch.Generator().manual_seed(int(seed))
    held = []
    for c in range(len(names)):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < 2:
            continue
        k = min(max(1, int(round(idx.numel() * fraction))), idx.numel() - 1)
        held.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    held_idx = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def check_labels_per_class(labels: Tensor, num_labels: int, names: Sequence[str]) -> None:
    """``UserError`` naming the classes (by name) that have fewer than ``num_labels / C`` images
    in ``labels`` (the pool the class-balanced labeled split draws from)."""
    C = len(names)
    if num_labels < C or num_labels % C:
        return  # labeled_split's own message covers a count that is not a multiple of C
    per = num_labels // C
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64).cpu(), minlength=C)
    short = [(names[c], int(counts[c])) for c in range(C) if int(counts[c]) < per]
    if short:
        allowed = int(counts.min()) * C
        listing = ", ".join(f"{n!r} has {k}" for n, k in short[:10])
        raise UserError(f"labels={num_labels} needs {per} training images per class, but {listing}"
                        f"{' and more' if len(short) > 10 else ''}; at most {allowed} labels fit "
                        f"(lower --labels or --val-fraction)")


def carve_validation(dataset: Any, fraction: float, seed: int) -> Any:
    """``dataset`` with a class-balanced validation split moved out of its training images.

    The held-out images are removed from ``train_images`` entirely, so they are neither labeled
    nor unlabeled training data; they become ``val_images``/``val_labels``. A data set that
    already has a validation split (an image folder with both ``val/`` and ``test/``), or
    ``fraction == 0``, is returned unchanged. The split is keyed by ``seed`` (a stream distinct
    from the labeled split's). A class with a single image keeps it for training."""
    import dataclasses

    if fraction <= 0 or getattr(dataset, "val_labels", None) is not None or \
            getattr(dataset, "streamed", False):  # already split, or streamed (file lists)
        return dataset
    keep, held = holdout_split(dataset.train_labels, fraction, class_names(dataset),
                               seed + 104_729, what="val", require_all=False)
    return dataclasses.replace(
        dataset, train_images=dataset.train_images[keep], train_labels=dataset.train_labels[keep],
        val_images=dataset.train_images[held], val_labels=dataset.train_labels[held])
