"""Parameter groups: weight decay on weights only, never on batch-norm parameters or biases."""
from __future__ import annotations

from typing import Any

from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[{'params': decayed, 'weight_decay': wd}, {'params': rest, 'weight_decay': 0.0}].

    "rest" is every parameter of a normalization layer (batch norm and friends) and every
    bias; the official code and the PyTorch port exclude both from weight decay. Parameters
    with ``requires_grad=False`` are left out. Empty groups are dropped.
    """
    if weight_decay < 0:
        raise ValueError(f"param_groups: weight_decay must be >= 0, got {weight_decay!r}")
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in no_decay_ids or name.split(".")[-1] == "bias":
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
