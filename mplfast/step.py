"""``MPLStep``: one Meta Pseudo Labels update of teacher and student, as a drop-in library step.

The order of operations is exactly the one fixed by the algorithm page, ``docs/algorithm.md``
(steps 1-10): ``MPLStep._step`` is that numbered list, one method per step. The hot path does
not call ``.item()`` or any other host sync of its own (a GradScaler's ``step`` syncs
internally, as it always does).

Soft pseudo labels (``pseudo_label="soft"``) get the exact first-order meta-gradient instead
of the released official code's zero-gradient term; see ``_soft_meta_grad`` for the math and
the choice of the step size.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from mplfast.config import MPLConfig
from mplfast.distributed import all_reduce_mean_, unwrap
from mplfast.ops import grad_dot_delta, soft_cross_entropy, uda_loss
from mplfast.precision import autocast, resolve_precision
from mplfast.replay import replay_for

def _first_param_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise ValueError("MPLStep: a model without parameters cannot be trained")


def _consecutive(parts: tuple[Tensor, ...]) -> Tensor | None:
    """If ``parts`` are consecutive dim-0 slices of one buffer, a view of that span, else None.

    The batcher writes [x_l; x_uw; x_us] into one buffer; viewing it avoids a torch.cat copy.
    """
    a = parts[0]
    if any(p.requires_grad for p in parts) or a.dim() == 0:
        return None
    try:
        storage = a.untyped_storage().data_ptr()
    except RuntimeError:  # tensors without storage (e.g. some subclasses)
        return None
    stride0, item = a.stride(0), a.element_size()
    ptr = a.data_ptr() + a.shape[0] * stride0 * item
    for p in parts[1:]:
        if (p.dtype != a.dtype or p.device != a.device or p.shape[1:] != a.shape[1:]
                or p.stride() != a.stride() or p.untyped_storage().data_ptr() != storage
                or p.data_ptr() != ptr):
            return None
        ptr += p.shape[0] * stride0 * item
    n = sum(p.shape[0] for p in parts)
    return a.as_strided((n, *a.shape[1:]), a.stride(), a.storage_offset())


@contextlib.contextmanager
def _batch_stats_only(model: nn.Module) -> Iterator[None]:
    """Batch norm uses batch statistics but neither reads nor updates its running buffers.

    The soft-label JVP re-runs the student's training-mode forward; the running statistics
    must not be updated a second time (and functorch cannot mutate them anyway).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.training and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _replayed_jvp(fn: Any, primals: dict[str, Tensor], tangents: dict[str, Tensor], rng: Any,
                  module: nn.Module) -> Tensor:
    """The tangent of ``fn`` at ``primals`` along ``tangents``, with ``rng``'s dropout masks
    replayed and batch statistics that leave the running buffers alone.

    Called through ``torch.compiler.disable`` (``MPLStep._jvp``, made for soft-label steps only,
    since it imports Dynamo, ~1 s): always eager, one graph break in a compiled soft-label step,
    because Dynamo fails on forward-mode AD through a module's views (an internal assert in
    torch 2.13's fake tensors).
    """
    with rng.replay(), _batch_stats_only(module), torch.no_grad():
        return jvp(fn, (primals,), (tangents,))[1]


