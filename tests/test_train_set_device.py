"""A single-process CUDA run makes its device current (issue 9, item 1): Triton launches on the
current device and its stream, so `--device cuda:1` without torchrun must call set_device too.
Runs without a GPU: CUDA's availability and set_device are faked."""
from __future__ import annotations

import torch

from mplfast.train import distributed as D


def test_single_process_cuda_run_sets_its_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = D.setup("cuda:1")
    assert not info.distributed and info.device == torch.device("cuda", 1)
    assert calls == [torch.device("cuda", 1)]


def test_cpu_run_does_not_touch_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.setup("cpu").device == torch.device("cpu") and calls == []
