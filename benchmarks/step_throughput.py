"""MPL step throughput: the eager reference and mplfast's step, side by side, on one device.

Usage (GPU, the issue-6 measurement; writes JSON, prints a table last)::

    python benchmarks/step_throughput.py --device cuda --batch-sizes 64 128 --json out.json

CPU at a tiny size (what CI and tests/test_bench_smoke.py run)::

    python benchmarks/step_throughput.py --device cpu --preset tiny

Per variant and batch size it reports steps/s (median over repeats of ``--steps`` steps, device
synchronised only at the ends of each timed run), images/s (B·(1+μ) training images per step),
peak device memory over the timed steps (``torch.cuda.max_memory_allocated``), and MFU =
FLOPs/step × steps/s ÷ the matrix rate measured in the same run (bf16 8192³ on CUDA, fp32 on
CPU). FLOPs/step = F·(7B + 9μB), F the model's forward FLOPs per image counted by
``torch.utils.flop_counter`` (0.43 GFLOP for WRN-28-2 at 32×32): the teacher's forward and
backward on B + 2μB images (3F each), the student's on B + μB (3F each) and the student's
post-update forward on B (F).

Variants:
- ``eager``: ``benchmarks/eager_reference.py``, the port's way (CPU DataLoader + PIL
  RandAugment, fp16 autocast + GradScalers, per-step ``.item()`` logging).
- ``mplfast``: ``MPLStep`` + ``MPLBatcher`` (device-resident data, fused augmentation),
  channels-last, bf16 autocast (precision="auto"), fused SGD (:func:`mplfast.perf.make_sgd`),
  ``torch.compile`` (``--compile-mode``; "reduce-overhead" = CUDA graphs), no host sync per step.
- ``mplfast-eager``: the same without torch.compile (how much the compiler buys).
- ``mplfast-inductor``: torch.compile without CUDA graphs (mode "default"): how much of the
  compiler's gain is fusion and how much is the removed launch overhead.
- ``mplfast-graph``: ``MPLStep(cuda_graph=True)``, the whole step (both forwards, backwards
  and optimizer steps) captured in one CUDA graph without torch.compile: bf16, fused SGD with
  tensor learning rates, the batcher writing each batch into the same static buffer. Its L_old
  is the default unbiased one (``l_old_forward="labeled"``: one more forward of B images,
  FLOPs/step F·(8B + 9μB)); the other mplfast variants read L_old as the port does
  (``"concat"``), so they and ``eager`` do the same work. On CPU it falls back to eager.
- ``eager-prefetched``: the eager step on a few batches loaded to the device beforehand and
  reused: the eager step's own cost, without its data pipeline (the gap to ``eager`` is what
  the CPU DataLoader and PIL augmentation cost the port).

A variant can be limited to some batch sizes with ``VARIANT@B`` (``mplfast-inductor@64``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tables  # noqa: E402
import eager_reference as er  # noqa: E402

from mplfast import perf  # noqa: E402

VARIANTS = ("eager", "mplfast", "mplfast-eager", "mplfast-inductor", "mplfast-graph", "eager-prefetched")
# torch.compile mode per mplfast variant; None: the --compile-mode given.
_VARIANT_COMPILE = {"mplfast": None, "mplfast-eager": "none", "mplfast-inductor": "default",
                    "mplfast-graph": "none"}

# Both variants run the recipe's schedule shape without its lr-0 start (warmup from 0, the
# student's 3,000-step wait): a step costs the same at any lr, and lr > 0 from the first step
# lets the benchmark check that the models really moved.
_WARMUP, _WAIT = 0, 0


@dataclass
class BenchConfig:
    """One (variant, batch size) measurement."""

    variant: str = "mplfast"
    model: str = "wrn28_2"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10
    image_size: int = 32
    batch_size: int = 64
    mu: int = 7
    num_images: int = 50_000
    num_labels: int = 4000
    device: str = "cuda"
    steps: int = 50          # timed steps per repeat
    warmup: int = 15         # untimed steps first (compilation, CUDA-graph recording, autotuning)
    repeats: int = 3
    workers: int = 4         # the eager reference's DataLoader workers (the port's default)
    compile_mode: str = "reduce-overhead"
    seed: int = 0
    profile_steps: int = 0   # > 0: after timing, profile this many steps of the same runner


PRESETS: dict[str, dict[str, Any]] = {
    # The measurement: WRN-28-2, 32x32, 10 classes, mu = 7.
    "full": dict(model="wrn28_2", model_kwargs={}, num_images=50_000, num_labels=4000, steps=50,
                 warmup=15, repeats=3, mu=7),
    # CI / smoke size: a WRN-10-1 on a few images, two steps, no worker processes.
    "tiny": dict(model="wrn", model_kwargs={"depth": 10, "widen_factor": 1}, num_images=64,
                 num_labels=20, steps=2, warmup=1, repeats=1, mu=2, workers=0),
}


def synthetic_images(n: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, size, size, 3] random images (never constant: constant images would make the
    PIL ops' costs unrealistic) and balanced int64 labels in random order (so a per-class
    labeled split exists even for a handful of images)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.permutation(np.arange(n) % num_classes).astype(np.int64))


def _labeled_idx(labels: np.ndarray, num_labels: int, num_classes: int, seed: int) -> np.ndarray:
    try:
        from mplfast.data import labeled_split

        return labeled_split(torch.from_numpy(labels), num_labels, num_classes, seed).numpy()
    except ImportError:  # before mplfast.data lands: a seeded random subset
        return np.random.default_rng(seed).choice(len(labels), num_labels, replace=False)


def _make_model(cfg: BenchConfig) -> torch.nn.Module:
    from mplfast.models import create_model

    return create_model(cfg.model, cfg.num_classes, **cfg.model_kwargs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """A built variant: ``step()`` runs one full training step (data included)."""

    step: Callable[[], Any]
    teacher: torch.nn.Module
    student: torch.nn.Module
    info: dict[str, Any]
    cleanup: Callable[[], None] = lambda: None


def build_eager(cfg: BenchConfig, images: np.ndarray, labels: np.ndarray, lab_idx: np.ndarray,
                *, prefetch: int = 0) -> Runner:
    """The port-style reference: DataLoader + PIL, fp16 autocast + GradScalers on CUDA.

    ``prefetch > 0``: load that many batches to the device first and cycle through them, so
    the timed steps exclude the data pipeline."""
    device = torch.device(cfg.device)
    torch.backends.cudnn.benchmark = False  # the port leaves cuDNN's autotuner off
    torch.manual_seed(cfg.seed)
    teacher, student = _make_model(cfg), _make_model(cfg)
    ref = er.EagerMPL(teacher, student, device, er.EagerConfig(warmup_steps=_WARMUP, student_wait_steps=_WAIT))
    data = er.make_eager_data(images, labels, lab_idx, batch_size=cfg.batch_size, mu=cfg.mu,
                              workers=cfg.workers, seed=cfg.seed)
    info = {"precision": "fp16+GradScaler" if ref.amp else "fp32", "optimizer": perf.sgd_impl(ref.s_opt),
            "data": f"DataLoader(workers={cfg.workers}) + PIL, weak transforms: {data.weak_transforms}",
            "compile": "eager", "cudnn_benchmark": False}

    def cleanup() -> None:
        data.labeled.close()  # ends the generators, so the worker processes can shut down
        data.unlabeled.close()
        data.loaders.clear()

    if prefetch <= 0:
        return Runner(lambda: ref.train_step(data), ref.teacher, ref.student, info, cleanup)
    batches = []
    for _ in range(prefetch):
        (x_l, y_l), (x_uw, x_us) = next(data.labeled), next(data.unlabeled)
        batches.append(tuple(t.to(device) for t in (x_l, y_l, x_uw, x_us)))
    cleanup()  # the workers are not needed any more
    info["data"] = f"{prefetch} batches prefetched to the device, reused (no data pipeline)"
    counter = [0]

    def run_one() -> dict[str, float]:
        b = batches[counter[0] % len(batches)]
        counter[0] += 1
        return ref.logged_step(*b)

    return Runner(run_one, ref.teacher, ref.student, info)


def build_mplfast(cfg: BenchConfig, images: np.ndarray, labels: np.ndarray, lab_idx: np.ndarray,
                  *, compile_mode: str, cuda_graph: bool = False) -> Runner:
    """mplfast's step: MPLBatcher (device-resident data, fused augmentation), channels-last,
    bf16 autocast on CUDA, fused SGD, torch.compile, no host sync per step; ``cuda_graph``:
    the whole step in one CUDA graph instead of torch.compile."""
    from mplfast import MPLConfig, MPLStep, ModelEMA, param_groups, warmup_cosine_schedule
    from mplfast.data import ImageDataset, MPLBatcher

    device = torch.device(cfg.device)
    # Shapes are static, so cuDNN's autotuner pays for itself within the warmup steps.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    models = []
    for _ in range(2):
        m = _make_model(cfg).to(device)
        if device.type == "cuda":
            perf.to_channels_last(m)
        models.append(m)
    teacher, student = models
    kw = dict(lr=0.05, momentum=0.9, nesterov=True)
    if cuda_graph:  # capturable: fused SGD, lr a device tensor the scheduler updates in place
        def graph_sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
            return torch.optim.SGD(param_groups(m, 5e-4), lr=torch.tensor(0.05, device=device),
                                   momentum=0.9, nesterov=True, fused=True)
        t_opt, s_opt = graph_sgd(teacher), graph_sgd(student)
    else:
        t_opt = perf.make_sgd(param_groups(teacher, 5e-4), **kw)
        s_opt = perf.make_sgd(param_groups(student, 5e-4), **kw)
    t_sched = warmup_cosine_schedule(t_opt, warmup_steps=_WARMUP, total_steps=300_000)
    s_sched = warmup_cosine_schedule(s_opt, warmup_steps=_WARMUP, total_steps=300_000, wait_steps=_WAIT)
    ema = ModelEMA(student, 0.995)  # before compiling: the EMA copy stays a plain module
    _, t_status = perf.maybe_compile(teacher, compile_mode)
    _, s_status = perf.maybe_compile(student, compile_mode)
    # "concat" reads L_old as the eager reference (the port) does: the same work. The graph
    # variant keeps the default unbiased L_old (concat with an EMA is not capturable).
    mcfg = MPLConfig(temperature=0.7, threshold=0.6, lambda_u=8.0, uda_steps=5000, label_smoothing=0.15,
                     precision="bf16" if cuda_graph and device.type == "cuda" else "auto",
                     l_old_forward="labeled" if cuda_graph else "concat")
    step = MPLStep(teacher, student, t_opt, s_opt, mcfg, teacher_scheduler=t_sched,
                   student_scheduler=s_sched, student_ema=ema, cuda_graph=cuda_graph)
    ds = ImageDataset(name="synthetic-bench", train_images=torch.from_numpy(images),
                      train_labels=torch.from_numpy(labels), test_images=torch.from_numpy(images[:16]),
                      test_labels=torch.from_numpy(labels[:16]), num_classes=cfg.num_classes,
                      mean=er.CIFAR_MEAN, std=er.CIFAR_STD, hflip=True)
    batcher = MPLBatcher(ds, torch.from_numpy(lab_idx), batch_size=cfg.batch_size, mu=cfg.mu, seed=cfg.seed,
                         device=device, channels_last=device.type == "cuda")
    counter = [0]
    static: list[torch.Tensor] = []  # cuda_graph: one input buffer and one label buffer, reused

    def run_one() -> dict[str, torch.Tensor]:
        perf.mark_step_begin()  # a new iteration for CUDA-graph trees (no-op otherwise)
        if cuda_graph:
            if not static:
                x_l, y_l, x_uw, x_us = batcher.batch(counter[0])
                static.extend([torch.cat([x_l, x_uw, x_us]), y_l.clone()])
            buf, y_buf = static
            x_l, y_l, x_uw, x_us = batcher.batch(counter[0], out=buf)
            y_buf.copy_(y_l)
            y_l = y_buf
        else:
            x_l, y_l, x_uw, x_us = batcher.batch(counter[0])
        counter[0] += 1
        return step(x_l, y_l, x_uw, x_us)  # 0-dim tensors: nothing here waits for the device

    info = {"precision": getattr(mcfg, "precision", "auto"), "optimizer": perf.sgd_impl(s_opt),
            "cuda_graph": bool(cuda_graph and device.type == "cuda"), "l_old_forward": mcfg.l_old_forward,
            "data": "MPLBatcher (device-resident, fused augmentation)",
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "compile": t_status if t_status == s_status else f"teacher: {t_status}, student: {s_status}"}
    return Runner(run_one, teacher, student, info)


def _flops_per_step(cfg: BenchConfig) -> tuple[float, float]:
    """(forward FLOPs per image, FLOPs per MPL step = F·(7B + 9μB), + F·B for mplfast-graph)."""
    model = _make_model(cfg)
    per_img = perf.forward_flops(model, torch.randn(1, 3, cfg.image_size, cfg.image_size))
    b, mu = cfg.batch_size, cfg.mu
    # the graph variant's unbiased L_old is one more student forward on the B labeled images
    extra = b if cfg.variant == "mplfast-graph" else 0
    return per_img, per_img * (7 * b + 9 * mu * b + extra)


def _param_change(before: list[torch.Tensor], model: torch.nn.Module) -> float:
    num = sum(float((p.detach().float().cpu() - q).norm()) ** 2 for p, q in zip(model.parameters(), before))
    return num ** 0.5


def measure(cfg: BenchConfig, images: np.ndarray, labels: np.ndarray, lab_idx: np.ndarray,
            matmul_rate: float | None) -> dict[str, Any]:
    """Build one variant, warm it up, time it; a failure is recorded, never raised."""
    device = torch.device(cfg.device)
    result: dict[str, Any] = {"variant": cfg.variant, "batch_size": cfg.batch_size, "mu": cfg.mu,
                              "model": cfg.model, "model_kwargs": cfg.model_kwargs}
    runner: Runner | None = None
    try:
        per_img, flops = _flops_per_step(cfg)
        result.update(forward_flops_per_image=per_img, flops_per_step=flops)
        if device.type == "cuda":
            # No torch._dynamo.reset() here: it threw every compile away, so each configuration
            # compiled from scratch. Each compiled variant now compiles once (the suite runs
            # every variant at one batch size) and reuses Inductor's caches, in memory and on
            # disk, where the gate (benchmarks/gate.py) compiled the same graphs first.
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t_build = time.perf_counter()
        if cfg.variant == "eager":
            runner = build_eager(cfg, images, labels, lab_idx)
        elif cfg.variant == "eager-prefetched":
            runner = build_eager(cfg, images, labels, lab_idx, prefetch=4)
        elif cfg.variant in _VARIANT_COMPILE:
            runner = build_mplfast(cfg, images, labels, lab_idx,
                                   compile_mode=_VARIANT_COMPILE[cfg.variant] or cfg.compile_mode,
                                   cuda_graph=cfg.variant == "mplfast-graph")
        else:
            raise ValueError(f"unknown variant {cfg.variant!r}; choose from {VARIANTS}")
        result.update(runner.info)
        t0 = time.perf_counter()
        for _ in range(cfg.warmup):
            out = runner.step()
        _sync(device)
        result["build_s"] = t0 - t_build
        result["warmup_s"] = time.perf_counter() - t0
        # after warmup: the check below is about the timed steps themselves
        before = [p.detach().float().cpu().clone() for p in runner.student.parameters()]
        if device.type == "cuda":
            result["peak_mem_warmup_bytes"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        rates = []
        for _ in range(cfg.repeats):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(cfg.steps):
                out = runner.step()
            _sync(device)
            rates.append(cfg.steps / (time.perf_counter() - t0))
        sps = statistics.median(rates)
        result.update(steps_per_s=sps, steps_per_s_all=rates, ms_per_step=1e3 / sps,
                      images_per_s=sps * cfg.batch_size * (1 + cfg.mu),
                      achieved_flops_per_s=flops * sps)
        if matmul_rate:
            result["mfu"] = flops * sps / matmul_rate
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        # Sanity: the timed steps really trained (a no-op step would time very well) and stayed finite.
        result["student_param_change"] = _param_change(before, runner.student)
        last = {k: float(v) for k, v in (out or {}).items()
                if isinstance(v, (torch.Tensor, float, int)) and getattr(v, "numel", lambda: 1)() == 1}
        result["last_metrics"] = last
        result["finite"] = all(np.isfinite(v) for v in last.values())
        result["ok"] = result["student_param_change"] > 0 and result["finite"]
        if not result["ok"]:
            result["error"] = "step left the student unchanged or produced non-finite metrics"
        if cfg.profile_steps > 0:
            try:
                result["profile"] = profile_runner(runner, cfg, steps=cfg.profile_steps)
            except Exception as exc:  # noqa: BLE001 - the timing above stays valid
                result["profile"] = {"error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc(limit=8)}
    except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=8)
    finally:
        if runner is not None:
            runner.cleanup()
        del runner
        gc.collect()
    return result


def profile_runner(runner: Runner, cfg: BenchConfig, *, steps: int = 5, row_limit: int = 25,
                   trace_path: str | None = None) -> dict[str, Any]:
    """torch.profiler over ``steps`` steps of an already warmed-up runner: top kernels (CUDA) or
    top ops (CPU) by self time, per step, with category totals, and a markdown table."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(cfg.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        _sync(device)
        wall = (time.perf_counter() - t0) / steps
    if trace_path:
        prof.export_chrome_trace(trace_path)
    rows = kernel_rows(prof, device, steps)
    busy = sum(r["us_per_step"] for r in rows["all"]) / 1e6
    return {"steps": steps, "wall_ms_per_step": wall * 1e3,
            "device_busy_ms_per_step": busy * 1e3 if device.type == "cuda" else None,
            "top": rows["all"][:row_limit], "categories": rows["categories"],
            "launches_per_step": rows["launches_per_step"],
            "markdown": kernel_markdown(rows, wall, device, cfg, row_limit)}


