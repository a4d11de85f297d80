"""The native (``mplfast._C``) multi-tensor dot products.

Signatures of ``mplfast.ops.contract``; the lists were checked there (equal lengths, i-th tensors
of one shape, dtype and device, float dtypes), so this only gathers what the kernel reads: one
data pointer per tensor, the element counts and dtype codes per index. Non-contiguous tensors are
copied (the copies live until the call returns). Kernels run on torch's current stream.
"""
from __future__ import annotations

import operator
import weakref
from typing import Any, Sequence

import torch
from torch import Tensor

from mplfast import _native

__all__ = ["grad_dot", "grad_dot_delta", "cached_call", "checked_cpu_call", "forget_plans"]

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
    as another dtype). Anything else differing means a miss: the caller takes the checked path.
    Only all-contiguous lists get one; an in-place transpose of a listed tensor (``t_()``, same
    pointer and size) is the one change it does not see. The tensors are held by weak
    references and the lists not at all, so a plan keeps no gradient alive; a new list at a
    dead one's address holding the same live tensors is the same call.
    """

    __slots__ = ("lib", "refs", "ptrs", "sizes", "dtypes", "codes")

    def __init__(self, lib: Any, lists: list[list[Tensor]], ptrs: list[list[int]]) -> None:
        self.lib = lib
        self.refs = [[weakref.ref(t) for t in lst] for lst in lists]
        self.ptrs = ptrs
        self.sizes = [list(map(_numel, lst)) for lst in lists]
        self.dtypes = [list(map(_dtype, lst)) for lst in lists]
        self.codes = [_CODES[d] for d in self.dtypes[0]]

    def run(self, seqs: tuple) -> Tensor | None:
        """The result, or None when the lists changed since the plan was made."""
        for lst, refs, ptrs, sizes, dtypes in zip(seqs, self.refs, self.ptrs, self.sizes, self.dtypes):
            if (type(lst) is not list or len(lst) != len(refs)
                    or not all(map(operator.is_, lst, [r() for r in refs]))
                    or list(map(_ptr, lst)) != ptrs or list(map(_numel, lst)) != sizes
                    or list(map(_dtype, lst)) != dtypes):
                return None
        return _scalar(_kernel(self.lib, self.ptrs, self.sizes[0], self.codes))


# Plans by the lists' ids, made the second time the same ids come through the checked path (a
# list built anew for every call never gets one, nor costs the making of one). Both bounded,
# oldest out first.
_PLANS: dict[tuple[int, ...], _Plan] = {}
_SEEN: dict[tuple[int, ...], None] = {}
_PLANS_SIZE = 8


def _put(table: dict, key: tuple[int, ...], value: Any, size: int) -> None:
    if len(table) >= size:
        table.pop(next(iter(table)))
    table[key] = value


def forget_plans() -> None:
    """Drop every plan and every list seen: the next calls take the checked path as for lists
    never seen before (benchmarks time that path with it)."""
    _PLANS.clear()
    _SEEN.clear()


def cached_call(seqs: tuple) -> Tensor | None:
    """An eager CPU call over the same lists as a recent ``grad_dot`` / ``grad_dot_delta`` call,
    run from its plan; None when there is none or the lists changed (then the caller takes the
    checked path, ``checked_cpu_call``)."""
    plan = _PLANS.get(tuple(map(id, seqs)))
    return None if plan is None else plan.run(seqs)


def checked_cpu_call(seqs: tuple, lists: list[list[Tensor]]) -> Tensor:
    """The CPU call for lists the contract has checked; remembers a plan for repeated lists."""
    lib = _native.lib("grad_dot", "cpu")
    value, ptrs, copied = _cpu_dot(lib, lists)
    if not copied and all(seq is lst for seq, lst in zip(seqs, lists)):  # lists, all contiguous
        key = tuple(map(id, seqs))
        if key in _SEEN:
            _put(_PLANS, key, _Plan(lib, lists, ptrs), _PLANS_SIZE)
        else:
            _put(_SEEN, key, None, 2 * _PLANS_SIZE)
    return _scalar(value)


def _pointers(lst: Sequence[Tensor], keep: list[Tensor]) -> list[int]:
    """Data pointers, with contiguous copies of the non-contiguous tensors (kept in ``keep``:
    they must outlive the possibly asynchronous call)."""
    if all(map(Tensor.is_contiguous, lst)):
        return list(map(_ptr, lst))
    out = []
    for t in lst:
        if not t.is_contiguous():
            t = t.contiguous()
            keep.append(t)
        out.append(t.data_ptr())
    return out


def _kernel(lib: Any, ptrs: list[list[int]], sizes: list[int], codes: list[int]) -> float:
    """``_C.grad_dot_cpu`` on 2 (dot) or 3 (delta) pointer lists."""
    return lib.grad_dot_cpu(ptrs[0], ptrs[1], ptrs[2] if len(ptrs) == 3 else [], sizes, codes,
                            torch.get_num_threads())


def _scalar(value: float) -> Tensor:
    return torch.scalar_tensor(value, dtype=torch.float32)  # ~1 us cheaper than torch.tensor


def _cpu_dot(lib: Any, lists: Sequence[Sequence[Tensor]]) -> tuple[float, list[list[int]], bool]:
    """(the CPU kernel's value, the pointer lists it read, whether any tensor was copied)."""
    keep: list[Tensor] = []
    ptrs = [_pointers(lst, keep) for lst in lists]
    x0 = lists[0]  # the i-th tensors of every list share shape and dtype (contract)
    value = _kernel(lib, ptrs, list(map(_numel, x0)), [_CODES[t.dtype] for t in x0])
    return value, ptrs, bool(keep)


def _multi_dot(op: str, lists: tuple[Sequence[Tensor], ...]) -> Tensor:
    """lists[0] . (lists[1] [- lists[2]]) as a 0-dim float32 tensor."""
    x0 = lists[0]
    if len(x0) == 0:
        return torch.zeros((), dtype=torch.float32)
    device = x0[0].device
    lib = _native.lib(op, device.type)
    if device.type == "cpu":
        return _scalar(_cpu_dot(lib, lists)[0])
    keep: list[Tensor] = []
    ptrs = [_pointers(lst, keep) for lst in lists]
    # the i-th tensors of every list share shape and dtype (contract)
    sizes, codes = list(map(_numel, x0)), [_CODES[t.dtype] for t in x0]
    zs = ptrs[2] if len(ptrs) == 3 else []
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
