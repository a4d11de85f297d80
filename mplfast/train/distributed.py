"""torchrun integration: process group setup, rank helpers, device choice."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mplfast.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"device: cannot parse {requested!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {requested} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif device.type != "cpu":
        raise UserError(f"device: unsupported {requested!r} (use auto, cpu, cuda or cuda:N)")
    return device


def setup(requested_device: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1): NCCL for CUDA
    devices, gloo on CPU. A plain `mplfast train` is a single process and creates no group. On
    CUDA the chosen device is made current in every case."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(requested_device, local_rank)
    if device.type == "cuda":
        # every CUDA run, one process too: Triton launches on the *current* device and stream,
        # so `--device cuda:1` must make cuda:1 current (the kernels also guard each launch)
        torch.cuda.set_device(device)
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(info: DistInfo) -> None:
    """Destroy the process group we created (if any)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (one tiny all-reduce), so that all
    ranks stop at the same step when only one of them received a signal."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0],
                     device=info.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    """Synchronise all ranks (no-op for a single process)."""
    if info.distributed:
        dist.barrier()
