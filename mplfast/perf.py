"""Performance helpers shared by the training driver and the benchmarks.

Small, dependency-free pieces that decide *how* a model and its optimizer run, never *what* they
compute:

- :func:`to_channels_last` puts a model's 4-D weights (and later its activations) in NHWC, the
  layout cuDNN's tensor-core convolution kernels want on Ampere/Hopper.
- :func:`make_sgd` builds SGD with the fastest implementation available for the parameters'
  device: apex ``FusedSGD`` (CUDA, when importable), else ``torch.optim.SGD(fused=True)``, else
  the multi-tensor ``foreach`` path. :func:`sgd_impl` says which one an optimizer uses.
- :func:`maybe_compile` compiles a model's forward in place with ``torch.compile`` and falls
  back to eager, with a one-line reason, where compilation cannot work.
- :func:`measure_copy_bandwidth`, :func:`measure_matmul_rate` and :func:`forward_flops` give the
  two ceilings (bytes/s, FLOP/s) and the FLOP count that MFU is computed from.

Why no hand-written CUDA-graph capture of the MPL step here: one step calls the student twice
with different shapes and grad modes (``[x_l; x_us]`` with gradients, ``x_l`` without), and the
step's host-side values (the step counter in the UDA weight ramp, the learning rate set by the
scheduler) would be frozen into a manually captured graph. ``torch.compile(mode="reduce-overhead")``
uses CUDA-graph trees, which record one graph per (shape, grad mode), keep parameters and
buffers as static addresses that the optimizer updates in place, and re-record when a guard
changes; that is the CUDA-graph path the benchmarks and the driver use.
"""
from __future__ import annotations

import importlib
import inspect
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "COMPILE_MODES",
    "compile_unavailable_reason",
    "forward_flops",
    "make_sgd",
    "mark_step_begin",
    "maybe_compile",
    "measure_copy_bandwidth",
    "measure_matmul_rate",
    "sgd_impl",
    "time_per_call",
    "to_channels_last",
]

#: Values accepted by :func:`maybe_compile`; "none" means eager.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_SGD_IMPLS = ("auto", "apex", "fused", "foreach", "single")


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model``'s parameters and buffers with 4 dimensions to channels-last, in place.

    Returns the same module so calls can be chained. Convolutions then produce channels-last
    activations as long as their inputs are channels-last too (the batcher writes them that way).
    """
    return model.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# SGD


def _params_device(params_or_groups: Any) -> tuple[list[Any], torch.device | None]:
    """Materialise ``params_or_groups`` (an iterable of tensors or of param-group dicts) into a
    list, and return it with the device of its first parameter (None when there is none)."""
    items = list(params_or_groups)
    for item in items:
        tensors = item["params"] if isinstance(item, dict) else [item]
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        for t in tensors:
            return items, t.device
    return items, None


def _torch_fused_sgd_devices() -> list[str]:
    """Device types on which this torch build has a fused SGD kernel."""
    if "fused" not in inspect.signature(torch.optim.SGD.__init__).parameters:
        return []
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # private helper moved: fused SGD has existed on CUDA since torch 2.3
        return ["cuda"]
    return list(_get_fused_kernels_supported_devices())


def _apex_fused_sgd() -> type[torch.optim.Optimizer] | None:
    """apex's FusedSGD class when apex with its CUDA extensions is importable, else None."""
    try:
        module = importlib.import_module("apex.optimizers")
        return getattr(module, "FusedSGD")
    except Exception:  # noqa: BLE001 - apex fails in many ways (missing, built without CUDA ext)
        return None


