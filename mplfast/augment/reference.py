"""Pure-torch, image-by-image, op-by-op reference of the augmentation semantics.

Slow on purpose: it loops over images and applies one readable function per op, so it can be
checked against ``docs/augmentation.md`` by eye. The CPU path (``cpu.py``) and the Triton kernel
are tested against it. Pixel values are float32 holding integers 0..255 between ops (every
colour op rounds, as a uint8 image library would).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import params as P


def rnd(x: Tensor) -> Tensor:
    """Round half up and clamp to 0..255 (float32 in, float32 integer values out)."""
    return torch.clamp(torch.floor(x + 0.5), 0.0, 255.0)


def blend(degenerate: Tensor, x: Tensor, factor: float | Tensor) -> Tensor:
    """PIL ImageEnhance: degenerate + factor * (x - degenerate), rounded."""
    return rnd(degenerate + factor * (x - degenerate))


def gray(img: Tensor) -> Tensor:
    """[H, W, C] -> [H, W] ITU-R 601 luma, integer: (299 R + 587 G + 114 B + 500) // 1000."""
    if img.shape[-1] == 1:
        return img[..., 0]
    i = img.to(torch.int64)
    s = 299 * i[..., 0] + 587 * i[..., 1] + 114 * i[..., 2] + 500
    return torch.div(s, 1000, rounding_mode="floor").to(torch.float32)


# ---- geometric: one composed nearest-neighbour resample ---------------------------------------
def resample(img_u8: Tensor, affine: Tensor) -> Tensor:
    """uint8 [H, W, C] -> float32 [H, W, C]; out(x, y) = img(floor(src)) or FILL outside.

    src_x = ((a*u + b*v) + c) + W/2, src_y = ((d*u + e*v) + f) + H/2 with pixel-centre offsets
    u = x + 0.5 - W/2, v = y + 0.5 - H/2: nearest neighbour, so floor picks the source pixel."""
    H, W, C = img_u8.shape
    a, b, c, d, e, f = affine.tolist()
    f32 = torch.float32
    a, b, c, d, e, f = (torch.tensor(t, dtype=f32) for t in (a, b, c, d, e, f))
    v = (torch.arange(H, dtype=f32) + 0.5 - H / 2)[:, None].expand(H, W)
    u = (torch.arange(W, dtype=f32) + 0.5 - W / 2)[None, :].expand(H, W)
    sx = ((a * u + b * v) + c) + W / 2
    sy = ((d * u + e * v) + f) + H / 2
    ix = torch.floor(sx)
    iy = torch.floor(sy)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    ixc = ix.clamp(0, W - 1).to(torch.int64)
    iyc = iy.clamp(0, H - 1).to(torch.int64)
    out = img_u8[iyc, ixc].to(f32)
    return torch.where(inside[..., None], out, torch.full_like(out, P.FILL))


# ---- colour ops on one image [H, W, C] float32 -------------------------------------------------
def autocontrast(img: Tensor) -> Tensor:
    lo = img.amin(dim=(0, 1))
    hi = img.amax(dim=(0, 1))
    scaled = rnd(((img - lo) * 255.0) / torch.where(hi > lo, hi - lo, 1.0))
    return torch.where(hi > lo, scaled, img)


