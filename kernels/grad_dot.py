"""Triton multi-tensor dot products: sum_i <x_i, y_i> and sum_i <g_i, new_i - old_i>.

Exposes ``grad_dot`` and ``grad_dot_delta`` with the primitive signatures of docs/DESIGN.md.

In the style of apex's ``multi_tensor_apply``: the tensor lists are cut into chunks of at most
``_CHUNK`` elements and described by a table (one int64 row per chunk: the chunk's start address
in each list, and its element count). One launch per dtype group (split by whether all addresses
are 16-byte aligned, which enables vector loads; and per ``_TABLE_CAPACITY`` chunks, so a table
never grows without bound) runs one program per chunk; each program writes
one fp32 partial into one preallocated buffer. One small kernel then sums the partials in fp64
in table order and writes the 0-dim result, so the result is deterministic (no atomics) and
independent of scheduling.

Host time matters (this runs every MPL step over every parameter): a call builds one key from
the lists (each tensor's address, and the first list's sizes and dtypes; ~30 us for ResNet-50's
161 x 3 tensors), and on a hit reuses the whole plan: device tables, launch groups, and the
current stream's partials buffer. Then it issues ``groups + 1`` launches and allocates only the
result. The lists themselves are not the key: a caller builds a fresh list of gradients every
step, while the caching allocator hands their memory back at the same addresses. Nor is the
stream: a plan describes tensors; only its scratch (the partials) is per stream. Plans built
during CUDA-graph capture are never reused outside it (``_run``).

The table holds raw addresses, so this launcher cannot be traced by torch.compile: register it
as an opaque custom op. It validates nothing (the public op did, once).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from mplfast.kernels._launch import interpreter_tiles, launch

__all__ = ["grad_dot", "grad_dot_delta"]

# Elements per table row (one program). Small enough that a ResNet-50 (25.5 M parameters) gives
# ~1,700 programs, enough to keep 132 SMs' memory pipes busy; large enough that the table stays small.
_CHUNK = 16384
_GPU_BLOCK = 1024  # elements per inner-loop step on a GPU
_INTERPRETER_BLOCK = 8192  # the interpreter pays per op, not per element, so it takes more
_FINISH_BLOCK = 1024  # partials summed per step of the finishing kernel
_TABLE_CAPACITY = 4096  # chunks per launch
_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_TABLE_CACHE: "OrderedDict[tuple, _Plan]" = OrderedDict()  # eager plans by key
_CAPTURED_PLANS: "list[_Plan]" = []  # plans built during CUDA-graph capture (_run)
_TABLE_CACHE_SIZE = 16
T = torch.Tensor


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
    # numel - numel % BLOCK, not (numel // BLOCK) * BLOCK: the same value, but with the latter
    # ptxas kept a value on the stack in the bf16 variant (8 B of spills, Triton 3.6 and 3.9)
    full = numel - numel % BLOCK
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


@triton.jit
def _finish_kernel(partial_ptr, n, out_ptr, BLOCK: tl.constexpr):
    """out = sum of the n fp32 partials, accumulated in fp64 in a fixed order (one program)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        o = start + offs
        acc += tl.load(partial_ptr + o, mask=o < n, other=0.0).to(tl.float64)
    tl.store(out_ptr, tl.sum(acc, axis=0).to(tl.float32))


class _Launch(NamedTuple):
    table: torch.Tensor  # int64 [rows, k + 1], a slice of one group's table
    at: int  # first row of this launch's partials
    kinds: tuple[int, int, int]
    aligned: bool


