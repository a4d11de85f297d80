"""The few torch.distributed helpers the MPL step needs (no-ops when not distributed)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Number of ranks of the default process group (1 when not initialized)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over all ranks of the default group; returns ``t``. No-op for 1 rank.

    SUM then divide (gloo has no AVG). Asynchronous on NCCL: no host sync.
    """
    n = world_size()
    if n > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(n)
    return t


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