def make_sgd(
    params_or_groups: Iterable[Any],
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    impl: str = "auto",
) -> torch.optim.Optimizer:
    """SGD with the fastest implementation available for the parameters' device.

    ``impl="auto"`` picks, in order: apex ``FusedSGD`` for CUDA parameters when apex imports;
    ``torch.optim.SGD(fused=True)`` where this torch has a fused kernel for the device (CUDA,
    and CPU on recent torch); otherwise ``foreach=True`` (one multi-tensor launch per op).
    ``impl`` may also name one of ``"apex"``, ``"fused"``, ``"foreach"``, ``"single"`` (the
    per-parameter loop); a named one that cannot work raises RuntimeError saying why.

    All choices compute the same update as ``torch.optim.SGD`` with the same arguments
    (weight decay added to the gradient before momentum; Nesterov as in torch).
    """
    if impl not in _SGD_IMPLS:
        raise ValueError(f"impl must be one of {_SGD_IMPLS}, got {impl!r}")
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if nesterov and momentum <= 0:
        raise ValueError("nesterov=True needs momentum > 0")
    params, device = _params_device(params_or_groups)
    if device is None:
        raise ValueError("make_sgd got no parameters")
    kw: dict[str, Any] = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    apex_cls = _apex_fused_sgd() if device.type == "cuda" and impl in ("auto", "apex") else None
    if impl == "apex" or (impl == "auto" and apex_cls is not None):
        if device.type != "cuda":
            raise RuntimeError(f"apex FusedSGD needs CUDA parameters, got {device.type}")
        if apex_cls is None:
            raise RuntimeError("apex FusedSGD is not importable (apex missing or built without CUDA extensions)")
        return apex_cls(params, **kw)

    fused_ok = device.type in _torch_fused_sgd_devices()
    if impl == "fused" or (impl == "auto" and fused_ok):
        if not fused_ok:
            raise RuntimeError(f"torch {torch.__version__} has no fused SGD kernel for {device.type}")
        return torch.optim.SGD(params, fused=True, **kw)
    # foreach: one kernel per op over the whole tensor list instead of one per parameter.
    return torch.optim.SGD(params, foreach=(impl != "single"), **kw)


def sgd_impl(optimizer: torch.optim.Optimizer) -> str:
    """Which implementation an SGD optimizer runs: "apex", "fused", "foreach" or "single".

    For ``torch.optim.SGD`` with ``foreach=None`` torch decides at the first step: foreach on
    CUDA tensors, the per-parameter loop elsewhere; this reports that decision.
    """
    if type(optimizer).__module__.startswith("apex"):
        return "apex"
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(f"not an SGD optimizer: {type(optimizer).__name__}")
    if optimizer.defaults.get("fused"):
        return "fused"
    foreach = optimizer.defaults.get("foreach")
    if foreach is None:
        first = next((p for g in optimizer.param_groups for p in g["params"]), None)
        foreach = first is not None and first.device.type == "cuda"
    return "foreach" if foreach else "single"


