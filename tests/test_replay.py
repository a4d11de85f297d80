"""mplfast.replay: a forward's random draws replayed in a later forward (issue 14: the step's
dropout-mask replay must trace under torch.compile without reading the RNG state).

RecordedReplay is exercised eagerly here (it is a TorchFunctionMode, eager and traced alike) and
traced by torch.compile(fullgraph=True), where StateReplay cannot trace (Dynamo skips
torch.get_rng_state).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mplfast.replay import RecordedReplay, StateReplay, replay_for


def _net(p: float = 0.4) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(7, 33), nn.ReLU(), nn.Dropout(p), nn.Linear(33, 5)).train()


def _drop_path(x: torch.Tensor, keep: float = 0.7) -> torch.Tensor:
    """timm's DropPath: a per-row mask drawn by Tensor.bernoulli_, scaled in place."""
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    mask.div_(keep)  # changes the drawn tensor in place: the record must hold its own copy
    return x * mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_recorded_dropout_equals_aten_cpu_dropout_from_the_same_state(p):
    x = torch.randn(9, 7, 13)
    state = torch.get_rng_state()
    plain = F.dropout(x, p, training=True)
    after_plain = torch.get_rng_state()
    torch.set_rng_state(state)
    rec = RecordedReplay()
    with rec.first():
        recorded = F.dropout(x, p, training=True)
    assert torch.equal(recorded, plain)  # same formula and draws as ATen's CPU dropout
    assert torch.equal(torch.get_rng_state(), after_plain)  # same RNG consumption


@pytest.mark.parametrize("how", ["module", "functional_inplace", "drop_path", "rand_like", "rand_out"])
def test_replay_hands_back_the_first_forward_draws_and_leaves_the_rng_alone(how):
    net = _net()
    x = torch.randn(11, 7)

    def forward(inp: torch.Tensor) -> torch.Tensor:
        if how == "module":
            return net(inp)
        if how == "functional_inplace":
            return F.dropout(inp.clone(), 0.3, training=True, inplace=True)
        if how == "drop_path":
            return _drop_path(net[0](inp))
        if how == "rand_like":
            return inp * (torch.rand_like(inp) > 0.5)
        buf = torch.empty_like(inp)
        torch.rand(inp.shape, out=buf)  # the draw lands in the caller's buffer
        return inp * buf

    rec = RecordedReplay()
    with rec.first():
        a = forward(x)
    state = torch.get_rng_state()
    fresh = forward(x)  # outside the replay: new draws
    assert not torch.equal(fresh, a)
    torch.set_rng_state(state)
    with rec.replay():
        b = forward(x)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the replay drew nothing
    with rec.replay():  # a second replay starts over from the first draw
        assert torch.equal(forward(x), a)


def test_replay_in_eval_mode_and_p_zero_draw_nothing():
    rec = RecordedReplay()
    x = torch.randn(4, 5)
    with rec.first():
        assert F.dropout(x, 0.5, training=False) is x
        assert F.dropout(x, 0.0, training=True) is x
        assert torch.equal(F.dropout(x, 1.0, training=True), torch.zeros_like(x))
    assert rec.draws == []
    with pytest.raises(ValueError, match="probability"):
        with rec.first():
            F.dropout(x, 1.5)


def test_a_replay_that_draws_differently_raises():
    x, other = torch.randn(4, 5), torch.randn(4, 6)
    rec = RecordedReplay()
    with rec.first():
        F.dropout(x, 0.5)
    with pytest.raises(RuntimeError, match="differs"):
        with rec.replay():
            F.dropout(other, 0.5)  # another shape
    with pytest.raises(RuntimeError, match="differs"):
        with rec.replay():
            torch.rand(3)  # another op
    with pytest.raises(RuntimeError, match="more random tensors"):
        with rec.replay():
            F.dropout(x, 0.5)
            F.dropout(x, 0.5)


def test_dropout_variants_drawn_inside_one_aten_op_are_refused():
    rec = RecordedReplay()
    with pytest.raises(NotImplementedError, match="dropout2d"):
        with rec.first():
            F.dropout2d(torch.randn(2, 3, 4, 4), 0.5, training=True)
    with rec.first():  # not training: nothing to replay, allowed
        F.dropout2d(torch.randn(2, 3, 4, 4), 0.5, training=False)


def test_state_replay_redraws_the_same_masks_eagerly():
    net, x = _net(), torch.randn(6, 7)
    rep = StateReplay(torch.device("cpu"))
    with rep.first():
        a = net(x)
    live = torch.get_rng_state()
    with rep.replay():
        b = net(x)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), live)


def test_replay_for_picks_the_state_eagerly_and_the_record_under_compile():
    assert isinstance(replay_for(torch.device("cpu")), StateReplay)
    net, x = _net(0.5), torch.randn(16, 7)

    def old_minus_new(inp: torch.Tensor) -> torch.Tensor:
        rep = replay_for(inp.device)
        with rep.first():
            a = net(inp)
        with rep.replay():
            b = net(inp)
        return a - b, a

    torch._dynamo.reset()
    try:
        diff, a = torch.compile(old_minus_new, fullgraph=True, backend="aot_eager")(x)
    finally:
        torch._dynamo.reset()
    assert torch.equal(diff, torch.zeros_like(diff))  # the masks came back
    assert not torch.equal(a, net.eval()(x))  # and dropout was on
