"""Counter-based random stream shared by every augmentation backend.

Why counter-based: each random number is a pure function of (seed, step, view, image, slot), so
the torch reference, the vectorized CPU path and the Triton kernel draw *the same* parameters
without sharing any generator state, a resumed run sees the same augmentations, and no host work
is needed per step.

The mixer is Chris Wellons' ``lowbias32`` integer hash on uint32. torch has no full uint32
arithmetic, so the torch version works in int64 and splits each 32x32-bit multiply into two
16-bit halves that never overflow int64 (the Triton kernel uses native uint32 wrap-around, which
gives the same bits).

    key(seed, step, view) = mix(mix(mix(seed) ^ step) ^ (view * 0x9E3779B9 mod 2^32))   host ints
    u32(key, i, slot)     = mix(key ^ mix(i * SLOTS + slot))                             per image
    uniform               = (u32 >> 8) * 2^-24          float32 in [0, 1), exact
    randint(k)            = ((u32 >> 8) * k) >> 24      integer in [0, k), exact (k < 256)
"""
from __future__ import annotations

import torch
from torch import Tensor

M32 = 0xFFFFFFFF
C1 = 0x7FEB352D
C2 = 0x846CA68B
GOLDEN = 0x9E3779B9
#: random slots per image; slot numbers are fixed in ``mplfast.augment.params``
SLOTS = 32


def mix32_int(x: int) -> int:
    """lowbias32 on a Python int (host side: the per-step key)."""
    x &= M32
    x ^= x >> 16
    x = (x * C1) & M32
    x ^= x >> 15
    x = (x * C2) & M32
    x ^= x >> 16
    return x


def stream_key(seed: int, step: int, view: int) -> int:
    """uint32 key of one (seed, step, view) stream, as a Python int in [0, 2^32)."""
    k = mix32_int(mix32_int(seed) ^ (step & M32))
    return mix32_int(k ^ ((view * GOLDEN) & M32))


def _mul32(x: Tensor, c: int) -> Tensor:
    # x in [0, 2^32) as int64; (x * c) mod 2^32 without int64 overflow: x * 0xFFFF < 2^48.
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def mix32(x: Tensor) -> Tensor:
    """lowbias32 on an int64 tensor holding uint32 values; returns int64 in [0, 2^32)."""
    x = x & M32
    x = x ^ (x >> 16)
    x = _mul32(x, C1)
    x = x ^ (x >> 15)
    x = _mul32(x, C2)
    return x ^ (x >> 16)


def u32(key: int, ids: Tensor, slot: int | Tensor) -> Tensor:
    """Random uint32 (as int64) for images ``ids`` (int64 [N]) in ``slot`` (int or int64 [S]).

    Returns int64 [N] for an int slot, [N, S] for a tensor of slots."""
    if isinstance(slot, Tensor):
        ctr = ids[:, None] * SLOTS + slot[None, :]
    else:
        ctr = ids * SLOTS + slot
    return mix32(mix32(ctr) ^ key)


def uniform(bits: Tensor) -> Tensor:
    """float32 uniform in [0, 1) from random uint32 ``bits`` (exact: 24 bits)."""
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def randint(bits: Tensor, k: int) -> Tensor:
    """int64 uniform in [0, k) from random uint32 ``bits``; exact integer arithmetic (k < 256)."""
    return ((bits >> 8) * k) >> 24
