"""How the Triton kernels are launched (issue 9, item 1; item 5's explicit flag): every launch of
every launcher runs inside the device guard of its tensors, with ``enable_fp_fusion`` passed
explicitly (False for the bit-exact augmentation, True for the loss and dot kernels).

No GPU is needed: ``mplfast.kernels._launch.device_guard`` is replaced by a fake guard that
records which device is current, and the interpreter's launch entry point records, at each
launch, the device the fake guard holds at that moment.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the launchers under TRITON_INTERPRET=1")


@pytest.fixture
def launches(monkeypatch):
    """List of (kernel name, device current at launch or None, kwargs) for every launch."""
    from triton.runtime.interpreter import InterpretedFunction

    import mplfast.kernels._launch as L

    current: list[torch.device] = []
    seen: list[tuple[str, torch.device | None, dict]] = []

    @contextlib.contextmanager
    def fake_guard(device):
        current.append(torch.device(device))
        try:
            yield
        finally:
            current.pop()

    real_run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        seen.append((self.fn.__name__, current[-1] if current else None, dict(kwargs)))
        return real_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(L, "device_guard", fake_guard)
    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return seen


def _check(seen, device, names, fp_fusion):
    assert {name for name, _, _ in seen} == set(names), seen
    for name, dev, kwargs in seen:
        assert dev == device, f"{name} launched outside the device guard of its tensors ({dev})"
        assert kwargs.get("enable_fp_fusion") is fp_fusion, f"{name}: enable_fp_fusion not set to {fp_fusion}"


@pytest.mark.parametrize("c", [10, 9000])  # one-chunk and chunked variants
def test_soft_ce_and_uda_launch_inside_their_device_guard(launches, c, seeded):
    from mplfast.kernels.soft_ce import soft_ce_forward
    from mplfast.kernels.uda import uda_forward

    z = torch.randn(3, c, generator=seeded)
    soft_ce_forward(z, torch.tensor([0, 1, 2]), 0.1, 1.0)
    soft_ce_forward(z, torch.softmax(z, 1), 0.0, None)
    uda_forward(z, z.flip(0), 0.5, 0.1, 1.0)
    assert len(launches) == 3
    _check(launches, torch.device("cpu"), {"_soft_ce_kernel", "_uda_kernel"}, True)


def test_grad_dot_launches_inside_their_device_guard(launches, seeded):
    from mplfast.kernels.grad_dot import grad_dot, grad_dot_delta

    xs = [torch.randn(n, generator=seeded) for n in (3, 40000)] + [torch.randn(5, generator=seeded).half()]
    grad_dot(xs, xs)
    grad_dot_delta(xs, xs, xs)
    assert len(launches) == 2 * 3  # two dtype groups and the finishing kernel, twice
    _check(launches, torch.device("cpu"), {"_multi_dot_kernel", "_finish_kernel"}, True)


def test_augment_and_sampling_launch_inside_their_device_guard(launches):
    from mplfast.augment import params as P
    from mplfast.kernels.augment import augment, sample_rows

    imgs = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    out = torch.empty(2, 3, 8, 8)
    augment(imgs, torch.tensor([2, 0]), out, P.Policy(8, 8, True, n_ops=1), 7, 0, (0.5,) * 3, (0.2,) * 3)
    sample_rows(7, 0, 10, 3, None, torch.device("cpu"))
    assert len(launches) == 2
    _check(launches, torch.device("cpu"), {"_augment_kernel", "_sample_kernel"}, False)


def test_batcher_sampling_launches_inside_the_device_guard(launches):
    from mplfast.data import MPLBatcher, make_synthetic

    ds = make_synthetic(num_train=20, num_test=2, image_size=8)
    b = MPLBatcher(ds, torch.arange(10), batch_size=2, mu=1, seed=5, device="cpu")
    b._triton_sampling = True  # the CUDA code path, run by the interpreter
    b.indices(3)
    assert [name for name, _, _ in launches] == ["_sample_kernel"] * 2
    _check(launches, torch.device("cpu"), {"_sample_kernel"}, False)


def test_device_guard_makes_the_tensors_cuda_device_current(monkeypatch):
    """The real guard: torch.cuda.device(<the tensors' device>) for CUDA, nothing for CPU."""
    import mplfast.kernels._launch as L

    entered = []

    class FakeCudaDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeCudaDevice)
    with L.device_guard(torch.device("cuda", 1)):
        pass
    with L.device_guard(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]


def _old_patch_lang_tensor(tensor, scope):
    # the shape of Triton <= 3.6's interpreter code that NumPy 2.4 breaks
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))


def test_interpreter_index_fix_for_old_triton(monkeypatch):
    """Triton <= 3.6's interpreter takes int() of a 1-element 1-d array for a scalar tensor's
    __index__, which NumPy 2.4 refuses (TypeError); the launcher module replaces that patch with
    one that squeezes first, only where the interpreter has the old code."""
    import types

    import numpy as np
    from triton.runtime import interpreter as ti

    import mplfast.kernels._launch as L

    monkeypatch.setattr(ti, "_patch_lang_tensor", _old_patch_lang_tensor)
    L._fix_interpreter_index()
    assert ti._patch_lang_tensor is not _old_patch_lang_tensor

    class Scope:
        def set_attr(self, obj, name, value):
            setattr(obj, name, value)

    class Tensor:
        handle = types.SimpleNamespace(data=np.array([7], dtype=np.int32))

    ti._patch_lang_tensor(Tensor, Scope())
    assert list(range(10))[Tensor()] == 7
    patched = ti._patch_lang_tensor
    L._fix_interpreter_index()  # idempotent
    assert ti._patch_lang_tensor is patched
