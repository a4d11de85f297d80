"""Tests for mplfast.perf (CPU)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from mplfast import perf


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def test_channels_last_converts_4d_weights_in_place():
    model = _tiny_cnn()
    out = perf.to_channels_last(model)
    assert out is model
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert not w.is_contiguous()  # really NHWC, not a trivially contiguous shape


@pytest.mark.parametrize("impl", ["auto", "fused", "foreach", "single"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_make_sgd_matches_torch_sgd(impl, nesterov, seeded):
    if impl == "fused" and "cpu" not in perf._torch_fused_sgd_devices():
        pytest.skip("this torch has no fused SGD on CPU")
    base = _tiny_cnn()
    ref_model, model = copy.deepcopy(base), copy.deepcopy(base)
    groups = [{"params": [p for n, p in model.named_parameters() if p.ndim > 1]},
              {"params": [p for n, p in model.named_parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    ref_groups = [{"params": [p for n, p in ref_model.named_parameters() if p.ndim > 1]},
                  {"params": [p for n, p in ref_model.named_parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    opt = perf.make_sgd(groups, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4, impl=impl)
    ref = torch.optim.SGD(ref_groups, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    expected = {"auto": "fused" if "cpu" in perf._torch_fused_sgd_devices() else "single",
                "fused": "fused", "foreach": "foreach", "single": "single"}[impl]
    assert perf.sgd_impl(opt) == expected
    for _ in range(3):
        x = torch.randn(4, 3, 6, 6, generator=seeded)
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # the parameters really moved (a no-op optimizer would pass the comparison above)
    assert not torch.equal(next(model.parameters()), next(base.parameters()))


def test_make_sgd_rejects_bad_arguments():
    p = [nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="impl"):
        perf.make_sgd(p, lr=0.1, impl="adam")
    with pytest.raises(ValueError, match="nesterov"):
        perf.make_sgd(p, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="no parameters"):
        perf.make_sgd([], lr=0.1)
    with pytest.raises(RuntimeError, match="CUDA"):
        perf.make_sgd(p, lr=0.1, impl="apex")


def test_sgd_impl_rejects_other_optimizers():
    with pytest.raises(TypeError):
        perf.sgd_impl(torch.optim.Adam([nn.Parameter(torch.randn(2))]))


def test_maybe_compile_none_is_identity():
    model = _tiny_cnn()
    out, status = perf.maybe_compile(model, "none")
    assert out is model and status == "eager"
    with pytest.raises(ValueError, match="mode"):
        perf.maybe_compile(model, "fastest")


def test_maybe_compile_cuda_graph_mode_falls_back_on_cpu():
    model = _tiny_cnn()
    with pytest.warns(RuntimeWarning, match="CUDA graphs"):
        out, status = perf.maybe_compile(model, "reduce-overhead")
    assert out is model and status.startswith("eager (")


def test_maybe_compile_reports_missing_compiler(monkeypatch):
    monkeypatch.setattr(perf.shutil, "which", lambda name: None)
    model = _tiny_cnn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, status = perf.maybe_compile(model, "default")
    assert status.startswith("eager (") and "C++ compiler" in status
    assert any("C++ compiler" in str(w.message) for w in caught)


@pytest.mark.slow
def test_maybe_compile_default_compiles_in_place_and_matches_eager(seeded):
    if perf.compile_unavailable_reason("cpu") is not None:
        pytest.skip(perf.compile_unavailable_reason("cpu"))
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    out, status = perf.maybe_compile(model, "default")
    assert out is model and status == "default"
    assert list(model.state_dict()) == keys  # no "_orig_mod." prefixes: checkpoints still load
    x = torch.randn(5, 8, generator=seeded)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_copy_bandwidth_and_matmul_rate_are_plausible_on_cpu():
    bw = perf.measure_copy_bandwidth("cpu", nbytes=4 << 20, repeats=3)
    assert bw["nbytes"] == 2 * (4 << 20)
    assert 1e8 < bw["bytes_per_s"] < 1e13
    mm = perf.measure_matmul_rate("cpu", n=128, repeats=3)
    assert mm["dtype"] == "float32" and mm["n"] == 128
    assert 1e7 < mm["flops_per_s"] < 1e14


def test_time_per_call_is_median_of_calls():
    calls = []
    sec = perf.time_per_call(lambda: calls.append(1), "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and sec >= 0


def test_forward_flops_counts_conv_and_linear_and_keeps_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    model.train()
    flops = perf.forward_flops(model, torch.randn(2, 3, 8, 8))
    conv = 2 * (2 * 8 * 8) * 4 * (3 * 9)      # 2 * outputs * MACs per output
    lin = 2 * 2 * 10 * 256
    assert flops == conv + lin
    assert model.training


def test_mark_step_begin_calls_torch_and_tolerates_its_absence(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    perf.mark_step_begin()
    assert calls == [1]
    monkeypatch.delattr(torch.compiler, "cudagraph_mark_step_begin")
    perf.mark_step_begin()  # an older torch without the function: a no-op, not an error
