"""The native (``mplfast._C``) multi-tensor dot products.

Signatures of ``mplfast.ops.contract``; the lists were checked there (equal lengths, i-th tensors
of one shape, dtype and device, float dtypes), so this only gathers what the kernel reads: one
data pointer per tensor, the element counts and dtype codes per index. Non-contiguous tensors are
copied (the copies live until the call returns). Kernels run on torch's current stream.
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
from torch import Tensor

from mplfast import _native

__all__ = ["grad_dot", "grad_dot_delta", "cached_call", "remember"]

_CODES = _native.DTYPE_CODES


_ptr = Tensor.data_ptr
_numel = Tensor.numel
_dtype = operator.attrgetter("dtype")


class _Plan:
    """What a CPU call over one tuple of lists needs, kept for the next call with the same lists.

    MPLStep passes the same parameter and snapshot lists every step. ``run`` re-reads, per
    tensor, only what could have changed in place and would make the kept table wrong: the
    tensor objects in the list (by identity), their data pointers (``p.data = ...``, ``set_``,
    ``.to()`` swap the storage), element counts (``resize_``) and dtypes (a storage reinterpreted
    as another dtype). Anything else differing means a miss: the caller takes the checked path,
    which rebuilds the plan. Only all-contiguous lists get one; an in-place transpose of a listed
    tensor (``t_()``, same pointer and size) is the one change it does not see.
    """

    __slots__ = ("lists", "tensors", "ptrs", "sizes", "dtypes", "codes", "delta")

    def __init__(self, lists: tuple[list[Tensor], ...]) -> None:
        self.lists = lists
        self.tensors = tuple(tuple(lst) for lst in lists)
        self.ptrs = [list(map(_ptr, lst)) for lst in lists]
        self.sizes = [list(map(_numel, lst)) for lst in lists]
        self.dtypes = [list(map(_dtype, lst)) for lst in lists]
        self.codes = [_CODES[d] for d in self.dtypes[0]]
        self.delta = len(lists) == 3

    def run(self, seqs: tuple) -> Tensor | None:
        """The result, or None when the lists changed since the plan was made."""
        for seq, lst, tensors, ptrs, sizes, dtypes in zip(seqs, self.lists, self.tensors, self.ptrs,
                                                           self.sizes, self.dtypes):
            if (seq is not lst or len(lst) != len(tensors) or not all(map(operator.is_, lst, tensors))
                    or list(map(_ptr, lst)) != ptrs or list(map(_numel, lst)) != sizes
                    or list(map(_dtype, lst)) != dtypes):
                return None
        p = self.ptrs
        value = _LIB.grad_dot_cpu(p[0], p[1], p[2] if self.delta else [], self.sizes[0], self.codes,
                                  torch.get_num_threads())
        return torch.scalar_tensor(value, dtype=torch.float32)  # ~1 us cheaper than torch.tensor


_PLANS: dict[tuple[int, ...], _Plan] = {}  # by the lists' ids; the plan holds the lists
_PLANS_SIZE = 8
_LIB: Any = None


def cached_call(seqs: tuple) -> Tensor | None:
    """An eager CPU call over the same list objects as a recent ``grad_dot`` /
    ``grad_dot_delta`` call (``remember``), run from its plan; None when there is none or the
    lists changed (then the caller takes the checked path)."""
    plan = _PLANS.get(tuple(map(id, seqs)))
    return None if plan is None else plan.run(seqs)


def remember(seqs: tuple, lists: list[list[Tensor]]) -> None:
    """Keep a plan for these lists (checked by the contract, on CPU) when they are Python lists
    (the objects a later call can be recognised by) of contiguous tensors."""
    global _LIB
    if not all(seq is lst for seq, lst in zip(seqs, lists)):
        return  # tuples, generators: a new object every call
    if not all([t.is_contiguous() for lst in lists for t in lst]):
        return
    if _LIB is None:
        _LIB = _native.lib("grad_dot", "cpu")
    if len(_PLANS) >= _PLANS_SIZE:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[tuple(map(id, seqs))] = _Plan(tuple(lists))


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
    ptrs = [_pointers(lst, keep) for lst in lists]
    # the i-th tensors of every list share shape and dtype (contract)
    sizes, codes = list(map(_numel, x0)), [_CODES[t.dtype] for t in x0]
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
