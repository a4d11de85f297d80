"""Batched, vectorized torch implementation of the augmentation semantics (the CPU path).

Same semantics as ``reference.py`` (bit-exact; the tests check it), but it works on the whole
batch at once: one gather for the composed affine resample, and for each RandAugment layer each
colour op runs once on the sub-batch of images that drew it (index_select / index_copy), so the
cost per image is a handful of vectorized passes instead of a Python loop per image.
Also runs on CUDA tensors (it is plain torch), which is the fallback when Triton is missing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import params as P
from .reference import normalize_constants, rnd


def _blend(deg: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    # factor: float32 [N] broadcast over [N, H, W, C]
    return rnd(deg + factor[:, None, None, None] * (x - deg))


def _gray(x: Tensor) -> Tensor:
    """[N, H, W, C] -> int64 [N, H, W] luma."""
    if x.shape[-1] == 1:
        return x[..., 0].to(torch.int64)
    i = x.to(torch.int64)
    s = 299 * i[..., 0] + 587 * i[..., 1] + 114 * i[..., 2] + 500
    return torch.div(s, 1000, rounding_mode="floor")


def resample(images: Tensor, index: Tensor, affine: Tensor) -> Tensor:
    """Gather + nearest resample: uint8 [M, H, W, C] set, int64 [N] rows, float32 [N, 6]
    -> float32 [N, H, W, C]."""
    M, H, W, C = images.shape
    N = index.numel()
    dev = images.device
    f32 = torch.float32
    v = (torch.arange(H, dtype=f32, device=dev) + 0.5 - H / 2)[None, :, None]
    u = (torch.arange(W, dtype=f32, device=dev) + 0.5 - W / 2)[None, None, :]
    a, b, c, d, e, f = (affine[:, k, None, None] for k in range(6))
    ix = torch.floor(((a * u + b * v) + c) + W / 2)
    iy = torch.floor(((d * u + e * v) + f) + H / 2)
    outside = (ix < 0) | (ix >= W) | (iy < 0) | (iy >= H)
    # int32 index arithmetic halves the memory traffic; int64 only for sets over 2^31 pixels
    it = torch.int32 if M * H * W < 2**31 else torch.int64
    flat = (ix.clamp_(0, W - 1).to(it) + iy.clamp_(0, H - 1).to(it) * W) \
        + (index.to(it) * (H * W))[:, None, None]
    px = images.reshape(-1, C).index_select(0, flat.reshape(-1)).reshape(N, H, W, C)
    px.masked_fill_(outside[..., None], int(P.FILL))  # on uint8: 1 byte per value
    return px.to(f32)


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    ok = hi > lo
    return torch.where(ok, rnd(((x - lo) * 255.0) / torch.where(ok, hi - lo, 1.0)), x)


def _equalize(x: Tensor) -> Tensor:
    N, H, W, C = x.shape
    v = x.to(torch.int64).permute(0, 3, 1, 2).reshape(N * C, H * W)
    rows = torch.arange(N * C, device=x.device)[:, None]
    hist = torch.zeros(N * C, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v))
    last = hist.gather(1, v.amax(dim=1, keepdim=True))
    step = (H * W - last) // 255
    excl = torch.cumsum(hist, 1) - hist
    lut = torch.clamp((step // 2 + excl) // step.clamp(min=1), max=255)
    eq = lut[rows, v]
    out = torch.where(step > 0, eq, v)
    return out.reshape(N, C, H, W).permute(0, 2, 3, 1).to(torch.float32)


def _color(x: Tensor, f: Tensor) -> Tensor:
    if x.shape[-1] == 1:
        return x
    return _blend(_gray(x).to(torch.float32)[..., None], x, f)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    g = _gray(x)
    n = g.shape[1] * g.shape[2]
    mean = (2 * g.sum(dim=(1, 2)) + n) // (2 * n)
    return _blend(mean.to(torch.float32)[:, None, None, None], x, f)


def _sharpness(x: Tensor, f: Tensor) -> Tensor:
    N, H, W, C = x.shape
    smooth = x.clone()
    if H >= 3 and W >= 3:
        i = x.to(torch.int64)
        s = 4 * i[:, 1:-1, 1:-1]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                s = s + i[:, 1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx]
        smooth[:, 1:-1, 1:-1] = torch.div(s + 6, 13, rounding_mode="floor").to(torch.float32)
    return _blend(smooth, x, f)


def _apply(op: int, x: Tensor, f: Tensor, policy: P.Policy) -> Tensor:
    if op == P.AUTOCONTRAST:
        return _autocontrast(x)
    if op == P.EQUALIZE:
        return _equalize(x)
    if op == P.SOLARIZE:
        return torch.where(x < policy.solarize_threshold, x, 255.0 - x)
    if op == P.COLOR:
        return _color(x, f)
    if op == P.POSTERIZE:
        q = float(2 ** policy.posterize_shift)
        return torch.floor(x / q) * q
    if op == P.CONTRAST:
        return _contrast(x, f)
    if op == P.BRIGHTNESS:
        return rnd(f[:, None, None, None] * x)
    if op == P.SHARPNESS:
        return _sharpness(x, f)
    raise AssertionError(op)


_COLOUR_OPS = [op for op in range(P.NUM_OPS) if op not in P.GEOMETRIC and op != P.IDENTITY]


def augment_pixels(images: Tensor, index: Tensor, policy: P.Policy, key: int,
                   ids: Tensor) -> Tensor:
    """uint8 [M, H, W, C] set, int64 [N] rows -> float32 [N, H, W, C] integer-valued pixels."""
    prm = P.draw_params(policy, key, ids.to(images.device))
    x = resample(images, index.to(images.device), prm.affine)
    for s in range(policy.n_ops):
        ops = prm.ops[:, s]
        f = (1.0 + prm.signs[:, s] * policy.enhance).to(torch.float32)
        for op in _COLOUR_OPS:
            sel = (ops == op).nonzero().flatten()
            if sel.numel() == 0:
                continue
            x.index_copy_(0, sel, _apply(op, x.index_select(0, sel), f.index_select(0, sel),
                                         policy))
    L = policy.cutout_px
    if L > 0:
        N, H, W, _ = x.shape
        # the square is separable: row mask [N, H, 1, 1] & column mask [N, 1, W, 1]
        ys = torch.arange(H, device=x.device)[None, :]
        xs = torch.arange(W, device=x.device)[None, :]
        rows = (ys >= prm.cut_y0[:, None]) & (ys < prm.cut_y0[:, None] + L)
        cols = (xs >= prm.cut_x0[:, None]) & (xs < prm.cut_x0[:, None] + L)
        x = torch.where(rows[:, :, None, None] & cols[:, None, :, None], P.FILL, x)
    return x


def augment(images: Tensor, index: Tensor, out: Tensor, policy: P.Policy, key: int,
            ids: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """Write the normalized view of ``images[index]`` into ``out`` ([N, C, H, W], any strides,
    any float dtype, same device as ``images``)."""
    px = augment_pixels(images, index, policy, key, ids)
    scale, shift = normalize_constants(mean, std)
    px.mul_(scale.to(px.device)).add_(shift.to(px.device))  # same fp32 ops as the reference
    out.copy_(px.permute(0, 3, 1, 2))
