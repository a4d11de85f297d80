"""Pieces shared by the row-wise Triton kernels (``soft_ce``, ``uda``): the padding value, the
masked row loads, the alignment hint and the launch shape (rows per program, chunk width, warps)."""
from __future__ import annotations

import math

import triton
import triton.language as tl

from mplfast.kernels._launch import interpreter_tiles

# "Minus infinity" for padding: exp(NEG - m) == 0 without inf arithmetic. A constexpr, because
# Triton kernels may only read globals that are constexpr.
NEG = tl.constexpr(-1.0e30)
CHUNK = 4096  # chunk width for rows too wide for registers (two reads of the row)


@triton.jit
def row_shift(row_ptr, rmask):
    """Each row's first element in fp32, or 0 where that is no use as a shift (a masked-out
    class, -inf, or an overflowed value): sums are taken of x - r to avoid cancellation."""
    r = tl.load(row_ptr, mask=rmask, other=0.0).to(tl.float32)
    return tl.where((r > -1.0e30) & (r < 1.0e30), r, 0.0)


@triton.jit
def load_chunk(row_ptr, c, msk):
    """[ROWS, BLOCK_C] tile of columns ``c`` in fp32, NEG where ``msk`` is off."""
    x = tl.load(row_ptr[:, None] + c[None, :], mask=msk, other=0.0).to(tl.float32)
    return tl.where(msk, x, NEG)


@triton.jit
def aligned(x, VEC: tl.constexpr):
    """``x`` (an integer the host checked is a multiple of VEC), told to the compiler as such.
    Triton only knows integer arguments divisible by 16; a column count or row stride of 1000
    would otherwise turn every masked row load into scalar loads."""
    if VEC > 1:
        x = (x // VEC) * VEC
    return x


def vec_width(*sizes: int) -> int:
    """Largest power of two <= 16 dividing every size (column count, row strides in elements):
    the VEC the kernels may assume. Strides and shapes only, no data pointers: Triton's JIT
    checks pointer alignment itself, and this stays traceable under torch.compile."""
    g = 0
    for s in sizes:
        g = math.gcd(g, int(s))
    v = 16
    while v > 1 and g % v:
        v //= 2
    return v


def row_config(n: int, c: int, max_single: int) -> tuple[bool, int, int, int]:
    """(SINGLE, ROWS, BLOCK_C, num_warps) for an [n, c] problem whose rows stay in registers
    (one read) up to ``max_single`` columns wide."""
    width = triton.next_power_of_2(c)
    single = width <= max_single
    interpret = interpreter_tiles()  # MPLFAST_TRITON_TILES=gpu: the GPU's tiles, also here
    # Under the interpreter a wider chunk (still < 32000, so rows of 32000 take several chunks
    # and the online rescaling is exercised) cuts the per-op overhead.
    block_c = width if single else (4 * CHUNK if interpret else CHUNK)
    # Pack rows for narrow C so one program still moves ~4K elements.
    if interpret:
        # The interpreter pays per program and per op, not per element: bigger tiles keep the
        # CPU tests fast. Same code path (row masking) as on a GPU, only larger ROWS.
        rows = max(1, min(1024, 32768 // block_c, triton.next_power_of_2(max(n, 1))))
    else:
        rows = max(1, min(128, 4096 // block_c, triton.next_power_of_2(max(n, 1))))
    elems = rows * block_c
    num_warps = 4 if elems <= 1024 else (8 if elems <= 4096 else 16)
    return single, rows, block_c, num_warps