def _hi(t: Tensor) -> Tensor:
    """At least float32 (float64 stays float64): the meta-gradient math precision."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _HLimitWatch:
    """Warns once when a step's h was beyond ``MPLConfig.h_limit``, without a host sync in the
    step: each call queues a copy of [rejected, L_old, L_new] into pinned host memory behind a
    CUDA event, and a later call reads it once the event has completed (CPU tensors are read at
    once). A compiled step skips this (Dynamo would break the graph on the host read)."""

    def __init__(self, device: torch.device) -> None:
        self.warned = False
        self._cuda = device.type == "cuda"
        self._pending: list[tuple[Tensor, Any, int]] = []

    def __call__(self, out: dict[str, Tensor], t: int) -> None:
        if self.warned:
            return
        vals = torch.stack([out["h_rejected"], out["student_loss_l_old"].float(),
                            out["student_loss_l_new"].float()]).detach()
        if self._cuda:
            host = torch.empty(3, dtype=torch.float32, pin_memory=True)
            host.copy_(vals, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event, t))
            done, waiting = [], []
            for p in self._pending:  # one query per event: it may complete between two
                (done if p[1].query() else waiting).append(p)
            self._pending = waiting[-8:]
        else:
            done = [(vals, None, t)]
        for host, _, step in done:
            rejected, l_old, l_new = host.tolist()
            if rejected and not self.warned:
                self.warned = True
                warnings.warn(
                    f"MPLStep: at step {step} the student's update moved its labeled loss from "
                    f"{l_old:.3g} to {l_new:.3g}, beyond h_limit, so the teacher got h = 0 for "
                    "that step. The student is learning at full rate from pseudo labels of a "
                    "teacher that has not learned yet: hold the student back at the start, e.g. "
                    "student_scheduler=mplfast.warmup_cosine_schedule(student_optimizer, "
                    "warmup_steps=..., total_steps=..., wait_steps=...)", RuntimeWarning,
                    stacklevel=3)


@dataclass
class _SoftState:
    """What steps 5-7 leave for step 9's exact soft meta-gradient (``_soft_meta_grad``)."""

    x_s: Tensor                              # step 5: the update forward's input [x_l; x_us]
    B: int                                   # rows of x_l in x_s
    rng: Any                                 # step 5: replays that forward's dropout masks
    old: list[Tensor] | None = None          # step 6: theta before the update
    lr_k: list[float | Tensor] | None = None  # step 6: -d theta'/d g per parameter
    g_u: list[Tensor | None] = field(default_factory=list)  # step 6: the (clipped) update gradient
    grad_norm: Tensor | None = None          # step 6: its norm before clipping
    v: list[Tensor] | None = None            # step 7: grad L_new(theta')
    inv_scale: Tensor | None = None          # step 7: 1 / the fp16 loss scale of v


