"""Classification metrics from a confusion matrix: top-1, top-5, per-class and balanced accuracy.

Counts are accumulated on the device (one ``[C, C]`` int64 matrix and one top-5 counter per
split), so evaluating never syncs per batch and the counts can be summed over ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

TOP5 = 5


@dataclass
class ClassificationMetrics:
    """Counts of one model on one split.

    confusion: int64 [C, C], rows the true class, columns the predicted one.
    top5_correct: images whose true class is among the 5 highest logits (None when C < 5).
    """

    confusion: Tensor
    top5_correct: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def count(self) -> int:
        """Images evaluated."""
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent (0 for an empty split)."""
        n = self.count
        return 100.0 * int(self.confusion.diagonal().sum()) / n if n else 0.0

    @property
    def top5(self) -> float | None:
        """Top-5 accuracy in percent; None when there are fewer than 5 classes."""
        if self.top5_correct is None:
            return None
        n = self.count
        return 100.0 * self.top5_correct / n if n else 0.0

    def per_class(self) -> list[float]:
        """Accuracy (recall) of every class in percent; NaN for a class with no images."""
        support = self.confusion.sum(dim=1).tolist()
        diag = self.confusion.diagonal().tolist()
        return [100.0 * d / s if s else math.nan for d, s in zip(diag, support)]

    def support(self) -> list[int]:
        """Images of every class in the split."""
        return [int(v) for v in self.confusion.sum(dim=1).tolist()]

    @property
    def balanced(self) -> float:
        """Balanced accuracy in percent: the mean per-class accuracy over the classes present."""
        vals = [v for v in self.per_class() if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else 0.0

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-safe dict (NaN per-class accuracies become null)."""
        return {
            "images": self.count,
            "top1": self.top1,
            "top5": self.top5,
            "balanced_accuracy": self.balanced,
            "per_class": {name: {"images": s, "accuracy": None if math.isnan(a) else a}
                          for name, s, a in zip(class_names, self.support(), self.per_class())},
            "confusion": self.confusion.tolist(),
        }


class MetricsAccumulator:
    """Adds batches of (logits, labels) into a confusion matrix and a top-5 count on device."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.C = num_classes
        self.confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, logits: Tensor, labels: Tensor) -> None:
        """logits: [b, C] any float dtype; labels: int64 [b] in [0, C)."""
        pred = logits.argmax(dim=1)
        flat = labels.to(torch.int64) * self.C + pred
        self.confusion += torch.bincount(flat, minlength=self.C * self.C).view(self.C, self.C)
        if self.C >= TOP5:
            top = logits.topk(TOP5, dim=1).indices
            self.top5 += (top == labels[:, None]).any(dim=1).sum()

    def all_reduce(self) -> None:
        """Sum the counts over ranks (no-op without an initialized process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.confusion)
            dist.all_reduce(self.top5)

    def result(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.confusion.cpu(),
                                     int(self.top5.item()) if self.C >= TOP5 else None)


def from_logits(logits: Tensor, labels: Tensor, num_classes: int | None = None
                ) -> ClassificationMetrics:
    """Metrics of one [N, C] logits tensor against int64 [N] labels."""
    acc = MetricsAccumulator(num_classes or int(logits.shape[1]), logits.device)
    acc.add(logits, labels)
    return acc.result()
