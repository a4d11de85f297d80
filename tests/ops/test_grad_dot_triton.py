"""Triton grad_dot / grad_dot_delta host path (issue 9, item 10): a repeated call over the same
buffers reuses one cached plan (tables, launch groups, preallocated partials) even when the
caller builds fresh lists, runs no torch op besides allocating its result (the partials are
summed by one small kernel, not by cat / to / sum / to), and a plan is never reused for memory
that changed meaning (other sizes, other strides, other storage).
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mplfast.ops.grad_dot import reference

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernels under TRITON_INTERPRET=1")


class OpLog(TorchDispatchMode):
    """Names of the torch ops run outside kernel launches (the interpreter itself copies a
    launch's tensors with torch ops, which a GPU launch does not)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_launch:
            self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def params(g, dtypes=(torch.float32,)):
    shapes = [(3, 3, 4, 4), (70001,), (0,), (33,), (16384,)]
    return [torch.randn(s, generator=g).to(dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]


@pytest.fixture
def kg(monkeypatch):
    import mplfast.kernels.grad_dot as kg

    kg._TABLE_CACHE.clear()
    built = []
    real = kg._plan
    monkeypatch.setattr(kg, "_plan", lambda *a: built.append(1) or real(*a))
    kg.built = built
    yield kg
    kg._TABLE_CACHE.clear()


def test_repeated_calls_reuse_one_plan_and_run_no_torch_ops(kg, monkeypatch, seeded):
    ps = params(seeded, (torch.float32, torch.bfloat16))
    gs = [torch.randn(p.shape, generator=seeded).to(p.dtype) for p in ps]
    olds = [p + 0.01 for p in ps]
    first = kg.grad_dot_delta(gs, ps, olds)
    assert len(kg.built) == 1
    log = OpLog()
    real_launch = kg.launch

    def launch(*args, **kwargs):
        log.in_launch = True
        try:
            return real_launch(*args, **kwargs)
        finally:
            log.in_launch = False

    monkeypatch.setattr(kg, "launch", launch)
    with log:
        again = kg.grad_dot_delta(list(gs), list(ps), list(olds))  # fresh lists, same tensors
    assert len(kg.built) == 1, "the plan was rebuilt"
    assert log.ops == ["empty"], log.ops  # only the 0-dim result
    assert torch.equal(first, again)
    want = reference.grad_dot_delta(gs, ps, olds)
    assert abs(again.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item()))


@pytest.mark.parametrize("tiles", ["interpreter", "gpu"])
def test_matches_reference_over_dtype_and_alignment_groups(kg, tiles, monkeypatch, seeded):
    if tiles == "gpu":
        monkeypatch.setenv("MPLFAST_TRITON_TILES", "gpu")
    dts = (torch.float32, torch.float16, torch.bfloat16)
    xs = params(seeded, dts) + [torch.randn(1001, generator=seeded)[1:]]  # an unaligned one
    ys = [torch.randn(x.shape, generator=seeded).to(x.dtype) for x in xs]
    got = kg.grad_dot(xs, ys)
    want = reference.grad_dot(xs, ys)
    scale = sum((x.double().abs() * y.double().abs()).sum().item() for x, y in zip(xs, ys))
    assert got.dtype == torch.float32 and got.shape == ()
    assert abs(got.item() - want.item()) <= 1e-6 * scale


def test_no_stale_plan_when_memory_changes_meaning(kg, seeded):
    big = torch.randn(50000, generator=seeded)
    other = torch.randn(50000, generator=seeded)
    whole = kg.grad_dot([big], [other])
    part = kg.grad_dot([big[:20000]], [other[:20000]])  # same addresses, other sizes
    assert len(kg.built) == 2
    assert part.item() == pytest.approx(reference.grad_dot([big[:20000]], [other[:20000]]).item(), rel=1e-5)
    assert whole.item() == pytest.approx(reference.grad_dot([big], [other]).item(), rel=1e-5)
    a = torch.randn(300, 200, generator=seeded)
    b = torch.randn(200, 300, generator=seeded)
    kg.grad_dot([a.t().contiguous()], [b])
    at = a.t()  # a view at a's address, not contiguous: must not reuse a contiguous plan
    assert kg.grad_dot([at], [b]).item() == pytest.approx(reference.grad_dot([at], [b]).item(), rel=1e-5)
    p = torch.randn(1000, generator=seeded)
    q = torch.randn(1000, generator=seeded)
    kg.grad_dot([p], [q])
    p.data = torch.randn(1000, generator=seeded)  # new storage behind the same tensor object
    assert kg.grad_dot([p], [q]).item() == pytest.approx(reference.grad_dot([p], [q]).item(), rel=1e-5)


def test_empty_lists_and_empty_tensors(kg):
    assert kg.grad_dot([], []).item() == 0.0
    e = [torch.zeros(0), torch.zeros(2, 0)]
    assert kg.grad_dot(e, e).item() == 0.0
    assert kg.grad_dot_delta(e, e, e).item() == 0.0


def test_plans_built_during_graph_capture_are_never_reused(kg, monkeypatch, seeded):
    """A plan built while the stream is being captured has tables only the graph's replays fill
    (and memory from the graph's pool): it serves that capture only and is kept alive for the
    graph, never cached for eager calls nor for another capture; eager plans are keyed on the
    tensors alone. (Capture is simulated: kg._capturing is what the launcher asks.)"""
    xs = params(seeded)
    ys = [torch.randn(x.shape, generator=seeded) for x in xs]
    want = reference.grad_dot(xs, ys).item()
    kept = len(kg._CAPTURED_PLANS)
    monkeypatch.setattr(kg, "_capturing", lambda device: True)
    a = kg.grad_dot(xs, ys)
    b = kg.grad_dot(xs, ys)
    assert len(kg.built) == 2 and len(kg._TABLE_CACHE) == 0
    assert len(kg._CAPTURED_PLANS) == kept + 2
    monkeypatch.setattr(kg, "_capturing", lambda device: False)
    c = kg.grad_dot(xs, ys)
    d = kg.grad_dot(list(xs), list(ys))
    assert len(kg.built) == 3 and len(kg._TABLE_CACHE) == 1  # one eager plan, reused
    plan = next(iter(kg._TABLE_CACHE.values()))
    assert list(plan.partials) == [None]  # CPU: one scratch buffer, no stream
    for r in (a, b, c, d):
        assert r.item() == pytest.approx(want, rel=1e-5)
    del kg._CAPTURED_PLANS[kept:]

