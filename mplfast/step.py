"""``MPLStep``: one Meta Pseudo Labels update of teacher and student, as a drop-in library step.

The order of operations is exactly the one fixed by ``shared/docs/mpl-algorithm.md`` (steps
1-10); comments below cite the step numbers. The hot path does not call ``.item()`` or any
other host sync of its own (a GradScaler's ``step`` syncs internally, as it always does).

Soft pseudo labels (``pseudo_label="soft"``) get the exact first-order meta-gradient instead
of the released official code's zero-gradient term; see ``_soft_meta_grad`` for the math and
the choice of the step size.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from mplfast.config import MPLConfig
from mplfast.distributed import all_reduce_mean_, unwrap
from mplfast.ops import grad_dot_delta, soft_cross_entropy, uda_loss
from mplfast.precision import autocast, resolve_precision

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


def _hi(t: Tensor) -> Tensor:
    """At least float32 (float64 stays float64): the meta-gradient math precision."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _RngReplay:
    """Saves the RNG state before a forward so the JVP can redraw the same dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # leaves the live stream untouched
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class MPLStep:
    """One MPL update of ``teacher`` and ``student`` (both updated in place).

    Args:
        teacher, student: classifiers mapping images [N, C, H, W] to logits [N, num_classes];
            may be DDP-wrapped. Both are put in training mode by each call.
        teacher_optimizer, student_optimizer: their optimizers.
        cfg: ``MPLConfig``.
        teacher_scheduler, student_scheduler: stepped once per call, after the optimizer step.
        student_ema: optional ``ModelEMA`` (anything with ``.update(model, step)``), updated
            after the student's step.
        seed: seed of the step's own generator for ``pseudo_label="sample"``.

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
        self.baseline = torch.zeros((), dtype=torch.float32, device=self.device)
        self._student_params = [p for p in student.parameters() if p.requires_grad]
        self._teacher_params = [p for p in teacher.parameters() if p.requires_grad]
        if cfg.pseudo_label == "soft" and cfg.meta_signal != "none":
            if not isinstance(student_optimizer, torch.optim.SGD):
                raise ValueError(
                    "MPLStep: pseudo_label='soft' computes the exact meta-gradient through the "
                    "student's SGD update and needs a torch.optim.SGD student optimizer, got "
                    f"{type(student_optimizer).__name__}; use pseudo_label='hard' or 'sample', or "
                    "meta_signal='none' (plain UDA teacher)"
                )
        self._need_snapshot = cfg.meta_signal == "grad_dot" or (
            cfg.pseudo_label == "soft" and cfg.meta_signal != "none")
        self._snapshot: list[Tensor] | None = None  # per-parameter views of one flat buffer
        self._flat: list[Tensor] = []

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

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

    def _pseudo_labels(self, z: Tensor) -> Tensor:
        """Hard labels [N] int64 from logits z [N, C]: argmax, or a draw from softmax(z)."""
        if self.cfg.pseudo_label == "sample":
            probs = torch.softmax(z.detach().float(), dim=-1)
            return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        return z.detach().argmax(dim=-1)

    # ------------------------------------------------------------------ the step
    def __call__(self, x_l: Tensor, y_l: Tensor, x_uw: Tensor, x_us: Tensor) -> dict[str, Tensor]:
        """One MPL step.

        Args:
            x_l: labeled images [B, C, H, W]; y_l: int64 labels [B].
            x_uw, x_us: weak and strong views of the same unlabeled images [muB, C, H, W].
        Returns:
            dict of detached 0-dim float32 tensors: teacher_loss (L_T), teacher_loss_l (L_sup),
            uda_loss (unweighted L_uda), uda_weight (w_t), mpl_loss (L_mpl), student_loss (L_S),
            student_loss_l_old, student_loss_l_new, h (as applied to the teacher, after sign,
            baseline and distributed mean), mask_rate, student_moved (1, or 0 for a skipped step).
        """
        cfg = self.cfg
        B, M = x_l.shape[0], x_uw.shape[0]
        if x_us.shape[0] != M:
            raise ValueError(f"MPLStep: x_uw has {M} rows but x_us has {x_us.shape[0]}")
        if y_l.shape != (B,):
            raise ValueError(f"MPLStep: y_l must have shape [{B}], got {tuple(y_l.shape)}")
        teacher, student = self.teacher, self.student
        teacher.train()
        student.train()
        self.teacher_optimizer.zero_grad(set_to_none=True)

        # 1. One teacher forward on [x_l; x_uw; x_us] (batch-norm statistics over all three).
        x_all = _consecutive((x_l, x_uw, x_us))
        if x_all is None:
            x_all = torch.cat([x_l, x_uw, x_us])
        with self._autocast():
            z = teacher(x_all)
        z_l, z_uw, z_us = z[:B], z[B:B + M], z[B + M:]

        # 2. Teacher supervised loss with label smoothing.
        l_sup = soft_cross_entropy(z_l, y_l, label_smoothing=cfg.label_smoothing).float()
        # 3. UDA consistency loss (fused op; divisor is the full muB), ramped weight.
        l_uda, mask_rate = uda_loss(z_uw, z_us, temperature=cfg.temperature, threshold=cfg.threshold)
        l_uda = l_uda.float()
        w_uda = cfg.lambda_u * min(1.0, (self.t + 1) / cfg.uda_steps)

        # 4. Pseudo labels from the teacher.
        soft = cfg.pseudo_label == "soft"
        if soft:
            target: Tensor = torch.softmax(z_us.detach().float(), dim=-1)
            y_teacher = None
        else:
            if cfg.pseudo_label_view == "weak":
                # The student's label comes from z_uw; the teacher's MPL term keeps argmax z_us
                # (spec step 4; reproduces the most used PyTorch port).
                target = self._pseudo_labels(z_uw)
                y_teacher = z_us.detach().argmax(dim=-1)
            else:  # the student trains on exactly the label the teacher is rewarded for
                y_teacher = self._pseudo_labels(z_us)
                target = y_teacher

        # 5. L_old, then the student forward once on [x_l; x_us] for the update.
        want_meta = cfg.meta_signal != "none"
        soft_meta = soft and want_meta
        labeled_l_old = cfg.l_old_forward == "labeled"
        # fp32 logits for L_old and L_new: the op returns the loss in the logits' dtype, and
        # h = L_old - L_new would be quantized to half precision (~1e-3 in fp16, ~1e-2 in bf16).
        rng_old: _RngReplay | None = None
        if labeled_l_old:
            # Measured exactly as L_new is in step 7 (x_l alone, batch statistics over x_l,
            # running buffers untouched, the same dropout masks), so L_old - L_new sees only
            # the update: a student that did not move gives h = 0 exactly.
            rng_old = _RngReplay(self.device)
            with torch.no_grad(), _batch_stats_only(student), self._autocast():
                l_old = soft_cross_entropy(student(x_l).float(), y_l)
        rng = _RngReplay(self.device) if soft_meta else None
        x_s = torch.cat([x_l, x_us])
        with self._autocast():
            s = student(x_s)
        s_l, s_us = s[:B], s[B:]
        if not labeled_l_old:  # "concat": read from the update's forward (official code, port)
            with torch.no_grad():
                l_old = soft_cross_entropy(s_l.detach().float(), y_l)
        l_s = soft_cross_entropy(s_us, target, label_smoothing=cfg.label_smoothing)

        # 6. Student update: backward, (unscale), clip, step, scheduler, EMA.
        params = self._student_params
        for p in params:
            p.grad = None
        old = self._take_snapshot() if self._need_snapshot else None
        soft_info = self._sgd_derivative() if soft_meta else None
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
            moved = (s_scaler._scale >= before).float().reshape(())
        else:
            self.student_optimizer.step()
            moved = torch.ones((), device=self.device)
        if self.student_scheduler is not None:
            self.student_scheduler.step()
        if self.student_ema is not None:
            self.student_ema.update(student, self.t)
        # The (clipped) update gradient is needed only for the soft meta-gradient's clipping
        # Jacobian; otherwise drop it now rather than hold a gradient's worth of memory.
        g_u = [p.grad for p in params] if soft_meta else []
        for p in params:
            p.grad = None

        # 7. L_new on the same labeled batch, training mode ("labeled": as L_old was measured).
        need_v = cfg.meta_signal == "grad_dot" or soft_meta
        with contextlib.ExitStack() as same_as_l_old:
            if rng_old is not None:
                same_as_l_old.enter_context(rng_old.replay())
                same_as_l_old.enter_context(_batch_stats_only(student))
            with torch.set_grad_enabled(need_v), self._autocast():
                s_new = student(x_l)
        l_new_t = soft_cross_entropy(s_new.float(), y_l)  # fp32, as L_old
        l_new = l_new_t.detach().float()
        v: list[Tensor] | None = None
        inv_scale = None
        if need_v:
            if s_scaler is not None:
                # Scale like the update's backward so fp16 gradients do not underflow.
                s_scaler.scale(l_new_t).backward()
                inv_scale = s_scaler._scale.double().reciprocal().float()
            else:
                l_new_t.backward()
            v = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            for p in params:
                p.grad = None

        # 8. Meta signal h (never differentiated through).
        with torch.no_grad():
            if cfg.meta_signal == "loss_diff":
                h = l_old - l_new
            elif cfg.meta_signal == "grad_dot":
                h = -grad_dot_delta(v, params, old)
                if inv_scale is not None:
                    h = h * inv_scale
            else:
                h = torch.zeros((), dtype=torch.float32, device=self.device)
            h = h.float().reshape(())
            # A skipped student step (or non-finite fp16 gradients of L_new) gives h = 0.
            ok = moved.bool() & torch.isfinite(h)
            h = torch.where(ok, h, torch.zeros_like(h))
            # Distributed mean first: sign and baseline are linear in h, so averaging before
            # them gives the same h as averaging after, and keeps the baseline state identical
            # on every rank (a checkpoint written by rank 0 then resumes every rank exactly).
            all_reduce_mean_(h)
            h = h * cfg.meta_sign
            if cfg.meta_baseline_decay > 0:
                d = cfg.meta_baseline_decay
                new_b = d * self.baseline + (1.0 - d) * h
                # A skipped step leaves the baseline alone and keeps h = 0.
                self.baseline = torch.where(ok, new_b, self.baseline)
                h = torch.where(ok, h - new_b, torch.zeros_like(h))

        # 9. Teacher MPL loss.
        if not want_meta:
            l_mpl = torch.zeros((), dtype=torch.float32, device=self.device)
        elif soft:
            G = self._soft_meta_grad(x_s, B, old, v, g_u, grad_norm, soft_info, rng, inv_scale)
            G = G * (moved * (cfg.meta_sign * cfg.meta_scale))
            G = torch.where(torch.isfinite(G).all(), G, torch.zeros_like(G))
            # d L_mpl / d z_us = softmax-Jacobian^T G, i.e. the chain rule through p = softmax(z_us).
            l_mpl = (G * torch.softmax(z_us.to(G.dtype), dim=-1)).sum().float()
        else:
            l_mpl = (cfg.meta_scale * h) * soft_cross_entropy(z_us, y_teacher).float()

        # 10. Teacher update.
        l_t = l_sup + w_uda * l_uda + l_mpl
        t_scaler = self.teacher_scaler
        if t_scaler is not None:
            t_scaler.scale(l_t).backward()
            t_scaler.unscale_(self.teacher_optimizer)
        else:
            l_t.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._teacher_params, cfg.grad_clip)
        if t_scaler is not None:
            t_scaler.step(self.teacher_optimizer)
            t_scaler.update()
        else:
            self.teacher_optimizer.step()
        if self.teacher_scheduler is not None:
            self.teacher_scheduler.step()
        self.t += 1

        f32 = torch.float32
        return {
            "teacher_loss": l_t.detach().to(f32),
            "teacher_loss_l": l_sup.detach(),
            "uda_loss": l_uda.detach(),
            "uda_weight": torch.full((), w_uda, dtype=f32, device=self.device),
            "mpl_loss": l_mpl.detach().to(f32),
            "student_loss": l_s.detach().to(f32),
            "student_loss_l_old": l_old,
            "student_loss_l_new": l_new,
            "h": h.detach(),
            "mask_rate": mask_rate.detach().to(f32),
            "student_moved": moved,
        }

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

    def _soft_meta_grad(self, x_s: Tensor, B: int, old: list[Tensor] | None, v: list[Tensor] | None,
                        g_u: list[Tensor | None], grad_norm: Tensor | None,
                        lr_k: list[float | Tensor] | None, rng: _RngReplay | None,
                        inv_scale: Tensor | None) -> Tensor:
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
        assert old is not None and v is not None and lr_k is not None and rng is not None
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

        with rng.replay(), _batch_stats_only(module), torch.no_grad():
            _, jv = jvp(log_probs, (primals,), (tangents,))
        M = x_s.shape[0] - B
        return jv * ((1.0 - cfg.label_smoothing) / M)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Counter, meta-signal baseline, grad scalers and the sampling generator's state."""
        return {
            "t": self.t,
            "baseline": self.baseline.detach().cpu(),
            "teacher_scaler": self.teacher_scaler.state_dict() if self.teacher_scaler else None,
            "student_scaler": self.student_scaler.state_dict() if self.student_scaler else None,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.baseline = state["baseline"].to(device=self.device, dtype=torch.float32).reshape(())
        for name in ("teacher_scaler", "student_scaler"):
            scaler, s = getattr(self, name), state.get(name)
            if scaler is not None and s is not None:
                scaler.load_state_dict(s)
        self.generator.set_state(state["generator"])
