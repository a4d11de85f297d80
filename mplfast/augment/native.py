"""The C++ CPU augmentation backend (``csrc/augment/augment.cpp``, in ``mplfast._C``).

Parameters are drawn here in torch (``params.draw_params``, the same numbers every backend
uses); the C++ kernel does the per-pixel work, one image per OpenMP iteration, and is bit-exact
with the reference (it is compiled without fast-math / FMA contraction for that reason).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mplfast import _native

from . import params as P
from .reference import normalize_constants


def _lib():
    return _native._C if _native.has("augment_cpu") else None


def unavailable_reason() -> str | None:
    """None if the C++ kernel is built into mplfast._C, else why not (from the one loader,
    ``mplfast._native``)."""
    return _native.missing("augment_cpu")


def augment(images: Tensor, index: Tensor, out: Tensor, policy: P.Policy, key: int,
            ids: Tensor, mean: Sequence[float], std: Sequence[float],
            threads: int | None = None) -> None:
    """Write the normalized view of ``images[index]`` into ``out`` ([N, C, H, W], any strides,
    any float dtype; CPU tensors). Runs on ``threads`` (default torch's) OpenMP threads."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"native augment unavailable: {unavailable_reason()}")
    if images.device.type != "cpu" or out.device.type != "cpu":
        raise ValueError("the native augment backend runs on CPU tensors only")
    images = images.contiguous()
    N = index.numel()
    _, H, W, C = images.shape
    index = index.to(torch.int64).contiguous()
    if N and (int(index.min()) < 0 or int(index.max()) >= images.shape[0]):
        raise IndexError("augment: index out of range of the image set")
    prm = P.draw_params(policy, key, ids)
    ops = prm.ops.contiguous()
    signs = prm.signs.contiguous()
    affine = prm.affine.contiguous()
    cx, cy = prm.cut_x0.contiguous(), prm.cut_y0.contiguous()
    scale, shift = normalize_constants(mean, std)
    nhwc = out.permute(0, 2, 3, 1)
    direct = out.dtype == torch.float32 and nhwc.is_contiguous()
    buf = nhwc if direct else torch.empty((N, H, W, C), dtype=torch.float32)
    lib.augment_cpu(images.data_ptr(), H, W, C, index.data_ptr(), N, affine.data_ptr(),
                    policy.n_ops, ops.data_ptr(), signs.data_ptr(), cx.data_ptr(), cy.data_ptr(),
                    policy.cutout_px, policy.enhance, float(policy.solarize_threshold),
                    float(2 ** policy.posterize_shift), scale.data_ptr(), shift.data_ptr(),
                    buf.data_ptr(), threads or torch.get_num_threads())
    if not direct:
        nhwc.copy_(buf)
