"""Run figures: ``curves.png`` (from ``metrics.jsonl``) and ``confusion.png``.

``curves.png`` has six panels, each with its own y scale so that no curve is flattened by
another: accuracy (validation curve, test points), teacher loss, student loss, meta signal h,
mask rate, learning rates. A loss panel's limits come from the 2nd..98th percentile of its values
(an early spike does not squash the rest) and switch to a log scale when positive values span
more than two decades; the points such limits leave out are counted on the panel, with the
extreme value ("2 points off scale: 1 above (max 15.3), ...").
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

from mplfast.train.metrics import read_records

_ACC_KEYS = ("teacher_acc", "student_acc", "ema_acc", "acc", "finetune_acc")

# (title, [(key, phase or None for any non-eval phase, label)], robust limits)
_PANELS: tuple[tuple[str, tuple[tuple[str, str | None, str], ...], bool], ...] = (
    ("teacher loss", (("teacher_loss", "train", "teacher_loss"),
                      ("teacher_loss_l", "train", "labeled part"),
                      ("uda_loss", "train", "uda_loss")), True),
    ("student loss", (("student_loss", "train", "student_loss (pseudo labels)"),
                      ("student_loss_l_new", "train", "on labeled batch"),
                      ("loss", "train", "loss (supervised)"),
                      ("loss", "finetune", "finetune loss")), True),
    ("meta signal h", (("h", "train", "h"),), True),
    ("mask rate", (("mask_rate", "train", "mask_rate"),), False),
    ("learning rate", (("lr_student", "train", "student"), ("lr_teacher", "train", "teacher")),
     False),
)


def _series(records: list[dict[str, Any]], key: str, phase: str | None = None,
            split: str | None = None) -> list[tuple[int, float]]:
    out = []
    for r in records:
        v = r.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or "step" not in r:
            continue
        if not math.isfinite(float(v)):
            continue
        if phase is not None and r.get("phase", "train") != phase:
            continue
        if split is not None and r.get("split", "test") != split:
            continue
        out.append((int(r["step"]), float(v)))
    return out


def _percentile(vals: Sequence[float], q: float) -> float:
    s = sorted(vals)
    i = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[i]


def _robust_limits(ax: Any, values: list[float]) -> None:
    """Y limits from the 2nd..98th percentile (with a margin); log scale for wide positive data.
    Points the limits leave out are said on the panel (how many, and how far they go), so a
    spike is never hidden without a word."""
    if len(values) < 5:
        return
    lo, hi = _percentile(values, 0.02), _percentile(values, 0.98)
    if lo > 0 and hi / lo > 100:
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.5, hi * 1.5)
    else:
        pad = 0.1 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
    _note_clipped(ax, values)


def _note_clipped(ax: Any, values: list[float]) -> None:
    ymin, ymax = ax.get_ylim()
    below = [v for v in values if v < ymin]
    above = [v for v in values if v > ymax]
    if not below and not above:
        return
    parts = ([f"{len(above)} above (max {max(above):.4g})"] if above else []) + \
            ([f"{len(below)} below (min {min(below):.4g})"] if below else [])
    n = len(below) + len(above)
    ax.text(0.99, 0.98, f"{n} point{'s' if n > 1 else ''} off scale: " + ", ".join(parts),
            transform=ax.transAxes, ha="right", va="top", fontsize=7, color="C3",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "lw": 0})


def plot_curves(metrics_path: str, out_path: str) -> bool:
    """Draw the panels; returns False (and writes nothing) if there is nothing to plot."""
    if not os.path.isfile(metrics_path):
        return False
    records = read_records(metrics_path)
    if not records:
        return False
    import matplotlib.pyplot as plt

    fig = curves_figure(records)
    _save(fig, plt, out_path)
    return True


def curves_figure(records: list[dict[str, Any]]) -> Any:
    """The ``curves.png`` figure of metric records (a matplotlib Figure; Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    flat = list(axes.flat)
    # accuracy: validation curves (and old-style eval records), the test split as points
    ax = flat[0]
    drawn = False
    for i, key in enumerate(_ACC_KEYS):
        val = _series(records, key, "eval", "val")
        if val:
            xs, ys = zip(*val)
            ax.plot(xs, ys, marker="o" if len(val) < 20 else None, ms=3, label=f"val {key}",
                    color=f"C{i}")
            drawn = True
        test = _series(records, key, "eval", "test")
        if test:
            xs, ys = zip(*test)
            ax.plot(xs, ys, linestyle="none", marker="x", ms=8, mew=2, label=f"test {key}",
                    color=f"C{i}")
            drawn = True
    _finish(ax, "accuracy (%)", drawn)
    for ax, (title, keys, robust) in zip(flat[1:], _PANELS):
        drawn, values = False, []
        for key, phase, label in keys:
            pts = _series(records, key, phase)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, ms=3, label=label)
                values += list(ys)
                drawn = True
        if drawn and robust:
            _robust_limits(ax, values)
        _finish(ax, title, drawn)
    fig.tight_layout()
    return fig


def _finish(ax: Any, title: str, drawn: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)


def _save(fig: Any, plt: Any, out_path: str) -> None:
    from mplfast.train.fileio import write_atomic

    try:
        write_atomic(out_path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)


def plot_confusion(confusion: Any, class_names: Sequence[str], out_path: str, *,
                   title: str = "confusion matrix") -> None:
    """``confusion.png``: rows the true class, columns the predicted one; colour is the row
    fraction (so small classes are as visible as large ones), cells show counts when C <= 20,
    tick labels are the class names when C <= 50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=np.int64)
    C = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = min(4 + 0.45 * C, 20)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(frac, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if C <= 50:
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        ax.set_xticklabels([str(n) for n in class_names], rotation=90, fontsize=8)
        ax.set_yticklabels([str(n) for n in class_names], fontsize=8)
    if C <= 20:
        for i in range(C):
            for j in range(C):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, plt, out_path)
