"""The native (``mplfast._C``) multi-tensor dot products.

Signatures of ``mplfast.ops.contract``; the lists were checked there (equal lengths, i-th tensors
of one shape, dtype and device, float dtypes), so this only gathers what the kernel reads: one
data pointer per tensor, the element counts and dtype codes per index. Non-contiguous tensors are
copied (the copies live until the call returns). Kernels run on torch's current stream.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import Tensor

from mplfast import _native

__all__ = ["grad_dot", "grad_dot_delta"]

_CODES = _native.DTYPE_CODES


# Per-list cache of what the kernel needs besides the pointers (element counts, dtype codes,
# contiguity), keyed by the list object: MPLStep passes the same parameter and snapshot lists
# every step. A hit needs the same list object holding the same tensor objects with the same
# data pointers and element counts, so swapped storage (``p.data = ...``, ``.to()``, ``set_``)
# and in-place resizes miss the cache; what a hit skips is reading each tensor's dtype and
# contiguity again (a listed tensor re-viewed in place as another dtype or layout at the same
# address and size is the one change it does not see). Bounded: a handful of lists.
_CACHE: dict[int, tuple[list, tuple, list[int], list[int], list[int], bool]] = {}
_CACHE_SIZE = 8


def _describe(lst: Sequence[Tensor]) -> tuple[list[int], list[int], list[int], bool]:
    """(pointers, element counts, dtype codes, all contiguous) of one list."""
    ptrs = [t.data_ptr() for t in lst]
    sizes = [t.numel() for t in lst]
    if not isinstance(lst, list):
        return ptrs, sizes, [_CODES[t.dtype] for t in lst], all([t.is_contiguous() for t in lst])
    hit = _CACHE.get(id(lst))
    if (hit is not None and hit[0] is lst and len(hit[1]) == len(lst) and all(map(operator.is_, lst, hit[1]))
            and hit[2] == ptrs and hit[3] == sizes):
        return ptrs, sizes, hit[4], hit[5]
    codes = [_CODES[t.dtype] for t in lst]
    contiguous = all([t.is_contiguous() for t in lst])
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(lst)] = (lst, tuple(lst), ptrs, sizes, codes, contiguous)
    return ptrs, sizes, codes, contiguous


def _pointers(lst: Sequence[Tensor], keep: list[Tensor]) -> list[int]:
    """Data pointers, with contiguous copies of the non-contiguous tensors (kept in ``keep``:
    they must outlive the possibly asynchronous call)."""
    out = []
    for t in lst:
        if not t.is_contiguous():
            t = t.contiguous()
            keep.append(t)
        out.append(t.data_ptr())
    return out


def _multi_dot(op: str, lists: tuple[Sequence[Tensor], ...]) -> Tensor:
    """lists[0] . (lists[1] [- lists[2]]) as a 0-dim float32 tensor."""
    x0 = lists[0]
    if len(x0) == 0:
        return torch.zeros((), dtype=torch.float32)
    device = x0[0].device
    lib = _native.lib(op, device.type)
    keep: list[Tensor] = []
    ptrs = []
    for k, lst in enumerate(lists):
        p, s, c, contiguous = _describe(lst)
        if k == 0:
            sizes, codes = s, c  # the i-th tensors of every list share shape and dtype (contract)
        ptrs.append(p if contiguous else _pointers(lst, keep))
    zs = ptrs[2] if len(ptrs) == 3 else []
    if device.type == "cpu":
        value = lib.grad_dot_cpu(ptrs[0], ptrs[1], zs, sizes, codes, torch.get_num_threads())
        return torch.scalar_tensor(value, dtype=torch.float32)  # ~3 us cheaper than torch.tensor
    index, stream = _native.stream(device)
    ws_len = lib.grad_dot_cuda_workspace(sizes)
    workspace = torch.empty(ws_len, dtype=torch.float64, device=device)
    out = torch.empty((), dtype=torch.float32, device=device)
    with torch.cuda.device(device):
        lib.grad_dot_cuda(ptrs[0], ptrs[1], zs, sizes, codes, workspace.data_ptr(), ws_len, out.data_ptr(),
                          index, stream)
    # Contiguous copies in `keep` are freed on the current stream after this returns; the
    # caching allocator only reuses them for work queued behind the kernel.
    del keep
    return out


def grad_dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """sum_i <x_i, y_i> as a 0-dim float32 tensor on the inputs' device.

    x_i and y_i: same shape and dtype (float32 | float16 | bfloat16; float64 on CPU); dtypes may
    differ between pairs; empty tensors allowed; an empty list gives 0 on CPU. fp64 accumulation
    over fixed chunks in a fixed order: bitwise reproducible.
    """
    return _multi_dot("grad_dot", (xs, ys))


def grad_dot_delta(grads: Sequence[Tensor], new: Sequence[Tensor], old: Sequence[Tensor]) -> Tensor:
    """sum_i <g_i, new_i - old_i> as a 0-dim float32 tensor, never materialising the difference."""
    return _multi_dot("grad_dot_delta", (grads, new, old))
