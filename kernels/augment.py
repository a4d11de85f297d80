"""Fused Triton augmentation kernel: uint8 NHWC images -> one normalized view, in place.

One program builds one image of a view (semantics: ``docs/augmentation.md``; the torch reference
is ``mplfast.augment.reference``):

1. draws its parameters from the counter stream (lowbias32 on uint32, exactly the bits
   ``mplfast.augment.rng`` computes in torch);
2. composes flip, weak shift and the geometric RandAugment layers into one inverse affine map and
   gathers every output pixel with one nearest-neighbour read of the uint8 source row
   (``images[index[pid]]``: the batch gather is fused too);
3. applies the colour layers in order on the register tile [pixels, channels]; autocontrast,
   contrast and equalize reduce over the tile in the same program; equalize's look-up table and
   sharpness's 3x3 neighbourhood go through a small per-program scratch area (global memory,
   L2-resident, fenced with ``tl.debug_barrier``) because Triton has no register gather;
4. cutout, then (pixel * scale_c + shift_c) = (pixel/255 - mean_c)/std_c in fp32, cast to the
   output dtype and stored through the output's strides (channels-last slice of the step buffer).

Bit-exactness with the reference: all random draws, op choices, integer statistics and the
composed matrix (same float32 operation order; cos/sin come from the host) are identical, and
the kernel is compiled with ``enable_fp_fusion=False``, so no a*b+c is contracted into an FMA
(which could move a pixel on a rounding boundary by one level). The tests check exact equality
under the interpreter, and that the sm_90 PTX holds no fma.rn.f32.

One program holds the image as a [BLOCK, CP] register tile (pixels padded to a power of two,
channels to 1 or 4). Tiles of more than ``MAX_ELEMENTS`` elements do not fit without spilling
(``fits``; the dispatcher uses the torch path for them): on Triton 3.6's sm_90 build a 64x64 RGB
tile (16384 elements) spills ~4 KB per thread at 8 warps, ~2 KB at 16 and ~1 KB at 32, and even
32x64 RGB (8192) spills at 8 and 16 warps, while tiles of 4096 elements (32x32 RGB, 64x64 grey)
take 16 warps at 84 / 125 registers without a spill (benchmarks/triton_sm90.py checks every
configuration on the installed Triton).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from mplfast.augment import params as P
from mplfast.augment.reference import normalize_constants
from mplfast.kernels._launch import launch

MAX_ELEMENTS = 4096  # BLOCK * CP of the largest tile one program holds without spilling (module doc)


def tile(h: int, w: int, c: int) -> tuple[int, int]:
    """(BLOCK, CP): an image's register tile, pixels and channels padded."""
    return triton.next_power_of_2(h * w), (4 if c == 3 else 1)


def fits(h: int, w: int, c: int) -> bool:
    """True when this kernel takes [h, w, c] images: 1 or 3 channels, a tile of at most
    MAX_ELEMENTS elements (64x64 grey, 32x32 RGB)."""
    block, cp = tile(h, w, c)
    return c in (1, 3) and block * cp <= MAX_ELEMENTS

# Small constant tensors per (device, ...): created once, so a step issues no host-to-device
# copy (which would also be illegal inside CUDA-graph capture).
_CONSTS: dict[tuple, Tensor] = {}


def _const(key: tuple, make) -> Tensor:
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = make()
    return t


@triton.jit
def _mix32(x):
    # lowbias32 (Wellons); uint32 arithmetic wraps mod 2^32 like the torch version's masking
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@triton.jit
def _u32(key, gid, slot: tl.constexpr):
    ctr = gid * 32 + slot  # uint32: rng.SLOTS == 32
    return _mix32(_mix32(ctr) ^ key)


@triton.jit
def _randint(bits, k):
    # ((bits >> 8) * k) >> 24 in 64 bits: k may exceed 255 (cutout centre on wide images)
    return (((bits >> 8).to(tl.uint64) * tl.cast(k, tl.uint64)) >> 24).to(tl.int32)


@triton.jit
def _rnd(x):
    return tl.minimum(tl.maximum(tl.floor(x + 0.5), 0.0), 255.0)


@triton.jit
def _blend(deg, x, f):
    return _rnd(deg + f * (x - deg))


@triton.jit
def _gray(v, cidx, C: tl.constexpr):
    """Integer luma per pixel, [BLOCK] int32 (the single channel when C == 1)."""
    if C == 1:
        g = tl.sum(tl.where(cidx[None, :] == 0, v, 0.0), axis=1).to(tl.int32)
    else:
        r = tl.sum(tl.where(cidx[None, :] == 0, v, 0.0), axis=1).to(tl.int32)
        gg = tl.sum(tl.where(cidx[None, :] == 1, v, 0.0), axis=1).to(tl.int32)
        b = tl.sum(tl.where(cidx[None, :] == 2, v, 0.0), axis=1).to(tl.int32)
        g = (299 * r + 587 * gg + 114 * b + 500) // 1000
    return g


