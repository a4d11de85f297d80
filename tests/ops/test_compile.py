"""The fused ops as registered custom ops: ``torch.library.opcheck``, ``torch.compile(fullgraph=True)``
against eager (value and gradient), one graph for a small model plus its losses, no graph
break from mplfast's code, and the compile-time rule for the label check.

CPU backends: reference, native, and Triton under its interpreter (``TRITON_INTERPRET=1``,
which tests/conftest.py sets without a GPU). There the Triton ops are opaque custom ops with
explicit fakes (``mplfast.ops._library``: ``triton_op``'s tracing cannot drive an interpreted
kernel); on a CUDA device they are ``triton_op``s, which the CUDA opcheck below covers.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mplfast
from _helpers import require_backend
from mplfast.ops.grad_dot import op as dot_op
from mplfast.ops.soft_ce import op as ce_op
from mplfast.ops.uda import op as uda_op

CPU_BACKENDS = ["reference", "native", "triton"]  # triton: the interpreter


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ce_inputs(kind: str, dtype: torch.dtype = torch.float32, n: int = 6, c: int = 9):
    g = _gen(1)
    z = (torch.randn(n, c, generator=g) * 8).to(dtype)
    t = (torch.randint(0, c, (n,), generator=g) if kind == "index"
         else torch.softmax(torch.randn(n, c, generator=g), 1))
    return z, t


def _uda_inputs(dtype: torch.dtype = torch.float32, n: int = 8, c: int = 7):
    g = _gen(2)
    weak = torch.randn(n, c, generator=g) * 0.3
    weak[::2, 1] += 6.0  # some rows pass the threshold, some do not
    strong = torch.randn(n, c, generator=g) * 5
    return weak.to(dtype), strong.to(dtype)


def _lists(n: int = 3):
    g = _gen(3)
    shapes = [(4, 5), (0,), (17,), (3, 2, 2)][:n + 1]
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]


# ---------------------------------------------------------------------------------------------
# opcheck: schema, fake tensors, autograd registration, AOT dispatch consistency


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_soft_ce(backend, dtype):
    require_backend(backend)
    for kind in ("index", "prob"):
        z, t = _ce_inputs(kind, dtype)
        for reduction in ("none", "sum", "mean"):
            torch.library.opcheck(ce_op.soft_ce, (z.clone().requires_grad_(), t, 0.1, reduction, True, backend))
        torch.library.opcheck(ce_op.soft_ce, (z, t, 0.0, "mean", False, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_uda(backend, dtype):
    require_backend(backend)
    weak, strong = _uda_inputs(dtype)
    torch.library.opcheck(uda_op.uda, (weak, strong.clone().requires_grad_(), 0.7, 0.5, True, backend))
    torch.library.opcheck(uda_op.uda, (weak, strong, 0.7, 0.5, False, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck_grad_dot(backend):
    require_backend(backend)
    xs, ys, zs = _lists()
    torch.library.opcheck(dot_op.grad_dot, (xs, ys, backend))
    torch.library.opcheck(dot_op.grad_dot_delta, (xs, ys, zs, backend))


def _opcheck_triton_ops(device: str) -> None:
    z, t = (x.to(device) for x in _ce_inputs("index"))
    for reduction in ("none", "mean"):
        torch.library.opcheck(ce_op.soft_ce_triton.get(), (z.clone().requires_grad_(), t, 0.1, reduction, True))
    zp, tp = (x.to(device) for x in _ce_inputs("prob"))
    torch.library.opcheck(ce_op.soft_ce_triton.get(), (zp.clone().requires_grad_(), tp, 0.0, "sum", True))
    torch.library.opcheck(ce_op.soft_ce_triton.get(), (zp, tp, 0.0, "mean", False))
    weak, strong = (x.to(device) for x in _uda_inputs())
    torch.library.opcheck(uda_op.uda_triton.get(), (weak, strong.clone().requires_grad_(), 0.7, 0.5, True))
    torch.library.opcheck(uda_op.uda_triton.get(), (weak, strong, 0.7, 0.5, False))
    xs, ys, zs = ([t.to(device) for t in lst] for lst in _lists())
    torch.library.opcheck(dot_op.grad_dot_triton.get(), (xs, ys))
    torch.library.opcheck(dot_op.grad_dot_delta_triton.get(), (xs, ys, zs))


def test_opcheck_triton_ops_on_cpu_interpreter():
    require_backend("triton", "cpu")
    _opcheck_triton_ops("cpu")


def test_opcheck_triton_ops_on_cuda():
    require_backend("triton", "cuda")
    _opcheck_triton_ops("cuda")


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) == eager


def _value_and_grad(fn, *args):
    z = args[0].detach().clone().requires_grad_()
    out = fn(z, *args[1:])
    # a non-trivial upstream gradient, so backward's scaling runs (not only the 1.0 shortcut)
    go = torch.full_like(out, 1.7) if out.dim() == 0 else torch.linspace(0.5, 1.5, out.numel()).to(out.dtype)
    (g,) = torch.autograd.grad(out, z, go)
    return out.detach(), g


def _compiled(fn, compiler: str):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=compiler)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_soft_ce_matches_eager(backend):
    require_backend(backend)
    for kind in ("index", "prob"):
        z, t = _ce_inputs(kind)
        for reduction in ("none", "sum", "mean"):
            def fn(z, t, reduction=reduction):
                return mplfast.soft_cross_entropy(z, t, label_smoothing=0.1, reduction=reduction, backend=backend)

            ev, eg = _value_and_grad(fn, z, t)
            cv, cg = _value_and_grad(_compiled(fn, "aot_eager"), z, t)
            torch.testing.assert_close(cv, ev, rtol=0, atol=0)
            torch.testing.assert_close(cg, eg, rtol=1e-6, atol=1e-7)
            ref = F.cross_entropy(z.double(), t.double() if kind == "prob" else t, label_smoothing=0.1,
                                  reduction=reduction)
            torch.testing.assert_close(cv.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_uda_matches_eager(backend):
    require_backend(backend)
    weak, strong = _uda_inputs()

    def fn(s, w):
        loss, rate = mplfast.uda_loss(w, s, temperature=0.7, threshold=0.5, backend=backend)
        return loss + 0 * rate

    ev, eg = _value_and_grad(fn, strong, weak)
    cv, cg = _value_and_grad(_compiled(fn, "aot_eager"), strong, weak)
    torch.testing.assert_close(cv, ev, rtol=0, atol=0)
    torch.testing.assert_close(cg, eg, rtol=1e-6, atol=1e-7)
    _, rate = _compiled(lambda w, s: mplfast.uda_loss(w, s, temperature=0.7, threshold=0.5, backend=backend),
                        "aot_eager")(weak, strong)
    assert 0.0 < rate.item() < 1.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_grad_dot_matches_eager(backend):
    require_backend(backend)
    xs, ys, zs = _lists()

    def fn(xs, ys, zs):
        return (mplfast.grad_dot(xs, ys, backend=backend),
                mplfast.grad_dot_delta(xs, ys, zs, backend=backend))

    eager = fn(xs, ys, zs)
    comp = _compiled(fn, "aot_eager")(xs, ys, zs)
    for a, b in zip(comp, eager):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inductor_compiles_every_op(backend):
    """The same through Inductor (C++ codegen on CPU): the custom ops stay opaque nodes."""
    require_backend(backend)
    z, t = _ce_inputs("index")
    weak, strong = _uda_inputs(n=6, c=9)
    xs, ys, zs = _lists()

    def fn(z, t, w):
        a = mplfast.soft_cross_entropy(z, t, label_smoothing=0.1, backend=backend)
        b, _ = mplfast.uda_loss(w, z, temperature=0.7, threshold=0.5, backend=backend)
        return a + b

    ev, eg = _value_and_grad(fn, z, t, weak)
    cv, cg = _value_and_grad(_compiled(fn, "inductor"), z, t, weak)
    torch.testing.assert_close(cv, ev, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cg, eg, rtol=1e-6, atol=1e-7)
    dot = _compiled(lambda a, b, c: mplfast.grad_dot_delta(a, b, c, backend=backend), "inductor")
    assert torch.equal(dot(xs, ys, zs), mplfast.grad_dot_delta(xs, ys, zs, backend=backend))


# ---------------------------------------------------------------------------------------------
# one graph, no graph breaks


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_model_plus_fused_losses_is_one_graph(backend):
    require_backend(backend)
    torch.manual_seed(0)
    model = _Tiny()
    g = _gen(4)
    x_l, x_uw, x_us = (torch.randn(n, 12, generator=g) for n in (4, 8, 8))
    y_l = torch.randint(0, 5, (4,), generator=g)

    def step(x_l, y_l, x_uw, x_us):
        logits = model(torch.cat([x_l, x_uw, x_us]))
        l_l, l_w, l_s = logits.split([4, 8, 8])
        sup = mplfast.soft_cross_entropy(l_l, y_l, label_smoothing=0.15, backend=backend)
        uda, rate = mplfast.uda_loss(l_w.detach(), l_s, temperature=0.7, threshold=0.4, backend=backend)
        return sup + 8.0 * uda, rate

    explain = torch._dynamo.explain(step)(x_l, y_l, x_uw, x_us)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons
    eager_loss, _ = step(x_l, y_l, x_uw, x_us)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    loss, _ = _compiled(step, "aot_eager")(x_l, y_l, x_uw, x_us)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_explain_each_public_op_has_no_graph_break(backend):
    if backend is not None:
        require_backend(backend)
    z, y = _ce_inputs("index")
    _, p = _ce_inputs("prob")
    weak, strong = _uda_inputs(n=6, c=9)
    xs, ys, zs = _lists()
    z.requires_grad_()

    def fn(z, y, p, weak, xs, ys, zs):
        a = mplfast.soft_cross_entropy(z, y, label_smoothing=0.1, backend=backend)
        b = mplfast.soft_cross_entropy(z, p, reduction="sum", backend=backend)
        c, rate = mplfast.uda_loss(weak, z, temperature=0.7, threshold=0.5, backend=backend)
        d = mplfast.grad_dot(xs, ys, backend=backend)
        e = mplfast.grad_dot_delta(xs, ys, zs, backend=backend)
        return a + b + c + rate + d + e

    explain = torch._dynamo.explain(fn)(z, y, p, weak, xs, ys, zs)
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


# ---------------------------------------------------------------------------------------------
# the label check under compile


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_label_check_under_compile(backend, monkeypatch):
    """Eager: ValueError on CPU. Compiled: no host read; bad rows are NaN, and MPLFAST_DEBUG=1
    puts an assertion into the graph that fails the call."""
    require_backend(backend)
    z = torch.randn(4, 5, generator=_gen(5))
    bad = torch.tensor([0, 7, 2, -1])
    monkeypatch.delenv("MPLFAST_DEBUG", raising=False)

    def fn(z, y):
        return mplfast.soft_cross_entropy(z, y, reduction="none", backend=backend)

    with pytest.raises(ValueError, match="class index out of range"):
        fn(z, bad)
    rows = _compiled(fn, "aot_eager")(z, bad)
    assert torch.isnan(rows[[1, 3]]).all() and torch.isfinite(rows[[0, 2]]).all()
    monkeypatch.setenv("MPLFAST_DEBUG", "1")
    compiled = _compiled(fn, "aot_eager")
    good = torch.tensor([0, 4, 2, 1])
    torch.testing.assert_close(compiled(z, good), fn(z, good))
    with pytest.raises(RuntimeError, match="class index out of range|Expected assert_async"):
        compiled(z, bad)
