"""backends() reports, resolve_backend() choices, warn-once fallbacks, explicit failures."""
from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import mplfast
import mplfast._backends as B


@pytest.fixture
def fresh():
    """Forget cached probes and warnings before and after the test."""
    B.refresh()
    yield
    B.refresh()


def test_report_shape_and_reference(fresh):
    rep = mplfast.backends()
    assert set(rep) == {"reference", "native", "triton"}
    for backend, per_device in rep.items():
        assert set(per_device) == {"cpu", "cuda"}
        for device, st in per_device.items():
            assert st is True or (isinstance(st, str) and st), (backend, device, st)
    assert rep["reference"]["cpu"] is True
    if not torch.cuda.is_available():
        for backend in rep:
            assert isinstance(rep[backend]["cuda"], str)


def test_native_available_when_C_is_built(fresh):
    """Once mplfast._C imports, the native backend must report CPU as available."""
    try:
        import mplfast._C  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"mplfast._C not built: {exc}")
    assert mplfast.backends()["native"]["cpu"] is True


def test_triton_on_cpu_needs_interpreter(fresh, monkeypatch):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mplfast.backends()["triton"]["cpu"] is True
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in mplfast.backends()["triton"]["cpu"]
    with pytest.raises(RuntimeError, match=r"backend 'triton' is not available on cpu: .*TRITON_INTERPRET"):
        B.resolve_backend("triton", torch.device("cpu"), "soft_cross_entropy")


def test_automatic_choice_on_cpu(fresh, monkeypatch):
    """CPU: native when available, never triton (even under the interpreter)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(B, "_probe", lambda b, d: True)
    assert B.resolve_backend(None, torch.device("cpu"), "op") == "native"
    assert B.resolve_backend(None, "cuda", "op") == "triton"
    monkeypatch.setattr(B, "_probe", lambda b, d: True if b != "triton" else "no triton")
    B.refresh()
    assert B.resolve_backend(None, "cuda", "op") == "native"
    assert B.resolve_backend("reference", "cpu", "op") == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        B.resolve_backend("tpu", "cpu", "op")


def test_fallback_warns_once_per_op_and_reason(fresh, monkeypatch, seeded):
    monkeypatch.setattr(B, "_probe", lambda b, d: True if b == "reference" else f"simulated {b} outage")
    with pytest.warns(B.FallbackWarning, match=r"soft_cross_entropy: no fast backend on cpu \(native: simulated native outage\)"):
        assert B.resolve_backend(None, "cpu", "soft_cross_entropy") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning for the same (op, reason) would raise
        assert B.resolve_backend(None, "cpu", "soft_cross_entropy") == "reference"
    with pytest.warns(B.FallbackWarning, match="uda_loss"):
        B.resolve_backend(None, "cpu", "uda_loss")  # another op warns again
    # end to end: the public op still computes the right thing on the reference
    z = torch.randn(5, 7, generator=seeded) * 50
    y = torch.randint(0, 7, (5,), generator=seeded)
    with pytest.warns(B.FallbackWarning, match="grad_dot"):
        mplfast.grad_dot([z], [z])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = mplfast.soft_cross_entropy(z, y)
    torch.testing.assert_close(loss, F.cross_entropy(z, y))


def test_explicit_unavailable_backend_raises(fresh, monkeypatch):
    monkeypatch.setattr(B, "_probe", lambda b, d: True if b == "reference" else f"simulated {b} outage")
    with pytest.raises(RuntimeError, match=r"backend 'native' is not available on cpu: simulated native outage"):
        mplfast.soft_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), backend="native")
    with pytest.raises(RuntimeError, match="simulated triton outage"):
        mplfast.grad_dot([torch.ones(2)], [torch.ones(2)], backend="triton")
    with pytest.raises(RuntimeError, match=r"not available on cuda"):
        B.resolve_backend("native", torch.device("cuda"), "uda_loss")


def test_backends_public_name_survives_op_imports():
    """The public ``mplfast.backends()`` function is not shadowed by any submodule an op imports."""
    code = (
        "import mplfast, mplfast.ops\n"
        "assert mplfast.backends()['reference']['cpu'] is True\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_without_C_and_triton():
    """`import mplfast` and the ops work with neither the extension nor triton importable."""
    code = r"""
