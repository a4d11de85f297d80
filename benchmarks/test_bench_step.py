"""pytest-benchmark suite: the full MPL step, eager reference vs mplfast, per batch size.

GPU (the issue-6 sizes, WRN-28-2, mu = 7, B = 64 and 128)::

    pytest benchmarks/test_bench_step.py --benchmark-json=step.json

CPU at a tiny size (CI: only checks that the code path runs)::

    pytest benchmarks/test_bench_step.py --benchmark-disable

Environment: ``MPLFAST_BENCH_DEVICE`` (cuda|cpu; default cuda when available),
``MPLFAST_BENCH_SIZE`` (full|tiny; default full on CUDA, tiny on CPU),
``MPLFAST_BENCH_VARIANTS`` (comma list of eager,mplfast,mplfast-eager,mplfast-graph; default
eager,mplfast),
``MPLFAST_BENCH_COMPILE`` (torch.compile mode of the mplfast variant; default reduce-overhead).

Each benchmark round runs ``steps_per_round`` steps and synchronises once at the end, so the
mplfast step is timed without a host sync per step; ``extra_info`` carries steps/s, images/s,
FLOPs/step and peak memory. Rounds of one batch size share a group, so the two variants sit
side by side and ``--benchmark-compare`` compares like with like.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step_throughput as st  # noqa: E402

DEVICE = os.environ.get("MPLFAST_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
SIZE = os.environ.get("MPLFAST_BENCH_SIZE") or ("full" if DEVICE.startswith("cuda") else "tiny")
VARIANTS = [v for v in os.environ.get("MPLFAST_BENCH_VARIANTS", "eager,mplfast").split(",") if v]
COMPILE = os.environ.get("MPLFAST_BENCH_COMPILE", "reduce-overhead")
BATCH_SIZES = [64, 128] if SIZE == "full" else [2]
STEPS_PER_ROUND = 10 if SIZE == "full" else 1
ROUNDS = 5 if SIZE == "full" else 1

if SIZE not in st.PRESETS:
    raise ValueError(f"MPLFAST_BENCH_SIZE must be one of {sorted(st.PRESETS)}, got {SIZE!r}")
for _v in VARIANTS:
    if _v not in st.VARIANTS:
        raise ValueError(f"MPLFAST_BENCH_VARIANTS: unknown variant {_v!r}; choose from {st.VARIANTS}")


@pytest.fixture(scope="module")
def data():
    """One synthetic data set for every variant and batch size in this module."""
    preset = st.PRESETS[SIZE]
    cfg = st.BenchConfig(**preset)
    images, labels = st.synthetic_images(cfg.num_images, cfg.image_size, cfg.num_classes, cfg.seed)
    return images, labels, st._labeled_idx(labels, cfg.num_labels, cfg.num_classes, cfg.seed)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_mpl_step(benchmark, data, variant: str, batch_size: int) -> None:
    cfg = st.BenchConfig(variant=variant, batch_size=batch_size, device=DEVICE, compile_mode=COMPILE,
                         **st.PRESETS[SIZE])
    device = torch.device(DEVICE)
    if device.type == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    images, labels, lab_idx = data
    if variant == "eager":
        runner = st.build_eager(cfg, images, labels, lab_idx)
    else:
        runner = st.build_mplfast(cfg, images, labels, lab_idx,
                                  compile_mode=COMPILE if variant == "mplfast" else "none",
                                  cuda_graph=variant == "mplfast-graph")
    try:
        before = [p.detach().float().cpu().clone() for p in runner.student.parameters()]
        for _ in range(cfg.warmup):  # compilation, CUDA-graph recording, cuDNN autotuning
            runner.step()
        st._sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def steps() -> None:
            for _ in range(STEPS_PER_ROUND):
                runner.step()
            st._sync(device)  # once per round, not per step

        per_img, flops = st._flops_per_step(cfg)
        benchmark.group = f"mpl-step {cfg.model} B={batch_size} mu={cfg.mu} {device.type}"
        benchmark.extra_info.update(runner.info, steps_per_round=STEPS_PER_ROUND, flops_per_step=flops,
                                    images_per_step=batch_size * (1 + cfg.mu))
        benchmark.pedantic(steps, rounds=ROUNDS, iterations=1, warmup_rounds=0)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            sps = STEPS_PER_ROUND / stats.stats.median
            benchmark.extra_info.update(steps_per_s=sps, images_per_s=sps * batch_size * (1 + cfg.mu))
        if device.type == "cuda":
            benchmark.extra_info["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
        # The timed steps really trained the student (a step that silently did nothing would
        # benchmark beautifully).
        assert st._param_change(before, runner.student) > 0
        assert all(torch.isfinite(p).all() for p in runner.student.parameters())
    finally:
        runner.cleanup()
