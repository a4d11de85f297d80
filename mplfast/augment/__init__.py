"""Augmentation views of MPL (weak, strong) and which backend writes them.

Semantics: ``docs/augmentation.md``. Implementations, all bit-compatible with each other; the
choice is made by the backend registry ``mplfast._backends`` (op ``"augment"``), the same one
that serves the fused ops:

- ``reference``: ``mplfast.augment.reference``, image by image, op by op (always available);
- ``native``:    ``csrc/augment/cpu.cpp`` in ``mplfast._C``, C++/OpenMP (CPU default);
- ``torch``:     ``mplfast.augment.cpu``, batched vectorized torch (any device; the fallback;
                 ``"cpu"``, its former name, is still accepted);
- ``triton``:    ``mplfast.kernels.augment``, one fused kernel per view (CUDA default; on CPU
                 only when ``TRITON_INTERPRET=1`` and asked for by name).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

from mplfast import _backends

from . import params, rng
from .params import Policy

__all__ = ["Policy", "augment_view", "resolve_backend", "params", "rng", "BACKENDS"]

BACKENDS = _backends.OPS["augment"].backends
_warned: set[str] = set()


def resolve_backend(requested: str | None, device: torch.device) -> str:
    """None: triton on CUDA, native (C++) on CPU; either falls back to the vectorized torch
    path (``"torch"``) with one ``FallbackWarning``. A named backend that cannot run raises
    RuntimeError; an unknown name ValueError. ``"cpu"`` means ``"torch"``."""
    return _backends.resolve_backend(requested, device, "augment")


def augment_view(out: Tensor, images: Tensor, index: Tensor, policy: Policy, *, seed: int,
                 step: int, view: int, id_offset: int, mean: Sequence[float],
                 std: Sequence[float], backend: str | None = None) -> None:
    """Write one augmented, normalized view into ``out``.

    out:    float32 | float16 | bfloat16 [N, C, H, W], any strides (channels-last is the fast
            one), typically a slice of the step's [x_l; x_uw; x_us] buffer.
    images: uint8 [M, H, W, C], the whole set, on ``out``'s device.
    index:  int64 [N] rows of ``images`` to use.
    Image j draws its parameters from stream (seed, step, view) at counter ``id_offset + j``
    (``id_offset`` is the rank's offset, so ranks draw different parameters).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"images must be uint8 [M, H, W, C], got {images.dtype} {tuple(images.shape)}")
    N = index.numel()
    _, H, W, C = images.shape
    if tuple(out.shape) != (N, C, H, W):
        raise ValueError(f"out must be [N, C, H, W] = {(N, C, H, W)}, got {tuple(out.shape)}")
    if (H, W) != (policy.height, policy.width):
        raise ValueError(f"policy is for {policy.height}x{policy.width}, images are {H}x{W}")
    if N == 0:
        return
    key = rng.stream_key(seed, step, view)
    ids = torch.arange(id_offset, id_offset + N, device=images.device, dtype=torch.int64)
    name = resolve_backend(backend, out.device)
    if name == "triton" and backend is None:
        # one program per image holds the image in registers (no spills up to 64x64 grey / 32x32
        # RGB, checked by benchmarks/triton_sm90.py): larger images use torch instead
        from mplfast.kernels.augment import fits

        if not fits(H, W, C):
            why = f"triton augment handles images up to 64x64 grey / 32x32 RGB, got {H}x{W}x{C}"
            if why not in _warned:
                _warned.add(why)
                warnings.warn(f"augment: using the torch path: {why}", stacklevel=2)
            name = "torch"
    if name == "triton":
        from mplfast.kernels.augment import augment as triton_augment
        triton_augment(images, index, out, policy, key, id_offset, mean, std)
    elif name == "native":
        from . import native
        native.augment(images, index, out, policy, key, ids, mean, std)
    elif name in ("torch", "cpu"):  # "cpu": the torch path's former name
        from . import cpu
        cpu.augment(images, index, out, policy, key, ids, mean, std)
    else:
        from . import reference
        reference.augment(images, index, out, policy, key, ids, mean, std)