import sys, warnings
sys.modules["mplfast._C"] = None   # makes `import mplfast._C` raise ImportError
sys.modules["triton"] = None
import torch, mplfast
rep = mplfast.backends()
assert rep["native"]["cpu"] is not True and "_C" in rep["native"]["cpu"], rep
assert rep["triton"]["cpu"] is not True, rep
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    z = torch.randn(3, 4, requires_grad=True)
    loss = mplfast.soft_cross_entropy(z, torch.tensor([0, 1, 3]))
    loss.backward()
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(z, torch.tensor([0, 1, 3])))
assert any("using the reference implementation" in str(x.message) for x in w), [str(x.message) for x in w]
print("ok")
"""
    env_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert env_out.returncode == 0, env_out.stderr
    assert env_out.stdout.strip() == "ok"


# ---------------------------------------------------------------------------------------------
# one registry for ops and augmentation


def test_augment_uses_the_same_registry(fresh, monkeypatch):
    """augment's backends come from mplfast._backends: "torch" is the vectorized path (its old
    name "cpu" still accepted), the fallback warns with FallbackWarning."""
    from mplfast import augment

    rep = mplfast.backends("augment")
    assert set(rep) == {"reference", "torch", "native", "triton"}
    assert rep["torch"]["cpu"] is True and rep["reference"]["cpu"] is True
    assert isinstance(rep["native"]["cuda"], str) and "cpu" in rep["native"]["cuda"]
    assert augment.resolve_backend("cpu", torch.device("cpu")) == "torch"
    assert augment.resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        augment.resolve_backend("bogus", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        B.resolve_backend("torch", "cpu", "soft_cross_entropy")  # not a fused-op backend
    monkeypatch.setattr(B, "_probe", lambda b, d: f"simulated {b} outage" if b == "native" else True)
    B.refresh()
    with pytest.warns(B.FallbackWarning, match=r"augment: no fast backend on cpu .*using the torch backend"):
        assert augment.resolve_backend(None, torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="kind must be"):
        mplfast.backends("kernels")


def test_loader_reports_and_raises_with_the_reason(monkeypatch):
    from mplfast import _native

    text = _native.report()
    assert text.startswith("mplfast._C: ") and "cpu:" in text and "cuda:" in text
    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "_IMPORT_ERROR", "mplfast._C failed to load (ImportError: test)")
    _native._cuda_status.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"grad_dot: native backend unavailable on cpu: .*ImportError: test"):
            _native.lib("grad_dot", "cpu")
        assert _native.missing("augment_cpu") == "mplfast._C failed to load (ImportError: test)"
        assert not _native.has("soft_ce_cpu")
        assert "ImportError: test" in _native.report()
    finally:
        _native._cuda_status.cache_clear()


# ---------------------------------------------------------------------------------------------
# import layering: no cycle, no backend importing upward


def _mplfast_imports(path):
    """Every mplfast module a file imports (module level and inside functions)."""
    import ast

    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mplfast")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mplfast"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_layering_of_loader_registry_contract_and_backends():
    from pathlib import Path

    root = Path(mplfast.__file__).resolve().parent
    repo = root.parent
    allowed = {
        "_native.py": {"mplfast", "mplfast._C"},                        # the loader: nothing else
        "_backends.py": {"mplfast", "mplfast._native"},                 # the registry
        "ops/contract.py": {"mplfast", "mplfast._backends"},
    }
    for rel, ok in allowed.items():
        got = _mplfast_imports(root / rel)
        assert got <= ok, (rel, got - ok)
    for op in ("soft_ce", "uda", "grad_dot"):
        for part in ("reference.py", "native.py"):
            got = _mplfast_imports(root / "ops" / op / part)
            assert got <= {"mplfast", "mplfast._native"}, (op, part, got)
    for kernel in (repo / "kernels").glob("*.py"):
        got = _mplfast_imports(kernel)
        bad = {m for m in got if m.startswith(("mplfast.ops", "mplfast._backends", "mplfast._native"))}
        assert not bad, (kernel.name, bad)
    # only the loader imports the extension itself
    for path in root.rglob("*.py"):
        if path.name != "_native.py":
            assert not any(m.startswith("mplfast._C") for m in _mplfast_imports(path)), path


# ---------------------------------------------------------------------------------------------
# backward's in-place scaling on CUDA (issue 9, defect 6), driven on CPU tensors


def test_cuda_backward_scales_the_saved_gradient_in_place(monkeypatch, seeded):
    """With _C.scale_inplace_cuda present, backward hands it the saved gradient's pointer, dtype
    code, size, the scale's pointer and dtype code and the current stream (no host read, no
    copy); without it, grad.mul_(scale) in place. Never grad * grad_out."""
    import contextlib

    from mplfast import _native
    from mplfast.ops import _backward

    grad = torch.randn(6, 9, generator=seeded).to(torch.bfloat16)
    scale = torch.tensor(2.5)
    calls = []

    guard: list = []  # the device whose guard is entered, while inside it

    class FakeC:
        def scale_inplace_cuda(self, data, dtype, numel, scale_ptr, scale_dtype, stream):
            # the binding has no device argument: it must run inside the saved gradient's guard
            calls.append((tuple(guard), data, dtype, numel, scale_ptr, scale_dtype, stream))

    @contextlib.contextmanager
    def fake_device(device):
        guard.append(torch.device(device))
        try:
            yield
        finally:
            guard.pop()

    monkeypatch.setattr(_native, "_C", FakeC())
    monkeypatch.setattr(_native, "stream", lambda device: (0, 1234))
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    out = _backward._scale_inplace_cuda(grad, scale)
    assert out is grad
    assert calls == [((grad.device,), grad.data_ptr(), 2, grad.numel(), scale.data_ptr(), 0, 1234)]

    monkeypatch.setattr(_native, "_C", None)  # an extension without the kernel: mul_ in place
    before = grad.clone()
    ptr = grad.data_ptr()
    out = _backward._scale_inplace_cuda(grad, scale)
    assert out is grad and out.data_ptr() == ptr
    assert torch.equal(out, (before.float() * 2.5).to(torch.bfloat16))


@pytest.mark.parametrize("op", ["soft_ce", "uda"])
def test_cuda_inplace_scale_makes_a_second_backward_raise(monkeypatch, seeded, op):
    """The CUDA backward scales the saved gradient in place through a raw pointer; autograd must
    see that write (version counter), so a second backward through a graph kept with
    retain_graph=True raises instead of scaling the gradient twice. Driven on CPU: the ops' CUDA
    branch (_scale_inplace_cuda, with a fake binding that writes through the pointer) is routed
    in for CPU tensors."""
    import ctypes

    from mplfast import _native
    from mplfast.ops import _backward
    from mplfast.ops.soft_ce import op as soft_ce_op
    from mplfast.ops.uda import op as uda_op

    class FakeC:
        def scale_inplace_cuda(self, data, dtype, numel, scale_ptr, scale_dtype, stream):
            assert dtype == 0 and scale_dtype == 0  # fp32 gradient, fp32 scale
            s = ctypes.c_float.from_address(scale_ptr).value
            buf = (ctypes.c_float * numel).from_address(data)
            for i in range(numel):
                buf[i] *= s

    monkeypatch.setattr(_native, "_C", FakeC())
    monkeypatch.setattr(_native, "has", lambda name: name == "scale_inplace_cuda")
    monkeypatch.setattr(_native, "stream", lambda device: (0, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    for mod in (soft_ce_op, uda_op):
        monkeypatch.setattr(mod, "scale_saved_grad", _backward._scale_inplace_cuda)
    z = torch.randn(4, 5, generator=seeded, requires_grad=True)
    if op == "soft_ce":
        loss = mplfast.soft_cross_entropy(z, torch.tensor([0, 1, 2, 3]), backend="reference")
        ref = F.cross_entropy(z, torch.tensor([0, 1, 2, 3]))
    else:
        weak = torch.randn(4, 5, generator=seeded) * 5
        loss, _ = mplfast.uda_loss(weak, z, temperature=0.5, threshold=0.0, backend="reference")
        ref = -(torch.softmax(weak / 0.5, 1) * torch.log_softmax(z, 1)).sum(1).mean()
    (want,) = torch.autograd.grad(ref * 3.0, z)
    (loss * 3.0).backward(retain_graph=True)
    assert torch.allclose(z.grad, want, atol=1e-6)  # the fake binding scaled once, in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss * 3.0).backward()
