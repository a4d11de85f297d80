"""Triton fused (soft-target, label-smoothed) cross-entropy: loss and gradient in one launch.

Exposes ``soft_ce_forward`` with the primitive signature of docs/DESIGN.md. Layout: each program
owns ``ROWS`` rows (many for small C, one for large C) and walks the classes in chunks of
``BLOCK_C``:

* pass 1: online max / sum-of-exp (fp32), plus the target sums needed for the loss, so a row of
  any width (C = 32000) needs no huge block;
* pass 2 (only when a gradient is requested): re-reads the logits once and writes the gradient.

When the whole row fits in one chunk (``SINGLE``) the row stays in registers and the logits are
read exactly once. Masked lanes are filled with a large finite negative rather than -inf, so no
inf - inf = NaN appears in padding.

Loss accuracy: logits are shifted by the row's first element ``r`` before they are summed, so the
loss is computed as ``(lse - r) - sum t'(z - r)`` without the catastrophic cancellation of
``lse - sum t' z`` for large logits. The running max starts at the most negative finite value
(not at ``r``), so a row whose first class is -inf and whose others are all below about -88
still gets a finite loss; padding lanes never enter the sum of exponentials.

The launcher validates nothing (the public op did, once) and reads no host value, so it can run
inside ``torch.library.triton_op``. Class indices outside [0, C) never address memory: their
rows get a NaN loss and gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mplfast.kernels._launch import launch
from mplfast.kernels._rowwise import NEG, aligned, load_chunk, row_config, row_shift, vec_width

__all__ = ["soft_ce_forward"]

_MAX_SINGLE = 8192  # widest row kept entirely in registers (one read of the logits)


@triton.jit
def _smoothed(t, eps, eps_c, msk):
    """t' = (1 - eps) t + eps / C on the valid lanes, 0 on padding."""
    return tl.where(msk, (1.0 - eps) * t + eps_c, 0.0)


@triton.jit
def _soft_ce_kernel(
    z_ptr, z_stride,  # logits [N, C], unit column stride
    t_ptr, t_stride,  # int64 [N] (stride unused) or float [N, C] targets
    loss_ptr,  # fp32 [N]
    g_ptr, g_stride,  # gradient [N, C] in the logits' dtype
    N, C, eps, grad_scale,
    SOFT: tl.constexpr, GRAD: tl.constexpr, SINGLE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, VEC: tl.constexpr,
):
    # VEC divides C and every row stride (checked on the host): lets masked loads vectorize.
    C = aligned(C, VEC)
    z_stride = aligned(z_stride, VEC)
    g_stride = aligned(g_stride, VEC)
    if SOFT:
        t_stride = aligned(t_stride, VEC)
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    rows64 = rows.to(tl.int64)  # N * C can exceed 2**31
    cols = tl.arange(0, BLOCK_C)
    z_row = z_ptr + rows64 * z_stride
    eps_c = eps / C

    # Reference value per row (its first logit): all sums are taken of z - r.
    r = row_shift(z_row, rmask)
    if not SOFT:
        y = tl.load(t_ptr + rows64, mask=rmask, other=0)
        valid = (y >= 0) & (y < C)
        # Invalid labels never address memory: the gather reads column 0 instead, masked off.
        y_safe = tl.where(valid, y, 0)
        zy = tl.load(z_row + y_safe, mask=rmask & valid, other=0.0).to(tl.float32)

    if SINGLE:
        msk = rmask[:, None] & (cols < C)[None, :]
        x = load_chunk(z_row, cols, msk)
        m = tl.max(x, axis=1)
        # where: a padding lane (NEG) must add nothing even when the row's max is NEG (all -inf)
        e = tl.where(msk, tl.exp(x - m[:, None]), 0.0)
        s = tl.sum(e, axis=1)
        s = tl.where(rmask, s, 1.0)  # padding rows: avoid log(0)
        d = tl.where(msk, x - r[:, None], 0.0)
        B = tl.sum(d, axis=1)
        if SOFT:
            t = tl.load(t_ptr + rows64[:, None] * t_stride + cols[None, :], mask=msk, other=0.0).to(tl.float32)
            T = tl.sum(t, axis=1)
            A = tl.sum(_smoothed(t, eps, eps_c, msk) * d, axis=1)
    else:
        # Start at the most negative finite value, not at r: r is 0 when class 0 is -inf, and a
        # max that never drops below 0 underflows every exp of a row below about -88.
        m = tl.full([ROWS], NEG, dtype=tl.float32)
        s = tl.zeros([ROWS], dtype=tl.float32)
        B = tl.zeros([ROWS], dtype=tl.float32)
        T = tl.zeros([ROWS], dtype=tl.float32)
        A = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(0, C, BLOCK_C):
            c = start + cols
            msk = rmask[:, None] & (c < C)[None, :]
            x = load_chunk(z_row, c, msk)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.where(msk, tl.exp(x - m_new[:, None]), 0.0), axis=1)
            m = m_new
            d = tl.where(msk, x - r[:, None], 0.0)
            B += tl.sum(d, axis=1)
            if SOFT:
                t = tl.load(t_ptr + rows64[:, None] * t_stride + c[None, :], mask=msk, other=0.0).to(tl.float32)
                T += tl.sum(t, axis=1)
                A += tl.sum(_smoothed(t, eps, eps_c, msk) * d, axis=1)
        s = tl.where(rmask, s, 1.0)

    log_s = tl.log(s)
    lse_r = (m - r) + log_s  # logsumexp(z) - r
    if SOFT:
        # t' = (1 - eps) t + eps / C:  sum t' = (1-eps) T + eps;  A = sum t'(z - r), summed per
        # class as the reference does, so a class with t = 0 at a -inf logit gives NaN without
        # smoothing (0 * -inf) and +inf with it, exactly like F.cross_entropy
        Tp = (1.0 - eps) * T + eps
        loss = Tp * lse_r - A
    else:
        loss = lse_r - (1.0 - eps) * (zy - r) - tl.where(eps_c != 0.0, eps_c * B, 0.0)
        loss = tl.where(valid, loss, float("nan"))
    tl.store(loss_ptr + rows64, loss, mask=rmask)

    if GRAD:
        g_row = g_ptr + rows64 * g_stride
        if SINGLE:
            p = e / s[:, None]
            if SOFT:
                g = Tp[:, None] * p - ((1.0 - eps) * t + eps_c)
            else:
                hit = cols[None, :] == y_safe[:, None]
                g = p - eps_c - tl.where(hit, 1.0 - eps, 0.0)
                g = tl.where(valid[:, None], g, float("nan"))
            g = g * grad_scale
            tl.store(g_row[:, None] + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=msk)
        else:
            for start in range(0, C, BLOCK_C):
                c = start + cols
                msk = rmask[:, None] & (c < C)[None, :]
                x = load_chunk(z_row, c, msk)
                # (x - m) first: exact for x near the max, then the (small) log-sum.
                p = tl.exp((x - m[:, None]) - log_s[:, None])
                if SOFT:
                    t = tl.load(t_ptr + rows64[:, None] * t_stride + c[None, :], mask=msk, other=0.0).to(tl.float32)
                    g = Tp[:, None] * p - ((1.0 - eps) * t + eps_c)
                else:
                    hit = c[None, :] == y_safe[:, None]
                    g = p - eps_c - tl.where(hit, 1.0 - eps, 0.0)
                    g = tl.where(valid[:, None], g, float("nan"))
                g = g * grad_scale
                tl.store(g_row[:, None] + c[None, :], g.to(g_ptr.dtype.element_ty), mask=msk)


