"""Image decoding with checks: every file a user's folder holds is untrusted input.

What can be in a folder of ``*.jpg`` / ``*.png`` files, and what happens to it here:

* a decompression bomb (a small file whose header claims billions of pixels): refused from the
  header, before any pixel is decoded, if it is over PIL's ``Image.MAX_IMAGE_PIXELS``;
* a truncated or corrupt file, an empty file, a file of another format named ``.png`` (GIF,
  TIFF, ...): refused (the image-folder pre-flight skips it with one line naming it, or
  fails with ``--strict``); only the JPEG/PNG decoders are ever run;
* 16-bit (``I;16``, ``I``) PNGs: scaled to 8 bits (``v * 255 / 65535``), not clipped;
* palette (``P``, with or without transparency), grey+alpha, RGBA, CMYK, 1-bit: converted to
  RGB (alpha dropped);
* a 1 x 1 image, and images of mixed sizes: resized to ``image_size`` x ``image_size``.

Big images never go to DALI (it decodes at full resolution, a batch at a time); PIL decodes
JPEGs at a reduced DCT scale (draft mode) first, so a 12-megapixel photo costs a small decode.
If DALI fails on a batch (a file its decoder does not take), the batch is decoded with PIL.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

FORMATS = ("JPEG", "PNG")  # PIL's JPEG opener also yields MPO (multi-picture JPEGs of cameras)
DALI_MAX_PIXELS = 4_000_000       # larger images go to PIL (draft-mode JPEG, no DALI batch blow-up)


class ImageRefused(Exception):
    """An image file that is not decodable or not allowed; the message says why (one line)."""


def _pixel_limit() -> int | None:
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _open(path: Path):
    """``PIL.Image.open`` restricted to ``FORMATS``, with the bomb check on the header only."""
    from PIL import Image

    with warnings.catch_warnings():
        # PIL warns between 1x and 2x its limit and raises above; both mean "refuse" here
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path, formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRefused(_too_big_message(path)) from None
        except Image.UnidentifiedImageError:
            raise ImageRefused(_not_jpeg_png(path)) from None
    limit = _pixel_limit()
    if limit is not None and im.width * im.height > limit:
        im.close()
        raise ImageRefused(_too_big_message(path))
    if im.width < 1 or im.height < 1:
        im.close()
        raise ImageRefused("zero-sized image")
    return im


def _too_big_message(path: Path) -> str:
    size = ""
    try:  # read the claimed size without PIL's bomb check, for the message
        from PIL import Image

        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path, formats=FORMATS) as im:
                size = f" ({im.width} x {im.height} pixels)"
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    except Exception:  # noqa: BLE001 - the message goes without the size
        pass
    return (f"image too large{size}: over the decompression-bomb limit of {_pixel_limit()} "
            "pixels (PIL.Image.MAX_IMAGE_PIXELS)")


_MAGIC = ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          (b"RIFF", "RIFF/WebP"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"8BPS", "PSD"),
          (b"%PDF", "PDF"), (b"%!PS", "PostScript"))


def _not_jpeg_png(path: Path) -> str:
    """The refusal for a file neither decoder recognises; named from its magic bytes only
    (no other image parser ever runs on user files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        head = b""
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    return f"not a JPEG or PNG image ({'it is ' + kind if kind else 'unrecognised content'})"


def check_image(path: Path) -> str | None:
    """None if ``path`` is an allowed image that decodes completely, else the reason (one
    line). JPEGs decode at reduced DCT scale (PIL draft mode) so the full scan costs a
    fraction of a real decode but still reads every byte of entropy-coded data (truncated or
    garbage files fail)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with _open(path) as im:
            if im.format in ("JPEG", "MPO"):
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except ImageRefused as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return None


def to_rgb(im):
    """``im`` as an 8-bit RGB ``PIL.Image`` (see the module docstring for each mode)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # the palette's transparency, if any, without PIL's warning
    return im.convert("RGB")


def load_rgb(path: Path, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3] of one image file (checked, converted, bilinear resize to S x S).
    ``ImageRefused`` or the decoder's exception for a file that ``check_image`` refuses."""
    return load_resized(path, (image_size, image_size))


def load_resized(path: Path, size: tuple[int, int], *, grey: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] (or [H, W] with ``grey``) of one image file: the same checks and
    conversions as :func:`load_rgb`, bilinear resize to ``size = (H, W)``. ``ImageRefused``
    or the decoder's exception for a file that ``check_image`` refuses."""
    from PIL import Image

    H, W = int(size[0]), int(size[1])
    with _open(Path(path)) as im:
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (W, H))  # decode at the smallest scale >= the target
        rgb = to_rgb(im)
        if grey:
            rgb = rgb.convert("L")
        return np.asarray(rgb.resize((W, H), Image.BILINEAR))


def decode_pil(files: Sequence[Path], image_size: int) -> Tensor:
    """uint8 [N, S, S, 3] via PIL (see :func:`load_rgb`)."""
    out = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = load_rgb(Path(f), image_size)
    return torch.from_numpy(out)


def _dali_friendly(path: Path) -> bool:
    """8-bit JPEG/PNG small enough for a DALI batch (16-bit and odd modes go to PIL too, so
    both decoders give the same pixels)."""
    try:
        with _open(path) as im:
            return im.format in ("JPEG", "MPO", "PNG") and im.width * im.height <= DALI_MAX_PIXELS and \
                im.mode in ("L", "RGB", "RGBA", "LA", "P")
    except Exception:  # noqa: BLE001 - PIL will say what is wrong
        return False


def _chunks(idx: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(idx), n):
        yield idx[i:i + n]


def decode_images(files: Sequence[Path], image_size: int, *, use_dali: bool | None = None) -> Tensor:
    """uint8 [N, S, S, 3] of checked image files: a DALI CPU pipeline for plain 8-bit images
    when DALI is installed (``use_dali=None``: if available), PIL for the rest and for any
    batch DALI fails on."""
    files = [Path(f) for f in files]
    if not files:
        return torch.empty((0, image_size, image_size, 3), dtype=torch.uint8)
    from . import dali

    if use_dali is None:
        use_dali = dali.available()
    if not use_dali:
        return decode_pil(files, image_size)
    out = torch.empty((len(files), image_size, image_size, 3), dtype=torch.uint8)
    via_dali = [i for i, f in enumerate(files) if _dali_friendly(f)]
    via_pil = sorted(set(range(len(files))) - set(via_dali))
    for chunk in _chunks(via_dali, 1024):
        try:
            out[chunk] = dali.decode_files([files[i] for i in chunk], image_size)
        except RuntimeError:  # a file DALI's decoder refuses: PIL decodes this chunk
            via_pil += chunk
    if via_pil:
        out[sorted(via_pil)] = decode_pil([files[i] for i in sorted(via_pil)], image_size)
    return out
