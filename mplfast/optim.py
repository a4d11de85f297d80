"""Parameter groups for weight decay: none on normalization-layer parameters, none on biases
unless asked (``decay_biases=True`` is the PyTorch port's grouping)."""
from __future__ import annotations

from typing import Any

from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, *,
                 decay_biases: bool = False) -> list[dict[str, Any]]:
    """[{'params': decayed, 'weight_decay': wd}, {'params': rest, 'weight_decay': 0.0}].

    "rest" is every parameter of a normalization layer (batch norm and friends) and, unless
    ``decay_biases``, every bias. Excluding biases is mplfast's own choice: the most used
    PyTorch port excludes only parameters whose name contains "bn" (its batch norms), so it
    does decay the classifier's bias, and the official code's L2 loss likewise skips variables
    by batch-norm names. ``decay_biases=True`` reproduces the port's grouping on mplfast's
    models. Parameters with ``requires_grad=False`` are left out. Empty groups are dropped.
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
        if id(p) in no_decay_ids or (not decay_biases and name.split(".")[-1] == "bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
