"""The end-of-run report: test metrics of the final headline model (with ``confusion.png``) and
of the ``best.pt`` model chosen on the validation split.

The test split is used here, once, for reporting; nothing is chosen on it.
"""
from __future__ import annotations

import copy
import os
from typing import Any

from torch import nn

from mplfast.distributed import unwrap
from mplfast.train import builders
from mplfast.train.distributed import any_flag
from mplfast.train.evaluate import evaluate_metrics
from mplfast.train.model_file import arch_of


def _final_headline(r: Any) -> nn.Module:
    if r.finetuned_sd is not None:
        model = copy.deepcopy(unwrap(r.headline_model()))
        model.load_state_dict(r.finetuned_sd)
        return model
    return r.headline_model()


def final_report(r: Any) -> dict[str, Any]:
    """Summary fields of a finished ``runner._Run`` (every rank calls this; rank 0 writes
    ``confusion.png``)."""
    from mplfast.data.splits import class_names

    cfg, ds = r.cfg, r.data.dataset
    kw = dict(num_classes=int(ds.num_classes), precision=r.precision, device=r.device,
              batch_size=cfg.eval_batch_size)
    test = evaluate_metrics(_final_headline(r), r.data.batcher, split="test", **kw)
    out: dict[str, Any] = {
        "num_classes": int(ds.num_classes),
        "train_images": int(ds.train_labels.numel()),
        "val_images": int(ds.val_labels.numel()) if getattr(ds, "val_labels", None) is not None
        else 0,
        "test_images": test.count,
        "test_top5": test.top5,
        "test_balanced_acc": test.balanced,
        "val_acc": r.results.get("val_acc"),
        "best_step": None, "best_val_acc": None, "best_test_acc": None,
    }
    best = r.ckpts.best_headline
    if not any_flag(best is None, r.info):
        key, sd = best
        model = builders.build_model(cfg, arch_of(cfg.to_dict(), key), r.data, r.device)
        model.load_state_dict(sd)
        out.update(best_step=r.ckpts.best_step, best_val_acc=r.ckpts.best_acc,
                   best_test_acc=evaluate_metrics(model, r.data.batcher, split="test", **kw).top1)
    if r.out and cfg.plot:
        from mplfast.train.plots import plot_confusion

        plot_confusion(test.confusion, class_names(ds), os.path.join(r.out, "confusion.png"),
                       title=f"test split, final {_headline_name(r)} ({test.count} images, "
                             f"top-1 {test.top1:.1f} %)")
    return out


def _headline_name(r: Any) -> str:
    if r.finetuned_sd is not None:
        return "finetuned model"
    if r.cfg.method == "uda":
        return "teacher"
    return "EMA student" if r.ema is not None and r.cfg.eval_ema else "student"
