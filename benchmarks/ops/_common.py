"""Helpers shared by the op benchmarks (imported as ``from _common import ...``: pytest puts this
directory on sys.path)."""
from __future__ import annotations

import statistics
import time

import torch

from mplfast import _native


def native_status(device_type: str) -> bool | str:
    return _native.status()[device_type]


def skip_unavailable(op: str, backend: str) -> None:
    """Skip the calling test when ``backend`` cannot run ``op`` on CUDA, with the reason."""
    import pytest

    from mplfast import _backends

    try:
        _backends.resolve_backend(backend, torch.device("cuda"), op)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"{op} [{backend}] on CUDA: {exc}")


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def event_time(fn, device: torch.device | str, *, min_s: float = 0.02, repeats: int = 5) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` runs of ``iters`` back-to-back calls.

    CUDA: one pair of CUDA events around each run and no host synchronisation inside it, so the
    device time of the calls is measured, not the host's launch latency per call (a sync per
    call adds it to every call: ~as much as the kernel for grad_dot on ResNet-50). ``iters`` is
    chosen from a first timed call so that one run lasts >= ``min_s``. CPU: ``perf_counter``.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(2):  # warm-up: module load, autotuning, allocator
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    one = max(time.perf_counter() - t0, 1e-7)
    iters = max(1, min(10_000, int(min_s / one) + 1))
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def cuda_timed(benchmark, ratios, fn, *args, nbytes: int, group: str, name: str) -> None:
    """Time ``fn(*args)`` on CUDA with :func:`event_time` (device time over many back-to-back
    calls) and record ``gb_per_s`` (the key the GPU suite's summary reads) for ``nbytes``.
    pytest-benchmark's own rounds run too (one sync per round of 20 calls, not per call), for
    its table and the ratios."""
    sec = event_time(lambda: fn(*args), "cuda")

    def run():
        for _ in range(20):
            out = fn(*args)
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    gbps = nbytes / sec / 1e9
    benchmark.extra_info.update(gb_per_s=round(gbps, 1), us_per_call=round(sec * 1e6, 2))
    ratios.record(benchmark, group, name, note=f"{gbps:.0f} GB/s")


def backward_extra_bytes(grad_numel: int, element_size: int) -> int:
    """Bytes the fused losses' backward moves on CUDA for ``loss.backward()``: none when
    ``_C.scale_inplace_cuda`` is there (it returns at once for a gradient of 1), else an in-place
    ``mul_`` that reads and writes the saved gradient."""
    return 0 if _native.has("scale_inplace_cuda") else 2 * grad_numel * element_size
