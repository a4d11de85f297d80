"""Triton multi-tensor dot products: sum_i <x_i, y_i> and sum_i <g_i, new_i - old_i>.

Exposes ``grad_dot`` and ``grad_dot_delta`` with the primitive signatures of docs/DESIGN.md.

In the style of apex's ``multi_tensor_apply``: the tensor lists are cut into chunks of at most
``_CHUNK`` elements and described by a table (one int64 row per chunk: the chunk's start address
in each list, and its element count). One launch per dtype group (split by whether all addresses
are 16-byte aligned, which enables vector loads; and per ``_TABLE_CAPACITY`` chunks, so a table
never grows without bound) runs one program per chunk; each program writes
one fp32 partial. The partials are summed in fp64 by torch in table order, so the result is
deterministic (no atomics) and independent of scheduling.

The table holds raw addresses, so it is cached by (addresses, sizes): the same parameter and
gradient buffers every step reuse one device-side table and skip the host-to-device copy. For
the same reason this launcher cannot be traced by torch.compile: register it as an opaque custom
op. It validates nothing (the public op did, once).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Sequence

import torch
import triton
import triton.language as tl

from mplfast.kernels._launch import launch

__all__ = ["grad_dot", "grad_dot_delta"]

# Elements per table row (one program). Small enough that a ResNet-50 (25.5 M parameters) gives
# ~1,700 programs, enough to keep 132 SMs' memory pipes busy; large enough that the table stays small.
_CHUNK = 16384
# elements per inner-loop step; the interpreter pays per op, not per element, so it takes more
_BLOCK = 8192 if os.environ.get("TRITON_INTERPRET") == "1" else 1024
_TABLE_CAPACITY = 4096  # chunks per launch
_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_TABLE_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_TABLE_CACHE_SIZE = 16


@triton.jit
def _as_ptr(addr, KIND: tl.constexpr, ALIGNED: tl.constexpr):
    if KIND == 0:
        p = addr.to(tl.pointer_type(tl.float32))
    elif KIND == 1:
        p = addr.to(tl.pointer_type(tl.float16))
    else:
        p = addr.to(tl.pointer_type(tl.bfloat16))
    if ALIGNED:
        # A pointer loaded from memory has unknown alignment, so Triton would emit scalar loads;
        # the host launches this variant only when every address is 16-byte aligned, which lets
        # the unmasked main loop use 16-byte vector loads.
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _multi_dot_kernel(
    table_ptr,  # int64 [n_chunks, NCOL]: addresses of the chunk in each list, then numel
    partial_ptr,  # fp32 [n_chunks]
    NCOL: tl.constexpr, DELTA: tl.constexpr,
    KA: tl.constexpr, KB: tl.constexpr, KC: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = table_ptr + pid.to(tl.int64) * NCOL
    a = _as_ptr(tl.load(row), KA, ALIGNED)
    b = _as_ptr(tl.load(row + 1), KB, ALIGNED)
    if DELTA:
        c = _as_ptr(tl.load(row + 2), KC, ALIGNED)
    numel = tl.load(row + NCOL - 1).to(tl.int32)  # <= _CHUNK
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    # Full blocks without a mask (vectorizable), then one masked tail block.
    full = (numel // BLOCK) * BLOCK
    for start in range(0, full, BLOCK):
        o = start + offs
        va = tl.load(a + o).to(tl.float32)
        vb = tl.load(b + o).to(tl.float32)
        if DELTA:
            vc = tl.load(c + o).to(tl.float32)
            acc += va * (vb - vc)
        else:
            acc += va * vb
    o = full + offs
    msk = o < numel
    va = tl.load(a + o, mask=msk, other=0.0).to(tl.float32)
    vb = tl.load(b + o, mask=msk, other=0.0).to(tl.float32)
    if DELTA:
        vc = tl.load(c + o, mask=msk, other=0.0).to(tl.float32)
        acc += va * (vb - vc)
    else:
        acc += va * vb
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


def _table(tensors: list[tuple[torch.Tensor, ...]], device: torch.device) -> torch.Tensor:
    """Device int64 table [n_chunks, k + 1] for same-shaped flat tensors (cached by address)."""
    # Everything the table holds is derived from (address, element size, numel): equal keys give
    # equal tables even if the memory now belongs to other tensors.
    key = (device, _CHUNK, tuple((tuple((t.data_ptr(), t.element_size()) for t in group), group[0].numel())
                                 for group in tensors))
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    rows: list[list[int]] = []
    for group in tensors:
        numel = group[0].numel()
        sizes = [t.element_size() for t in group]
        ptrs = [t.data_ptr() for t in group]
        for off in range(0, numel, _CHUNK):
            rows.append([p + off * s for p, s in zip(ptrs, sizes)] + [min(_CHUNK, numel - off)])
    table = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda":
        table = table.pin_memory().to(device, non_blocking=True)
    _TABLE_CACHE[key] = table
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return table


def _run(lists: Sequence[Sequence[torch.Tensor]], delta: bool) -> torch.Tensor:
    # inputs as the public op validated them: equal lengths, shapes and dtypes, one device
    n = len(lists[0])
    device = lists[0][0].device if n else torch.device("cpu")
    # Group by dtype combination: the table rows of one launch share element types.
    groups: dict[tuple[torch.dtype, ...], list[tuple[torch.Tensor, ...]]] = {}
    keep_alive = []  # contiguous copies must outlive the launches that read them
    for i in range(n):
        ts = tuple(lst[i] for lst in lists)
        if ts[0].numel() == 0:
            continue
        ts = tuple(t if t.is_contiguous() else t.contiguous() for t in ts)
        keep_alive.append(ts)
        # chunk starts are base + k * _CHUNK elements, so 16-byte aligned iff the bases are
        aligned = all(t.data_ptr() % 16 == 0 for t in ts)
        groups.setdefault((tuple(t.dtype for t in ts), aligned), []).append(ts)
    partials: list[torch.Tensor] = []
    for (dtypes, aligned), group in groups.items():  # insertion order: deterministic
        table = _table(group, device)
        kinds = [_KIND[d] for d in dtypes] + [0]
        for lo in range(0, table.shape[0], _TABLE_CAPACITY):
            sub = table[lo:lo + _TABLE_CAPACITY]
            part = torch.empty(sub.shape[0], dtype=torch.float32, device=device)
            launch(_multi_dot_kernel, (sub.shape[0],), device, sub, part, NCOL=sub.shape[1], DELTA=delta,
                   KA=kinds[0], KB=kinds[1], KC=kinds[2], ALIGNED=aligned, BLOCK=_BLOCK, num_warps=4,
                   fp_fusion=True)
            partials.append(part)
    if not partials:
        return torch.zeros((), dtype=torch.float32, device=device)
    out = torch.cat(partials).to(torch.float64).sum().to(torch.float32)
    del keep_alive
    return out


def grad_dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <x_i, y_i>: 0-dim fp32; x_i, y_i same shape (empty allowed), fp32/fp16/bf16."""
    return _run([xs, ys], delta=False)


def grad_dot_delta(grads: Sequence[torch.Tensor], new: Sequence[torch.Tensor],
                   old: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <g_i, new_i - old_i> without materialising the difference: 0-dim fp32."""
    return _run([grads, new, old], delta=True)