# Scalars that may equal 1 would otherwise be specialized into constexprs (a recompile per value
# and ``key.to`` on a constexpr); the stream key and offsets change every step.
@triton.jit(do_not_specialize=["key", "id_offset", "n_table", "cut_l", "pad_x", "pad_y"])
def _augment_kernel(
    img_ptr, idx_ptr, out_ptr, scratch_ptr, table_ptr, scale_ptr, shift_ptr,
    key, id_offset, n_table,
    s_on, s_oc, s_oh, s_ow,
    cos_v, sin_v, shear_k, tpx, tpy, enh, sol_thr, post_q, cut_l, pad_x, pad_y,
    H: tl.constexpr, W: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr,
    CP: tl.constexpr, N_OPS: tl.constexpr, HFLIP: tl.constexpr, SCR: tl.constexpr,
):
    pid = tl.program_id(0)
    HW: tl.constexpr = H * W
    row = tl.load(idx_ptr + pid).to(tl.int64)
    gid = (id_offset + pid).to(tl.uint32)
    key = key.to(tl.uint32)

    # ---- parameters -------------------------------------------------------------------------
    if HFLIP:
        flip = _randint(_u32(key, gid, 0), 2) == 1
    else:
        flip = pid < 0  # False, as a scalar tensor
    tx = (_randint(_u32(key, gid, 1), 2 * pad_x + 1) - pad_x).to(tl.float32)
    ty = (_randint(_u32(key, gid, 2), 2 * pad_y + 1) - pad_y).to(tl.float32)
    # inverse map M = Flip @ Shift @ L1 @ ... (right-multiplied in the reference's order)
    ma = tl.where(flip, -1.0, 1.0)
    mb = 0.0
    mc = 0.0
    md = 0.0
    me = 1.0
    mf = 0.0
    # M @ [[1, 0, -tx], [0, 1, -ty]]
    na = ma * 1.0 + mb * 0.0
    nb = ma * 0.0 + mb * 1.0
    nc = (ma * -tx + mb * -ty) + mc
    nd = md * 1.0 + me * 0.0
    ne = md * 0.0 + me * 1.0
    nf = (md * -tx + me * -ty) + mf
    ma, mb, mc, md, me, mf = na, nb, nc, nd, ne, nf
    for s in tl.static_range(N_OPS):
        op = tl.load(table_ptr + _randint(_u32(key, gid, 5 + 2 * s), n_table))
        sg = tl.where(_randint(_u32(key, gid, 6 + 2 * s), 2) == 1, 1.0, -1.0)
        rot = op == 3
        a2 = tl.where(rot, cos_v, 1.0)
        b2 = tl.where(rot, sg * sin_v, tl.where(op == 10, sg * shear_k, 0.0))
        c2 = tl.where(op == 12, -(sg * tpx), 0.0)
        d2 = tl.where(rot, -(sg * sin_v), tl.where(op == 11, sg * shear_k, 0.0))
        e2 = tl.where(rot, cos_v, 1.0)
        f2 = tl.where(op == 13, -(sg * tpy), 0.0)
        na = ma * a2 + mb * d2
        nb = ma * b2 + mb * e2
        nc = (ma * c2 + mb * f2) + mc
        nd = md * a2 + me * d2
        ne = md * b2 + me * e2
        nf = (md * c2 + me * f2) + mf
        ma, mb, mc, md, me, mf = na, nb, nc, nd, ne, nf

    # ---- one composed nearest-neighbour resample ---------------------------------------------
    p = tl.arange(0, BLOCK)
    cidx = tl.arange(0, CP)
    valid = p < HW
    py = p // W
    px = p % W
    u = (px.to(tl.float32) + 0.5) - W * 0.5
    v_ = (py.to(tl.float32) + 0.5) - H * 0.5
    sx = ((ma * u + mb * v_) + mc) + W * 0.5
    sy = ((md * u + me * v_) + mf) + H * 0.5
    ix = tl.floor(sx)
    iy = tl.floor(sy)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & valid
    ixi = tl.minimum(tl.maximum(ix, 0.0), W - 1.0).to(tl.int32)
    iyi = tl.minimum(tl.maximum(iy, 0.0), H - 1.0).to(tl.int32)
    # the image's base as one 64-bit scalar, per-pixel offsets in int32 (< H * W * C): 64-bit
    # offsets per element would hold two registers each
    img = img_ptr + row * (H * W * C)
    src = (iyi * W + ixi) * C
    cmask = cidx < C
    m2 = inside[:, None] & cmask[None, :]
    v = tl.load(img + src[:, None] + cidx[None, :], mask=m2, other=128).to(tl.float32)
    v = tl.where(m2, v, 128.0)
    vm = valid[:, None] & cmask[None, :]

    # ---- colour layers, in order ------------------------------------------------------------
    scr = scratch_ptr + pid.to(tl.int64) * SCR
    for s in tl.static_range(N_OPS):
        op = tl.load(table_ptr + _randint(_u32(key, gid, 5 + 2 * s), n_table))
        sg = tl.where(_randint(_u32(key, gid, 6 + 2 * s), 2) == 1, 1.0, -1.0)
        f = 1.0 + sg * enh
        if op == 1:  # autocontrast, per channel over the image
            lo = tl.min(tl.where(vm, v, 1e9), axis=0)
            hi = tl.max(tl.where(vm, v, -1e9), axis=0)
            ok = hi > lo
            den = tl.where(ok, hi - lo, 1.0)
            num = (v - lo[None, :]) * 255.0
            sc = _rnd(tl.math.div_rn(num, tl.broadcast_to(den[None, :], (BLOCK, CP))))
            v = tl.where(ok[None, :], sc, v)
        elif op == 2:  # equalize (PIL), per channel: histogram -> LUT in scratch -> gather
            tl.debug_barrier()
            bins = tl.arange(0, 256)
            for ch in tl.static_range(C):
                col = tl.sum(tl.where(cidx[None, :] == ch, v, 0.0), axis=1).to(tl.int32)
                col = tl.where(valid, col, 0)
                hist = tl.histogram(col, 256)
                hist = hist - tl.where(bins == 0, BLOCK - HW, 0)  # padding lanes counted as 0
                vmax = tl.max(tl.where(valid, col, -1), axis=0)
                last = tl.sum(tl.where(bins == vmax, hist, 0), axis=0)
                step = (HW - last) // 255
                excl = tl.cumsum(hist, axis=0) - hist
                lut = tl.minimum((step // 2 + excl) // tl.maximum(step, 1), 255)
                lut = tl.where(step > 0, lut, bins)  # PIL: step 0 leaves the channel alone
                tl.store(scr + ch * 256 + bins, lut.to(tl.uint8))
            tl.debug_barrier()
            col_all = tl.where(vm, v, 0.0).to(tl.int32)
            eqv = tl.load(scr + cidx[None, :] * 256 + col_all, mask=vm, other=0).to(tl.float32)
            v = tl.where(vm, eqv, v)
        elif op == 4:  # solarize
            v = tl.where(v < sol_thr, v, 255.0 - v)
        elif op == 5:  # color
            if C == 3:
                g = _gray(v, cidx, C).to(tl.float32)
                v = _blend(g[:, None], v, f)
        elif op == 6:  # posterize
            v = tl.floor(v / post_q) * post_q
        elif op == 7:  # contrast
            g = _gray(v, cidx, C)
            tot = tl.sum(tl.where(valid, g, 0), axis=0)
            mean = ((2 * tot + HW) // (2 * HW)).to(tl.float32)
            v = _blend(mean, v, f)
        elif op == 8:  # brightness
            v = _rnd(f * v)
        elif op == 9:  # sharpness: [[1,1,1],[1,5,1],[1,1,1]] / 13 on interior pixels
            tl.debug_barrier()
            vi = v.to(tl.int32)
            offs = p[:, None] * CP + cidx[None, :]
            tl.store(scr + offs, vi.to(tl.uint8), mask=vm)
            tl.debug_barrier()
            inner = (py >= 1) & (py <= H - 2) & (px >= 1) & (px <= W - 2) & valid
            im = inner[:, None] & cmask[None, :]
            acc = 4 * vi
            for dy in tl.static_range(3):
                for dx in tl.static_range(3):
                    nb_ = offs + ((dy - 1) * W + (dx - 1)) * CP
                    acc += tl.load(scr + nb_, mask=im, other=0).to(tl.int32)
            smooth = tl.where(im, ((acc + 6) // 13).to(tl.float32), v)
            v = _blend(smooth, v, f)
    # ---- cutout, normalize, store ----------------------------------------------------------
    cx = _randint(_u32(key, gid, 3), W + tl.zeros((), tl.int32))
    cy = _randint(_u32(key, gid, 4), H + tl.zeros((), tl.int32))
    x0 = cx - cut_l // 2
    y0 = cy - cut_l // 2
    box = (px >= x0) & (px < x0 + cut_l) & (py >= y0) & (py < y0 + cut_l) & (cut_l > 0)
    v = tl.where(box[:, None], 128.0, v)
    scale = tl.load(scale_ptr + cidx, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + cidx, mask=cmask, other=0.0)
    y = v * scale[None, :] + shift[None, :]
    # the image's base as one 64-bit scalar; offsets inside an image in int32 (the launcher
    # checks they fit)
    dst = out_ptr + pid.to(tl.int64) * s_on
    o = cidx[None, :] * s_oc + py[:, None] * s_oh + px[:, None] * s_ow
    tl.store(dst + o, y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=vm)


def augment(images: Tensor, index: Tensor, out: Tensor, policy: P.Policy, key: int,
            id_offset: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Launch one program per image: uint8 [M, H, W, C] set, int64 [N] rows -> ``out``
    ([N, C, H, W], any strides; fp32/fp16/bf16) on the same device."""
    N = index.numel()
    _, H, W, C = images.shape
    if not images.is_contiguous():
        raise ValueError("images must be contiguous uint8 [M, H, W, C]")
    if N == 0:
        return
    if C not in (1, 3):
        raise ValueError(f"triton augment handles 1 or 3 channels, got {C}")
    if not fits(H, W, C):
        raise ValueError(f"triton augment handles images up to 64x64 grey / 32x32 RGB (a tile of "
                         f"{MAX_ELEMENTS} elements), got {H}x{W}x{C}")
    dev = images.device
    BLOCK, CP = tile(H, W, C)
    n = policy.n_ops
    scr = max(BLOCK * CP, 256 * C) if n > 0 else 1
    # uint8 scratch (pixel values and LUT entries are 0..255): 4 KiB per 32x32 RGB image
    scratch = torch.empty(N * scr if n > 0 else 1, dtype=torch.uint8, device=dev)
    table = _const(("table", dev, policy.op_set),
                   lambda: torch.tensor(policy.op_set, dtype=torch.int32, device=dev))
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    scale = _const(("scale", dev, mean, std), lambda: normalize_constants(mean, std)[0].to(dev))
    shift = _const(("shift", dev, mean, std), lambda: normalize_constants(mean, std)[1].to(dev))
    cos_v, sin_v = policy.cos_sin
    tpx, tpy = policy.translate_px
    launch(
        _augment_kernel, (N,), dev,
        images, index.to(device=dev, dtype=torch.int64).contiguous(), out, scratch, table,
        scale, shift, key, id_offset, len(policy.op_set), *out.stride(),
        cos_v, sin_v, policy.shear, tpx, tpy, policy.enhance,
        float(policy.solarize_threshold), float(2 ** policy.posterize_shift), policy.cutout_px,
        policy.pad_x, policy.pad_y,
        H=H, W=W, C=C, BLOCK=BLOCK, CP=CP, N_OPS=n, HFLIP=policy.hflip, SCR=scr,
        # 4096-element tiles take 16 warps: at 8, Triton 3.6 needs 148 registers for 32x32 RGB
        # (one program of 8 warps per SM) and 3.9 spills at 64x64 grey; at 16, 84 and 51
        num_warps=4 if BLOCK * CP <= 1024 else (8 if BLOCK * CP <= 2048 else 16),
        fp_fusion=False,  # bit-exact: no FMA contraction (Triton's default is on)
    )


@triton.jit(do_not_specialize=["key", "id_offset", "n"])
def _sample_kernel(rows_ptr, table_ptr, key, id_offset, n, count,
                   HAS_TABLE: tl.constexpr, BLOCK: tl.constexpr):
    # rows[i] = table[(u32(key, id_offset + i, 0) * n) >> 32] (or the draw itself, no table):
    # the batcher's with-replacement sampling in one launch instead of ~25 small torch ops
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < count
    bits = _u32(key.to(tl.uint32), (id_offset + i).to(tl.uint32), 0)
    j = ((bits.to(tl.uint64) * tl.cast(n, tl.uint64)) >> 32).to(tl.int64)
    if HAS_TABLE:
        j = tl.load(table_ptr + j, mask=m, other=0)
    tl.store(rows_ptr + i, j, mask=m)


def sample_rows(key: int, id_offset: int, count: int, n: int, table: Tensor | None,
                device: torch.device) -> Tensor:
    """int64 [count]: uniform draws in [0, n) for counters id_offset.., mapped through
    ``table`` (int64 [n]) when given; identical to ``mplfast.data.batcher._pick``."""
    rows = torch.empty(count, dtype=torch.int64, device=device)
    if count == 0:
        return rows
    BLOCK = 256
    launch(_sample_kernel, (triton.cdiv(count, BLOCK),), device,
           rows, table if table is not None else rows, key, id_offset, n, count,
           HAS_TABLE=table is not None, BLOCK=BLOCK, num_warps=4, fp_fusion=False)
    return rows
