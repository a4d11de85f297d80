"""Model files of a run: ``best.pt``, ``last.pt`` and the ``--keep N`` earlier ``step-<N>.pt``.

Unlike ``checkpoint.pt`` (the full training state ``--resume`` needs), a model file holds only
what evaluation, export and prediction need: the weights of every model of the run, the config,
the class names, the normalization and the image shape. It is made of plain tensors, strings,
numbers, lists and dicts, so it loads with ``torch.load(weights_only=True)``: opening one never
runs code.

* ``last.pt``: the models at the latest checkpoint (at the end of a finished run, the final ones).
  With ``keep = N > 0`` the previous ``last.pt`` becomes ``step-<step>.pt`` each time a newer one
  is written, and only the N newest of those stay.
* ``best.pt``: the models at the evaluation whose headline model scored the highest accuracy on
  the validation split (``val_fraction`` of the training pool, never trained on). Never chosen on
  the test split; without a validation split (``val_fraction = 0``) there is no ``best.pt``.
"""
from __future__ import annotations

import copy
import glob
import os
import re
from typing import Any, Callable

import torch

from mplfast.errors import UserError

MODEL_FORMAT = "mplfast-models"
MODEL_VERSION = 1
BEST, LAST = "best.pt", "last.pt"
_STEP_RE = re.compile(r"step-(\d+)\.pt$")
MODEL_KEYS = ("teacher", "student", "ema", "finetuned")


def headline_key(cfg: dict[str, Any], available: set[str] | list[str]) -> str:
    """Which model a run reports as ``test_acc``: the finetuned one if there is one, the teacher
    for uda, the EMA student when EMA weights are evaluated, else the student."""
    available = set(available)
    if "finetuned" in available:
        return "finetuned"
    if cfg.get("method") == "uda" and "teacher" in available:
        return "teacher"
    if "ema" in available and cfg.get("eval_ema", True):
        return "ema"
    return "student"


def arch_of(cfg: dict[str, Any], key: str) -> str:
    """The registry name of model ``key`` of a run with config ``cfg``."""
    teacher = cfg.get("teacher_model") or cfg["model"]
    if key == "teacher" or (key == "finetuned" and cfg.get("method") == "uda"):
        return teacher
    return cfg["model"]


def _cpu_sd(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}


def payload_from_run(run: Any) -> dict[str, Any]:
    """The model file of a ``runner._Run`` at its current step (CPU copies of the weights)."""
    from mplfast.data.splits import class_names

    cfg = run.cfg.to_dict()
    models: dict[str, dict[str, torch.Tensor]] = {}
    if run.teacher is not None:
        models["teacher"] = _cpu_sd(run.teacher.state_dict())
    models["student"] = _cpu_sd(run.student.state_dict())
    if run.ema is not None:
        models["ema"] = _cpu_sd(run.ema.module.state_dict())
    if run.finetuned_sd is not None:
        models["finetuned"] = _cpu_sd(run.finetuned_sd)
    ds = run.data.dataset
    H, W, C = (int(v) for v in ds.image_shape)
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "step": int(run.step),
        "phase": str(run.phase),
        "config": cfg,
        "models": models,
        "headline": headline_key(cfg, models),
        "num_classes": int(ds.num_classes),
        "class_names": class_names(ds),
        "mean": [float(v) for v in ds.mean],
        "std": [float(v) for v in ds.std],
        "image_size": [H, W],
        "in_chans": C,
        "val_acc": None,
    }


def save_models(payload: dict[str, Any], path: str) -> None:
    """Write a model file atomically."""
    from mplfast.train.checkpoint import save_atomic

    save_atomic(payload, path)


def _bad(path: str, why: str) -> UserError:
    return UserError(f"{path} is not an mplfast model file ({why})")


def validate_models(obj: Any, path: str) -> dict[str, Any]:
    """Check the structure of a loaded model file; ``UserError`` (one line) if it is wrong."""
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise _bad(path, "no 'format: mplfast-models' entry")
    if obj.get("version") != MODEL_VERSION:
        raise _bad(path, f"version {obj.get('version')!r}, expected {MODEL_VERSION}")
    for key, tp in (("step", int), ("config", dict), ("models", dict), ("headline", str),
                    ("num_classes", int), ("class_names", list), ("mean", list), ("std", list),
                    ("image_size", list), ("in_chans", int)):
        if not isinstance(obj.get(key), tp):
            raise _bad(path, f"missing or malformed {key!r}")
    models = obj["models"]
    if not models or obj["headline"] not in models:
        raise _bad(path, "its models do not include the headline one")
    for name, sd in models.items():
        if name not in MODEL_KEYS or not isinstance(sd, dict) or not sd or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
            raise _bad(path, f"model {name!r} is not a dict of tensors")
    if len(obj["class_names"]) != obj["num_classes"]:
        raise _bad(path, "class_names do not match num_classes")
    if not isinstance(obj["config"].get("model"), str):
        raise _bad(path, "its config names no model")
    return obj


