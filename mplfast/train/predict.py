"""``mplfast predict RUN_OR_EXPORT IMAGES...``: top-k classes of image files.

Images are decoded with the image-folder decoder's checks (``mplfast.data.decode``: JPEG/PNG only,
decompression bombs refused), converted to the model's channels (RGB or grey), resized to the
export's image size (bilinear, aspect ratio not kept: the same resize as training) and
normalized with the export's mean/std. Output: text lines, CSV or JSON.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mplfast.errors import UserError

FORMATS = ("text", "csv", "json")


@dataclass
class Prediction:
    """Top-k of one image: class names, their indices and softmax probabilities."""

    path: str
    classes: list[str]
    indices: list[int]
    probs: list[float]


def collect_images(args: Sequence[str]) -> list[Path]:
    """Image paths from files and folders (folders: every image below, sorted), each file once:
    a file named twice, or named and also inside a folder given, keeps its first place (the
    same file is recognised by its resolved path, so ``a.png`` and ``./a.png`` are one)."""
    from mplfast.data.imagefolder import list_images

    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for a in args:
        p = Path(a).expanduser()
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise UserError(f"no .jpg/.jpeg/.png images under {p}")
            for f in found:
                add(f)
        elif p.is_file():
            add(p)
        else:
            raise UserError(f"image not found: {p}")
    if not out:
        raise UserError("no images given")
    return out


def load_image(path: Path, size: tuple[int, int], in_chans: int) -> np.ndarray:
    """uint8 [H, W, C] of one file; ``UserError`` naming the file if it cannot be decoded."""
    from mplfast.data.decode import ImageRefused, load_resized

    if in_chans not in (1, 3):
        raise UserError(f"cannot feed images to a model with {in_chans} input channels")
    try:
        # the image-folder decoder's checks: JPEG/PNG only, bombs refused from the header,
        # 16-bit / palette / CMYK converted as for training
        arr = np.asarray(load_resized(path, size, grey=in_chans == 1), dtype=np.uint8)
    except ImageRefused as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure: name the file
        raise UserError(f"cannot read image {path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W], (pixel / 255 - mean) / std, computed exactly
    as the training and evaluation batches are."""
    from mplfast.augment.reference import normalize_constants

    scale, shift = normalize_constants(mean, std)
    return (images.to(torch.float32) * scale + shift).permute(0, 3, 1, 2).contiguous()


def _readable(files: Sequence[Path], size: tuple[int, int], in_chans: int, strict: bool
              ) -> tuple[list[Path], list[np.ndarray]]:
    """(files, decoded arrays) of the files that decode; each one that does not is skipped with
    one warning naming it (as training skips them), or is a ``UserError`` when ``strict``."""
    from mplfast.data.imagefolder import CorruptImageWarning

    ok: list[Path] = []
    arrays: list[np.ndarray] = []
    for f in files:
        try:
            arrays.append(load_image(f, size, in_chans))
        except UserError as e:
            if strict:
                raise
            warnings.warn(f"skipping {f}: {str(e).removeprefix(f'cannot read image {f}: ')}",
                          CorruptImageWarning, stacklevel=3)
            continue
        ok.append(f)
    return ok, arrays


@torch.no_grad()
def predict_files(model: nn.Module, meta: dict[str, Any], files: Sequence[Path], *,
                  top_k: int = 5, batch_size: int = 64,
                  device: torch.device | str = "cpu", strict: bool = False) -> list[Prediction]:
    """Top-``top_k`` (at most C) predictions of ``model`` for every readable file, in order.

    A file that cannot be decoded is skipped with a ``CorruptImageWarning`` naming it, so one
    bad file in a folder costs only its own prediction; ``strict=True`` makes it a
    ``UserError``. ``UserError`` too when no file at all can be read."""
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    k = min(top_k, int(meta["num_classes"]))
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    names = meta["class_names"]
    strict = strict or len(files) == 1  # one file: its own error is the one line to show
    model.eval()
    out: list[Prediction] = []
    for i in range(0, len(files), batch_size):
        chunk, arrays = _readable(files[i:i + batch_size], size, int(meta["in_chans"]), strict)
        if not chunk:
            continue
        x = torch.from_numpy(np.stack(arrays))
        logits = model(normalize(x, meta["mean"], meta["std"]).to(device)).float()
        p, idx = torch.softmax(logits, dim=1).topk(k, dim=1)
        for f, pr, ix in zip(chunk, p.cpu().tolist(), idx.cpu().tolist()):
            out.append(Prediction(str(f), [str(names[j]) for j in ix], ix, pr))
    if not out:
        raise UserError(f"none of the {len(files)} image files could be read (each is named above)")
    return out


def render(preds: Sequence[Prediction], fmt: str) -> str:
    """The predictions as text (one line per image), CSV (one row per image and rank) or JSON."""
    if fmt == "text":
        return "".join(f"{p.path}: " + ", ".join(f"{c} {q:.3f}" for c, q in zip(p.classes, p.probs))
                       + "\n" for p in preds)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "class", "index", "probability"])
        for p in preds:
            for r, (c, i, q) in enumerate(zip(p.classes, p.indices, p.probs), start=1):
                w.writerow([p.path, r, c, i, f"{q:.6f}"])
        return buf.getvalue()
    if fmt == "json":
        return json.dumps([{"path": p.path, "top": [{"class": c, "index": i, "probability": q}
                                                    for c, i, q in zip(p.classes, p.indices,
                                                                       p.probs)]}
                           for p in preds], indent=2) + "\n"
    raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
