"""backends() reports, resolve_backend() choices, warn-once fallbacks, explicit failures."""
from __future__ import annotations

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
