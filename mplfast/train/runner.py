"""The training driver: wires data, models and the step together and runs the phases.

    train   MPLStep (mpl, uda) or SupervisedStep (supervised) for ``cfg.steps`` steps
    finetune SupervisedStep on the labeled images only, starting from the headline model
             (EMA weights when ``eval_ema``), for ``finetune_epochs`` epochs

Reproducibility: data and augmentation are keyed by (seed, step, rank) in the batcher; every
other random draw (init, dropout, sampled labels) comes from RNGs whose states are in the
checkpoint, and evaluation never touches them, so on CPU a run stopped by SIGINT/SIGTERM and
resumed ends bitwise identical to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mplfast.distributed import unwrap
from mplfast.errors import UserError
from mplfast.perf import maybe_compile
from mplfast.precision import resolve_precision
from mplfast.train import builders, checkpoint as ckpt_io
from mplfast.train import pretrained
from mplfast.train.config import TrainConfig, mpl_config, save_yaml
from mplfast.train.distributed import DistInfo, any_flag, barrier, setup, teardown
from mplfast.train.evaluate import accuracy
from mplfast.train.metrics import MetricsWriter, RunningMean
from mplfast.train.progress import Progress
from mplfast.train.signals import StopRequest
from mplfast.train.supervised import SupervisedStep, without_dropout

CKPT_VERSION = ckpt_io.CKPT_VERSION  # the checkpoint format checkpoint.py reads


@dataclass
class RunResult:
    """What ``run`` hands back to the CLI / ablation."""

    summary: dict[str, Any]
    interrupted: bool = False
    signame: str | None = None
    step: int = 0
    where: str = ""          # "step N" or "finetune step N" where an interrupted run stopped
    out_dir: str | None = None
    config: TrainConfig | None = None  # the run's config with the fields derived from the data


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _Run:
    """State of one run (models, optimizers, steps, sinks) and the phase loops."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, stop: StopRequest,
                 resume_state: dict[str, Any] | None, dataset: Any = None) -> None:
        self.cfg, self.info, self.stop = cfg, info, stop
        self.out = cfg.out if info.is_main else None
        self.device = info.device
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if cfg.cpu_threads > 0:
            torch.set_num_threads(cfg.cpu_threads)
        self.results: dict[str, float] = {}
        self._warned_chance = False  # chance_warning speaks once per run
        self.train_time = 0.0
        self.phase = "train"
        self.ft_state: dict[str, Any] | None = None
        self.finetuned_sd: dict[str, Any] | None = None  # final finetuned weights (phase "done")
        self.running = RunningMean()  # metrics since the last log line (checkpointed too)
        self.provenance: dict[str, Any] = {}  # set by _run on rank 0 (see provenance.record)
        self.commands: list[str] = []  # the command that started the run, then each --resume

        _seed_all(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
        if resume_state is None:  # a resumed run's config holds these; its weights are in the checkpoint
            self.cfg = cfg = pretrained.resolve(cfg)
        self.data = builders.build_data(cfg, info, dataset=dataset)
        # the fields left to the data (labels=None, small_cnn's depth): the run and its saved
        # config are concrete
        self.cfg = cfg = builders.fit_to_data(cfg, self.data.dataset)
        self.teacher: nn.Module | None = None
        self.t_opt = self.t_sched = None
        if cfg.method != "supervised":
            self.teacher = builders.build_model(cfg, cfg.teacher_model or cfg.model, self.data, self.device,
                                                pretrained=self._weights("teacher", resume_state))
            self.t_opt = builders.make_optimizer(self.teacher, lr=cfg.teacher_lr, momentum=cfg.momentum,
                                                 nesterov=cfg.nesterov, weight_decay=cfg.teacher_weight_decay,
                                                 backbone_lr_scale=pretrained.lr_scale(cfg, "teacher"))
            self.t_sched = builders.make_scheduler(self.t_opt, cfg, cfg.steps, 0)
        self.student = builders.build_model(cfg, cfg.model, self.data, self.device,
                                            pretrained=self._weights("student", resume_state))
        if cfg.init_perturbation:  # the chaos control: one weight moved, everything else equal
            with torch.no_grad():
                next(self.student.parameters()).view(-1)[0] += cfg.init_perturbation
        self.s_opt = builders.make_optimizer(self.student, lr=cfg.student_lr, momentum=cfg.momentum,
                                             nesterov=cfg.nesterov, weight_decay=cfg.student_weight_decay,
                                             backbone_lr_scale=pretrained.lr_scale(cfg, "student"))
        wait = cfg.student_wait_steps if cfg.method != "supervised" else 0
        self.s_sched = builders.make_scheduler(self.s_opt, cfg, cfg.steps, wait)
        from mplfast.ema import ModelEMA

        self.ema = ModelEMA(self.student, cfg.ema_decay) if cfg.ema_decay > 0 else None
        # dropout / sampling differ per rank; rank 0 keeps the plain seed stream
        if info.rank:
            torch.manual_seed(cfg.seed + 7919 * info.rank)

        self.teacher_w = self._wrap(self.teacher) if self.teacher is not None else None
        self.student_w = self._wrap(self.student)
        if cfg.method == "supervised":
            self.stepper: Any = SupervisedStep(
                self.student_w, self.s_opt, scheduler=self.s_sched, ema=self.ema,
                label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
                precision=self.precision, device=self.device)
        else:
            from mplfast.step import MPLStep

            try:
                self.stepper = MPLStep(self.teacher_w, self.student_w, self.t_opt, self.s_opt,
                                       mpl_config(cfg), teacher_scheduler=self.t_sched,
                                       student_scheduler=self.s_sched, student_ema=self.ema,
                                       seed=cfg.seed)
            except ValueError as e:  # a combination the step refuses (e.g. soft labels + non-SGD)
                raise UserError(str(e).splitlines()[0]) from None
        self.step = 0
        if resume_state is not None:
            self._load(resume_state)
        # model files (best.pt / last.pt): opened by _run once the run folder exists, so that
        # nothing in it is touched before the run really starts
        self.ckpts: Any = None
        self.resumed = resume_state is not None

    def open_model_files(self) -> None:
        """Start this run's ``best.pt`` / ``last.pt`` bookkeeping (a fresh run removes an
        earlier run's model files from its folder; a resumed one reads its ``best.pt``)."""
        from mplfast.train.model_file import ModelCheckpoints

        self.ckpts = ModelCheckpoints(self.out, keep=self.cfg.keep, resume=self.resumed)

    # ------------------------------------------------------------------ helpers
    def _weights(self, role: str, resume_state: dict[str, Any] | None) -> str | None:
        """The pretrained weights model ``role`` starts from (none when resuming: the
        checkpoint holds the trained ones)."""
        return pretrained.source_for(self.cfg, role) if resume_state is None else None

    def _wrap(self, model: nn.Module) -> nn.Module:
        model = maybe_compile(model, self.cfg.compile)[0]
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def headline_model(self) -> nn.Module:
        """The model ``test_acc`` reports: teacher for uda, else the (EMA) student."""
        if self.cfg.method == "uda":
            assert self.teacher is not None
            return self.teacher
        if self.ema is not None and self.cfg.eval_ema:
            return self.ema.module
        return self.student

    def evaluate_all(self, split: str = "test") -> dict[str, float]:
        """Accuracies of every model this method has on ``split``."""
        kw = dict(precision=self.precision, device=self.device, batch_size=self.cfg.eval_batch_size,
                  split=split)
        acc: dict[str, float] = {}
        if self.teacher is not None:
            acc["teacher_acc"] = accuracy(self.teacher, self.data.batcher, **kw)
        acc["student_acc"] = accuracy(self.student, self.data.batcher, **kw)
        if self.ema is not None:
            acc["ema_acc"] = accuracy(self.ema.module, self.data.batcher, **kw)
        return acc

    def _lrs(self) -> dict[str, float]:
        lrs = {"lr_student": float(self.s_opt.param_groups[0]["lr"])}
        if self.t_opt is not None:
            lrs["lr_teacher"] = float(self.t_opt.param_groups[0]["lr"])
        return lrs

    @property
    def has_val(self) -> bool:
        """Whether the data has a validation split (``val_fraction`` > 0 or a val/ folder)."""
        return getattr(self.data.dataset, "val_labels", None) is not None

    def _headline_acc_key(self) -> str:
        if self.cfg.method == "uda":
            return "teacher_acc"
        return "ema_acc" if self.ema is not None and self.cfg.eval_ema else "student_acc"

    def chance_warning(self, step: int, split: str, acc: dict[str, float]) -> str | None:
        """A one-time warning once the headline model is no better than chance on ``split``
        (within 3 binomial standard errors of 100/C), from half of the run on: the run is not
        learning, and the user should hear it before the end. Not earlier: the EMA student of a
        run that learns can still be at chance a quarter of the way in (docs/recipe-imagefolder.md).
        A supervised baseline on the same labels would be a
        sharper bar, but is not cheap to train alongside."""
        if self._warned_chance or step < self.cfg.steps // 2:
            return None
        labels = getattr(self.data.dataset, "val_labels" if split == "val" else "test_labels", None)
        if labels is None or labels.numel() == 0:  # a streamed folder keeps no label tensor here
            return None
        n, c = int(labels.numel()), self.data.num_classes
        chance = 100.0 / c
        margin = 300.0 * math.sqrt((1 / c) * (1 - 1 / c) / n)
        key = self._headline_acc_key()
        if acc[key] > chance + margin:
            return None
        self._warned_chance = True
        who = {"teacher_acc": "teacher", "ema_acc": "EMA student", "student_acc": "student"}[key]
        teacher = acc.get("teacher_acc")
        hint = ("the teacher is near chance too: lower the UDA weight (--set lambda_u=1) or train "
                "longer" if teacher is not None and teacher <= chance + margin else
                "hold the student back longer (--set student_wait_steps=N)")
        return (f"warning: at step {step} the {who} is at {acc[key]:.1f} % on the {split} split, "
                f"chance for {c} classes; compare with --method supervised on the same labels; "
                f"{hint}")

    def offer_best(self, val_acc: dict[str, float]) -> None:
        """Keep the models as ``best.pt`` if the headline model's validation accuracy is the best."""
        from mplfast.train.model_file import payload_from_run

        key = "finetune_acc" if "finetune_acc" in val_acc else self._headline_acc_key()
        self.ckpts.offer_best(val_acc[key], lambda: payload_from_run(self))

    def images_per_step(self) -> int:
        """Distinct images one step reads, over all ranks: B labeled (+ mu*B unlabeled)."""
        b = self.cfg.batch_size
        return b if self.cfg.method == "supervised" else b * (1 + self.cfg.mu)

    # ------------------------------------------------------------------ start-up
    def check_memory(self) -> tuple[int, int | None]:
        """(estimated bytes of one step, available bytes); refuses a step that cannot fit."""
        from mplfast.train import startup

        ds, b = self.data.dataset, self.data.per_rank_batch
        # a streamed folder's train_images is a shape-only (meta) stand-in: sizes, no pixels
        h, w, c = (int(v) for v in ds.train_images.shape[1:])
        on_device = self.device.type == "cuda" and not getattr(ds, "streamed", False)
        data_bytes = (ds.train_images.numel() + (ds.unlabeled_images.numel()
                      if ds.unlabeled_images is not None else 0)) if on_device else 0
        est = startup.estimate_step_bytes(
            teacher=unwrap(self.teacher) if self.teacher is not None else None,
            student=unwrap(self.student), image_shape=(c, h, w), batch=b,
            mu=self.cfg.mu if self.cfg.method != "supervised" else 0, device=self.device,
            channels_last=self.cfg.channels_last, data_bytes=data_bytes)
        if self.device.type == "cpu":  # the ranks of one machine share its memory
            est *= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        avail = startup.available_bytes(self.device)
        if self.cfg.check_memory:
            startup.check_memory(est, avail, batch=b, mu=self.cfg.mu, image_size=h,
                                 model=self.cfg.model, device=self.device, method=self.cfg.method)
        return est, avail

    def summary_block(self, estimate: int | None, available: int | None, resumed: bool) -> str:
        """The start-up summary (see mplfast.train.startup.summary_lines)."""
        from mplfast.train import startup

        return "\n".join(startup.summary_lines(
            cfg=self.cfg, ds=self.data.dataset, teacher=self.teacher, student=self.student,
            device=self.device, precision=self.precision, world_size=self.info.world_size,
            finetune_steps=builders.finetune_steps(self.cfg)[0], estimate=estimate,
            available=available, out=self.cfg.out, resumed_at=self.step if resumed else None))

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything a bitwise-exact resume needs."""
        rng = ckpt_io.rng_state()
        if self.info.distributed:
            import torch.distributed as dist

            per_rank: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        step_state = self.stepper.state_dict()
        return {
            "version": CKPT_VERSION,
            "step": self.step,
            "phase": self.phase,
            "method": self.cfg.method,
            "config": self.cfg.to_dict(),
            "world_size": self.info.world_size,
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "student": self.student.state_dict(),
            "teacher_optimizer": self.t_opt.state_dict() if self.t_opt is not None else None,
            "student_optimizer": self.s_opt.state_dict(),
            "teacher_scheduler": self.t_sched.state_dict() if self.t_sched is not None else None,
            "student_scheduler": self.s_sched.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step_state": step_state,
            # the grad scalers live in the step's state; named here too for readers of the file
            "scalers": {k: v for k, v in step_state.items() if "scaler" in k},
            "rng": per_rank,
            "results": dict(self.results),
            "train_time": self.train_time,
            "running_metrics": self.running.state_dict(),
            "finetune": self.ft_state,
            "finetuned": self.finetuned_sd,
            "commands": list(self.commands),
        }

    def _check_resume_state(self, st: dict[str, Any], path: str) -> None:
        """Compare every part of a checkpoint with the objects this config builds (keys,
        shapes, dtypes, structure) before any ``load_state_dict`` sees it; ``UserError``."""
        where = dict(path=path)
        if self.teacher is not None:
            ckpt_io.check_state_dict(self.teacher, st["teacher"], what="teacher", **where)
            ckpt_io.check_optimizer(self.t_opt, st["teacher_optimizer"], what="teacher_optimizer",
                                    **where)  # type: ignore[arg-type]
            ckpt_io.check_like(self.t_sched.state_dict(), st["teacher_scheduler"],  # type: ignore[union-attr]
                               what="teacher_scheduler", **where)
        ckpt_io.check_state_dict(self.student, st["student"], what="student", **where)
        ckpt_io.check_optimizer(self.s_opt, st["student_optimizer"], what="student_optimizer", **where)
        ckpt_io.check_like(self.s_sched.state_dict(), st["student_scheduler"],
                           what="student_scheduler", **where)
        if self.ema is not None and st.get("ema") is not None:
            ckpt_io.check_like(self.ema.state_dict(), st["ema"], what="ema", **where)
        ckpt_io.check_like(self.stepper.state_dict(), st["step_state"], what="step_state", **where)
        done = int(st["step"]) >= self.cfg.steps
        head = unwrap(self.headline_model())
        if done and st.get("phase") == "finetune" and st.get("finetune") is not None:
            ft = st["finetune"]
            ckpt_io.check_state_dict(head, ft["model"], what="finetune.model", **where)
            cfg = self.cfg
            head = copy.deepcopy(head).requires_grad_(True)  # as run_finetune builds it
            opt = builders.make_optimizer(head, lr=cfg.finetune_lr, momentum=cfg.finetune_momentum,
                                          nesterov=cfg.nesterov, weight_decay=cfg.finetune_weight_decay)
            ckpt_io.check_optimizer(opt, ft["optimizer"], what="finetune.optimizer", **where)
            ref = SupervisedStep(head, opt, precision=self.precision, device=self.device).state_dict()
            ckpt_io.check_like(ref, ft["stepper"], what="finetune.stepper", **where)
        if done and st.get("phase") == "done" and st.get("finetuned") is not None:
            ckpt_io.check_state_dict(head, st["finetuned"], what="finetuned", **where)

    def _load(self, st: dict[str, Any]) -> None:
        self._check_resume_state(st, os.path.join(self.cfg.out or ".", ckpt_io.CHECKPOINT_NAME))
        if st.get("version") != CKPT_VERSION:
            raise UserError(f"checkpoint version {st.get('version')} is not supported "
                            f"(expected {CKPT_VERSION})")
        if st["method"] != self.cfg.method:
            raise UserError(f"checkpoint was trained with --method {st['method']}, "
                            f"not {self.cfg.method}")
        if self.teacher is not None:
            self.teacher.load_state_dict(st["teacher"])
            self.t_opt.load_state_dict(st["teacher_optimizer"])  # type: ignore[union-attr]
            self.t_sched.load_state_dict(st["teacher_scheduler"])  # type: ignore[union-attr]
        self.student.load_state_dict(st["student"])
        self.s_opt.load_state_dict(st["student_optimizer"])
        self.s_sched.load_state_dict(st["student_scheduler"])
        if self.ema is not None and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        self.stepper.load_state_dict(st["step_state"])
        self.step = int(st["step"])
        self.phase = st["phase"] if self.step >= self.cfg.steps else "train"
        # results of a finished run are stale once training continues (more --steps)
        self.results = dict(st.get("results") or {}) if self.phase != "train" else {}
        self.train_time = float(st.get("train_time", 0.0))
        if st.get("running_metrics") is not None and self.phase != "done":
            self.running.load_state_dict(st["running_metrics"], self.device)
        self.ft_state = st.get("finetune") if self.phase == "finetune" else None
        self.finetuned_sd = st.get("finetuned") if self.phase == "done" else None
        rngs = st["rng"]
        # same world size: each rank continues its own streams; else rank 0's for all
        ckpt_io.set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])

    def save(self) -> None:
        """Atomic checkpoint (rank 0 writes; all ranks take part in gathering RNG states)."""
        st = self.state()
        if self.out:
            ckpt_io.save_atomic(st, os.path.join(self.out, ckpt_io.CHECKPOINT_NAME))
            from mplfast.train.model_file import payload_from_run

            self.ckpts.write_last(payload_from_run(self))
        barrier(self.info)

    # ------------------------------------------------------------------ phases
    def _loop(self, *, phase: str, start: int, total: int, offset: int,
              step_fn: Callable[[int], dict[str, torch.Tensor]],
              on_eval: Callable[[int], None] | None, writer: MetricsWriter,
              progress: Progress, extra_images: int, save: Callable[[], None],
              counter: Callable[[int], None]) -> bool:
        """Run steps ``start..total-1`` of one phase; True if stopped by a signal.

        ``offset`` maps phase steps to the global step axis of the logs (finetune follows
        training). ``counter`` stores the completed-step count where the checkpoint reads it.
        """
        cfg = self.cfg
        running = self.running
        t_log = time.perf_counter()
        steps_since_log = 0
        i = start
        while i < total:
            t0 = time.perf_counter()
            metrics = step_fn(i)
            i += 1
            counter(i)
            running.add(metrics)
            progress.advance(i)
            steps_since_log += 1
            if cfg.log_interval and (i % cfg.log_interval == 0 or i == total):
                rec = running.pop()  # one host sync per log interval
                now = time.perf_counter()
                dt = now - t_log
                rec.update(self._lrs() if phase == "train" else {})
                rec["steps_per_s"] = steps_since_log / dt if dt > 0 else 0.0
                rec["images_per_s"] = rec["steps_per_s"] * extra_images
                t_log, steps_since_log = now, 0
                if self.info.is_main:
                    writer.write({"step": offset + i, "phase": phase, **rec})
                progress.log(i, rec)
            self.train_time += time.perf_counter() - t0
            if on_eval is not None and cfg.eval_interval and i % cfg.eval_interval == 0 and i < total:
                on_eval(i)
            if any_flag(self.stop.requested, self.info):
                save()
                return True
            if cfg.ckpt_interval and i % cfg.ckpt_interval == 0 and i < total:
                save()
        return False

    def run_train(self, writer: MetricsWriter, progress_mode: str) -> bool:
        """The main phase; True if interrupted."""
        cfg, batcher = self.cfg, self.data.batcher
        if self.step >= cfg.steps:
            if not self.results:  # steps=0, or a checkpoint without results: measure now
                self.results.update(self.evaluate_all())
            return False
        if cfg.method == "supervised":
            def step_fn(i: int) -> dict[str, torch.Tensor]:
                x, y = batcher.labeled_batch(i)
                return self.stepper(x, y)
        else:
            def step_fn(i: int) -> dict[str, torch.Tensor]:
                x_l, y_l, x_uw, x_us = batcher.batch(i)
                return self.stepper(x_l, y_l, x_uw, x_us)

        progress = Progress(cfg.steps, self.step, mode=progress_mode, desc=f"{cfg.method} train",
                            enabled=self.info.is_main)

        def on_eval(i: int) -> None:
            # never tuned on the test split: with a validation split, periodic evals use it
            split = "val" if self.has_val else "test"
            acc = self.evaluate_all(split)
            if self.info.is_main:
                writer.write({"step": i, "phase": "eval", "split": split, **acc})
            progress.message(f"step {i} ({split}): " +
                             "  ".join(f"{k} {v:.2f}" for k, v in acc.items()))
            warning = self.chance_warning(i, split, acc)
            if warning:
                progress.message(warning)
            if self.has_val:  # best.pt is chosen on the validation split only, never on test
                self.offer_best(acc)

        def set_step(i: int) -> None:
            self.step = i

        try:
            stopped = self._loop(phase="train", start=self.step, total=cfg.steps, offset=0,
                                 step_fn=step_fn, on_eval=on_eval, writer=writer,
                                 progress=progress, extra_images=self.images_per_step(),
                                 save=self.save, counter=set_step)
        finally:
            progress.close()
        if stopped:
            return True
        if self.has_val:
            val = self.evaluate_all("val")
            if self.info.is_main:
                writer.write({"step": cfg.steps, "phase": "eval", "split": "val", **val})
            self.offer_best(val)
            self.results["val_acc"] = val[self._headline_acc_key()]
        acc = self.evaluate_all()
        self.results.update(acc)
        if self.info.is_main:
            writer.write({"step": cfg.steps, "phase": "eval", "split": "test", **acc})
        return False

    def run_finetune(self, writer: MetricsWriter, progress_mode: str) -> bool:
        """Labeled-only finetune of the headline model; True if interrupted."""
        cfg = self.cfg
        total, bs = builders.finetune_steps(cfg)
        if total == 0 or (self.phase == "done" and "finetune_acc" in self.results):
            return False
        self.phase = "finetune"
        per_rank_bs = max(1, bs // self.info.world_size)
        model = without_dropout(copy.deepcopy(unwrap(self.headline_model())))  # as the port
        model.requires_grad_(True)
        opt = builders.make_optimizer(model, lr=cfg.finetune_lr, momentum=cfg.finetune_momentum,
                                      nesterov=cfg.nesterov, weight_decay=cfg.finetune_weight_decay)
        wrapped = self._wrap(model)
        stepper = SupervisedStep(wrapped, opt, label_smoothing=cfg.label_smoothing,
                                 grad_clip=cfg.grad_clip, precision=self.precision, device=self.device)
        start = 0
        if self.ft_state is not None:
            model.load_state_dict(self.ft_state["model"])
            opt.load_state_dict(self.ft_state["optimizer"])
            stepper.load_state_dict(self.ft_state["stepper"])
            start = int(self.ft_state["step"])
        ft_step = [start]

        def snapshot() -> None:
            self.ft_state = {"step": ft_step[0], "model": model.state_dict(),
                             "optimizer": opt.state_dict(), "stepper": stepper.state_dict()}
            self.save()

        def step_fn(i: int) -> dict[str, torch.Tensor]:
            # batches keyed past the training steps so they never repeat a training draw
            x, y = self.data.batcher.labeled_batch(cfg.steps + i, per_rank_bs)
            return stepper(x, y)

        def set_step(i: int) -> None:
            ft_step[0] = i

        progress = Progress(total, start, mode=progress_mode, desc="finetune",
                            enabled=self.info.is_main)
        try:
            stopped = self._loop(phase="finetune", start=start, total=total, offset=cfg.steps,
                                 step_fn=step_fn, on_eval=None, writer=writer, progress=progress,
                                 extra_images=bs, save=snapshot, counter=set_step)
        finally:
            progress.close()
        if stopped:
            return True
        acc = accuracy(model, self.data.batcher, precision=self.precision, device=self.device,
                       batch_size=cfg.eval_batch_size)
        self.results["finetune_acc"] = acc
        self.ft_state = None
        if self.info.is_main:
            writer.write({"step": cfg.steps + total, "phase": "eval", "split": "test",
                          "finetune_acc": acc})
        self.finetuned_sd = model.state_dict()
        if self.has_val:
            val = accuracy(model, self.data.batcher, precision=self.precision, device=self.device,
                           batch_size=cfg.eval_batch_size, split="val")
            if self.info.is_main:
                writer.write({"step": cfg.steps + total, "phase": "eval", "split": "val",
                              "finetune_acc": val})
            self.offer_best({"finetune_acc": val})
            self.results["val_acc"] = val
        return False

    def summary(self, wall_s: float) -> dict[str, Any]:
        """summary.json: run identity, accuracies (test_acc = headline), timing."""
        cfg, r = self.cfg, self.results
        if "finetune_acc" in r:
            headline = r["finetune_acc"]
        elif cfg.method == "uda":
            headline = r["teacher_acc"]
        elif self.ema is not None and cfg.eval_ema:
            headline = r["ema_acc"]
        else:
            headline = r["student_acc"]
        out: dict[str, Any] = {
            "method": cfg.method, "dataset": cfg.dataset, "labels": cfg.labels, "seed": cfg.seed,
            "steps": cfg.steps, "world_size": self.info.world_size, "preset": cfg.preset,
            "model": cfg.model, "meta_signal": "none" if cfg.method == "uda" else cfg.meta_signal,
            "test_acc": headline,
        }
        for k in ("teacher_acc", "student_acc", "ema_acc", "finetune_acc"):
            if k in r:
                out[k] = r[k]
        out["wall_s"] = wall_s
        out["train_s"] = self.train_time
        out["images_per_s"] = (self.images_per_step() * cfg.steps / self.train_time
                               if self.train_time > 0 else 0.0)
        out["device"] = str(self.device)
        out["precision"] = self.precision
        out["provenance"] = self.provenance  # the reproducibility record (rank 0)
        out.update(pretrained.summary_fields(cfg))  # source and sha256 of pretrained weights
        return out


def _write_json_atomic(obj: Any, path: str) -> None:
    from mplfast.train.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2))


def default_out_dir(cfg: TrainConfig, root: str = "runs") -> str:
    """Where a run without ``--out`` writes: ``runs/<dataset>-<method>-seed<seed>``.

    A single process takes the first of that, ``...-2``, ``...-3``, ... that does not exist yet,
    so a new run never mixes its files with an earlier one's. Under torchrun every rank must
    pick the same directory without talking to the others, so there it is the plain name (and
    an earlier run's checkpoint in it is refused by ``prepare_out_dir``).
    """
    base = os.path.join(root, f"{cfg.dataset}-{cfg.method}-seed{cfg.seed}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return base
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def prepare_out_dir(cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Check the output directory; on ``resume`` return the checkpoint to continue from."""
    if resume and not cfg.out:
        raise UserError("--resume needs --out DIR (the directory holding checkpoint.pt)")
    if not cfg.out:
        return None
    path = os.path.join(cfg.out, ckpt_io.CHECKPOINT_NAME)
    if resume:
        if not os.path.isfile(path):
            raise UserError(f"--resume: no checkpoint to resume in {cfg.out} (expected {path})")
        return ckpt_io.load_checkpoint(path, expect="resume")
    if os.path.exists(path):
        raise UserError(f"{cfg.out} already holds a checkpoint; pass --resume to continue it "
                        "or choose another --out")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UserError(f"--out {cfg.out} exists and is not a directory")
    _check_writable(cfg.out)
    return None


def _check_writable(out: str) -> None:
    """``UserError`` unless ``out`` can be created and written in, checked before the data is
    loaded: the nearest existing folder on its path must be a writable folder."""
    probe = os.path.abspath(out)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        try:
            ro = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            ro = False
        why = "read-only file system" if ro else "permission denied"
        raise UserError(f"--out {out}: cannot write in {probe} ({why})")


def run(cfg: TrainConfig, *, resume_state: dict[str, Any] | None = None,
        progress: str | None = None, dataset: Any = None,
        argv: list[str] | None = None) -> RunResult:
    """Train (and finetune) according to ``cfg``; write outputs to ``cfg.out`` on rank 0.

    ``dataset``: an already loaded ``ImageDataset`` (else loaded from ``cfg``). ``argv``: the
    command line recorded in the reproducibility record (default ``sys.argv``).
    The output folder is created only once the data and models are ready, and removed again
    if the run fails before its first step completes.
    """
    t_start = time.perf_counter()
    info = setup(cfg.device)
    try:
        with StopRequest() as stop:
            result = _run(cfg, info, stop, resume_state, progress or cfg.progress, t_start,
                          dataset, argv)
        # Success only (a rank that failed never arrives). Waiting here releases the GIL, so
        # gloo's threads can free the last collectives' tensors: torch 2.13 can deadlock when the
        # process group is destroyed right after an all-gather (the main thread, holding the GIL,
        # joins a gloo thread that waits for it), leaving a rank hanging after the run.
        barrier(info)
        return result
    except Exception as e:
        from mplfast.train.fileio import storage_error

        err = storage_error(e) if cfg.out else None
        if err is None:
            raise
        raise UserError(_storage_message(cfg.out, err)) from None  # type: ignore[arg-type]
    finally:
        teardown(info)


def _open_out_dir(cfg: TrainConfig, out: str, resumed: bool, record: dict[str, Any]) -> str | None:
    """Create the run folder and write config.yaml; the topmost folder this call created
    (``runs/`` itself on a first run), or None if ``out`` existed."""
    from mplfast.train.provenance import header

    created = None
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        created, probe = probe, os.path.dirname(probe)
    os.makedirs(out, exist_ok=True)
    save_yaml(cfg, os.path.join(out, "config.yaml"), header=header(record))
    if not resumed:
        _remove_replaced_run(out)
    return created


def _remove_replaced_run(out: str) -> None:
    """Remove what an earlier run left in ``out`` that a fresh run there writes anew (such a run
    had no checkpoint: one killed before its first, or whose checkpoint was deleted), so that
    nothing of the two is mixed: its logs, figures and TensorBoard event files. Only these
    mplfast artefacts go; any other file in ``out`` or ``out/tb`` is the user's and stays
    (model files: ModelCheckpoints)."""
    import glob

    for name in ("metrics.jsonl", "summary.json", "curves.png", "confusion.png"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    tb = os.path.join(out, "tb")
    # SummaryWriter's file names; TensorBoard would draw the killed run's points beside ours
    for p in glob.glob(os.path.join(glob.escape(tb), "events.out.tfevents.*")):
        os.remove(p)
    with contextlib.suppress(OSError):  # only if nothing else is in it
        os.rmdir(tb)


def _discard_out_dir(out: str, created: str | None) -> None:
    """Undo a run folder in which nothing was trained (no clutter from failed runs)."""
    import shutil

    if created:
        shutil.rmtree(created, ignore_errors=True)
        return
    # a folder that existed: only this run's artefacts go (the user's files in tb/ stay)
    _remove_replaced_run(out)
    if os.path.exists(os.path.join(out, "config.yaml")):
        os.remove(os.path.join(out, "config.yaml"))


def _run(cfg: TrainConfig, info: DistInfo, stop: StopRequest, resume_state: dict[str, Any] | None,
         progress_mode: str, t_start: float, dataset: Any = None,
         argv: list[str] | None = None) -> RunResult:
    from mplfast.train import provenance

    r = _Run(cfg, info, stop, resume_state, dataset)
    cfg = r.cfg  # with the fields derived from the data filled in
    estimate, available = r.check_memory()
    if info.is_main and progress_mode != "none":
        print(r.summary_block(estimate, available, resume_state is not None), flush=True)
    out = cfg.out if info.is_main else None
    prov = r.provenance = provenance.record(cfg.dataset, argv) if info.is_main else {}
    if info.is_main and resume_state is not None:
        # a resumed run keeps the record of the command that started it and appends this one
        earlier = resume_state.get("commands") or (
            provenance.header_commands(os.path.join(out, "config.yaml")) if out else [])
        prov = r.provenance = provenance.continued(prov, earlier)
    r.commands = [prov["command"], *prov.get("resumed", [])] if prov else []
    created = _open_out_dir(cfg, out, resume_state is not None, prov) if out else None
    r.open_model_files()
    start_step = r.step
    writer = MetricsWriter(out, tensorboard=cfg.tensorboard,
                           resume_step=(r.step + (int(r.ft_state["step"]) if r.ft_state else 0))
                           if resume_state is not None else None)
    result = RunResult(summary={}, out_dir=out, config=cfg)
    discard = failed = False
    try:
        try:
            interrupted = r.run_train(writer, progress_mode)
            if not interrupted:
                interrupted = r.run_finetune(writer, progress_mode)
        except BaseException:
            # a fresh run that failed before its first step finished leaves nothing behind
            discard = resume_state is None and r.step == start_step == 0
            raise
        if interrupted:
            result.interrupted, result.signame, result.step = True, stop.signame, r.step
            if r.phase == "finetune" and r.ft_state is not None:
                result.where = f"finetune step {r.ft_state['step']}"
            else:
                result.where = f"step {r.step}"
            return result
        r.phase = "done"
        summary = r.summary(time.perf_counter() - t_start)
        from mplfast.train.reports import final_report

        summary.update(final_report(r))
        result.summary, result.step = summary, r.step
        r.save()
        if out:
            _write_json_atomic(summary, os.path.join(out, "summary.json"))
    except BaseException:
        failed = True
        raise
    finally:
        # after a failure these are best-effort: on a full disk they fail too, and their
        # errors would only bury the first one under more tracebacks
        with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
            _close_outputs(writer, out, created, discard=discard, plot=cfg.plot)
    return result


def _close_outputs(writer: MetricsWriter, out: str | None, created: str | None, *,
                   discard: bool, plot: bool) -> None:
    writer.close()
    if out and discard:
        _discard_out_dir(out, created)
    elif out and plot:
        from mplfast.train.plots import plot_curves

        plot_curves(os.path.join(out, "metrics.jsonl"), os.path.join(out, "curves.png"))


def _storage_message(out: str, err: OSError) -> str:
    """One line for a run whose files could not be written (full or read-only disk, ...)."""
    name = f" ({err.filename})" if err.filename else ""
    ckpt = os.path.join(out, ckpt_io.CHECKPOINT_NAME)
    if os.path.isfile(ckpt):
        tail = (f"{ckpt} is intact (checkpoints are replaced atomically, nothing was lost); "
                f"once it can be written, continue with `mplfast train --out {out} --resume`")
    else:
        tail = "no checkpoint had been written yet; once the folder can be written, run again"
    return f"cannot write the run's files in {out}: {err.strerror or err}{name}; {tail}"
