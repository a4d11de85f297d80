"""Correctness gate: run before any timing, so that no speed is reported for a wrong answer.

Usage::

    python benchmarks/gate.py --device cuda --preset full --json gate.json --markdown gate.md
    python benchmarks/gate.py --device cpu --preset tiny          # the CPU rehearsal

Exit status 0 when every check that ran passed, 1 when one failed (2: bad arguments).

**Steps.** From one identical state, every variant the step benchmark times takes one step, and
its result is compared with a reference step of the same configuration:

- the state: both models after one primer step of ``MPLStep`` (so the SGD momentum buffers
  hold real gradients and the step counter is 1: momentum and the UDA ramp are exercised), the
  batch (random images and labels, one buffer as the benchmark's static input), a UDA threshold
  that splits the unlabeled rows (midpoint of the widest gap between the teacher's confidences,
  so no row sits on the threshold), full UDA weight (``uda_steps=1``), no schedulers (they act
  after the step) and no dropout (WRN-28-2 has none);
- a variant that compiles or captures first runs its warm-up steps (compilation, CUDA-graph
  recording, the graph's capture), then gets the identical state back in place (parameters,
  buffers, momentum buffers, ``MPLStep.load_state_dict``: the same addresses, so graphs replay
  on it) before the step that is compared;
- compared: every metric both steps report (losses; ``h`` on the scale of L_old, since it is a
  difference of two such losses), and the update of every parameter, Δθ = θ_after − θ_state:
  relative error ‖Δθ − Δθ_ref‖ / ‖Δθ_ref‖ per parameter tensor and over all of a model's
  parameters (the update, not θ: a wrong gradient hides under θ's size).

The checks, named after the step benchmark's variants (benchmarks/step_throughput.py):

| variant | runs | reference | tolerance |
|---|---|---|---|
| eager (and eager-prefetched) | the port-style step (eager_reference.py), fp32 | MPLStep eager, port configuration, fp32 | fp32 |
| mplfast-eager | MPLStep eager, benchmark configuration, its precision | the same in fp32 | the precision's |
| mplfast-inductor | torch.compile(mode="default") of both models | MPLStep eager, same configuration | the precision's |
| mplfast | torch.compile(mode="reduce-overhead") (CUDA only) | MPLStep eager, same configuration | the precision's |
| mplfast-graph | MPLStep(cuda_graph=True) (CUDA only) | its eager twin (same configuration) | the precision's |

The port configuration of MPLStep (docs/algorithm.md, tests/test_bench_smoke.py):
``pseudo_label_view="weak", meta_sign=-1, l_old_forward="concat"``, biases decayed as the port
does (``param_groups(decay_biases=True)``). On CUDA the fp32 checks run with TF32 off (cuDNN
convolutions default to TF32, ~1e-3 relative error) and cuDNN's autotuner off.

**Ops.** Every fused op on every backend the device has (reference, native, triton; the
augmentation's torch path too), at the op benchmarks' shapes, forward and backward, against the
reference backend on float64 copies of the same (rounded) inputs. The augmentation is integer
arithmetic plus one normalisation and is documented bit-exact: every backend must equal the
reference bit for bit, every output element written (outputs are poisoned with NaN first).

**Tolerances** (``TOLERANCES``; the measurements behind them are in benchmarks/README.md, "Gate"):

- fp32: the losses and h are well conditioned, the update of the first layers is not: the
  gradient of the input convolution sums products over every pixel with heavy cancellation.
  Measured on CPU (WRN-10-1): a plain CE backward in fp32 against float64, 2e-6 to 2.6e-4
  relative error of all gradients depending on the seed, nearly all in ``conv1.weight``;
  MPLStep fp32 vs float64, Δθ 4e-6; the port vs MPLStep 2e-6; aot_eager-compiled, bit-identical;
  Inductor's C++ code 2e-3 (teacher; 6e-3 worst tensor, the first layers) with losses and h
  within 1.6e-6. Set 1e-2 overall, 3e-2 per tensor (5x the worst seen), 1e-5 for losses and h
  (6x). A student lr 1 % off moves the losses by 8e-3 (caught by the metrics, 800x their
  tolerance) and the student's Δθ by 1e-2 (at the tolerance). The CPU gate compiles with
  aot_eager by default (Inductor's C++ compile takes ~3 min cold on the build machine).
- bf16: autocast rounds every convolution's inputs to bf16 (eps 2^-8 = 3.9e-3), and the
  rounding of ~30 layers compounds through the backward. Measured on CPU: bf16 eager vs fp32
  eager, Δθ 5.8e-2 teacher, 2.9e-2 student, worst tensor 0.13, metrics 1.4e-3; Inductor's bf16
  step vs eager bf16 as far apart (4.2e-2, metrics 5.6e-4): the compiled step rounds other
  intermediates, so it sits as far from eager bf16 as both sit from fp32. Set 32·2^-8 = 0.125
  overall, 64·2^-8 = 0.25 per tensor, 4·2^-8 = 1.6e-2 for losses and h (2x, 2x and 10x
  margin). What that can catch: a student lr off by 10 % moves the metrics by 8e-2 (caught); off
  by 1 %, 8e-3 (not caught in bf16, caught by the fp32 checks). The bf16 gate catches wrong
  steps, not small biases.
- ops: only the output is rounded (math runs in fp32): fp32 1e-5 (measured 5e-8 to 2e-7), bf16
  2^-8 (two bf16 roundings); grad_dot: |error| ≤ 1e-4·‖x∘y‖₂ (the elementwise products' norm:
  measured 7e-9 to 2e-8; a tensor of 100 elements left out moves it by ~1e-2). The
  augmentation: bit-exact (documented so in kernels/augment.py).

A tolerance is never widened to let a difference pass: a failure is reported with the numbers,
and the timings of the failed variant are marked invalid by the suite's summary.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tables  # noqa: E402
import eager_reference as er  # noqa: E402

BF16_EPS = 2.0 ** -8


@dataclass(frozen=True)
class StepTol:
    """Relative tolerances of one step's results against its reference."""

    update: float        # ‖Δθ − Δθ_ref‖ / ‖Δθ_ref‖ over a model's parameters
    update_param: float  # the same per parameter tensor
    loss: float          # |l − l_ref| / |l_ref| per reported loss; h: |h − h_ref| / |L_old_ref|


