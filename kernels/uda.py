"""Triton fused UDA consistency loss: sharpened teacher probabilities, confidence mask,
cross-entropy against the strong logits and its gradient, in one launch.

Exposes ``uda_forward`` with the primitive signature of docs/DESIGN.md. Per row (``ROWS`` rows a
program, classes in chunks of ``BLOCK_C``):

* pass 1 keeps two online softmax states, for w = weak / tau and for the strong logits s, and
  A = sum_c exp(w_c - m_w) (s_c - r), rescaled whenever m_w grows. Then
  max q = 1 / sum_w (the max entry is exp(0) / sum), and
  CE = -sum q log_softmax(s) = (lse_s - r) - A / sum_w   (sum q = 1; r = s_0 avoids cancellation);
* pass 2 (gradient requested) re-reads both rows and writes m * scale * (softmax(s) - q). Rows the
  mask drops read nothing and get zeros.

When a row fits in one chunk (``SINGLE``) both rows stay in registers and are read once.

Edge rows: both running maxima start at the most negative finite value, and padding lanes never
enter a sum of exponentials. A row the mask drops gets a gradient of exactly 0 (``where``, not a
multiply by 0, which would keep an inf or NaN of that row); a weak row that is all -inf has no
sharpened distribution and is dropped, as the reference drops its NaN row.

The launcher validates nothing (the public op did, once) and reads no host value, so it can run
inside ``torch.library.triton_op``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mplfast.kernels._launch import launch
from mplfast.kernels._rowwise import NEG, aligned, load_chunk, row_config, row_shift, vec_width

__all__ = ["uda_forward"]

_MAX_SINGLE = 4096  # two rows in registers


@triton.jit
def _uda_kernel(
    w_ptr, w_stride,  # weak logits [N, C]
    s_ptr, s_stride,  # strong logits [N, C]
    loss_ptr, mask_ptr,  # fp32 [N] each
    g_ptr, g_stride,  # gradient [N, C], strong dtype
    N, C, inv_tau, threshold, grad_scale,
    GRAD: tl.constexpr, SINGLE: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    VEC: tl.constexpr,
):
    # VEC divides C and every row stride (checked on the host): lets masked loads vectorize.
    C = aligned(C, VEC)
    w_stride = aligned(w_stride, VEC)
    s_stride = aligned(s_stride, VEC)
    g_stride = aligned(g_stride, VEC)
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    w_row = w_ptr + rows64 * w_stride
    s_row = s_ptr + rows64 * s_stride

    r = row_shift(s_row, rmask)
    if SINGLE:
        msk = rmask[:, None] & (cols < C)[None, :]
        w = tl.load(w_row[:, None] + cols[None, :], mask=msk, other=0.0).to(tl.float32) * inv_tau
        w = tl.where(msk, w, NEG)
        x = load_chunk(s_row, cols, msk)
        mw = tl.max(w, axis=1)
        ew = tl.where(msk, tl.exp(w - mw[:, None]), 0.0)
        sw = tl.sum(ew, axis=1)
        ms = tl.max(x, axis=1)
        es = tl.where(msk, tl.exp(x - ms[:, None]), 0.0)
        ss = tl.sum(es, axis=1)
        A = tl.sum(ew * tl.where(msk, x - r[:, None], 0.0), axis=1)
    else:
        mw = tl.full([ROWS], NEG, dtype=tl.float32)
        sw = tl.zeros([ROWS], dtype=tl.float32)
        # not r: r is 0 when class 0 is -inf, and a max stuck at 0 underflows rows below -88
        ms = tl.full([ROWS], NEG, dtype=tl.float32)
        ss = tl.zeros([ROWS], dtype=tl.float32)
        A = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(0, C, BLOCK_C):
            c = start + cols
            msk = rmask[:, None] & (c < C)[None, :]
            w = tl.load(w_row[:, None] + c[None, :], mask=msk, other=0.0).to(tl.float32) * inv_tau
            w = tl.where(msk, w, NEG)
            x = load_chunk(s_row, c, msk)
            mw_new = tl.maximum(mw, tl.max(w, axis=1))
            alpha = tl.exp(mw - mw_new)
            ew = tl.where(msk, tl.exp(w - mw_new[:, None]), 0.0)
            sw = sw * alpha + tl.sum(ew, axis=1)
            A = A * alpha + tl.sum(ew * tl.where(msk, x - r[:, None], 0.0), axis=1)
            mw = mw_new
            ms_new = tl.maximum(ms, tl.max(x, axis=1))
            ss = ss * tl.exp(ms - ms_new) + tl.sum(tl.where(msk, tl.exp(x - ms_new[:, None]), 0.0), axis=1)
            ms = ms_new
    sw = tl.where(rmask, sw, 1.0)  # padding rows: no division by zero / log(0)
    ss = tl.where(rmask, ss, 1.0)

    # max_c q = exp(0) / sum_w. sw == 0: an all -inf weak row (no distribution), dropped like the
    # reference's NaN row; a NaN sw fails the comparison and is dropped too.
    keep = (sw > 0.0) & ((1.0 / sw) >= threshold)
    log_ss = tl.log(ss)
    ce = (ms - r) + log_ss - A / sw
    tl.store(loss_ptr + rows64, tl.where(keep, ce, 0.0), mask=rmask)
    tl.store(mask_ptr + rows64, tl.where(keep, 1.0, 0.0), mask=rmask)

    if GRAD:
        g_row = g_ptr + rows64 * g_stride
        if SINGLE:
            g = tl.where(keep[:, None], (es / ss[:, None] - ew / sw[:, None]) * grad_scale, 0.0)
            tl.store(g_row[:, None] + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=msk)
        else:
            log_sw = tl.log(sw)
            for start in range(0, C, BLOCK_C):
                c = start + cols
                msk = rmask[:, None] & (c < C)[None, :]
                lmsk = msk & keep[:, None]  # dropped rows: read nothing, write zeros
                w = tl.load(w_row[:, None] + c[None, :], mask=lmsk, other=0.0).to(tl.float32) * inv_tau
                x = tl.load(s_row[:, None] + c[None, :], mask=lmsk, other=0.0).to(tl.float32)
                p = tl.exp((x - ms[:, None]) - log_ss[:, None])
                q = tl.exp((w - mw[:, None]) - log_sw[:, None])
                # where, not (p - q) * 0: the zeros loaded for a dropped row can make p inf
                g = tl.where(keep[:, None], (p - q) * grad_scale, 0.0)
                tl.store(g_row[:, None] + c[None, :], g.to(g_ptr.dtype.element_ty), mask=msk)


def uda_forward(
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    temperature: float,
    threshold: float,
    grad_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Primitive of docs/DESIGN.md: (loss fp32 [N], mask fp32 [N], grad [N, C] strong dtype | None).

    logits_weak, logits_strong: [N, C], same shape and dtype (fp32 | fp16 | bf16), as the public
    op validated them; math in fp32.
    """
    assert logits_strong.dim() == 2 and logits_weak.shape == logits_strong.shape
    weak = logits_weak if logits_weak.stride(1) == 1 else logits_weak.contiguous()
    strong = logits_strong if logits_strong.stride(1) == 1 else logits_strong.contiguous()
    n, c = strong.shape
    dev = strong.device
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    mask = torch.empty(n, dtype=torch.float32, device=dev)
    grad = torch.empty((n, c), dtype=strong.dtype, device=dev) if grad_scale is not None else None
    if n == 0:
        return loss, mask, grad
    single, rows, block_c, num_warps = row_config(n, c, _MAX_SINGLE)
    g_arg = grad if grad is not None else loss  # dummy pointer when no gradient is written
    g_stride = grad.stride(0) if grad is not None else 0
    vec = vec_width(c, weak.stride(0), strong.stride(0), g_stride)
    launch(
        _uda_kernel, (triton.cdiv(n, rows),), dev,
        weak, weak.stride(0), strong, strong.stride(0), loss, mask, g_arg, g_stride,
        n, c, 1.0 / float(temperature), float(threshold),
        float(grad_scale if grad_scale is not None else 1.0),
        GRAD=grad is not None, SINGLE=single, ROWS=rows, BLOCK_C=block_c, VEC=vec,
        num_warps=num_warps, fp_fusion=True,
    )
    return loss, mask, grad
