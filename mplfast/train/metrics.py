"""Metric sinks: ``metrics.jsonl`` (one JSON object per log or eval) and TensorBoard events.

Also the on-device running mean used between log lines, so the hot loop never syncs.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch


class RunningMean:
    """Sums 0-dim tensors on their device; ``.pop()`` syncs once per log interval."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._n = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            if not torch.is_tensor(v) or v.numel() != 1:
                continue
            v = v.detach().reshape(()).float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._n += 1

    def state_dict(self) -> dict[str, Any]:
        """Partial sums (CPU copies): a resumed run's next log line averages the same steps."""
        return {"sums": {k: v.detach().cpu() for k, v in self._sums.items()}, "n": self._n}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self._sums = {k: v.to(device) for k, v in state["sums"].items()}
        self._n = int(state["n"])

    def pop(self) -> dict[str, float]:
        """Means since the last pop, as Python floats (one device->host copy)."""
        if self._n == 0:
            return {}
        keys = list(self._sums)
        values = torch.stack([self._sums[k] for k in keys]).div_(self._n).cpu().tolist()
        self._sums.clear()
        self._n = 0
        return dict(zip(keys, values))


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard (rank 0 only)."""

    def __init__(self, out_dir: str | None, *, tensorboard: bool, resume_step: int | None = None):
        self.path = os.path.join(out_dir, "metrics.jsonl") if out_dir else None
        self._tb: Any = None
        if self.path and resume_step is not None:
            _truncate_after(self.path, resume_step)
        if out_dir and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                SummaryWriter = None  # type: ignore[assignment]  # noqa: N806
            if SummaryWriter is not None:
                # purge_step: TensorBoard drops the events of earlier files at steps >= it, those
                # a killed run wrote after its last checkpoint. The records at the checkpoint's
                # own step came before the checkpoint (as metrics.jsonl keeps them), so + 1.
                purge = resume_step + 1 if resume_step is not None else None
                self._tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        """Write one record (must contain ``step``)."""
        record = {k: _clean(v) for k, v in record.items()}
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            phase = record.get("phase", "train")
            for k, v in record.items():
                if k in ("step", "phase") or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                self._tb.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _truncate_after(path: str, step: int) -> None:
    """Drop records a killed run wrote after the checkpoint we resume from."""
    if not os.path.isfile(path):
        return
    from mplfast.train.fileio import write_text_atomic

    keep = [line for line in read_records(path) if int(line.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in keep))


def read_records(path: str) -> list[dict[str, Any]]:
    """All valid JSON lines of a metrics file (a torn last line is skipped)."""
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
