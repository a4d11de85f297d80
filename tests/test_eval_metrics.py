"""Classification metrics against scikit-learn on random logits (several class counts, classes
absent from the split, chunked accumulation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, top_k_accuracy_score

from mplfast.train.classification_metrics import MetricsAccumulator, from_logits


@pytest.mark.parametrize("C,N", [(2, 7), (3, 50), (5, 64), (17, 301)])
def test_metrics_match_sklearn(C, N):
    g = torch.Generator().manual_seed(C * 100 + N)
    logits = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, C, (N,), generator=g)
    if C > 3:
        labels[labels == 1] = 0  # class 1 absent: per-class accuracy NaN, not in balanced
    m = from_logits(logits, labels, C)
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    assert np.array_equal(m.confusion.numpy(), confusion_matrix(y, pred, labels=range(C)))
    assert m.count == N
    assert m.top1 == pytest.approx(100 * float((pred == y).mean()))
    assert m.balanced == pytest.approx(100 * balanced_accuracy_score(y, pred))
    if C >= 5:
        assert m.top5 == pytest.approx(100 * top_k_accuracy_score(y, logits.numpy(), k=5,
                                                                  labels=range(C)))
    else:
        assert m.top5 is None
    pc = m.per_class()
    for c in range(C):
        sel = y == c
        if sel.sum() == 0:
            assert math.isnan(pc[c])
        else:
            assert pc[c] == pytest.approx(100 * float((pred[sel] == c).mean()))
    d = m.to_dict([f"k{c}" for c in range(C)])
    assert d["images"] == N and len(d["per_class"]) == C and d["confusion"] == m.confusion.tolist()


def test_chunked_accumulation_equals_whole():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(97, 6, generator=g)
    labels = torch.randint(0, 6, (97,), generator=g)
    acc = MetricsAccumulator(6, torch.device("cpu"))
    for i in range(0, 97, 10):
        acc.add(logits[i:i + 10].to(torch.bfloat16).float(), labels[i:i + 10])
    whole = from_logits(logits.to(torch.bfloat16).float(), labels)
    part = acc.result()
    assert torch.equal(part.confusion, whole.confusion) and part.top5_correct == whole.top5_correct


def test_empty_split_is_zero_not_a_crash():
    m = MetricsAccumulator(3, torch.device("cpu")).result()
    assert m.count == 0 and m.top1 == 0.0 and m.balanced == 0.0
    assert all(math.isnan(v) for v in m.per_class())
