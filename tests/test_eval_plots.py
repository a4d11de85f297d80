"""curves.png: teacher and student losses on their own readable scales, a learning-rate panel,
validation curves with test points; confusion.png is written."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
import torch

from mplfast.train.plots import curves_figure, plot_confusion, plot_curves


def _records():
    recs = []
    for step in range(1, 41):
        recs.append({"step": step, "phase": "train",
                     # teacher loss ~ 50x the student's, with one early spike
                     "teacher_loss": (900.0 if step == 1 else 50.0 - step * 0.1),
                     "uda_loss": 20.0, "student_loss": 1.0 - step * 0.01,
                     "h": 0.01 * (-1) ** step, "mask_rate": step / 40,
                     "lr_student": 0.05 * step / 40, "lr_teacher": 0.04 * step / 40})
    for step in (10, 20, 30, 40):
        recs.append({"step": step, "phase": "eval", "split": "val", "ema_acc": 50.0 + step})
    recs.append({"step": 40, "phase": "eval", "split": "test", "ema_acc": 88.0})
    return recs


def _axis(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_losses_have_their_own_readable_scales():
    fig = curves_figure(_records())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["accuracy (%)", "teacher loss", "student loss", "meta signal h",
                      "mask rate", "learning rate"]
    lo, hi = _axis(fig, "teacher loss").get_ylim()
    assert hi < 900  # the step-1 spike does not squash the rest of the curve
    assert lo < 20 < 46 < hi  # uda_loss and the teacher loss are both on screen
    slo, shi = _axis(fig, "student loss").get_ylim()
    assert shi - slo < 1.0  # the student loss (0.6..1.0) fills its own panel
    lr = _axis(fig, "learning rate")
    assert {ln.get_label() for ln in lr.get_lines()} == {"student", "teacher"}
    acc = _axis(fig, "accuracy (%)")
    labels = {ln.get_label(): ln for ln in acc.get_lines()}
    assert list(labels["val ema_acc"].get_xdata()) == [10, 20, 30, 40]
    assert list(labels["test ema_acc"].get_ydata()) == [88.0]
    plt.close(fig)


def test_plot_files_written(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    assert plot_curves(str(m), str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert not plot_curves(str(tmp_path / "none.jsonl"), str(tmp_path / "x.png"))
    cm = torch.tensor([[5, 1, 0], [0, 3, 2], [1, 0, 4]])
    plot_confusion(cm, ["a", "b", "c"], str(tmp_path / "confusion.png"))
    assert (tmp_path / "confusion.png").stat().st_size > 5_000
    plot_confusion(torch.zeros(60, 60, dtype=torch.int64), [str(i) for i in range(60)],
                   str(tmp_path / "big.png"))  # no ticks or counts, empty rows: no crash
    assert (tmp_path / "big.png").is_file()


@pytest.mark.parametrize("n", [1, 3])
def test_few_points_do_not_crash(n):
    fig = curves_figure(_records()[:n])
    plt.close(fig)
