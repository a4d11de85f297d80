"""``mplfast eval RUN|FILE``: rebuild the models a run saved and measure them on one split.

Reads a run folder (its ``best.pt``, else ``last.pt``, else ``checkpoint.pt``), a model file
(``best.pt``, ``last.pt``, ``step-<N>.pt``) or a resume checkpoint. Reports, per model, top-1,
top-5 (with 5 or more classes), balanced accuracy, per-class accuracy and the confusion matrix:
as tables on screen and, with ``--json FILE``, as JSON.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from mplfast.errors import UserError
from mplfast.precision import resolve_precision
from mplfast.train import builders
from mplfast.train.classification_metrics import ClassificationMetrics
from mplfast.train.config import TrainConfig, apply_overrides
from mplfast.train.distributed import DistInfo, _pick_device
from mplfast.train.evaluate import evaluate_metrics
from mplfast.train.model_file import (MODEL_FORMAT, arch_of, headline_key, load_weights,
                                      models_from_checkpoint, resolve_run_file, validate_models)

SPLITS = ("test", "val", "train")
_LEGACY_KEYS = {"teacher": "teacher_acc", "student": "student_acc", "ema": "ema_acc",
                "finetuned": "finetune_acc"}


@dataclass
class EvalResult:
    """What ``mplfast eval`` measured."""

    source: str                              # the file read
    step: int
    split: str
    class_names: list[str]
    headline: str                            # the model the run reports as test_acc
    models: dict[str, ClassificationMetrics]  # teacher / student / ema / finetuned

    @property
    def images(self) -> int:
        return next(iter(self.models.values())).count

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "step": self.step, "split": self.split,
                "images": self.images, "num_classes": len(self.class_names),
                "class_names": self.class_names, "headline": self.headline,
                "models": {k: m.to_dict(self.class_names) for k, m in self.models.items()}}


def read_saved_models(path: str) -> tuple[dict[str, Any], int, dict[str, dict[str, torch.Tensor]],
                                          str]:
    """(config dict, step, {model key: state dict}, resolved path) of a run folder, a model
    file or a resume checkpoint."""
    from mplfast.train import checkpoint as ckpt_io

    path = resolve_run_file(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    # one restricted (weights_only) load: a pickle that would run code is the one refusal line
    obj = ckpt_io.safe_torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        obj = validate_models(obj, path)
        return obj["config"], int(obj["step"]), obj["models"], path
    # a resume checkpoint: the checkpoint module's layout and config checks
    st = ckpt_io.validate_loaded(obj, path, expect="weights")
    models = models_from_checkpoint(st)
    if not models or not isinstance(st.get("config"), dict):
        raise UserError(f"{path} holds no model weights (not an mplfast run file)")
    return st["config"], int(st["step"]), models, path


def evaluate_run(path: str, *, split: str = "test", data: str | None = None,
                 device: str | None = None) -> EvalResult:
    """Measure every model saved at ``path`` on ``split`` (test | val | train).

    ``data`` overrides the data root saved with the run (files moved since training). The
    validation and training splits are rebuilt exactly as training drew them (same seed and
    ``val_fraction``); ``train`` is the training pool without the validation images."""
    from mplfast.data.splits import class_names

    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    cfg_dict, step, models, src = read_saved_models(path)
    overrides: dict[str, Any] = {"data": data} if data is not None else {}
    if device is not None:
        overrides["device"] = device
    cfg = apply_overrides(apply_overrides(TrainConfig(), cfg_dict, "saved config"), overrides,
                          "option")
    if cfg.data is not None and not os.path.exists(cfg.data):
        raise UserError(f"the run's data root {cfg.data} does not exist; pass --data DIR")
    dev = _pick_device(cfg.device, 0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    # world_size 1: the run's global batch size needs no divisibility here
    bundle = builders.build_data(cfg, info)
    ds = bundle.dataset
    if split == "val" and getattr(ds, "val_labels", None) is None:
        raise UserError("this run has no validation split (val_fraction was 0); use --split "
                        "test or train")
    precision = resolve_precision(cfg.precision, dev)
    out: dict[str, ClassificationMetrics] = {}
    for key in ("teacher", "student", "ema", "finetuned"):
        if key not in models:
            continue
        model = builders.build_model(cfg, arch_of(cfg_dict, key), bundle, dev)
        load_weights(model, models[key], what=key, path=src)
        out[key] = evaluate_metrics(model, bundle.batcher, num_classes=int(ds.num_classes),
                                    precision=precision, device=dev,
                                    batch_size=cfg.eval_batch_size, split=split)
    return EvalResult(src, step, split, class_names(ds), headline_key(cfg_dict, out), out)


def evaluate_checkpoint(path: str, *, data: str | None = None,
                        device: str | None = None) -> tuple[int, dict[str, float]]:
    """(step, top-1 accuracies in percent keyed ``teacher_acc``/``student_acc``/``ema_acc``/
    ``finetune_acc``) on the test split (the older, smaller interface)."""
    r = evaluate_run(path, data=data, device=device)
    return r.step, {_LEGACY_KEYS[k]: m.top1 for k, m in r.models.items()}


# ------------------------------------------------------------------------------- reporting
def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def print_report(r: EvalResult, *, model: str | None = None, file: TextIO | None = None) -> None:
    """Tables on screen (rich): one row per model, then per-class accuracy and the confusion
    matrix of ``model`` (default: the headline model)."""
    from rich.console import Console
    from rich.table import Table

    con = Console(file=file, highlight=False, soft_wrap=False)
    C = len(r.class_names)
    # the path on a line of its own, never broken by rich (it stays one string to copy)
    con.print(r.source, soft_wrap=True)
    con.print(f"step {r.step}: split {r.split}, {r.images} images, {C} classes")
    t = Table(title=None, show_lines=False)
    for col in ("model", "top-1 %", "top-5 %", "balanced %"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for k, m in r.models.items():
        t.add_row(k + (" (headline)" if k == r.headline else ""), _pct(m.top1),
                  _pct(m.top5) if m.top5 is not None else "n/a (C < 5)", _pct(m.balanced))
    con.print(t)
    key = model or r.headline
    m = r.models[key]
    con.print(f"per-class accuracy of {key}:")
    pc = Table()
    pc.add_column("class")
    pc.add_column("images", justify="right")
    pc.add_column("accuracy %", justify="right")
    for name, n, a in zip(r.class_names, m.support(), m.per_class()):
        pc.add_row(str(name), str(n), _pct(a))
    con.print(pc)
    cm = _confusion_table(con, r.class_names, m.confusion.tolist()) if C <= 20 else None
    if cm is not None:
        con.print(f"confusion matrix of {key} (rows: true class, columns: predicted):")
        con.print(cm)
    else:
        con.print(f"confusion matrix ({C} x {C}): does not fit {con.width} columns; see --json FILE")


def _confusion_table(con: Any, names: list[str], rows: list[list[int]]) -> Any:
    """The confusion matrix as a table that fits the console: columns headed by the class
    names, or by their numbers (the rows then say which is which) when the names are too wide;
    None when neither fits. rich would otherwise wrap the headers over several lines."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    for numbered in (False, True):
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        t.add_column("true \\ pred", no_wrap=True)
        for i, name in enumerate(names):
            t.add_column(str(i) if numbered else str(name), justify="right", no_wrap=True)
        for i, (name, row) in enumerate(zip(names, rows)):
            t.add_row(f"{i} {name}" if numbered else str(name), *(str(v) for v in row))
        # measured unbounded (options clamp it to the console's width)
        if Measurement.get(con, con.options.update_width(10**6), t).maximum <= con.width:
            return t
    return None


def write_json(r: EvalResult, path: str) -> None:
    """The full report (every model, per-class, confusion) as JSON."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(r.to_dict(), f, indent=2)
            f.write("\n")
    except OSError as e:
        raise UserError(f"cannot write --json {path}: {e.strerror or e}") from None
