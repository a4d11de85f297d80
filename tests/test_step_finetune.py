"""The finetune stage trains without dropout, as the PyTorch port does (issue 10 item 7)."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

from mplfast import create_model
from mplfast.train.supervised import without_dropout


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@pytest.mark.parametrize("name,kw", [("wrn", dict(depth=10, widen_factor=1, dropout=0.3)),
                                     ("small_cnn", dict(in_chans=3, width=4, dropout=0.3))])
def test_without_dropout_removes_dense_dropout_and_keeps_the_state_dict(name, kw):
    torch.manual_seed(0)
    model = create_model(name, 5, **kw).train()
    ref = copy.deepcopy(model)
    x = torch.randn(6, 3, 16, 16)
    assert _has_dropout(model)
    assert without_dropout(model) is model and not _has_dropout(model)
    assert model.state_dict().keys() == ref.state_dict().keys()
    # training-mode forward now equals the reference's with its dropout off (p = 0)
    for m in ref.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_finetune_stage_runs_without_dropout(tmp_path, monkeypatch):
    """Through `mplfast train`: the model SupervisedStep finetunes has no dropout left, while
    the student trained before it keeps its dropout."""
    from mplfast.cli import main
    from mplfast.train import runner

    seen: list[bool] = []
    real = runner.SupervisedStep

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, model, *a, **k):
            seen.append(_has_dropout(model))
            super().__init__(model, *a, **k)

    monkeypatch.setattr(runner, "SupervisedStep", Recording)
    out = str(tmp_path / "run")
    rc = main(["train", "--steps", "2", "--out", out, "--set", "model_kwargs={width: 4, dropout: 0.3}",
               "--set", "batch_size=10", "--set", "mu=1", "--set", "progress=none",
               "--set", "finetune_epochs=1", "--set", "finetune_batch_size=25",
               "--set", "eval_interval=0", "--set", "tensorboard=false", "--set", "plot=false"])
    assert rc == 0
    assert seen == [False]  # MPL training uses MPLStep; the one SupervisedStep is the finetune's
    with open(os.path.join(out, "summary.json")) as f:
        assert "finetune_acc" in json.load(f)


def test_param_groups_decay_biases_is_the_ports_grouping():
    """decay_biases=True: only batch-norm parameters escape weight decay, as in the port (whose
    rule is: the parameter's name contains "bn"); the default also spares every bias."""
    from mplfast import param_groups

    m = create_model("wrn", 10, depth=10, widen_factor=1)
    port_no_decay = {id(p) for n, p in m.named_parameters() if "bn" in n}
    groups = param_groups(m, 5e-4, decay_biases=True)
    assert {id(p) for p in groups[1]["params"]} == port_no_decay
    assert id(m.fc.bias) in {id(p) for p in groups[0]["params"]}
    default = param_groups(m, 5e-4)
    assert {id(p) for p in default[1]["params"]} == port_no_decay | {id(m.fc.bias)}