class MPLStep:
    """One MPL update of ``teacher`` and ``student`` (both updated in place).

    Args:
        teacher, student: classifiers mapping images [N, C, H, W] to logits [N, num_classes];
            may be DDP-wrapped. Both are put in training mode by each call.
        teacher_optimizer, student_optimizer: their optimizers.
        cfg: ``MPLConfig``.
        teacher_scheduler, student_scheduler: stepped once per call, at its end (nothing in the
            step reads a learning rate after its optimizer's step).
        student_ema: optional ``ModelEMA`` (anything with ``.update(model, step)``), updated
            after the student's step.
        seed: seed of the step's own generator for ``pseudo_label="sample"``.
        cuda_graph: capture the whole step in one CUDA graph after ``cuda_graph_warmup`` eager
            steps (``mplfast.cuda_graph``: static inputs, capturable optimizers with tensor lrs,
            bf16 only; fp16 and other unsupported settings raise ValueError; without a CUDA
            device it warns once and runs eagerly). The returned metrics are then the graph's
            static outputs, overwritten by the next call: clone what you keep.

    Semantics beyond the spec's text (all documented choices):
      - ``pseudo_label="soft"``: the teacher's MPL term is the exact first-order meta-gradient
        d L_l(theta'(p)) / d theta_T (``_soft_meta_grad``), times ``meta_sign * meta_scale``; it needs a
        ``torch.optim.SGD`` student optimizer (fused/foreach fine; its update rule is what is
        differentiated), other optimizers raise ValueError. ``meta_signal`` then only selects
        the reported ``h`` (``"none"`` still disables the term: the plain-UDA ablation) and the
        baseline does not enter the soft gradient (it is exact, there is no variance to reduce).
      - ``pseudo_label_view="weak"`` with ``"sample"``: the student's label is drawn from
        softmax(z_uw); the teacher's MPL term uses argmax z_us, as the spec states for "weak".
      - A skipped fp16 student step (or non-finite fp16 gradients of L_new) gives h = 0 for the
        step and leaves the moving baseline unchanged.
      - Distributed: h is all-reduced right after it is computed, before sign and baseline.
        Both are linear, so the h applied is the same as averaging last, and the baseline state
        stays identical on every rank.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        teacher_optimizer: torch.optim.Optimizer,
        student_optimizer: torch.optim.Optimizer,
        cfg: MPLConfig,
        teacher_scheduler: Any = None,
        student_scheduler: Any = None,
        student_ema: Any = None,
        *,
        seed: int = 0,
        cuda_graph: bool = False,
        cuda_graph_warmup: int = 3,
    ) -> None:
        if not isinstance(cfg, MPLConfig):
            raise TypeError(f"MPLStep: cfg must be an MPLConfig, got {type(cfg).__name__}")
        self.teacher, self.student = teacher, student
        self.teacher_optimizer, self.student_optimizer = teacher_optimizer, student_optimizer
        self.teacher_scheduler, self.student_scheduler = teacher_scheduler, student_scheduler
        self.student_ema = student_ema
        self.cfg = cfg
        self.t = 0
        self.device = _first_param_device(student)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.precision in ("bf16", "fp16") and self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"MPLStep: precision {self.precision!r} is not supported on {self.device.type}")
        fp16 = self.precision == "fp16"
        self.teacher_scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.student_scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._student_params = [p for p in student.parameters() if p.requires_grad]
        # h, its baseline and the reported losses: at least float32, float64 for a float64 student
        # (never rounded to float32: that left h with relative errors ~3e-5).
        self._hdtype = torch.promote_types(self._student_params[0].dtype if self._student_params
                                           else torch.float32, torch.float32)
        self.baseline = torch.zeros((), dtype=self._hdtype, device=self.device)
        self._teacher_params = [p for p in teacher.parameters() if p.requires_grad]
        # Soft labels with a meta signal: the exact soft meta-gradient (steps 5-9, _SoftState).
        self._soft_meta = cfg.pseudo_label == "soft" and cfg.meta_signal != "none"
        if self._soft_meta:
            if not isinstance(student_optimizer, torch.optim.SGD):
                raise ValueError(
                    "MPLStep: pseudo_label='soft' computes the exact meta-gradient through the "
                    "student's SGD update and needs a torch.optim.SGD student optimizer, got "
                    f"{type(student_optimizer).__name__}; use pseudo_label='hard' or 'sample', or "
                    "meta_signal='none' (plain UDA teacher)"
                )
        self._need_snapshot = cfg.meta_signal == "grad_dot" or self._soft_meta
        self._jvp = torch.compiler.disable(_replayed_jvp) if self._soft_meta else _replayed_jvp
        self._snapshot: list[Tensor] | None = None  # per-parameter views of one flat buffer
        self._flat: list[Tensor] = []
        self._ema_in_step = True  # the EMA update runs in step 6, right after the student's step
        self._t_dev: Tensor | None = None  # device step counter (CUDA graphs: the UDA ramp reads it)
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"MPLStep: cuda_graph must be a bool, got {cuda_graph!r}")
        self._h_watch = _HLimitWatch(self.device)
        self._graphed = None
        if cuda_graph:
            from mplfast.cuda_graph import GraphedStep

            self._graphed = GraphedStep(self, cuda_graph_warmup)

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def _rng_replay(self) -> Any:
        """An object whose ``first()`` context runs a forward and whose ``replay()`` context
        makes a later forward draw the same dropout masks (``mplfast.replay``: the RNG state
        eagerly, the recorded masks under ``torch.compile``)."""
        return replay_for(self.device)

    def _take_snapshot(self) -> list[Tensor]:
        """Copy the student's parameters into one flat buffer per dtype; returns shaped views."""
        params = self._student_params
        if self._snapshot is None:
            by_dtype: dict[torch.dtype, list[int]] = {}
            for i, p in enumerate(params):
                by_dtype.setdefault(p.dtype, []).append(i)
            views: list[Tensor | None] = [None] * len(params)
            for dtype, idx in by_dtype.items():
                flat = torch.empty(sum(params[i].numel() for i in idx), dtype=dtype, device=self.device)
                self._flat.append(flat)
                off = 0
                for i in idx:
                    n = params[i].numel()
                    views[i] = flat[off:off + n].view(params[i].shape)
                    off += n
            self._snapshot = views  # type: ignore[assignment]
        with torch.no_grad():
            torch._foreach_copy_(self._snapshot, params)
        return self._snapshot  # type: ignore[return-value]

    def _grad_dot_delta(self, v: list[Tensor], new: list[Tensor], old: list[Tensor] | None) -> Tensor:
        """sum_i <v_i, new_i - old_i>, 0-dim, at least float32.

        The fused op returns float32 by contract; a float64 student gets the same sum from
        plain float64 torch ops instead, so h keeps float64 precision.
        """
        assert old is not None
        if self._hdtype != torch.float64:
            return grad_dot_delta(v, new, old)
        delta = torch._foreach_sub(new, old)
        return torch.stack([(d * g.to(d.dtype)).sum() for d, g in zip(delta, v)]).sum()

    # ------------------------------------------------------------------ the step
    def __call__(self, x_l: Tensor, y_l: Tensor, x_uw: Tensor, x_us: Tensor) -> dict[str, Tensor]:
        """One MPL step.

        Args:
            x_l: labeled images [B, C, H, W]; y_l: int64 labels [B].
            x_uw, x_us: weak and strong views of the same unlabeled images [muB, C, H, W].
        Returns:
            dict of detached 0-dim tensors, float32 (float64 for float64 models): teacher_loss
            (L_T), teacher_loss_l (L_sup), uda_loss (unweighted L_uda), uda_weight (w_t),
            mpl_loss (L_mpl), student_loss (L_S), student_loss_l_old, student_loss_l_new,
            h (as applied to the teacher, after sign, baseline and distributed mean),
            mask_rate, student_moved (1, or 0 for a skipped step), h_rejected (1 when |h| was
            beyond ``cfg.h_limit`` and the teacher got h = 0, else 0).
        """
        B, M = x_l.shape[0], x_uw.shape[0]
        if x_us.shape[0] != M:
            raise ValueError(f"MPLStep: x_uw has {M} rows but x_us has {x_us.shape[0]}")
        if y_l.shape != (B,):
            raise ValueError(f"MPLStep: y_l must have shape [{B}], got {tuple(y_l.shape)}")
        if self._graphed is not None:
            out = self._graphed(x_l, y_l, x_uw, x_us)
        else:
            out = self._step(x_l, y_l, x_uw, x_us)
            self._after_step()
        if self.cfg.h_limit is not None and not torch.compiler.is_compiling():
            self._h_watch(out, self.t - 1)
        return out

    def _step(self, x_l: Tensor, y_l: Tensor, x_uw: Tensor, x_us: Tensor) -> dict[str, Tensor]:
        """Steps 1-10 of the spec, one call each; no host sync."""
        cfg = self.cfg
        self.teacher.train()
        self.student.train()
        # 1. One teacher forward on [x_l; x_uw; x_us] (batch-norm statistics over all three).
        z_l, z_uw, z_us = self._teacher_forward(x_l, x_uw, x_us)
        # 2. Teacher supervised loss with label smoothing.
        l_sup = _hi(soft_cross_entropy(z_l, y_l, label_smoothing=cfg.label_smoothing))
        # 3. UDA consistency loss (fused op; divisor is the full muB), ramped weight.
        l_uda, mask_rate = uda_loss(z_uw, z_us, temperature=cfg.temperature, threshold=cfg.threshold)
        l_uda, w_uda = _hi(l_uda), self._uda_weight()
        # 4. Pseudo labels: the student's target and the label the teacher's MPL term uses.
        target, y_teacher = self._pseudo_labels(z_uw, z_us)
        if torch.compiler.is_compiling():
            # The teacher's graph ends here. AOTAutograd turns each compiled graph into one
            # autograd node, so teacher and student forwards in one graph would share it, and
            # step 6's backward would free the saved tensors step 10's backward needs.
            torch._dynamo.graph_break()
        # 5. L_old, and the student forward on [x_l; x_us] with its loss L_S.
        l_old, l_s, same_as_l_old, soft = self._student_forward(x_l, x_us, y_l, target)
        # 6. Student update (backward, clip, step, EMA); the snapshot theta for h and soft.
        old, moved = self._student_update(l_s, soft)
        # 7. L_new on the same labeled batch (and its gradient v when h or soft needs it).
        l_new, v, inv_scale = self._student_l_new(x_l, y_l, same_as_l_old, soft)
        # 8. Meta signal h (never differentiated through).
        h, h_rejected = self._meta_signal(l_old, l_new, v, old, moved, inv_scale)
        # 9. Teacher MPL loss.
        l_mpl = self._mpl_loss(h, z_us, y_teacher, soft, moved)
        # 10. Teacher update.
        l_t = self._teacher_update(l_sup + w_uda * l_uda + l_mpl)
        return {
            "teacher_loss": _hi(l_t.detach()),
            "teacher_loss_l": l_sup.detach(),
            "uda_loss": l_uda.detach(),
            "uda_weight": torch.as_tensor(w_uda, dtype=torch.float32, device=self.device).reshape(()),
            "mpl_loss": _hi(l_mpl.detach()),
            "student_loss": _hi(l_s.detach()),
            "student_loss_l_old": l_old,
            "student_loss_l_new": l_new,
            "h": h.detach(),
            "mask_rate": mask_rate.detach().to(torch.float32),
            "student_moved": moved,
            "h_rejected": h_rejected,
        }

    def _after_step(self) -> None:
        """Host-side bookkeeping once the step's work is queued: schedulers and the counter
        (and, under a CUDA graph, the student's EMA).

        Stepping the schedulers here rather than right after each optimizer step changes
        nothing: nothing later in the step reads either learning rate.
        """
        if self.student_ema is not None and not self._ema_in_step:
            self.student_ema.update(self.student, self.t)
        if self._t_dev is not None:
            self._t_dev.add_(1)
        if self.student_scheduler is not None:
            self.student_scheduler.step()
        if self.teacher_scheduler is not None:
            self.teacher_scheduler.step()
        self.t += 1

    # ------------------------------------------------------------------ steps 1-10
    def _teacher_forward(self, x_l: Tensor, x_uw: Tensor, x_us: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Step 1: logits (z_l, z_uw, z_us) from one forward over the concatenated batch."""
        self.teacher_optimizer.zero_grad(set_to_none=True)
        x_all = _consecutive((x_l, x_uw, x_us))
        if x_all is None:
            x_all = torch.cat([x_l, x_uw, x_us])
        with self._autocast():
            z = self.teacher(x_all)
        B, M = x_l.shape[0], x_uw.shape[0]
        return z[:B], z[B:B + M], z[B + M:]

    def _uda_weight(self) -> float | Tensor:
        """Step 3: w_t = lambda_u * min(1, (t + 1) / uda_steps)."""
        cfg = self.cfg
        if self._t_dev is not None:  # a device tensor, so that a captured graph follows t
            return ((self._t_dev + 1) / cfg.uda_steps).clamp(max=1.0) * cfg.lambda_u
        return cfg.lambda_u * min(1.0, (self.t + 1) / cfg.uda_steps)

    def _pseudo_labels(self, z_uw: Tensor, z_us: Tensor) -> tuple[Tensor, Tensor | None]:
        """Step 4: (the student's target, the teacher's MPL label; None for soft targets).

        Soft: softmax(z_us) [muB, C], at least fp32. Hard: argmax, or a draw from the softmax
        (``sample``), int64 [muB]; ``pseudo_label_view="weak"`` takes the student's label from
        z_uw while the teacher's MPL term keeps argmax z_us (reproduces the most used port).
        """
        cfg = self.cfg
        if cfg.pseudo_label == "soft":
            return torch.softmax(_hi(z_us.detach()), dim=-1), None
        if cfg.pseudo_label_view == "weak":
            return self._hard_labels(z_uw), z_us.detach().argmax(dim=-1)
        y = self._hard_labels(z_us)  # the student trains on exactly the label the teacher is rewarded for
        return y, y

    def _hard_labels(self, z: Tensor) -> Tensor:
        """Hard labels [N] int64 from logits z [N, C]: argmax, or a draw from softmax(z)."""
        if self.cfg.pseudo_label == "sample":
            probs = torch.softmax(_hi(z.detach()), dim=-1)
            return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        return z.detach().argmax(dim=-1)

    def _student_forward(self, x_l: Tensor, x_us: Tensor, y_l: Tensor, target: Tensor
                         ) -> tuple[Tensor, Tensor, Any, _SoftState | None]:
        """Step 5: (L_old, L_S, how to repeat L_old's forward in step 7, soft-label state).

        L_old and L_new are losses of at-least-fp32 logits: the op returns the loss in the
        logits' dtype, and h = L_old - L_new would otherwise be quantized to half precision
        (~1e-3 in fp16, ~1e-2 in bf16).
        """
        cfg, student = self.cfg, self.student
        B = x_l.shape[0]
        same_as_l_old = None
        if cfg.l_old_forward == "labeled":
            # Measured exactly as L_new is in step 7 (x_l alone, batch statistics over x_l,
            # running buffers untouched, the same dropout masks), so L_old - L_new sees only
            # the update: a student that did not move gives h = 0 exactly.
            same_as_l_old = self._rng_replay()
            with same_as_l_old.first(), torch.no_grad(), _batch_stats_only(student), self._autocast():
                l_old = soft_cross_entropy(_hi(student(x_l)), y_l)
        soft = None
        x_s = torch.cat([x_l, x_us])
        if self._soft_meta:
            # The JVP of step 9 replays this forward (its input, batch statistics, masks).
            soft = _SoftState(x_s=x_s, B=B, rng=self._rng_replay())
        with (soft.rng.first() if soft is not None else contextlib.nullcontext()), self._autocast():
            s = student(x_s)
        s_l, s_us = s[:B], s[B:]
        if same_as_l_old is None:  # "concat": read from the update's forward (official code, port)
            with torch.no_grad():
                l_old = soft_cross_entropy(_hi(s_l.detach()), y_l)
        l_s = soft_cross_entropy(s_us, target, label_smoothing=cfg.label_smoothing)
        return l_old, l_s, same_as_l_old, soft

    def _student_update(self, l_s: Tensor, soft: _SoftState | None) -> tuple[list[Tensor] | None, Tensor]:
        """Step 6: backward L_S, (unscale), clip, optimizer step, EMA.

        Returns (a snapshot of theta before the step when h or soft needs it, moved): moved is
        a 0-dim float 1, or 0 when an fp16 GradScaler skipped the step.
        """
        cfg, params = self.cfg, self._student_params
        for p in params:
            p.grad = None
        old = self._take_snapshot() if self._need_snapshot else None
        if soft is not None:
            soft.old, soft.lr_k = old, self._sgd_derivative()  # read before the step changes them
        s_scaler = self.student_scaler
        if s_scaler is not None:
            s_scaler.scale(l_s).backward()
            s_scaler.unscale_(self.student_optimizer)
        else:
            l_s.backward()
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if s_scaler is not None:
            # The scaler halves its scale exactly when it skips the step (inf/NaN gradients),
            # so comparing the scale before and after tells, on the device, whether the
            # student moved (GradScaler requires backoff_factor < 1).
            before = s_scaler._scale.clone()
            s_scaler.step(self.student_optimizer)
            s_scaler.update()
            moved = (s_scaler._scale >= before).to(torch.float32).reshape(())
        else:
            self.student_optimizer.step()
            moved = torch.ones((), device=self.device)
        if self.student_ema is not None and self._ema_in_step:
            self.student_ema.update(self.student, self.t)
        if soft is not None:
            # The (clipped) update gradient enters the clipping Jacobian of the soft meta-gradient.
            soft.g_u, soft.grad_norm = [p.grad for p in params], grad_norm
        for p in params:  # otherwise drop it now rather than hold a gradient's worth of memory
            p.grad = None
        return old, moved

    def _student_l_new(self, x_l: Tensor, y_l: Tensor, same_as_l_old: Any, soft: _SoftState | None
                       ) -> tuple[Tensor, list[Tensor] | None, Tensor | None]:
        """Step 7: (L_new, v = grad L_new(theta') or None, 1/loss-scale of v or None).

        Training mode; with ``l_old_forward="labeled"`` the forward repeats L_old's exactly
        (batch statistics over x_l, running buffers untouched, L_old's dropout masks).
        """
        cfg, student, params = self.cfg, self.student, self._student_params
        need_v = cfg.meta_signal == "grad_dot" or soft is not None
        with contextlib.ExitStack() as same:
            if same_as_l_old is not None:
                same.enter_context(same_as_l_old.replay())
                same.enter_context(_batch_stats_only(student))
            with torch.set_grad_enabled(need_v), self._autocast():
                s_new = student(x_l)
        l_new_t = soft_cross_entropy(_hi(s_new), y_l)
        if not need_v:
            return l_new_t.detach(), None, None
        s_scaler, inv_scale = self.student_scaler, None
        if s_scaler is not None:
            # Scale like the update's backward so fp16 gradients do not underflow.
            s_scaler.scale(l_new_t).backward()
            inv_scale = s_scaler._scale.double().reciprocal().float()
        else:
            l_new_t.backward()
        v = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        if soft is not None:
            soft.v, soft.inv_scale = v, inv_scale
        return l_new_t.detach(), v, inv_scale

    @torch.no_grad()
    def _meta_signal(self, l_old: Tensor, l_new: Tensor, v: list[Tensor] | None,
                     old: list[Tensor] | None, moved: Tensor, inv_scale: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        """Step 8: (h, rejected): h 0-dim, after the distributed mean, ``h_limit``, meta_sign
        and the baseline; rejected a 0-dim float32 1 when |h| was beyond ``h_limit`` (h = 0)."""
        cfg = self.cfg
        if cfg.meta_signal == "loss_diff":
            h = l_old - l_new
        elif cfg.meta_signal == "grad_dot":
            assert v is not None
            h = -self._grad_dot_delta(v, self._student_params, old)
            if inv_scale is not None:
                h = h * inv_scale
        else:
            h = torch.zeros((), dtype=self._hdtype, device=self.device)
        h = h.to(self._hdtype).reshape(())
        # A skipped student step (or non-finite fp16 gradients of L_new) gives h = 0.
        ok = moved.bool() & torch.isfinite(h)
        h = torch.where(ok, h, torch.zeros_like(h))
        # Distributed mean first: sign and baseline are linear in h, so averaging before
        # them gives the same h as averaging after, and keeps the baseline state identical
        # on every rank (a checkpoint written by rank 0 then resumes every rank exactly).
        all_reduce_mean_(h)
        if cfg.h_limit is not None:
            # Beyond h_limit the update was no small step, and h no first-order signal: the
            # teacher gets 0 and the baseline is left alone, as for a skipped step.
            inside = h.abs() <= cfg.h_limit
            rejected = (~inside).to(torch.float32)
            ok = ok & inside
            h = torch.where(inside, h, torch.zeros_like(h))
        else:
            rejected = torch.zeros((), dtype=torch.float32, device=self.device)
        h = h * cfg.meta_sign
        if cfg.meta_baseline_decay > 0:
            d = cfg.meta_baseline_decay
            new_b = d * self.baseline + (1.0 - d) * h
            # A skipped step leaves the baseline alone and keeps h = 0.
            self.baseline.copy_(torch.where(ok, new_b, self.baseline))
            h = torch.where(ok, h - new_b, torch.zeros_like(h))
        return h, rejected

    def _mpl_loss(self, h: Tensor, z_us: Tensor, y_teacher: Tensor | None, soft: _SoftState | None,
                  moved: Tensor) -> Tensor:
        """Step 9: meta_scale * h * CE(z_us, y_hat), or the exact soft meta-gradient term."""
        cfg = self.cfg
        if cfg.meta_signal == "none":
            return torch.zeros((), dtype=self._hdtype, device=self.device)
        if soft is None:
            assert y_teacher is not None
            return (cfg.meta_scale * h) * _hi(soft_cross_entropy(z_us, y_teacher))
        G = self._soft_meta_grad(soft)
        G = G * (moved * (cfg.meta_sign * cfg.meta_scale))
        G = torch.where(torch.isfinite(G).all(), G, torch.zeros_like(G))
        # d L_mpl / d z_us = softmax-Jacobian^T G, i.e. the chain rule through p = softmax(z_us).
        return (G * torch.softmax(z_us.to(G.dtype), dim=-1)).sum()

    def _teacher_update(self, l_t: Tensor) -> Tensor:
        """Step 10: backward L_T = L_sup + w_t L_uda + L_mpl, (unscale), clip, step; returns L_T."""
        t_scaler = self.teacher_scaler
        if t_scaler is not None:
            t_scaler.scale(l_t).backward()
            t_scaler.unscale_(self.teacher_optimizer)
        else:
            l_t.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._teacher_params, self.cfg.grad_clip)
        if t_scaler is not None:
            t_scaler.step(self.teacher_optimizer)
            t_scaler.update()
        else:
            self.teacher_optimizer.step()
        return l_t

    # ------------------------------------------------------------------ soft-label meta-gradient
    def _sgd_derivative(self) -> list[float | Tensor]:
        """Per parameter, -d theta'/d g of the SGD step about to be taken (a scalar each).

        PyTorch SGD: d_p = g + wd*theta; buf = d_p on the first step, else
        mu*buf + (1 - dampening)*d_p; nesterov: step = d_p + mu*buf, else step = buf;
        theta' = theta - lr*step (+ for maximize). Only g depends on the pseudo labels, so
        d theta'/d g = -lr * k with k = [nesterov] + mu*c (nesterov) or c (momentum) or 1 (no
        momentum), c = 1 on the first step and 1 - dampening after. Read before the step: the
        lr is the one the step uses, and "first step" is whether a momentum buffer exists yet.
        """
        opt = self.student_optimizer
        coef: dict[int, float | Tensor] = {}
        for group in opt.param_groups:
            lr, mu = group["lr"], group.get("momentum", 0.0)
            damp, nest = group.get("dampening", 0.0), group.get("nesterov", False)
            sign = -1.0 if group.get("maximize", False) else 1.0
            for p in group["params"]:
                if mu == 0:
                    k = 1.0
                else:
                    c = 1.0 if opt.state.get(p, {}).get("momentum_buffer") is None else 1.0 - damp
                    k = 1.0 + mu * c if nest else c
                coef[id(p)] = sign * lr * k
        return [coef.get(id(p), 0.0) for p in self._student_params]

    def _soft_meta_grad(self, st: _SoftState) -> Tensor:
        """G[n, c] = d L_l(theta') / d p[n, c] for the soft targets p = softmax(z_us), [muB, C] fp32.

        With L_S = CE_eps(S(x_us; theta), p) = -(1/muB) sum_nc ((1-eps) p_nc + eps/C) log s_nc,
        d g / d p_nc = -((1-eps)/muB) grad_theta log s_nc. The SGD step gives
        d theta' / d g = -D J with D = diag(lr * k) (see ``_sgd_derivative``) and J the Jacobian
        of gradient clipping (identity when it does not clip). So, with v = grad L_l(theta'),
            G_nc = ((1-eps)/muB) <J D v, grad_theta log s_nc>,
        all n, c from one forward-mode JVP of the student's log-softmax at the *old* parameters
        along u = J D v. This is the spec's (eta/muB)<v, grad log s> with eta = lr*k made exact
        for momentum/Nesterov, per-group lrs, clipping and smoothing. The forward replays the
        step-5 forward: same input [x_l; x_us], batch statistics over it, same dropout masks.
        """
        old, v, lr_k, g_u, grad_norm, inv_scale = st.old, st.v, st.lr_k, st.g_u, st.grad_norm, st.inv_scale
        x_s, B, rng = st.x_s, st.B, st.rng
        assert old is not None and v is not None and lr_k is not None
        cfg = self.cfg
        if inv_scale is not None:
            v = [t * inv_scale for t in v]
        u = [_hi(t) * k for t, k in zip(v, lr_k)]
        if grad_norm is not None:
            # clip(g) = a g with a = min(1, c / (|g| + 1e-6)) (clip_grad_norm_'s formula), and g
            # here is the *clipped* gradient a*g0. Where a < 1:
            # J = a (I - g0 g0^T / (|g0| (|g0| + 1e-6))), applied to u.
            c = float(cfg.grad_clip)
            n0 = _hi(grad_norm)
            a_raw = c / (n0 + 1e-6)
            clipped = a_raw < 1
            a = torch.clamp(a_raw, max=1.0)
            g0 = [(_hi(g) / a) if g is not None else torch.zeros_like(uu) for g, uu in zip(g_u, u)]
            dot = sum((gg * uu).sum() for gg, uu in zip(g0, u))
            corr = dot / (n0 * (n0 + 1e-6))
            u = [torch.where(clipped, a * (uu - gg * corr), uu) for uu, gg in zip(u, g0)]
        module = unwrap(self.student)
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        primals = {n: o.to(p.dtype) for n, o, p in zip(names, old, self._student_params)}
        tangents = {n: t.to(primals[n].dtype) for n, t in zip(names, u)}

        pdtype = self._student_params[0].dtype
        # Inputs may be half precision (a bf16 batcher); without autocast they must match the weights.
        x_in = x_s.to(pdtype) if x_s.is_floating_point() else x_s

        def log_probs(pr: dict[str, Tensor]) -> Tensor:
            # fp32 even under bf16/fp16: forward-mode AD does not compose with autocast (the
            # dual weights and the activations end up in different dtypes), and fp32 is the
            # more accurate derivative anyway.
            out = functional_call(module, pr, (x_in,))
            return torch.log_softmax(out[B:].to(torch.promote_types(out.dtype, torch.float32)), dim=-1)

        jv = self._jvp(log_probs, primals, tangents, rng, module)
        M = x_s.shape[0] - B
        return jv * ((1.0 - cfg.label_smoothing) / M)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Counter, meta-signal baseline, grad scalers and the sampling generator's state."""
        return {
            "t": self.t,
            "baseline": self.baseline.detach().clone().cpu(),
            "teacher_scaler": self.teacher_scaler.state_dict() if self.teacher_scaler else None,
            "student_scaler": self.student_scaler.state_dict() if self.student_scaler else None,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        if self._t_dev is not None:
            self._t_dev.fill_(self.t)
        # In place: a captured CUDA graph holds this tensor.
        self.baseline.copy_(state["baseline"].to(device=self.device, dtype=self._hdtype).reshape(()))
        for name in ("teacher_scaler", "student_scaler"):
            scaler, s = getattr(self, name), state.get(name)
            if scaler is not None and s is not None:
                scaler.load_state_dict(s)
        self.generator.set_state(state["generator"])
