"""Live progress: a rich bar on a terminal (steps/s, losses, h, mask rate, ETA), plain log
lines otherwise (CI logs, files, ``| tee``)."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

# metrics shown in the bar / log lines, in this order, with short labels
_SHOWN = (("teacher_loss", "T"), ("student_loss", "S"), ("loss", "loss"), ("uda_loss", "uda"),
          ("h", "h"), ("mask_rate", "mask"))


def format_metrics(metrics: dict[str, Any]) -> str:
    """``T 1.234 S 0.567 h +0.0012 mask 0.81`` from a metrics dict (missing keys skipped)."""
    parts = []
    for key, label in _SHOWN:
        if key in metrics and isinstance(metrics[key], (int, float)):
            v = float(metrics[key])
            parts.append(f"{label} {v:+.4f}" if key == "h" else f"{label} {v:.3f}")
    return " ".join(parts)


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _rich_progress(stream: TextIO | None) -> Any:
    """rich's Progress: the bar takes what the other columns leave, and each task's metrics get
    a line of their own under it (cut with an ellipsis, never wrapped): on one 80-column line
    they pushed the step count and the ETA out."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class TwoLine(RichProgress):
        def get_renderables(self):  # type: ignore[no-untyped-def]
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                if task.fields.get("metrics"):
                    yield Text("  " + task.fields["metrics"], no_wrap=True, overflow="ellipsis")

    return TwoLine(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=None), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=Console(file=stream) if stream is not None else None,
        refresh_per_second=4, transient=False)


class Progress:
    """One phase's progress (``train`` or ``finetune``); ``mode`` in auto|rich|plain|none."""

    def __init__(self, total: int, start: int, *, mode: str, desc: str, enabled: bool = True,
                 stream: TextIO | None = None):
        self.total, self.start, self.desc = total, start, desc
        self.stream = stream or sys.stdout
        if not enabled:
            mode = "none"
        elif mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self._t0 = time.perf_counter()
        self._step = start
        self._rich: Any = None
        self._task: Any = None
        if mode == "rich":
            self._rich = _rich_progress(stream)
            self._rich.start()
            self._task = self._rich.add_task(desc, total=total, completed=start, rate="",
                                             metrics="")

    def rate(self) -> float:
        """Steps per second since this phase (re)started."""
        dt = time.perf_counter() - self._t0
        return (self._step - self.start) / dt if dt > 0 else 0.0

    def advance(self, step: int) -> None:
        """Called every step with the number of completed steps (cheap)."""
        self._step = step
        if self._rich is not None:
            self._rich.update(self._task, completed=step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Show a log interval's metrics (bar fields, or one plain line)."""
        self._step = step
        rate = self.rate()
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        text = format_metrics(metrics)
        if self._rich is not None:
            self._rich.update(self._task, completed=step, rate=f"{rate:.1f} it/s", metrics=text)
        elif self.mode == "plain":
            eta_s = _fmt_eta(eta) if eta == eta else "?"
            print(f"[{self.desc}] step {step}/{self.total} {rate:.1f} it/s ETA {eta_s} {text}",
                  file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line above the bar (eval results, checkpoints)."""
        if self._rich is not None:
            self._rich.console.print(text)
        elif self.mode == "plain":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