def equalize(img: Tensor) -> Tensor:
    """PIL ImageOps.equalize, per channel: lut[i] = (step // 2 + #pixels < i) // step with
    step = (#pixels - #pixels at the largest value) // 255; step 0 leaves the channel alone."""
    out = img.clone()
    for ch in range(img.shape[-1]):
        v = img[..., ch].to(torch.int64).flatten()
        hist = torch.bincount(v, minlength=256)
        last = hist[v.max()]
        step = (v.numel() - last) // 255
        if step == 0:
            continue
        excl = torch.cumsum(hist, 0) - hist
        lut = torch.clamp((step // 2 + excl) // step, max=255)
        out[..., ch] = lut[v].reshape(img.shape[:2]).to(torch.float32)
    return out


def solarize(img: Tensor, threshold: int) -> Tensor:
    return torch.where(img < threshold, img, 255.0 - img)


def color(img: Tensor, factor: float) -> Tensor:
    if img.shape[-1] == 1:
        return img
    return blend(gray(img)[..., None], img, factor)


def posterize(img: Tensor, shift: int) -> Tensor:
    q = float(2 ** shift)
    return torch.floor(img / q) * q


def contrast(img: Tensor, factor: float) -> Tensor:
    g = gray(img).to(torch.int64)
    n = g.numel()
    mean = float((2 * int(g.sum()) + n) // (2 * n))
    return blend(torch.tensor(mean), img, factor)


def brightness(img: Tensor, factor: float) -> Tensor:
    return blend(torch.tensor(0.0), img, factor)


def sharpness(img: Tensor, factor: float) -> Tensor:
    """PIL SHARPEN-style smoothing kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 (rounded: (S + 6) // 13)
    on interior pixels; border pixels keep their value; then blend."""
    H, W, _ = img.shape
    smooth = img.clone()
    if H >= 3 and W >= 3:
        i = img.to(torch.int64)
        s = torch.zeros_like(i[1:-1, 1:-1])
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                s = s + i[1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx]
        s = s + 4 * i[1:-1, 1:-1]
        smooth[1:-1, 1:-1] = torch.div(s + 6, 13, rounding_mode="floor").to(torch.float32)
    return blend(smooth, img, factor)


def apply_colour_op(img: Tensor, op: int, sign: float, policy: P.Policy) -> Tensor:
    """One RandAugment layer on one image; geometric layers were composed into the resample."""
    f = 1.0 + sign * policy.enhance
    if op == P.AUTOCONTRAST:
        return autocontrast(img)
    if op == P.EQUALIZE:
        return equalize(img)
    if op == P.SOLARIZE:
        return solarize(img, policy.solarize_threshold)
    if op == P.COLOR:
        return color(img, f)
    if op == P.POSTERIZE:
        return posterize(img, policy.posterize_shift)
    if op == P.CONTRAST:
        return contrast(img, f)
    if op == P.BRIGHTNESS:
        return brightness(img, f)
    if op == P.SHARPNESS:
        return sharpness(img, f)
    return img  # identity and the geometric ops


def cutout(img: Tensor, x0: int, y0: int, side: int) -> Tensor:
    if side <= 0:
        return img
    H, W, _ = img.shape
    out = img.clone()
    out[max(y0, 0):min(y0 + side, H), max(x0, 0):min(x0 + side, W)] = P.FILL
    return out


def augment_pixels(images: Tensor, policy: P.Policy, key: int, ids: Tensor) -> Tensor:
    """uint8 [N, H, W, C] -> float32 [N, H, W, C] integer-valued pixels of the view."""
    prm = P.draw_params(policy, key, ids)
    outs = []
    for j in range(images.shape[0]):
        img = resample(images[j], prm.affine[j])
        for s in range(policy.n_ops):
            img = apply_colour_op(img, int(prm.ops[j, s]), float(prm.signs[j, s]), policy)
        img = cutout(img, int(prm.cut_x0[j]), int(prm.cut_y0[j]), policy.cutout_px)
        outs.append(img)
    return torch.stack(outs) if outs else images.to(torch.float32)


def normalize_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """float32 [C] scale, shift with out = pixel * scale + shift = (pixel/255 - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    return (1.0 / (255.0 * s)).to(torch.float32), (-m / s).to(torch.float32)


def augment(images: Tensor, index: Tensor, out: Tensor, policy: P.Policy, key: int,
            ids: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """Write the normalized view of ``images[index]`` into ``out`` ([N, C, H, W], any strides)."""
    px = augment_pixels(images[index.to(images.device)].cpu(), policy, key, ids.cpu())
    scale, shift = normalize_constants(mean, std)
    y = px * scale + shift
    out.copy_(y.permute(0, 3, 1, 2).to(device=out.device, dtype=out.dtype))
