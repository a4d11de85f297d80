"""Model registry: names, shapes, parameter counts, channels-last, clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mplfast import create_model, list_models
from mplfast.errors import UserError
from mplfast.models import register_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_builtins():
    assert {"wrn", "wrn28_2", "wrn28_8", "resnet50", "small_cnn"} <= set(list_models())
    with pytest.raises(UserError, match="unknown model 'nope'"):
        create_model("nope", 10)
    with pytest.raises(UserError, match="num_classes"):
        create_model("small_cnn", 0)


@pytest.mark.slow
def test_wrn28_2_params_flops_and_channels_last():
    m = create_model("wrn28_2", 10)
    assert n_params(m) == 1_467_610  # WRN-28-2 as in the MPL / FixMatch ports
    assert create_model("wrn", 10, depth=28, widen_factor=2).fc.in_features == 128
    from torch.utils.flop_counter import FlopCounterMode

    m.eval()
    x = torch.randn(1, 3, 32, 32)
    with FlopCounterMode(display=False) as fc:
        m(x)
    assert fc.get_total_flops() / 1e9 == pytest.approx(0.43, abs=0.01)
    m = m.to(memory_format=torch.channels_last).train()
    xb = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    out = m(xb)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()


def test_wrn28_2_param_count():
    assert n_params(create_model("wrn28_2", 10)) == 1_467_610  # as in the MPL / FixMatch ports


def test_wrn_options():
    m = create_model("wrn", 7, depth=10, widen_factor=1, dropout=0.2, leaky_slope=0.2)
    assert m.drop.p == 0.2 and m.slope == 0.2
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bns and all(b.momentum == 0.01 for b in bns)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    with pytest.raises(ValueError, match="depth"):
        create_model("wrn", 10, depth=27)


@pytest.mark.slow
def test_wrn28_8_params():
    assert n_params(create_model("wrn28_8", 100)) == 23_401_012


def test_small_cnn_digits():
    m = create_model("small_cnn", 10, in_chans=1)
    x = torch.randn(5, 1, 8, 8).to(memory_format=torch.channels_last)
    assert m(x).shape == (5, 10)
    assert n_params(m) < 50_000  # fast on CPU


def test_resnet50_shapes_and_size():
    m = create_model("resnet50", 1000)
    assert n_params(m) == 25_557_032  # torchvision's resnet50(weights=None)
    small = create_model("resnet50", 10, in_chans=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 64).to(memory_format=torch.channels_last)
    assert small(x).shape == (2, 10)
    with pytest.raises(TypeError, match="no options"):
        create_model("resnet50", 10, zero_init_residual=True)


def test_timm_or_clear_error():
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(UserError, match="needs timm"):
            create_model("timm/resnet18", 10)
        return
    m = create_model("timm/resnet18", 10, in_chans=1)
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(UserError, match="no model"):
        create_model("timm/definitely_not_a_model", 10)


def test_register_model_decorator():
    @register_model(name="_test_tiny")
    def _tiny(num_classes, *, in_chans=3):
        return nn.Linear(in_chans, num_classes)

    assert "_test_tiny" in list_models()
    assert create_model("_test_tiny", 4, in_chans=2).out_features == 4
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda n, in_chans=3: None, name="_test_tiny")
