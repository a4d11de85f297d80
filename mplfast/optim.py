"""Parameter groups for weight decay: none on normalization-layer parameters, none on biases
unless asked (``decay_biases=True`` is the PyTorch port's grouping)."""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, *, decay_biases: bool = False,
                 head: Iterable[nn.Parameter] | None = None,
                 backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """[{'params': decayed, 'weight_decay': wd}, {'params': rest, 'weight_decay': 0.0}].

    "rest" is every parameter of a normalization layer (batch norm and friends) and, unless
    ``decay_biases``, every bias. Excluding biases is mplfast's own choice: the most used
    PyTorch port excludes only parameters whose name contains "bn" (its batch norms), so it
    does decay the classifier's bias, and the official code's L2 loss likewise skips variables
    by batch-norm names. ``decay_biases=True`` reproduces the port's grouping on mplfast's
    models. Parameters with ``requires_grad=False`` are left out. Empty groups are dropped.

    ``head`` and ``backbone_lr_scale`` != 1 (fine-tuning pretrained weights): the groups are
    split into the head's (``lr_scale`` 1.0, first, so ``param_groups[0]`` holds the full lr)
    and the rest's (``lr_scale`` = ``backbone_lr_scale``); each group carries its
    ``lr_scale``, the multiple of the optimizer's lr it should get. With the default 1 the
    two groups above are returned unchanged.
    """
    if weight_decay < 0:
        raise ValueError(f"param_groups: weight_decay must be >= 0, got {weight_decay!r}")
    if not backbone_lr_scale >= 0:
        raise ValueError(f"param_groups: backbone_lr_scale must be >= 0, got {backbone_lr_scale!r}")
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
    if head is not None and backbone_lr_scale != 1.0:
        head_ids = {id(p) for p in head}
        groups = [{**g, "params": [p for p in g["params"] if (id(p) in head_ids) == is_head],
                   "lr_scale": 1.0 if is_head else float(backbone_lr_scale)}
                  for is_head in (True, False) for g in groups]
    return [g for g in groups if g["params"]]
