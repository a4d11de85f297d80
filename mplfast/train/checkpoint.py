"""Checkpoints: atomic writes and the RNG states a bitwise-exact resume needs."""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

from mplfast.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` so that a crash at any moment leaves either the old or the new
    file, never a truncated one: write a temp file in the same directory (same file system, so
    the rename is atomic), fsync it, ``os.replace`` it over the target, then fsync the directory
    so the rename itself survives a power loss."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # the old checkpoint (if any) is untouched; only our temp file goes
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening directories
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load(path: str) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; a missing or unreadable file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        # our checkpoints hold only tensors, numbers, strings and RNG states (plain containers),
        # but numpy's RNG state needs the full unpickler
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "step" not in ckpt:
        raise UserError(f"{path} is not an mplfast checkpoint")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from (dropout, sampling, numpy, python)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