TOLERANCES: dict[str, StepTol] = {
    "fp32": StepTol(update=1e-2, update_param=3e-2, loss=1e-5),
    "bf16": StepTol(update=32 * BF16_EPS, update_param=64 * BF16_EPS, loss=4 * BF16_EPS),
}
OP_TOL = {torch.float32: 1e-5, torch.bfloat16: BF16_EPS, torch.float16: 2.0 ** -10}
GRAD_DOT_TOL = 1e-4
REF_IMAGES = 64  # images the per-image augmentation reference writes (see _augment_checks)

# Reported by both MPLStep and the port's step (eager_reference.EagerMPL.step).
_COMMON_METRICS = ("teacher_loss", "teacher_loss_l", "uda_loss", "mpl_loss", "student_loss",
                   "student_loss_l_old", "student_loss_l_new", "h", "mask_rate")


@dataclass
class GateConfig:
    """The models and batch of the step checks, and the ops' shapes."""

    device: str = "cpu"
    model: str = "wrn"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"depth": 10, "widen_factor": 1})
    num_classes: int = 10
    image_size: int = 32
    batch_size: int = 8
    mu: int = 2
    precision: str = "auto"   # the benchmark's: bf16 on CUDA, fp32 on CPU
    seed: int = 0
    # op shapes: (rows, classes) of soft-CE / UDA, the models whose parameter lists grad_dot reads,
    # and how many images the augmentation writes
    ce_shape: tuple[int, int] = (4096, 1000)
    ce_dtype: torch.dtype = torch.float32
    dot_models: tuple[str, ...] = ("wrn28_2",)
    aug_images: int = 64
    plant: str | None = None  # "student-lr" | "soft-ce": a deliberate bug (the gate's own tests)
    # CPU only: how mplfast-inductor compiles. "aot_eager": Dynamo + AOTAutograd (the step's
    # tracing, graph breaks, recorded replays), no code generation: the rehearsal's budget.
    # "inductor": the real thing (C++ code generation: ~3 min cold on the 2-core build machine).
    cpu_compile: str = "aot_eager"


PRESETS: dict[str, dict[str, Any]] = {
    # The step benchmark's headline configuration and the op benchmarks' CUDA shapes.
    "full": dict(model="wrn28_2", model_kwargs={}, batch_size=64, mu=7, ce_shape=(8192, 32000),
                 ce_dtype=torch.bfloat16, dot_models=("wrn28_2", "resnet50"), aug_images=64 * 15),
    # The CPU rehearsal: WRN-10-1 and the op benchmarks' CPU shapes.
    "tiny": dict(model="wrn", model_kwargs={"depth": 10, "widen_factor": 1}, batch_size=8, mu=2,
                 ce_shape=(4096, 1000), ce_dtype=torch.float32, dot_models=("wrn28_2",), aug_images=64),
}

PLANTS = ("student-lr", "soft-ce")