def soft_ce_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float,
    grad_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Primitive of docs/DESIGN.md: per-row loss fp32 [N] and grad_scale * dloss/dlogits [N, C].

    logits: [N, C] fp32 | fp16 | bf16; target: int64 [N] or float [N, C] (any float dtype), on
    the logits' device; inputs as the public op validated them. A class index outside [0, C)
    gives that row a NaN loss and gradient (the public op checks indices on the host first,
    on CPU always, on CUDA under MPLFAST_DEBUG=1).
    """
    assert logits.dim() == 2, "soft_ce_forward: logits must be [N, C]"
    n, c = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    soft = target.dtype != torch.int64
    if soft:
        if target.stride(1) != 1:
            target = target.contiguous()
        t_stride = target.stride(0)
    else:
        t_stride = 1
        if target.stride(0) != 1:
            target = target.contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    grad = torch.empty((n, c), dtype=logits.dtype, device=logits.device) if grad_scale is not None else None
    if n == 0:
        return loss, grad
    # soft targets double the registers: half the widest row kept in them
    single, rows, block_c, num_warps = row_config(n, c, _MAX_SINGLE // 2 if soft else _MAX_SINGLE)
    g_arg = grad if grad is not None else loss  # dummy pointer when no gradient is written
    g_stride = grad.stride(0) if grad is not None else 0
    vec = vec_width(c, logits.stride(0), t_stride if soft else 0, g_stride)
    launch(
        _soft_ce_kernel, (triton.cdiv(n, rows),), logits.device,
        logits, logits.stride(0), target, t_stride, loss, g_arg, g_stride,
        n, c, float(label_smoothing), float(grad_scale if grad_scale is not None else 1.0),
        SOFT=soft, GRAD=grad is not None, SINGLE=single, ROWS=rows, BLOCK_C=block_c, VEC=vec,
        num_warps=num_warps, fp_fusion=True,
        # ptxas otherwise limits itself to 64 registers here and spills (C = 32003 bf16 with a
        # gradient, Triton 3.9); 128 is the row kernels' budget (benchmarks/triton_sm90.py)
        maxnreg=128,
    )
    return loss, grad
