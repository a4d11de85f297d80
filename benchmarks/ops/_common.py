"""Helpers shared by the op benchmarks (imported as ``from _common import ...``: pytest puts this
directory on sys.path)."""
from __future__ import annotations

import torch

from mplfast import _native


def native_status(device_type: str) -> bool | str:
    return _native.status()[device_type]


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def cuda_timed(benchmark, ratios, fn, *args, nbytes: int, group: str, name: str) -> None:
    """Time ``fn(*args)`` on CUDA (synchronised per call) and record GB/s for ``nbytes``."""
    def run():
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    run()  # warm-up (allocator, first launch)
    benchmark.pedantic(run, rounds=20, iterations=5, warmup_rounds=2)
    gbps = nbytes / benchmark.stats.stats.min / 1e9
    benchmark.extra_info["GB/s"] = round(gbps, 1)
    ratios.record(benchmark, group, name, note=f"{gbps:.0f} GB/s")


def backward_extra_bytes(grad_numel: int, element_size: int) -> int:
    """Bytes the fused losses' backward moves on CUDA for ``loss.backward()``: none when
    ``_C.scale_inplace_cuda`` is there (it returns at once for a gradient of 1), else an in-place
    ``mul_`` that reads and writes the saved gradient."""
    return 0 if _native.has("scale_inplace_cuda") else 2 * grad_numel * element_size
