"""ModelEMA, the warmup-cosine schedule and the no-decay parameter groups."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mplfast import ModelEMA, create_model, param_groups, warmup_cosine_schedule
from mplfast.schedule import lr_factor


def test_ema_warmup_decay_and_average():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(m, decay=0.995)
    assert ema.decay_at(0) == pytest.approx(1 / 10)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10 ** 6) == 0.995
    e0 = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    m.train()
    m(torch.randn(8, 3))  # changes the running statistics
    ema.update(m, step=0)
    d = 0.1
    for e, old, p in zip(ema.module.parameters(), e0, m.parameters()):
        torch.testing.assert_close(e, d * old + (1 - d) * p.detach())
    for e, b in zip(ema.module.buffers(), m.buffers()):
        assert torch.equal(e, b)  # buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    # round trip
    ema2 = ModelEMA(m, decay=0.5)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.decay == 0.995
    for a, b in zip(ema.module.state_dict().values(), ema2.module.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_unwraps_and_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(nn.Linear(2, 2), decay=1.5)


def test_schedule_wait_warmup_cosine():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.05)
    sched = warmup_cosine_schedule(opt, warmup_steps=10, total_steps=110, wait_steps=5)
    lrs = []
    for _ in range(112):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == [0.0] * 6  # wait, then warmup starts at 0
    assert lrs[10] == pytest.approx(0.05 * 5 / 10)
    assert lrs[15] == pytest.approx(0.05)  # peak right after warmup
    mid = 15 + (110 - 15) // 2
    assert lrs[mid] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (mid - 15) / 95)))
    assert lrs[110] == pytest.approx(0.0, abs=1e-12) and lrs[111] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[15:], lrs[16:]))  # monotone decay
    assert lr_factor(0, warmup_steps=0, total_steps=10) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_schedule(opt, warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="wait_steps"):
        warmup_cosine_schedule(opt, warmup_steps=1, total_steps=5, wait_steps=-1)


def test_param_groups_no_decay_on_bn_and_bias():
    m = create_model("wrn28_2", 10)
    groups = param_groups(m, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    decay_ids = {id(p) for p in groups[0]["params"]}
    no_ids = {id(p) for p in groups[1]["params"]}
    assert len(decay_ids) + len(no_ids) == len(list(m.parameters()))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert id(mod.weight) in no_ids and id(mod.bias) in no_ids
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            assert id(mod.weight) in decay_ids
    assert id(m.fc.bias) in no_ids
    torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)  # usable as-is
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(m, -1.0)