# --------------------------------------------------------------------------------------------
# torch.compile


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why ``torch.compile``'s default (inductor) backend cannot run on ``device``; None if it can.

    Checks what is knowable before the first call: dynamo support for this Python, Triton for
    CUDA, a C++ compiler for CPU. Errors that only show at trace time still raise then.
    """
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile (dynamo) does not support this Python version"
    except Exception as exc:  # noqa: BLE001
        return f"torch._dynamo failed to import: {exc}"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            has_triton = None  # type: ignore[assignment]
        if has_triton is not None and not has_triton():
            return "inductor needs Triton for CUDA and Triton is not usable here"
    elif device.type == "cpu":
        if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
            return "inductor needs a C++ compiler (g++/clang++) for CPU and none is on PATH"
    return None


def maybe_compile(
    model: nn.Module,
    mode: str | None = "default",
    *,
    dynamic: bool = False,
    fullgraph: bool = False,
    warn: bool = True,
) -> tuple[nn.Module, str]:
    """Compile ``model``'s forward in place with ``torch.compile``; fall back to eager if it cannot.

    ``mode`` is one of :data:`COMPILE_MODES` (None or "none": eager). The module is compiled
    in place (``nn.Module.compile``), so its identity and ``state_dict`` keys do not change and
    optimizers, EMA and checkpoints keep working. ``dynamic=False`` by default: every batch
    shape gets its own static graph (and, under "reduce-overhead", its own CUDA graph), instead
    of torch switching to a slower shape-generic graph after the second shape it sees.

    Returns ``(model, status)``, status being the mode used, or ``"eager (<reason>)"`` when it
    fell back; with ``warn`` the fallback also issues a RuntimeWarning with the reason.
    """
    if mode is None or mode == "none":
        return model, "eager"
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    reason = compile_unavailable_reason(device)
    if reason is None and mode in ("reduce-overhead", "max-autotune") and device.type != "cuda":
        # CUDA graphs are CUDA only: inductor silently skips them elsewhere, so say so.
        reason = f"mode {mode!r} uses CUDA graphs and the model is on {device.type}"
    if reason is not None:
        if warn:
            warnings.warn(f"mplfast: torch.compile(mode={mode!r}) not used, running eager: {reason}",
                          RuntimeWarning, stacklevel=2)
        return model, f"eager ({reason})"
    kwargs: dict[str, Any] = dict(dynamic=dynamic, fullgraph=fullgraph)
    if mode != "default":
        kwargs["mode"] = mode
    if hasattr(model, "compile"):
        model.compile(**kwargs)
        return model, mode
    # torch without nn.Module.compile (older than the supported 2.6): wrap instead.
    return torch.compile(model, **kwargs), mode  # type: ignore[return-value]


def mark_step_begin() -> None:
    """Tell CUDA-graph trees (``torch.compile(mode="reduce-overhead")``) that a new training
    iteration starts.

    The trees cannot always infer iteration boundaries on their own when one step runs several
    compiled graphs (teacher forward, student forward and backward, a student forward without
    gradients, then the teacher's backward). Marking the start lets them reuse the previous
    iteration's output memory instead of recording new graphs. Call it before the step, once
    no tensor returned by the previous step's compiled forwards is still needed (MPLStep's
    metrics are computed outside the graphs, so they stay valid). No-op without torch.compile
    support or when nothing was compiled.
    """
    fn = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    if fn is not None:
        fn()


# --------------------------------------------------------------------------------------------
# Ceilings and FLOP counts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], Any], device: torch.device | str, *, warmup: int = 3,
                  repeats: int = 10) -> float:
    """Median seconds per call of ``fn`` on ``device``.

    CUDA: each call is bracketed by CUDA events, so the time is device time, after ``warmup``
    untimed calls (module load, autotuning, handle creation). CPU: ``perf_counter``.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_copy_bandwidth(device: torch.device | str, nbytes: int | None = None,
                           *, repeats: int = 10) -> dict[str, float]:
    """Device-memory copy bandwidth in bytes/s, counting bytes read plus bytes written.

    Copies one random buffer into another (never zeros: see the device METHOD notes). Default
    size: 1 GiB on CUDA (far beyond L2), 64 MiB on CPU. Returns ``{"bytes_per_s", "nbytes",
    "seconds"}``.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    sec = time_per_call(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    if not torch.equal(dst, src):  # the timed copy must have really happened
        raise RuntimeError("copy bandwidth probe: destination differs from source")
    moved = 2 * n * 4
    return {"bytes_per_s": moved / sec, "nbytes": float(moved), "seconds": sec}


def measure_matmul_rate(device: torch.device | str, n: int | None = None,
                        dtype: torch.dtype | None = None, *, repeats: int = 10) -> dict[str, Any]:
    """Dense matrix-product rate in FLOP/s (2·n³ per product) on random data.

    Default: 8192³ bf16 on CUDA (the MFU denominator); 1024³ fp32 on CPU, where bf16 matmul has
    no fast path on most machines. Rotates among a few input pairs so repeated products do not
    run out of cache. Returns ``{"flops_per_s", "n", "dtype", "seconds"}``.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    pairs = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
             for _ in range(2)]
    out = torch.empty(n, n, device=device, dtype=dtype)
    i = [0]

    def mm() -> None:
        a, b = pairs[i[0] % len(pairs)]
        i[0] += 1
        torch.mm(a, b, out=out)

    sec = time_per_call(mm, device, warmup=3, repeats=repeats)
    # Spot-check the product so a silently failing kernel cannot report a rate.
    a, b = pairs[0]
    ref = a[:64].double() @ b.double()
    got = (a[:64] @ b).double()
    rel = (got - ref).norm() / ref.norm()
    if not torch.isfinite(rel) or rel > 2e-2:
        raise RuntimeError(f"matmul rate probe: relative error {float(rel):.3g} is too large")
    return {"flops_per_s": 2.0 * n ** 3 / sec, "n": n, "dtype": str(dtype).replace("torch.", ""),
            "seconds": sec}


def forward_flops(model: nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass of ``model`` on ``example`` (2 per multiply-add).

    Counted by ``torch.utils.flop_counter`` (matrix products and convolutions only, as in the
    spec's 0.43 GFLOP/image for WRN-28-2). Runs under ``no_grad`` in eval mode so batch-norm
    running statistics are untouched; the mode is restored afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())
