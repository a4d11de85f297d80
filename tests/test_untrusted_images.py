"""Image files are untrusted input: bombs, truncated files, odd modes and sizes are each converted,
resized, or skipped/refused with one line naming the file; never a traceback (issue 13 item 4)."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mplfast.data import decode
from mplfast.data.imagefolder import CorruptImageWarning, load_imagefolder, preflight
from mplfast.errors import UserError


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> None:
    """A 100-byte PNG whose header claims w x h 8-bit grey pixels (10^10 for the default)."""
    rows = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b""))


def png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit grey PNG of uint16 ``arr`` (written by PIL as mode I;16)."""
    Image.fromarray(arr.astype(np.uint16)).save(path)


def rgb(rs: np.random.RandomState, h: int, w: int) -> Image.Image:
    return Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def rs():
    return np.random.RandomState(0)


def test_bomb_is_refused_from_the_header(tmp_path):
    p = tmp_path / "bomb.png"
    bomb_png(p)
    why = decode.check_image(p)
    assert why is not None and "too large" in why and "100000 x 100000" in why


def test_image_between_one_and_two_limits_is_refused_without_a_warning(tmp_path, rs, monkeypatch):
    """PIL only warns between 1x and 2x its limit (and would decode it); here that is a refusal."""
    p = tmp_path / "big.png"
    rgb(rs, 30, 40).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: 1.2x the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        why = decode.check_image(p)
        assert why is not None and "too large" in why
        with pytest.raises(decode.ImageRefused):
            decode.load_rgb(p, 8)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_and_garbage_files_are_refused(tmp_path, rs, ext):
    p = tmp_path / f"x.{ext}"
    rgb(rs, 40, 40).save(p)
    full = p.read_bytes()
    p.write_bytes(full[: len(full) // 2])
    assert decode.check_image(p) is not None
    p.write_bytes(b"")
    assert decode.check_image(p) == "empty file"
    p.write_bytes(bytes(rs.randint(0, 256, 300, dtype=np.uint8)))
    assert "not a JPEG or PNG" in decode.check_image(p)


@pytest.mark.parametrize("fmt,name", [("GIF", "GIF"), ("TIFF", "TIFF"), ("BMP", "BMP")])
def test_other_formats_named_as_png_are_refused(tmp_path, rs, fmt, name):
    """Only the JPEG and PNG decoders ever run on user files (DALI would also fail on these)."""
    p = tmp_path / "x.png"
    rgb(rs, 10, 10).save(p, format=fmt)
    assert decode.check_image(p) == f"not a JPEG or PNG image (it is {name})"


def _both(files: list[Path], size: int) -> list[torch.Tensor]:
    from mplfast.data import dali

    outs = [decode.decode_images(files, size, use_dali=False)]
    if dali.available():
        outs.append(decode.decode_images(files, size, use_dali=True))
    return outs


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "g16.png"
    png16(p, np.full((9, 7), 40000))
    assert Image.open(p).mode == "I;16"
    assert decode.check_image(p) is None
    for x in _both([p], 4):
        assert x.shape == (1, 4, 4, 3)
        assert torch.all(x == round(40000 * 255 / 65535)), x.unique()  # 156, not 255


def test_modes_are_converted_to_rgb(tmp_path, rs):
    base = rs.randint(0, 256, (12, 10, 3), dtype=np.uint8)
    im = Image.fromarray(base)
    files = {
        "pal.png": im.convert("P", palette=Image.ADAPTIVE),
        "cmyk.jpg": im.convert("CMYK"),
        "la.png": im.convert("LA"),
        "rgba.png": im.convert("RGBA"),
        "bw.png": im.convert("1"),
        "grey.jpg": im.convert("L"),
    }
    paths = []
    for name, img in files.items():
        p = tmp_path / name
        img.save(p)
        paths.append(p)
    # a palette PNG with per-entry transparency (PIL warns if such an image is converted naively)
    pal = im.convert("P", palette=Image.ADAPTIVE)
    p = tmp_path / "pal_trns.png"
    pal.save(p, transparency=bytes(range(0, 256, 1)))
    paths.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(decode.check_image(p) is None for p in paths)
        for x in _both(paths, 6):
            assert x.dtype == torch.uint8 and x.shape == (len(paths), 6, 6, 3)
            assert x.float().std() > 10  # real content, not a blank image


def test_tiny_and_mixed_sizes_are_resized(tmp_path, rs):
    paths = []
    for i, (h, w) in enumerate([(1, 1), (1, 50), (37, 5), (64, 64), (300, 200)]):
        p = tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}"
        rgb(rs, h, w).save(p)
        paths.append(p)
    p1 = tmp_path / "one.png"
    Image.fromarray(np.array([[[10, 20, 30]]], dtype=np.uint8)).save(p1)
    for x in _both(paths + [p1], 8):
        assert x.shape == (len(paths) + 1, 8, 8, 3)
        assert torch.all(x[-1] == torch.tensor([10, 20, 30], dtype=torch.uint8))


def test_big_images_go_to_pil_and_match(tmp_path, rs, monkeypatch):
    """Over DALI_MAX_PIXELS an image is decoded by PIL (draft JPEG): no full-size DALI batch."""
    monkeypatch.setattr(decode, "DALI_MAX_PIXELS", 100)
    p = tmp_path / "big.png"
    rgb(rs, 20, 20).save(p)
    assert not decode._dali_friendly(p)
    for x in _both([p], 5):
        assert torch.equal(x, decode.decode_pil([p], 5))


def test_dali_failure_falls_back_to_pil(tmp_path, rs, monkeypatch):
    from mplfast.data import dali

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        rgb(rs, 9, 9).save(paths[-1])

    def broken(*a, **k):
        raise RuntimeError("Critical error in pipeline")

    monkeypatch.setattr(dali, "decode_files", broken)
    x = decode.decode_images(paths, 4, use_dali=True)
    assert torch.equal(x, decode.decode_pil(paths, 4))


def _folder(root: Path, rs, bad: dict[str, bytes | None]) -> None:
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(4):
                rgb(rs, 8 + i, 12 - i).save(d / f"{i}.png")
    for name, content in bad.items():
        p = root / "train" / "cat" / name
        if content is None:
            bomb_png(p)
        else:
            p.write_bytes(content)


def test_image_folder_skips_bad_files_naming_each(tmp_path, rs):
    g = tmp_path / "g.gif"
    rgb(rs, 5, 5).save(g, format="GIF")
    _folder(tmp_path / "data", rs, {"bomb.png": None, "trunc.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 30,
                                    "anim.png": g.read_bytes(), "empty.jpg": b""})
    with pytest.warns(CorruptImageWarning) as rec:
        ds = load_imagefolder(tmp_path / "data", image_size=8)
    msg = str(rec[0].message)
    assert "\n" not in msg
    for name in ("bomb.png", "trunc.jpg", "anim.png", "empty.jpg"):
        assert name in msg
    assert ds.train_images.shape == (8, 8, 8, 3)
    with pytest.raises(UserError, match="bomb.png"):
        load_imagefolder(tmp_path / "data", image_size=8, strict=True)


def test_preflight_strict_is_one_line(tmp_path):
    p = tmp_path / "x.png"
    bomb_png(p)
    with pytest.raises(UserError) as e:
        preflight([p], [0], strict=True)
    assert "\n" not in str(e.value) and "x.png" in str(e.value)
