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


def _clip_notes(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if "off scale" in t.get_text()]


def test_a_clipped_spike_is_said_on_its_panel():
    """The robust limits cut a spike of h (as the teacher loss's step-1 spike): the panel says
    how many points are off scale and how far they go; a panel that shows everything says
    nothing."""
    recs = _records()
    for r in recs:
        if r.get("step") == 7 and r.get("phase") == "train":
            r["h"] = -15.25  # the kind of spike an MPL update without warm-up gives
    fig = curves_figure(recs)
    h = _axis(fig, "meta signal h")
    lo, hi = h.get_ylim()
    assert lo > -15.25  # clipped: the +-0.01 oscillation stays readable
    assert _clip_notes(h) == ["1 point off scale: 1 below (min -15.25)"]
    assert _clip_notes(_axis(fig, "teacher loss")) == ["1 point off scale: 1 above (max 900)"]
    assert _clip_notes(_axis(fig, "student loss")) == []
    plt.close(fig)