class _Plan:
    """What follows from (addresses, sizes, dtypes): the device tables and launch groups, shared
    by every stream (read-only once uploaded). The partials buffer is scratch a launch writes,
    so each stream gets its own (``partials``: stream id -> the buffer and its per-launch
    slices), allocated on that stream: calls on two streams never race on one buffer, and the
    caching allocator knows which stream uses it."""

    __slots__ = ("launches", "n_partials", "tables", "host", "stream", "partials")

    def __init__(self, launches: list[_Launch], n_partials: int, tables: list[torch.Tensor],
                 host: list[torch.Tensor], stream: "torch.cuda.Stream | None") -> None:
        self.launches, self.n_partials, self.tables = launches, n_partials, tables
        self.host = host  # pinned sources of the uploads: a captured copy reads them at every replay
        self.stream = stream  # where the tables were uploaded (CUDA)
        self.partials: dict[int | None, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def scratch(self, device: torch.device, capturing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(partials, one slice per launch) for the current stream."""
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        sid = stream.cuda_stream if stream is not None else None
        hit = self.partials.get(sid)
        if hit is None:
            if stream is not None and not capturing and stream.cuda_stream != self.stream.cuda_stream:
                # first use on another stream: order it after the upload, and keep the tables'
                # memory from being reused while this stream may still read them
                stream.wait_stream(self.stream)
                for t in self.tables:
                    t.record_stream(stream)
            buf = torch.empty(self.n_partials, dtype=torch.float32, device=device)
            hit = self.partials[sid] = (buf, [buf[ln.at:ln.at + ln.table.shape[0]] for ln in self.launches])
        return hit


def _table(group: list[tuple[torch.Tensor, ...]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(device int64 table [n_chunks, k + 1] for same-shaped flat tensors, its host source)."""
    rows: list[list[int]] = []
    for ts in group:
        numel = ts[0].numel()
        sizes = [t.element_size() for t in ts]
        ptrs = [t.data_ptr() for t in ts]
        for off in range(0, numel, _CHUNK):
            rows.append([p + off * s for p, s in zip(ptrs, sizes)] + [min(_CHUNK, numel - off)])
    host = torch.tensor(rows, dtype=torch.int64)
    if device.type != "cuda":
        return host, host
    host = host.pin_memory()
    return host.to(device, non_blocking=True), host


def _plan(lists: Sequence[Sequence[torch.Tensor]], device: torch.device) -> _Plan:
    # Group by dtype and by whether every address is 16-byte aligned (vector loads); chunk
    # starts are base + k * _CHUNK elements, so aligned iff the bases are.
    groups: dict[tuple[torch.dtype, bool], list[tuple[torch.Tensor, ...]]] = {}
    for ts in zip(*lists):
        if ts[0].numel() == 0:
            continue
        aligned = all(t.data_ptr() % 16 == 0 for t in ts)
        groups.setdefault((ts[0].dtype, aligned), []).append(ts)
    tables = [(dt, aligned, *_table(group, device)) for (dt, aligned), group in groups.items()]
    launches: list[_Launch] = []
    at = 0
    for dt, aligned, table, _ in tables:  # insertion order: deterministic
        kind = _KIND[dt]
        for lo in range(0, table.shape[0], _TABLE_CAPACITY):
            sub = table[lo:lo + _TABLE_CAPACITY]
            launches.append(_Launch(sub, at, (kind, kind, kind), aligned))
            at += sub.shape[0]
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    return _Plan(launches, at, [t[2] for t in tables], [t[3] for t in tables], stream)


def _capturing(device: torch.device) -> bool:
    """True while the current stream of ``device`` is being captured into a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _run(lists: Sequence[Sequence[torch.Tensor]], delta: bool) -> torch.Tensor:
    first = lists[0]
    if len(first) == 0:
        return torch.zeros((), dtype=torch.float32)
    device = first[0].device
    contiguous = all(all(map(T.is_contiguous, lst)) for lst in lists)
    capturing = _capturing(device)
    if capturing:
        # A plan built during CUDA-graph capture has tables that only the graph's replays fill
        # (the upload is captured), in the graph's memory pool: it must serve this capture only
        # and live as long as the graph (with the pinned host tables its copies read), so it is
        # neither looked up nor evicted: it is kept for the process's lifetime.
        lists = lists if contiguous else [[t.contiguous() for t in lst] for lst in lists]
        plan = _plan(lists, device)
        _CAPTURED_PLANS.append(plan)
    elif contiguous:
        # Everything a plan holds follows from (addresses, sizes, dtypes): equal keys give equal
        # plans even if the memory now belongs to other tensors. The dtypes of the other lists
        # equal the first's (the public op checks it). Not the stream: the tables are shared
        # by every stream, and the scratch is per stream (_Plan.scratch).
        key = (device, delta, tuple(map(T.numel, first)), tuple(t.dtype for t in first),
               *(tuple(map(T.data_ptr, lst)) for lst in lists))
        plan = _TABLE_CACHE.get(key)
        if plan is None:
            plan = _TABLE_CACHE[key] = _plan(lists, device)
            if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
                _TABLE_CACHE.popitem(last=False)
        else:
            _TABLE_CACHE.move_to_end(key)
    else:
        # copies live only for this call: a plan of theirs is not worth keeping
        lists = [[t.contiguous() for t in lst] for lst in lists]
        plan = _plan(lists, device)
    out = torch.empty((), dtype=torch.float32, device=device)
    if not plan.launches:
        return out.zero_()
    partials, parts = plan.scratch(device, capturing)
    block = _INTERPRETER_BLOCK if interpreter_tiles() else _GPU_BLOCK
    for ln, part in zip(plan.launches, parts):
        launch(_multi_dot_kernel, (ln.table.shape[0],), device, ln.table, part,
               NCOL=ln.table.shape[1], DELTA=delta, KA=ln.kinds[0], KB=ln.kinds[1], KC=ln.kinds[2],
               ALIGNED=ln.aligned, BLOCK=block, num_warps=4, fp_fusion=True)
    launch(_finish_kernel, (1,), device, partials, partials.shape[0], out,
           BLOCK=_FINISH_BLOCK, num_warps=4, fp_fusion=True)
    return out


def grad_dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <x_i, y_i>: 0-dim fp32; x_i, y_i same shape and dtype (empty allowed), fp32/fp16/bf16,
    one device (as the public op validated them)."""
    return _run([xs, ys], delta=False)


def grad_dot_delta(grads: Sequence[torch.Tensor], new: Sequence[torch.Tensor],
                   old: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <g_i, new_i - old_i> without materialising the difference: 0-dim fp32."""
    return _run([grads, new, old], delta=True)
