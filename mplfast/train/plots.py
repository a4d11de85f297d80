"""``curves.png``: accuracies, losses, h and mask rate over steps, from ``metrics.jsonl``."""
from __future__ import annotations

import os
from typing import Any

from mplfast.train.metrics import read_records

_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("test accuracy (%)", ("teacher_acc", "student_acc", "ema_acc", "acc", "finetune_acc")),
    ("loss", ("teacher_loss", "student_loss", "uda_loss", "mpl_loss", "loss")),
    ("meta signal h", ("h",)),
    ("mask rate", ("mask_rate",)),
)


def plot_curves(metrics_path: str, out_path: str) -> bool:
    """Draw the four panels; returns False (and writes nothing) if there is nothing to plot."""
    if not os.path.isfile(metrics_path):
        return False
    records = read_records(metrics_path)
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, keys) in zip(axes.flat, _PANELS):
        drawn = False
        for key in keys:
            pts = _series(records, key)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, ms=3, label=key)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)
    return True


def _series(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in records
            if isinstance(r.get(key), (int, float)) and "step" in r]