# ---------------------------------------------------------------------------------------------
# Comparisons


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = float(b.norm())
    num = float((a - b).norm())
    if not math.isfinite(num):
        return math.inf
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def compare_updates(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                    ref_after: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Relative error of the update Δθ = after − before against ref_after − before: overall
    (all tensors as one vector) and the worst tensor.

    A tensor's error is ‖Δθ_i − Δθ_ref,i‖ / max(‖Δθ_ref,i‖, ‖Δθ_ref‖·√(n_i/N)): its own update,
    or its share of the whole update when its own is far smaller (a batch-norm bias followed by
    another batch norm gets a gradient that is mostly cancellation, ~1e-3 of its share: a
    relative error of that tiny update says nothing about the step)."""
    diffs: dict[str, tuple[float, float, int]] = {}
    num = den = 0.0
    total = 0
    for name, p0 in before.items():
        d = after[name].double() - p0.double()
        dr = ref_after[name].double() - p0.double()
        e2, r2 = float((d - dr).norm()) ** 2, float(dr.norm()) ** 2
        diffs[name] = (e2, r2, p0.numel())
        num, den, total = num + e2, den + r2, total + p0.numel()
    overall = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)
    if not math.isfinite(num):
        overall = math.inf
    per: dict[str, float] = {}
    for name, (e2, r2, n) in diffs.items():
        scale = max(math.sqrt(r2), math.sqrt(den * n / max(total, 1)))
        per[name] = math.sqrt(e2) / scale if scale > 0 else (0.0 if e2 == 0 else math.inf)
        if not math.isfinite(e2):
            per[name] = math.inf
    worst = max(per, key=lambda k: per[k]) if per else ""
    return {"overall": overall, "worst_param": worst, "worst_param_err": per.get(worst, 0.0),
            "update_norm": math.sqrt(den), "per_param": per}


def compare_step(run: dict[str, Any], ref: dict[str, Any], before: dict[str, Any], tol: StepTol) -> dict[str, Any]:
    """Metrics and both models' updates of ``run`` against ``ref`` (both from ``before``)."""
    problems: list[str] = []
    metrics: dict[str, dict[str, float]] = {}
    l_old = abs(ref["metrics"].get("student_loss_l_old", 1.0)) or 1.0
    for k in _COMMON_METRICS:
        if k not in run["metrics"] or k not in ref["metrics"]:
            continue
        a, b = run["metrics"][k], ref["metrics"][k]
        if k == "h":
            err = abs(a - b) / l_old
        elif k == "mask_rate":  # a fraction: compared absolutely
            err = abs(a - b)
        else:
            err = abs(a - b) / max(abs(b), 1e-12)
        if not math.isfinite(a):
            err = math.inf
        metrics[k] = {"value": a, "ref": b, "err": err}
        if not err <= tol.loss:
            problems.append(f"{k} {a:.6g} vs {b:.6g} (err {err:.2e} > {tol.loss:.1e})")
    updates = {}
    for model in ("teacher", "student"):
        u = compare_updates(before[model], run[model], ref[model])
        u.pop("per_param")
        updates[model] = u
        if not u["overall"] <= tol.update:
            problems.append(f"{model} Δθ rel err {u['overall']:.2e} > {tol.update:.1e}")
        if not u["worst_param_err"] <= tol.update_param:
            problems.append(f"{model} Δθ of {u['worst_param']} rel err {u['worst_param_err']:.2e} "
                            f"> {tol.update_param:.1e}")
    return {"ok": not problems, "problems": problems, "metrics": metrics, "updates": updates,
            "tolerance": tol.__dict__}


# ---------------------------------------------------------------------------------------------
# The identical state and the steps


def _make_model(cfg: GateConfig) -> torch.nn.Module:
    from mplfast.models import create_model

    return create_model(cfg.model, cfg.num_classes, **cfg.model_kwargs)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@dataclass
class State:
    """Everything a step reads, on the device: model states, momentum buffers by parameter
    name, MPLStep's state (t, baseline, generator), the batch and the UDA threshold."""

    teacher: dict[str, torch.Tensor]
    student: dict[str, torch.Tensor]
    t_mom: dict[str, torch.Tensor]
    s_mom: dict[str, torch.Tensor]
    step_state: dict[str, Any]
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    threshold: float


@contextlib.contextmanager
def _fp32_exact(device: torch.device) -> Iterator[None]:
    """TF32 and cuDNN's autotuner off (CUDA): fp32 convolutions really in fp32, one algorithm."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _mpl_config(kind: str, threshold: float, precision: str) -> Any:
    from mplfast import MPLConfig

    common = dict(temperature=0.7, threshold=threshold, lambda_u=8.0, uda_steps=1, label_smoothing=0.15)
    if kind == "port":
        return MPLConfig(**common, pseudo_label_view="weak", meta_sign=-1, precision="fp32", l_old_forward="concat")
    if kind == "graph":  # the benchmark's mplfast-graph: default unbiased L_old, bf16
        return MPLConfig(**common, precision=precision, l_old_forward="labeled")
    return MPLConfig(**common, precision=precision, l_old_forward="concat")  # the benchmark's


def _split(buf: torch.Tensor, b: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return buf[:b], buf[b:b + m], buf[b + m:]


def make_state(cfg: GateConfig) -> State:
    """Seeded models, one primer step of MPLStep (fp32) for real momentum buffers, and the batch."""
    from mplfast import MPLStep, param_groups
    from mplfast import perf

    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher, student = _make_model(cfg).to(device), _make_model(cfg).to(device)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    b, m, s = cfg.batch_size, cfg.mu * cfg.batch_size, cfg.image_size

    def batch() -> tuple[torch.Tensor, ...]:
        buf = torch.randn(b + 2 * m, 3, s, s, generator=g).to(device)
        if device.type == "cuda":  # the benchmark's batcher writes channels-last
            buf = buf.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, cfg.num_classes, (b,), generator=g).to(device)
        x_l, x_uw, x_us = _split(buf, b, m)
        return x_l, y, x_uw, x_us

    primer_batch, gate_batch = batch(), batch()
    kw = dict(lr=0.05, momentum=0.9, nesterov=True)
    t_opt = perf.make_sgd(param_groups(teacher, 5e-4), **kw)
    s_opt = perf.make_sgd(param_groups(student, 5e-4), **kw)
    with _fp32_exact(device):
        MPLStep(teacher, student, t_opt, s_opt, _mpl_config("bench", 0.3, "fp32"), seed=cfg.seed)(*primer_batch)
        # the threshold: midpoint of the widest gap between sorted confidences in the middle
        # half, computed as the step will (train mode, the concatenated batch) on a copy
        probe = copy.deepcopy(teacher).train()
        with torch.no_grad():
            x_l, y, x_uw, x_us = gate_batch
            z = probe(torch.cat([x_l, x_uw, x_us]))[b:b + m].float()
        conf = torch.softmax(z / 0.7, -1).max(-1).values.sort().values.cpu()
    lo, hi = len(conf) // 4, max(len(conf) // 4 + 1, (3 * len(conf)) // 4)
    gaps = conf[lo + 1:hi + 1] - conf[lo:hi]
    i = int(gaps.argmax())
    threshold = float(conf[lo + i] + conf[lo + i + 1]) / 2

    def moms(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        return {n: opt.state[p]["momentum_buffer"].detach().clone() for n, p in model.named_parameters()
                if "momentum_buffer" in opt.state.get(p, {})}

    return State(teacher={k: v.detach().clone() for k, v in teacher.state_dict().items()},
                 student={k: v.detach().clone() for k, v in student.state_dict().items()},
                 t_mom=moms(teacher, t_opt), s_mom=moms(student, s_opt),
                 step_state={"t": 1, "baseline": torch.zeros(()), "teacher_scaler": None,
                             "student_scaler": None,
                             "generator": torch.Generator(device=device).manual_seed(cfg.seed).get_state()},
                 batch=gate_batch, threshold=threshold)


def _load(model: torch.nn.Module, opt: torch.optim.Optimizer, sd: dict[str, torch.Tensor],
          mom: dict[str, torch.Tensor]) -> None:
    """The state into ``model`` and ``opt`` in place (a captured graph keeps its addresses)."""
    with torch.no_grad():
        model.load_state_dict(sd)
        for n, p in model.named_parameters():
            st = opt.state[p]
            if n not in mom:
                st.pop("momentum_buffer", None)
            elif "momentum_buffer" in st and st["momentum_buffer"] is not None:
                st["momentum_buffer"].copy_(mom[n])
            else:  # same layout as the parameter (channels-last convolutions)
                st["momentum_buffer"] = torch.empty_like(p).copy_(mom[n])


@dataclass
class StepRun:
    """A built step: ``run()`` takes one step on the state's batch and returns its metrics."""

    name: str
    teacher: torch.nn.Module
    student: torch.nn.Module
    restore: Callable[[State], None]
    run: Callable[[], dict[str, float]]
    warmup: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def build_mplstep(cfg: GateConfig, state: State, *, kind: str, precision: str, compile_mode: str = "none",
                  cuda_graph: bool = False, student_lr_factor: float = 1.0) -> StepRun:
    """MPLStep as step_throughput.build_mplfast builds it (channels-last on CUDA, fused SGD,
    ModelEMA before compiling, perf.maybe_compile of both models), on the gate's state."""
    from mplfast import MPLStep, ModelEMA, param_groups
    from mplfast import perf

    device = torch.device(cfg.device)
    models = []
    for sd in (state.teacher, state.student):
        mdl = _make_model(cfg).to(device)
        if device.type == "cuda":
            perf.to_channels_last(mdl)
        mdl.load_state_dict(sd)
        models.append(mdl)
    teacher, student = models
    decay_biases = kind == "port"
    lrs = (0.05, 0.05 * student_lr_factor)
    if cuda_graph:  # capturable: fused SGD with a device-tensor lr, as the benchmark's graph variant
        t_opt, s_opt = (torch.optim.SGD(param_groups(mdl, 5e-4), lr=torch.tensor(lr, device=device),
                                        momentum=0.9, nesterov=True, fused=True)
                        for mdl, lr in zip(models, lrs))
    else:
        t_opt, s_opt = (perf.make_sgd(param_groups(mdl, 5e-4, decay_biases=decay_biases), lr=lr,
                                      momentum=0.9, nesterov=True) for mdl, lr in zip(models, lrs))
    ema = ModelEMA(student, 0.995)
    if compile_mode == "default" and device.type == "cpu" and cfg.cpu_compile == "aot_eager":
        for mdl in models:
            mdl.compile(backend="aot_eager", dynamic=False)
        t_status = s_status = "aot_eager"
    else:
        _, t_status = perf.maybe_compile(teacher, compile_mode, warn=False)
        _, s_status = perf.maybe_compile(student, compile_mode, warn=False)
        if compile_mode not in ("none", None) and (t_status != compile_mode or s_status != compile_mode):
            raise RuntimeError(f"torch.compile(mode={compile_mode!r}) unavailable: {t_status}")
    step = MPLStep(teacher, student, t_opt, s_opt, _mpl_config(kind, state.threshold, precision),
                   student_ema=ema, seed=cfg.seed, cuda_graph=cuda_graph)

    def restore(s: State) -> None:
        _load(teacher, t_opt, s.teacher, s.t_mom)
        _load(student, s_opt, s.student, s.s_mom)
        step.load_state_dict(s.step_state)

    def run() -> dict[str, float]:
        perf.mark_step_begin()
        out = step(*state.batch)
        return {k: float(v) for k, v in out.items()}

    restore(state)
    warm = 0
    if compile_mode not in ("none", None):
        warm = 3  # compile; reduce-overhead: warm-up run, then the CUDA graphs' recording
    if cuda_graph and device.type == "cuda":
        warm = step._graphed.warmup + 1  # eager warm-up calls, then the capture
    return StepRun(kind, teacher, student, restore, run, warm,
                   {"compile": t_status, "precision": step.precision, "cuda_graph": cuda_graph})


def build_port(cfg: GateConfig, state: State) -> StepRun:
    """The benchmark's eager reference (eager_reference.EagerMPL) in fp32."""
    device = torch.device(cfg.device)
    teacher, student = _make_model(cfg), _make_model(cfg)
    teacher.load_state_dict({k: v.cpu() for k, v in state.teacher.items()})
    student.load_state_dict({k: v.cpu() for k, v in state.student.items()})
    ref = er.EagerMPL(teacher, student, device,
                      er.EagerConfig(warmup_steps=0, student_wait_steps=0, uda_steps=1, threshold=state.threshold,
                                     amp=False))

    def restore(s: State) -> None:
        _load(ref.teacher, ref.t_opt, s.teacher, s.t_mom)
        _load(ref.student, ref.s_opt, s.student, s.s_mom)
        ref.t = int(s.step_state["t"])

    def run() -> dict[str, float]:
        out = ref.step(*state.batch)
        return {k: float(v) for k, v in out.items()}

    restore(state)
    return StepRun("port", ref.teacher, ref.student, restore, run, 0, {"compile": "eager", "precision": "fp32"})


def take_step(sr: StepRun, state: State, device: torch.device) -> dict[str, Any]:
    """Warm-up steps (if any), the state back in place, then the compared step."""
    t0 = time.perf_counter()
    for _ in range(sr.warmup):
        sr.run()
    if sr.warmup:
        sr.restore(state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    metrics = sr.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"metrics": metrics, "teacher": _params(sr.teacher), "student": _params(sr.student),
            "warmup_s": t1 - t0, "step_s": time.perf_counter() - t1, "info": sr.info}


def step_checks(cfg: GateConfig, log: Callable[[str], None] = print,
                progress: Callable[[dict[str, Any]], None] = lambda r: None,
                variants: Collection[str] | None = None) -> dict[str, Any]:
    """Every step variant (or those in ``variants``) from one state, each against its reference.
    Returns ``{"variants": {variant: {"status": "ok" | "FAILED" | "not run: ...", ...}}, ...}``;
    ``progress`` gets the variants checked so far after each one."""
    from mplfast.precision import resolve_precision

    device = torch.device(cfg.device)
    state = make_state(cfg)
    names = {n for n, _ in _make_model(cfg).named_parameters()}
    before = {"teacher": {k: v for k, v in state.teacher.items() if k in names},
              "student": {k: v for k, v in state.student.items() if k in names}}
    prec = resolve_precision(cfg.precision, device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    s_lr = 1.01 if cfg.plant == "student-lr" else 1.0  # planted: the checked variants' student lr
    results: dict[str, Any] = {}
    refs: dict[str, dict[str, Any]] = {}

    def ref(key: str, build: Callable[[], StepRun], fp32: bool = False) -> dict[str, Any]:
        if key not in refs:
            with _fp32_exact(device) if fp32 else contextlib.nullcontext():
                refs[key] = take_step(build(), state, device)
        return refs[key]

    def check(variant: str, tol_name: str, build: Callable[[], StepRun], reference: str,
              ref_build: Callable[[], StepRun], needs_cuda: bool = False, fp32: bool = False) -> None:
        if variants is not None and variant not in variants:
            return
        if needs_cuda and not cuda:
            results[variant] = {"status": "not run: needs CUDA", "reference": reference}
            log(f"gate step {variant}: not run: needs CUDA")
            return
        t0 = time.perf_counter()
        try:
            r = ref(reference, ref_build, fp32)
            with _fp32_exact(device) if fp32 else contextlib.nullcontext():
                run = take_step(build(), state, device)
            c = compare_step(run, r, before, TOLERANCES[tol_name])
            c.update(status="ok" if c["ok"] else "FAILED", reference=reference, tolerance_class=tol_name,
                     info=run["info"], warmup_s=run["warmup_s"], seconds=time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run fails the gate
            c = {"ok": False, "status": "FAILED", "reference": reference,
                 "problems": [f"{type(exc).__name__}: {exc}"], "traceback": traceback.format_exc(limit=10)}
        results[variant] = c
        progress(results)
        log(f"gate step {variant} vs {reference}: {c['status']}" + (
            "" if c.get("ok") else f": {'; '.join(c['problems'])}") + _brief(c))

    def mk(kind: str, precision: str, **kw: Any) -> Callable[[], StepRun]:
        return lambda: build_mplstep(cfg, state, kind=kind, precision=precision, **kw)

    check("eager", "fp32", lambda: build_port(cfg, state), "mplstep-eager-port-fp32", mk("port", "fp32"), fp32=True)
    if "eager" in results:  # the same step on batches loaded beforehand
        results["eager-prefetched"] = {**results["eager"], "same_as": "eager"}
    if prec == "fp32":
        check("mplfast-eager", "fp32", mk("bench", "fp32", student_lr_factor=s_lr), "mplstep-eager-fp32",
              mk("bench", "fp32"), fp32=True)
    else:  # the precision's own rounding against the same step in fp32
        check("mplfast-eager", prec, mk("bench", prec, student_lr_factor=s_lr), "mplstep-eager-fp32",
              mk("bench", "fp32"), fp32=True)
    # The headline variant first, the diagnostic ones after it: a gate cut short by its stage's
    # time cap has checked what matters most (the rest are reported unchecked).
    eager_ref = f"mplstep-eager-{prec}"
    check("mplfast", prec, mk("bench", prec, compile_mode="reduce-overhead", student_lr_factor=s_lr),
          eager_ref, mk("bench", prec), needs_cuda=True)
    check("mplfast-graph", "bf16", mk("graph", "bf16", cuda_graph=True, student_lr_factor=s_lr),
          "mplstep-eager-graph-config-bf16", mk("graph", "bf16"), needs_cuda=True)
    check("mplfast-inductor", prec, mk("bench", prec, compile_mode="default", student_lr_factor=s_lr),
          eager_ref, mk("bench", prec))
    return {"variants": results, "threshold": state.threshold, "precision": prec,
            "mask_rate": refs.get(eager_ref, {}).get("metrics", {}).get("mask_rate")}


def _brief(c: dict[str, Any]) -> str:
    u = c.get("updates")
    if not u:
        return ""
    worst_loss = max((m["err"] for m in c.get("metrics", {}).values()), default=0.0)
    return (f" [Δθ err teacher {u['teacher']['overall']:.1e} (worst tensor {u['teacher']['worst_param_err']:.1e}), "
            f"student {u['student']['overall']:.1e} (worst tensor {u['student']['worst_param_err']:.1e}), "
            f"worst metric err {worst_loss:.1e}]")


# ---------------------------------------------------------------------------------------------
# Ops


def _backends(op: str, device: torch.device) -> list[tuple[str, bool | str]]:
    """(backend, True or why it cannot run) for every backend of ``op`` on ``device``."""
    from mplfast import _backends as B

    out = []
    for name in B.OPS[op].backends:
        try:
            B.resolve_backend(name, device, op)
            out.append((name, True))
        except Exception as exc:  # noqa: BLE001
            out.append((name, str(exc).split("\n")[0]))
    return out


def _op_entry(op: str, backend: str, shape: str, dtype: Any, **kw: Any) -> dict[str, Any]:
    return {"op": op, "backend": backend, "shape": shape, "dtype": str(dtype).replace("torch.", ""), **kw}


def _perturb(op: str, backend: str, plant: str | None) -> float:
    return 1.01 if plant == "soft-ce" and op == "soft_ce" and backend != "reference" else 1.0


def op_checks(cfg: GateConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every fused op x backend at the benchmark shapes, forward and backward, against the
    reference backend in float64 on the same rounded inputs."""
    import mplfast

    device = torch.device(cfg.device)
    rows: list[dict[str, Any]] = []
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 7)
    n, c = cfg.ce_shape
    dt = cfg.ce_dtype
    z = (torch.randn(n, c, generator=g) * 3).to(device=device, dtype=dt)
    y = torch.randint(0, c, (n,), generator=g).to(device)
    weak = (torch.randn(n, c, generator=g) * 12).to(device=device, dtype=dt)
    shape = f"{n}x{c}"
    tol = OP_TOL[dt]

    def loss_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().clone().requires_grad_()
        loss = fn(x)
        loss.backward()
        return loss.detach(), x.grad.detach()

    fns = {
        "soft_ce": lambda x, b: mplfast.soft_cross_entropy(x, y, label_smoothing=0.1, backend=b),
        "uda": lambda x, b, w=weak: mplfast.uda_loss(w.to(x.dtype), x, temperature=0.7, threshold=0.6, backend=b)[0],
    }
    ops = {"soft_ce": "soft_cross_entropy", "uda": "uda_loss"}
    for name, fn in fns.items():
        ref_loss, ref_grad = loss_and_grad(lambda x, fn=fn: fn(x, "reference"), z.double())
        for backend, avail in _backends(ops[name], device):
            if avail is not True:
                rows.append(_op_entry(name, backend, shape, dt, status=f"not run: {avail}"))
                continue
            try:
                k = _perturb(name, backend, cfg.plant)
                loss, grad = loss_and_grad(lambda x, fn=fn, b=backend: fn(x, b) * k, z)
                e_f, e_b = _rel(loss.reshape(1), ref_loss.reshape(1)), _rel(grad, ref_grad)
                ok = e_f <= tol and e_b <= tol and bool(torch.isfinite(grad).all())
                rows.append(_op_entry(name, backend, shape, dt, status="ok" if ok else "FAILED",
                                      fwd_err=e_f, bwd_err=e_b, tol=tol))
            except Exception as exc:  # noqa: BLE001
                rows.append(_op_entry(name, backend, shape, dt, status="FAILED", error=f"{type(exc).__name__}: {exc}"))
            log(_op_line(rows[-1]))
    for model in cfg.dot_models:
        from mplfast.models import create_model

        shapes = [p.shape for p in create_model(model, 1000 if model == "resnet50" else 10).parameters()]
        xs, ys, olds = ([torch.randn(s, generator=g).to(device) for s in shapes] for _ in range(3))
        numel = sum(x.numel() for x in xs)
        for op in ("grad_dot", "grad_dot_delta"):
            args = (xs, ys) if op == "grad_dot" else (xs, ys, olds)
            d_args = [[t.double() for t in lst] for lst in args]
            prods = ([a * b for a, b in zip(*d_args)] if op == "grad_dot"
                     else [a * (b - o) for a, b, o in zip(*d_args)])
            ref = sum(float(p.sum()) for p in prods)
            scale = math.sqrt(sum(float((p * p).sum()) for p in prods))
            fn = getattr(mplfast, op)
            for backend, avail in _backends(op, device):
                sh = f"{model} params ({len(shapes)} tensors, {numel / 1e6:.2f} M)"
                if avail is not True:
                    rows.append(_op_entry(op, backend, sh, torch.float32, status=f"not run: {avail}"))
                    continue
                try:
                    got = float(fn(*args, backend=backend))
                    err = abs(got - ref) / scale
                    ok = err <= GRAD_DOT_TOL
                    rows.append(_op_entry(op, backend, sh, torch.float32, status="ok" if ok else "FAILED",
                                          fwd_err=err, tol=GRAD_DOT_TOL))
                except Exception as exc:  # noqa: BLE001
                    rows.append(_op_entry(op, backend, sh, torch.float32, status="FAILED",
                                          error=f"{type(exc).__name__}: {exc}"))
                log(_op_line(rows[-1]))
    rows += _augment_checks(cfg, g, log)
    return rows


def _augment_checks(cfg: GateConfig, g: torch.Generator, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each augmentation backend at the benchmark's batch against the reference, bit for bit.

    The reference runs image by image (host-side parameter reads: seconds per batch on a GPU),
    so it writes the first ``REF_IMAGES`` images only; image j draws its parameters at counter
    j whatever the batch size, so those equal the first images of the full batch. Every other
    backend writes the whole batch, and must equal the reference there and the torch path
    (itself bit-exact with the reference, tests/test_augment.py) everywhere."""
    from mplfast.augment import Policy, augment_view

    device = torch.device(cfg.device)
    s, n = cfg.image_size, cfg.aug_images
    k = min(n, REF_IMAGES)
    images = torch.randint(0, 256, (max(2 * n, 256), s, s, 3), generator=g, dtype=torch.uint8).to(device)
    index = torch.randperm(images.shape[0], generator=g)[:n].to(device)
    policies = {"weak": Policy(s, s, True), "strong": Policy(s, s, True, n_ops=2, magnitude=16.0, cutout=0.5)}
    avail = _backends("augment", device)
    rows = []
    for view, pol in policies.items():
        def run(backend: str, count: int) -> torch.Tensor:
            out = torch.full((count, 3, s, s), float("nan"), device=device).contiguous(memory_format=torch.channels_last)
            augment_view(out, images, index[:count], pol, seed=cfg.seed, step=3, view=1 if view == "weak" else 2,
                         id_offset=0, mean=er.CIFAR_MEAN, std=er.CIFAR_STD, backend=backend)
            return out

        want = run("reference", k)
        torch_all = run("torch", n) if dict(avail).get("torch") is True else None
        shape = f"{n}x{s}x{s}x3 {view}"
        for backend, ok in avail:
            if backend == "reference":
                continue
            if ok is not True:
                rows.append(_op_entry("augment", backend, shape, torch.float32, status=f"not run: {ok}"))
                continue
            try:
                got = torch_all if backend == "torch" else run(backend, n)
                written = bool(torch.isfinite(got).all())
                mism = int((got[:k] != want).sum())
                if torch_all is not None and backend != "torch":
                    mism += int((got != torch_all).sum())
                err = float((got[:k] - want).abs().max()) if written else math.inf
                rows.append(_op_entry("augment", backend, shape, torch.float32,
                                      status="ok" if written and mism == 0 else "FAILED",
                                      fwd_err=err, mismatched=mism, tol=0.0))
            except Exception as exc:  # noqa: BLE001
                rows.append(_op_entry("augment", backend, shape, torch.float32, status="FAILED",
                                      error=f"{type(exc).__name__}: {exc}"))
            log(_op_line(rows[-1]))
    return rows


def _op_line(r: dict[str, Any]) -> str:
    errs = " ".join(f"{k}={r[k]:.2e}" for k in ("fwd_err", "bwd_err") if k in r)
    return f"gate op {r['op']} [{r['backend']}] {r['shape']} {r['dtype']}: {r['status']} {errs} {r.get('error', '')}".rstrip()


# ---------------------------------------------------------------------------------------------
# Report


def run_gate(cfg: GateConfig, *, steps: bool = True, ops: bool = True,
             log: Callable[[str], None] = print, json_path: str | None = None) -> dict[str, Any]:
    """Step and op checks; with ``json_path`` the results so far are written there (marked
    ``"partial": true``) after every step check and after the ops, so a gate cut short by a
    time limit still reports what it checked."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"device": cfg.device, "model": cfg.model, "batch_size": cfg.batch_size, "mu": cfg.mu,
                           "tolerances": {k: v.__dict__ for k, v in TOLERANCES.items()},
                           "op_tolerances": {str(k).replace("torch.", ""): v for k, v in OP_TOL.items()},
                           "grad_dot_tolerance": GRAD_DOT_TOL, "plant": cfg.plant}
    def partial(variants: dict[str, Any] | None = None) -> None:
        if json_path:
            snap = dict(out, partial=True)
            if variants is not None:
                snap["steps"] = {"variants": variants}
            Path(json_path).write_text(json.dumps(snap, indent=1, default=str))

    if steps:
        out["steps"] = step_checks(cfg, log, partial)
        partial()
    if ops:
        out["ops"] = op_checks(cfg, log)
    fails = [f"step {v}: {'; '.join(r.get('problems', []))}"
             for v, r in out.get("steps", {}).get("variants", {}).items() if r["status"] == "FAILED"
             and v != "eager-prefetched"]
    fails += [f"op {r['op']} [{r['backend']}] {r['shape']}: " + (r.get("error") or
              f"fwd {r.get('fwd_err', 0):.2e}, bwd {r.get('bwd_err', 0):.2e} > {r.get('tol')}")
              for r in out.get("ops", []) if r["status"] == "FAILED"]
    out["failures"] = fails
    out["ok"] = not fails
    out["invalid_variants"] = sorted(v for v, r in out.get("steps", {}).get("variants", {}).items()
                                     if r["status"] == "FAILED")
    out["invalid_ops"] = sorted({(r["op"], r["backend"]) for r in out.get("ops", []) if r["status"] == "FAILED"})
    out["seconds"] = time.perf_counter() - t0
    return out


def gate_markdown(res: dict[str, Any]) -> str:
    """The gate's section of summary.md; its first line is ``gate: ok`` or ``gate: FAILED ...``."""
    head = "gate: ok" if res.get("ok") else "gate: FAILED (" + "; ".join(res.get("failures", []))[:2000] + ")"
    lines = [head, "", f"## Gate ({res['device']}, {res['model']} B={res['batch_size']} μ={res['mu']}, "
             f"{res.get('seconds', 0):.0f} s)", ""]
    st = res.get("steps")
    if st:
        lines += [f"One step from one state (UDA threshold {st['threshold']:.4f}, mask rate "
                  f"{st['mask_rate'] if st['mask_rate'] is None else round(st['mask_rate'], 3)}); "
                  "errors relative to the reference's update / loss:", "",
                  "| variant | status | ran as | reference | tol | Δθ teacher | Δθ student | worst tensor | worst metric |",
                  "|---|---|---|---|---|---:|---:|---:|---:|"]
        for v, r in st["variants"].items():
            u = r.get("updates")
            if u:
                wt = max(u["teacher"]["worst_param_err"], u["student"]["worst_param_err"])
                wm = max((m["err"] for m in r.get("metrics", {}).values()), default=0.0)
                nums = f"{u['teacher']['overall']:.1e} | {u['student']['overall']:.1e} | {wt:.1e} | {wm:.1e}"
            else:
                nums = " | | | "
            info = r.get("info") or {}
            ran = f"{info.get('compile', '')} {info.get('precision', '')}".strip()
            lines.append(f"| {v} | {r['status']} | {ran} | {r.get('reference', '')} | {r.get('tolerance_class', '')} | {nums} |")
    if res.get("ops"):
        lines += ["", "| op | backend | shape | dtype | status | fwd err | bwd err | tol |", "|---|---|---|---|---|---:|---:|---:|"]
        for r in res["ops"]:
            f = lambda k: f"{r[k]:.1e}" if k in r else ""  # noqa: E731
            lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {r['dtype']} | {r['status']}"
                         f"{' ' + r['error'][:80] if 'error' in r else ''} | {f('fwd_err')} | {f('bwd_err')} | {f('tol')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="full (the benchmark's WRN-28-2 B=64 mu=7 and CUDA op shapes) or tiny")
    p.add_argument("--precision", default="auto", help="the compared steps' precision (default: the benchmark's)")
    p.add_argument("--only", choices=("steps", "ops"), default=None)
    p.add_argument("--cpu-compile", choices=("aot_eager", "inductor"), default="aot_eager",
                   help="CPU: compile mplfast-inductor's models with this backend (inductor: minutes)")
    p.add_argument("--plant", choices=PLANTS, default=None,
                   help="plant a bug (for testing the gate itself): student lr x1.01, or soft-CE x1.01")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    preset = args.preset or ("full" if torch.device(args.device).type == "cuda" else "tiny")
    cfg = GateConfig(device=args.device, precision=args.precision, plant=args.plant, cpu_compile=args.cpu_compile,
                     **PRESETS[preset])
    res = run_gate(cfg, steps=args.only != "ops", ops=args.only != "steps", json_path=args.json)
    _tables.write_results(res, gate_markdown(res), args.json, args.markdown)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
