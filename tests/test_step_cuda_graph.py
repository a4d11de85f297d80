"""MPLStep(cuda_graph=True) on CPU: input validation, the refusals, static buffers, and the
eager fallback with one warning (the capture itself needs a CUDA device)."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from mplfast import MPLConfig, MPLStep, ModelEMA, warmup_cosine_schedule
from mpl_fixtures import mpl_batch, tiny_cnn_pair


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _opt(model, **kw):
    kw = {"lr": torch.tensor(0.05), "momentum": 0.9, "nesterov": True, "fused": True, **kw}
    return torch.optim.SGD(model.parameters(), **kw)


def _make(cfg: MPLConfig | None = None, *, cuda_graph: bool = True, seed: int = 0, **kw):
    T, S = tiny_cnn_pair(5, width=4, seed=seed, dropout=0.2)
    ot, os_ = _opt(T), _opt(S)
    step_kw = dict(teacher_scheduler=warmup_cosine_schedule(ot, warmup_steps=2, total_steps=20),
                   student_scheduler=warmup_cosine_schedule(os_, warmup_steps=2, total_steps=20),
                   student_ema=ModelEMA(S, 0.9))
    step_kw.update(kw)
    return T, S, MPLStep(T, S, ot, os_, cfg or MPLConfig(precision="fp32", threshold=0.3),
                         cuda_graph=cuda_graph, **step_kw)


def _quiet_make(*a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _make(*a, **k)


def test_fallback_without_cuda_warns_once_and_matches_eager():
    buf, y_l = torch.zeros(4 + 12, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    x_l, x_uw, x_us = buf[:4], buf[4:10], buf[10:]
    with pytest.warns(RuntimeWarning, match="needs a CUDA device") as rec:
        T, S, graphed = _make(seed=1)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    T2, S2, eager = _make(seed=1, cuda_graph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warnings per call
        for i in range(4):
            b = mpl_batch(30 + i, 4, 6, 5)
            buf.copy_(torch.cat([b[0], b[2], b[3]]))  # new contents, same static buffers
            y_l.copy_(b[1])
            torch.manual_seed(i)
            a = graphed(x_l, y_l, x_uw, x_us)
            torch.manual_seed(i)
            e = eager(x_l, y_l, x_uw, x_us)
            assert all(torch.equal(a[k], e[k]) for k in e)
    for p, q in zip(list(T.parameters()) + list(S.parameters()), list(T2.parameters()) + list(S2.parameters())):
        assert torch.equal(p, q)
    assert graphed.t == eager.t == 4


def test_non_static_inputs_are_refused_on_every_device():
    _, _, step = _quiet_make()
    x_l, y_l, x_uw, x_us = mpl_batch(1, 4, 6, 5)
    step(x_l, y_l, x_uw, x_us)
    step(x_l, y_l, x_uw, x_us)  # the same tensors: fine
    x_l2, y2, x_uw2, x_us2 = mpl_batch(2, 4, 6, 5)
    with pytest.raises(ValueError, match="same four input tensors every call"):
        step(x_l2, y2, x_uw2, x_us2)


@pytest.mark.parametrize("build,match", [
    (lambda: _make(MPLConfig(precision="fp16")), "cannot run fp16: its GradScaler"),
    (lambda: _make(student_ema=None, teacher_scheduler=None, student_scheduler=None,
                   cuda_graph_warmup=0), "cuda_graph_warmup must be an integer >= 1"),
    (lambda: _make(MPLConfig(precision="fp32", l_old_forward="concat")), "l_old_forward='concat'"),
])
def test_refused_settings(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_refused_optimizers_and_float_lr():
    T, S = tiny_cnn_pair(5, width=4, seed=0)
    cfg = MPLConfig(precision="fp32")
    with pytest.raises(ValueError, match=r"SGD\(\.\.\., fused=True\)"):
        MPLStep(T, S, _opt(T), _opt(S, fused=False, foreach=True), cfg, cuda_graph=True)
    with pytest.raises(ValueError, match="capturable=True"):
        MPLStep(T, S, torch.optim.Adam(T.parameters()), _opt(S), cfg, cuda_graph=True)
    with pytest.raises(ValueError, match="not known to be capturable"):
        MPLStep(T, S, torch.optim.Adagrad(T.parameters()), _opt(S), cfg, cuda_graph=True)
    float_lr = _opt(S, lr=0.05)
    with pytest.raises(ValueError, match="tensor lr"):
        MPLStep(T, S, _opt(T), float_lr, cfg, cuda_graph=True,
                student_scheduler=warmup_cosine_schedule(float_lr, warmup_steps=1, total_steps=5))
    with pytest.raises(TypeError, match="cuda_graph must be a bool"):
        MPLStep(T, S, _opt(T), _opt(S), cfg, cuda_graph="yes")
    with warnings.catch_warnings():  # a float lr without a scheduler is a constant: fine
        warnings.simplefilter("ignore", RuntimeWarning)
        MPLStep(T, S, _opt(T, lr=0.05), _opt(S, lr=0.05), cfg, cuda_graph=True)


def test_warmup_capture_and_replay_run_on_the_steps_device(monkeypatch):
    """A step on cuda:1 while cuda:0 is current: the warm-up side stream, the capture and every
    replay happen inside torch.cuda.device(step.device) (capture takes its stream and memory pool
    from the current device). Driven on CPU with the torch.cuda pieces replaced by recorders."""
    from mplfast.cuda_graph import GraphedStep

    dev = torch.device("cuda", 1)
    current = [torch.device("cuda", 0)]
    events: list[tuple[str, torch.device]] = []

    class Device:
        def __init__(self, d):
            self.d = torch.device(d)

        def __enter__(self):
            current.append(self.d)

        def __exit__(self, *exc):
            current.pop()

    class Stream:
        def __init__(self, device=None):
            events.append(("stream", current[-1]))

        def wait_stream(self, other):
            pass

    class Graph:
        def register_generator_state(self, state):
            pass

        def replay(self):
            events.append(("replay", current[-1]))

    class Capture:
        def __init__(self, graph):
            pass

        def __enter__(self):
            events.append(("capture", current[-1]))

        def __exit__(self, *exc):
            pass

    class StepDouble:
        device = dev
        cfg = MPLConfig(precision="bf16")

        def _step(self, *inputs):
            events.append(("step", current[-1]))
            return {"loss": torch.zeros(())}

        def _after_step(self):
            pass

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    g = GraphedStep.__new__(GraphedStep)  # __init__ needs a real CUDA device
    g.step, g.warmup, g.calls, g._inputs, g.graph, g.outputs = StepDouble(), 1, 0, None, None, None
    g.active, g._pairs, g._next_pair = True, [], 0
    x = torch.zeros(2)
    for _ in range(3):  # warm-up, capture + replay, replay
        g(x, x, x, x)
    assert [e[0] for e in events] == ["stream", "stream", "step", "stream", "capture", "step", "replay",
                                      "replay"]
    assert all(d == dev for _, d in events), events
    assert current == [torch.device("cuda", 0)]