# Kernel (CUDA) or op (CPU) name -> category; first match wins; lower-case substrings. The order
# matters: cuDNN's batch-norm and layout kernels carry "cudnn" in their names, and cuDNN's
# convolution kernels "implicit_gemm", so those rules come before the GEMM rule; mplfast's own
# kernels come first of all (Triton's are named after their jit functions, the native ones live
# in namespace mplfast). tests/test_bench_smoke.py checks this on realistic names.
MPLFAST_KERNELS = ("mplfast", "softceeager", "udaeager", "soft_ce_kernel", "uda_kernel", "scale_inplace", "grad_dot_partials",
                   "grad_dot_final", "_multi_dot_kernel", "_finish_kernel", "_augment_kernel", "_sample_kernel")
_CATEGORIES = (
    ("mplfast fused ops", MPLFAST_KERNELS),
    ("fused Triton (Inductor)", ("triton_poi", "triton_red", "triton_per")),
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("copy / layout", ("nchwtonhwc", "nhwctonchw", "memcpy", "memset")),
    ("convolution (cuDNN)", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit_gemm")),
    ("matrix product (cuBLAS/CUTLASS GEMM)", ("gemm", "gemv", "nvjet", "cublas", "cutlass", "matmul", "addmm",
                                              "aten::mm", "aten::bmm", "xmma", "triton_tem")),
    ("optimizer / EMA", ("sgd", "multi_tensor", "foreach", "lerp")),
    ("other Triton", ("triton",)),
    ("copy / layout", ("copy", "cat", "nchw", "nhwc", "transpose", "fill")),
    ("elementwise / reduction", ("elementwise", "reduce", "vectorized", "unrolled", "softmax", "loss")),
)


def _category(name: str) -> str:
    low = name.lower()
    for cat, keys in _CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def kernel_rows(prof: Any, device: torch.device, steps: int) -> dict[str, Any]:
    """Per kernel (CUDA) or per op (CPU): calls and self time per step, largest first."""
    rows = []
    for ev in prof.key_averages():
        if device.type == "cuda":
            if getattr(ev, "device_type", None) is None or "CUDA" not in str(ev.device_type):
                continue
            us = getattr(ev, "self_device_time_total", None)
            if us is None:
                us = getattr(ev, "self_cuda_time_total", 0.0)
        else:
            us = ev.self_cpu_time_total
        if us <= 0:
            continue
        rows.append({"name": ev.key, "calls_per_step": ev.count / steps, "us_per_step": us / steps,
                     "category": _category(ev.key)})
    rows.sort(key=lambda r: -r["us_per_step"])
    # Host-side launch calls per step: what CUDA graphs are meant to collapse into a few replays.
    launches = {"kernel": 0.0, "graph": 0.0}
    if device.type == "cuda":
        for ev in prof.key_averages():
            if ev.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"):
                launches["kernel"] += ev.count / steps
            elif ev.key in ("cudaGraphLaunch", "cuGraphLaunch"):
                launches["graph"] += ev.count / steps
    total = sum(r["us_per_step"] for r in rows) or 1.0
    for r in rows:
        r["pct"] = 100.0 * r["us_per_step"] / total
    cats: dict[str, float] = {}
    for r in rows:
        cats[r["category"]] = cats.get(r["category"], 0.0) + r["us_per_step"]
    categories = sorted(({"category": k, "us_per_step": v, "pct": 100.0 * v / total} for k, v in cats.items()),
                        key=lambda r: -r["us_per_step"])
    return {"all": rows, "categories": categories, "launches_per_step": launches}


def kernel_markdown(rows: dict[str, Any], wall_s: float, device: torch.device, cfg: BenchConfig,
                    row_limit: int) -> str:
    """The breakdown as markdown: categories, then the top kernels/ops."""
    unit = "kernel" if device.type == "cuda" else "op (self CPU time)"
    total_us = sum(r["us_per_step"] for r in rows["all"])
    lines = [f"### {cfg.variant}, B={cfg.batch_size}, mu={cfg.mu}, {cfg.model} on {device.type}", "",
             f"wall {wall_s * 1e3:.2f} ms/step; summed {unit} time {total_us / 1e3:.2f} ms/step"
             + (f" (device busy {100 * total_us / 1e6 / wall_s:.0f}% of wall); host launches/step: "
                f"{rows['launches_per_step']['kernel']:.0f} kernels, {rows['launches_per_step']['graph']:.0f} graph replays"
                if device.type == "cuda" else ""),
             "", "| category | ms/step | % |", "|---|---:|---:|"]
    lines += [f"| {c['category']} | {c['us_per_step'] / 1e3:.3f} | {c['pct']:.1f} |" for c in rows["categories"]]
    lines += ["", f"| {unit} | calls/step | ms/step | % |", "|---|---:|---:|---:|"]
    for r in rows["all"][:row_limit]:
        name = r["name"].replace("|", "\\|")
        name = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{name}` | {r['calls_per_step']:.1f} | {r['us_per_step'] / 1e3:.3f} | {r['pct']:.1f} |")
    return "\n".join(lines) + "\n"


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and device description for RESULTS.md."""
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                           "host": platform.node(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(device=p.name, sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                   memory_gib=p.total_memory / 2**30, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["device"] = platform.processor() or platform.machine()
    return env


def run(cfgs: list[BenchConfig], *, measure_ceilings: bool = True, log: Callable[[str], None] = print,
        json_path: str | None = None, append: bool = False,
        ceilings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every configuration (same data, same device, one process) and the ceilings.

    With ``json_path`` the results so far are rewritten there after each configuration, so a
    run stopped by a time limit still leaves what it measured. ``append``: start from the
    results (and ceilings) already in ``json_path`` and add these (the GPU suite's headline and
    variant stages, each under its own time limit, share one step.json)."""
    if not cfgs:
        raise ValueError("no configurations to run")
    device = torch.device(cfgs[0].device)
    out: dict[str, Any] = {"env": environment(device), "results": []}
    if append and json_path and Path(json_path).exists():
        prev = json.loads(Path(json_path).read_text())
        out["results"] = prev.get("results", [])
        if "ceilings" in prev:
            out["ceilings"] = prev["ceilings"]
    if ceilings is not None and "ceilings" not in out:  # measured earlier in the same run (the suite)
        out["ceilings"] = ceilings
    rate = out["ceilings"]["matmul"]["flops_per_s"] if "ceilings" in out else None
    if measure_ceilings and "ceilings" not in out:
        mm = perf.measure_matmul_rate(device)
        bw = perf.measure_copy_bandwidth(device)
        out["ceilings"] = {"matmul": mm, "copy": bw}
        rate = mm["flops_per_s"]
        log(f"ceilings: {mm['dtype']} matmul {mm['flops_per_s'] / 1e9:.1f} GFLOP/s (n={mm['n']}), "
            f"copy {bw['bytes_per_s'] / 1e9:.1f} GB/s")
    data_cache: dict[tuple[int, int, int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for cfg in cfgs:
        key = (cfg.num_images, cfg.image_size, cfg.num_classes, cfg.num_labels, cfg.seed)
        if key not in data_cache:
            images, labels = synthetic_images(cfg.num_images, cfg.image_size, cfg.num_classes, cfg.seed)
            data_cache[key] = (images, labels, _labeled_idx(labels, cfg.num_labels, cfg.num_classes, cfg.seed))
        r = measure(cfg, *data_cache[key], rate)
        r["config"] = asdict(cfg)
        out["results"].append(r)
        log(summary_line(r))
        if json_path:
            Path(json_path).write_text(json.dumps(out, indent=1, default=str))
    return out


def summary_line(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"{r['variant']:>14} B={r['batch_size']:<4} FAILED: {r.get('error')}"
    mem = f"{r['peak_mem_bytes'] / 2**30:.2f} GiB" if r.get("peak_mem_bytes") else "n/a"
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
    return (f"{r['variant']:>14} B={r['batch_size']:<4} {r['steps_per_s']:9.2f} steps/s "
            f"{r['images_per_s']:10.0f} img/s  peak {mem:>9}  MFU {mfu:>6}  [{r.get('compile')}]")


# The results table lives in _tables.py (no torch import: the suite's summary, rebuilt after
# every stage, must not pay for one).
summary_markdown = _tables.step_markdown


def configs_from_args(args: argparse.Namespace) -> list[BenchConfig]:
    preset = dict(PRESETS[args.preset])
    for name in ("steps", "warmup", "repeats", "workers", "mu", "num_images", "num_labels"):
        v = getattr(args, name)
        if v is not None:
            preset[name] = v
    wanted: list[tuple[str, int]] = []
    for spec in args.variants:
        name, _, only = spec.partition("@")
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {VARIANTS}")
        for b in ([int(only)] if only else args.batch_sizes):
            wanted.append((name, b))
    # The headline pairs first (eager and mplfast at each batch size), then the diagnostic
    # variants, so a run cut short by a time limit has measured what matters most.
    order = {"eager": 0, "mplfast": 0}
    wanted.sort(key=lambda vb: (order.get(vb[0], 1), vb[1] if order.get(vb[0], 1) == 0 else 0))
    cfgs = [BenchConfig(variant=v, batch_size=b, device=args.device, compile_mode=args.compile_mode,
                        seed=args.seed, **preset)
            for v, b in wanted]
    if getattr(args, "eager_steps", None):
        for c in cfgs:
            if c.variant.startswith("eager"):
                c.steps = args.eager_steps
    return cfgs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="full (WRN-28-2, default on CUDA) or tiny (WRN-10-1, default on CPU)")
    p.add_argument("--variants", nargs="+", default=["eager", "mplfast"],
                   help=f"from {VARIANTS}; VARIANT@B limits one to batch size B")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    p.add_argument("--compile-mode", default="reduce-overhead", choices=perf.COMPILE_MODES)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eager-steps", type=int, default=None,
                   help="timed steps per repeat for the (slow) eager variant; default --steps")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--mu", type=int, default=None)
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--num-labels", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--markdown", default=None, help="write the summary table here")
    p.add_argument("--profile", nargs="*", default=[], metavar="VARIANT",
                   help="after timing, profile these variants (at the first batch size) kernel by kernel")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--profile-out", default=None, help="markdown file for the profile tables")
    p.add_argument("--no-ceilings", action="store_true", help="skip the matmul/copy measurements")
    p.add_argument("--ceilings-json", default=None,
                   help="use these ceilings ({matmul, copy} from mplfast.perf, e.g. the GPU suite's "
                        "ceilings stage) instead of measuring them again")
    p.add_argument("--append", action="store_true",
                   help="add to the results already in --json (their ceilings are reused)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.preset is None:
        args.preset = "full" if device.type == "cuda" else "tiny"
    if args.batch_sizes is None:
        args.batch_sizes = [64, 128] if args.preset == "full" else [2]
    cfgs = configs_from_args(args)
    for c in cfgs:
        if c.variant in args.profile and c.batch_size == args.batch_sizes[0]:
            c.profile_steps = args.profile_steps
    ceilings = json.loads(Path(args.ceilings_json).read_text()) if args.ceilings_json else None
    out = run(cfgs, measure_ceilings=not args.no_ceilings, json_path=args.json, append=args.append,
              ceilings=ceilings)
    profiles = [r["profile"]["markdown"] for r in out["results"] if "markdown" in r.get("profile", {})]
    perrors = [f"{r['variant']} B={r['batch_size']}: {r['profile']['error']}" for r in out["results"]
               if "error" in r.get("profile", {})]
    if profiles or perrors:
        text = "\n".join(profiles) + "".join(f"\nprofile failed: {e}\n" for e in perrors)
        print(text)
        if args.profile_out:
            Path(args.profile_out).write_text(text)
    for r in out["results"]:  # the JSON keeps the rows; the markdown went to its own file
        r.get("profile", {}).pop("markdown", None)
    _tables.write_results(out, summary_markdown(out), args.json, args.markdown)
    return 0 if all(r.get("ok") for r in out["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