def load_models(path: str) -> dict[str, Any]:
    """Load and validate a model file with ``torch.load(weights_only=True)`` (no code runs)."""
    from mplfast.train.checkpoint import safe_torch_load

    if not os.path.isfile(path):
        raise UserError(f"model file not found: {path}")
    # the one reader of every .pt file: a pickle that would run code is refused, with one line
    return validate_models(safe_torch_load(path), path)


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, what: str,
                 path: str) -> None:
    """``model.load_state_dict(sd)`` after checking that ``sd`` has exactly the model's keys,
    shapes and dtypes; ``UserError`` naming the first difference otherwise."""
    ref = model.state_dict()
    missing = [k for k in ref if k not in sd]
    extra = [k for k in sd if k not in ref]
    why = None
    if missing:
        why = f"missing {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    elif extra:
        why = f"unexpected {extra[0]!r}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    else:
        for k, r in ref.items():
            t = sd[k]
            if not isinstance(t, torch.Tensor) or t.shape != r.shape or t.dtype != r.dtype:
                got = (f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor)
                       else type(t).__name__)
                why = f"{k} has shape/dtype {got}, the model needs {tuple(r.shape)} {r.dtype}"
                break
    if why is not None:
        raise UserError(f"{path}: {what} weights do not match the model: {why}")
    model.load_state_dict(sd)


def models_from_checkpoint(st: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The model weights held by a resume checkpoint (``checkpoint.pt``)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    if st.get("teacher") is not None:
        out["teacher"] = st["teacher"]
    if st.get("student") is not None:
        out["student"] = st["student"]
    if isinstance(st.get("ema"), dict) and st["ema"].get("module") is not None:
        out["ema"] = st["ema"]["module"]
    if st.get("finetuned") is not None:
        out["finetuned"] = st["finetuned"]
    elif isinstance(st.get("finetune"), dict) and st["finetune"].get("model") is not None:
        out["finetuned"] = st["finetune"]["model"]  # a finetune stopped part-way
    return out


def resolve_run_file(path: str) -> str:
    """A run folder means its ``best.pt``, else ``last.pt``, else ``checkpoint.pt``; a file
    is itself. ``UserError`` if there is nothing to read."""
    if os.path.isdir(path):
        for name in (BEST, LAST, "checkpoint.pt"):
            p = os.path.join(path, name)
            if os.path.isfile(p):
                return p
        raise UserError(f"{path} holds no {BEST}, {LAST} or checkpoint.pt (is it a run folder?)")
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    return path


def step_files(out: str) -> list[tuple[int, str]]:
    """(step, path) of the kept ``step-<N>.pt`` files in ``out``, oldest first."""
    found = []
    for p in glob.glob(os.path.join(glob.escape(out), "step-*.pt")):
        m = _STEP_RE.search(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


class ModelCheckpoints:
    """Writes ``last.pt`` / ``best.pt`` / ``step-<N>.pt`` for one run (no-op without ``out``).

    Best tracking runs on every rank (the validation accuracy it is fed is the same on all), so
    every rank holds the best headline weights in memory for the final report; only the rank
    with ``out`` writes files."""

    def __init__(self, out: str | None, *, keep: int = 0, resume: bool = False) -> None:
        self.out, self.keep = out, keep
        self.best_acc: float | None = None
        self.best_step: int | None = None
        self.best_headline: tuple[str, dict[str, torch.Tensor]] | None = None
        if out and not resume:  # a fresh run never mixes its model files with an earlier one's
            for p in [os.path.join(out, BEST), os.path.join(out, LAST)] + \
                    [p for _, p in step_files(out)]:
                if os.path.exists(p):
                    os.remove(p)
        if out and resume and os.path.isfile(os.path.join(out, BEST)):
            try:
                best = load_models(os.path.join(out, BEST))
            except UserError:
                best = None
            if best is not None and best.get("val_acc") is not None:
                self.best_acc, self.best_step = float(best["val_acc"]), int(best["step"])
                self.best_headline = (best["headline"], best["models"][best["headline"]])

    def write_last(self, payload: dict[str, Any]) -> None:
        """Write ``last.pt``; with ``keep`` the previous one becomes ``step-<its step>.pt``."""
        if not self.out:
            return
        last = os.path.join(self.out, LAST)
        if self.keep > 0 and os.path.isfile(last):
            from mplfast.train.checkpoint import safe_torch_load

            try:
                prev_step = int(safe_torch_load(last)["step"])
            except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced
                prev_step = None
            if prev_step is not None and prev_step < payload["step"]:
                os.replace(last, os.path.join(self.out, f"step-{prev_step:07d}.pt"))
        save_models(payload, last)
        if self.keep > 0:
            for _, p in step_files(self.out)[:-self.keep]:
                os.remove(p)

    def offer_best(self, val_acc: float, payload_fn: Callable[[], dict[str, Any]]) -> bool:
        """Record the models as the best so far if ``val_acc`` beats the best (ties keep the
        earlier one); returns True when they became the best."""
        if self.best_acc is not None and val_acc <= self.best_acc:
            return False
        payload = payload_fn()
        payload["val_acc"] = float(val_acc)
        self.best_acc, self.best_step = float(val_acc), int(payload["step"])
        head = payload["headline"]
        self.best_headline = (head, copy.copy(payload["models"][head]))
        if self.out:
            save_models(payload, os.path.join(self.out, BEST))
        return True
