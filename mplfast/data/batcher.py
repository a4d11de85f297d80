"""Device-resident MPL batching: sampling on device, augmentation straight into one buffer.

The whole uint8 set lives on the training device. Each step's indices are a pure function of
(seed, step, rank) computed on the device with the counter-based hash of
``mplfast.augment.rng`` (no host work per step, no host-device sync, and a resumed run sees
exactly the same batches). The three views are written by the augmentation backend directly into
consecutive slices of one normalized buffer of the model's dtype, channels-last by default, so
the teacher's forward over [x_l; x_uw; x_us] needs no ``torch.cat``.

Sampling is with replacement (uniform over the labeled indices / the unlabeled set); under
``world_size > 1`` rank r draws counters r*B .. r*B+B-1, so ranks never share draws.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from mplfast.augment import Policy, augment_view
from mplfast.augment import params as AP
from mplfast.augment import rng
from mplfast.augment.reference import normalize_constants

from .datasets import ImageDataset

# stream "views" of the samplers (image augmentation uses params.VIEW_* = 0, 1, 2, and 3 below)
_VIEW_FINETUNE = 3
_SAMPLE_LABELED, _SAMPLE_UNLABELED, _SAMPLE_FINETUNE = 16, 17, 18


def _pick(key: int, ids: Tensor, n: int) -> Tensor:
    """int64 uniform in [0, n) per counter in ``ids`` (multiply-shift: exact, no modulo)."""
    return (rng.u32(key, ids, 0) * n) >> 32


class MPLBatcher:
    """Batches for one MPL run; see ``docs/DESIGN.md`` (Data) for the contract."""

    def __init__(self, dataset: ImageDataset, labeled_idx: Tensor, *, batch_size: int, mu: int,
                 seed: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
                 randaug_n: int = 2, randaug_m: float = 16.0, cutout: float = 0.5,
                 channels_last: bool = True, backend: str | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or mu < 0:
            raise ValueError(f"batch_size must be >= 1 and mu >= 0, got {batch_size}, {mu}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        labeled_idx = torch.as_tensor(labeled_idx, dtype=torch.int64).flatten()
        n_train = dataset.train_images.shape[0]
        if labeled_idx.numel() == 0:
            raise ValueError("labeled_idx is empty")
        if int(labeled_idx.min()) < 0 or int(labeled_idx.max()) >= n_train:
            raise ValueError(f"labeled_idx must index the {n_train} training images")
        self.dataset = dataset
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.mu = mu
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.backend = backend
        H, W, C = dataset.image_shape
        self.image_shape = (C, H, W)
        self.train_images = dataset.train_images.to(self.device)
        self.train_labels = dataset.train_labels.to(self.device)
        # unlabeled = every training image (+ the extra unlabeled images), as in the paper
        if dataset.unlabeled_images is not None and dataset.unlabeled_images.shape[0] > 0:
            self.unlabeled_images = torch.cat(
                [self.train_images, dataset.unlabeled_images.to(self.device)])
        else:
            self.unlabeled_images = self.train_images
        self.labeled_idx = labeled_idx.to(self.device)
        self.weak = Policy(H, W, dataset.hflip)
        self.strong = Policy(H, W, dataset.hflip, n_ops=randaug_n, magnitude=randaug_m,
                             cutout=cutout)
        self.mean, self.std = tuple(dataset.mean), tuple(dataset.std)
        self._scale, self._shift = (t.to(self.device) for t in
                                    normalize_constants(self.mean, self.std))
        # counters of this rank, made once: no per-step host work beyond the 32-bit keys
        B, U = batch_size, mu * batch_size
        self._ids_l = torch.arange(rank * B, (rank + 1) * B, device=self.device)
        self._ids_u = torch.arange(rank * U, (rank + 1) * U, device=self.device)
        # on CUDA with Triton, sampling is one small kernel per view instead of ~25 torch ops
        self._triton_sampling = False
        if self.device.type == "cuda" and backend in (None, "triton"):
            from mplfast.augment import resolve_backend

            self._triton_sampling = resolve_backend(backend, self.device) == "triton"

    # -----------------------------------------------------------------------------------------
    def _buffer(self, n: int) -> Tensor:
        """Fresh [n, C, H, W] buffer in the model dtype; channels-last memory (NHWC) if asked."""
        C, H, W = self.image_shape
        if self.channels_last:
            return torch.empty((n, H, W, C), dtype=self.dtype,
                               device=self.device).permute(0, 3, 1, 2)
        return torch.empty((n, C, H, W), dtype=self.dtype, device=self.device)

    def _view(self, out: Tensor, images: Tensor, idx: Tensor, policy: Policy, step: int,
              view: int, id_offset: int) -> None:
        augment_view(out, images, idx, policy, seed=self.seed, step=step, view=view,
                     id_offset=id_offset, mean=self.mean, std=self.std, backend=self.backend)

    def indices(self, step: int) -> tuple[Tensor, Tensor]:
        """(labeled rows of train_images int64 [B], unlabeled rows int64 [mu*B]) of ``step``."""
        kl = rng.stream_key(self.seed, step, _SAMPLE_LABELED)
        ku = rng.stream_key(self.seed, step, _SAMPLE_UNLABELED)
        B, U = self.batch_size, self.mu * self.batch_size
        if self._triton_sampling:
            from mplfast.kernels.augment import sample_rows

            return (sample_rows(kl, self.rank * B, B, self.labeled_idx.numel(),
                                self.labeled_idx, self.device),
                    sample_rows(ku, self.rank * U, U, self.unlabeled_images.shape[0], None,
                                self.device))
        idx_l = self.labeled_idx[_pick(kl, self._ids_l, self.labeled_idx.numel())]
        idx_u = _pick(ku, self._ids_u, self.unlabeled_images.shape[0])
        return idx_l, idx_u

    def batch(self, step: int, out: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_l [B,C,H,W], y_l int64 [B], x_uw [muB,C,H,W], x_us [muB,C,H,W]).

        x_l, x_uw, x_us are consecutive slices of one normalized buffer (model dtype,
        channels-last unless disabled); deterministic given (seed, step, rank). x_l is the weak
        view of labeled images; x_uw / x_us are the weak / strong views of the same unlabeled
        images with independent random parameters.

        ``out``: an existing [B + 2 muB, C, H, W] buffer (model dtype, this device) to write
        into instead of a fresh one, e.g. the static input of a CUDA-graphed step. ``batch``
        itself is not meant to be captured in a graph: the step's stream key is a kernel
        argument computed on the host."""
        B, U = self.batch_size, self.mu * self.batch_size
        idx_l, idx_u = self.indices(step)
        if out is None:
            buf = self._buffer(B + 2 * U)
        else:
            C, H, W = self.image_shape
            if tuple(out.shape) != (B + 2 * U, C, H, W) or out.dtype != self.dtype \
                    or out.device != self.device:
                raise ValueError(f"out must be {self.dtype} [{B + 2 * U}, {C}, {H}, {W}] on "
                                 f"{self.device}, got {out.dtype} {tuple(out.shape)} on "
                                 f"{out.device}")
            buf = out
        x_l, x_uw, x_us = buf[:B], buf[B:B + U], buf[B + U:]
        self._view(x_l, self.train_images, idx_l, self.weak, step, AP.VIEW_LABELED,
                   self.rank * B)
        self._view(x_uw, self.unlabeled_images, idx_u, self.weak, step, AP.VIEW_WEAK,
                   self.rank * U)
        self._view(x_us, self.unlabeled_images, idx_u, self.strong, step, AP.VIEW_STRONG,
                   self.rank * U)
        return x_l, self.train_labels[idx_l], x_uw, x_us

    def labeled_batch(self, step: int, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Weak view of a labeled batch (finetune stage): (x [b,C,H,W], y int64 [b]), drawn from
        its own stream so it never repeats ``batch``'s labeled draws."""
        b = batch_size or self.batch_size
        ids = torch.arange(self.rank * b, (self.rank + 1) * b, device=self.device)
        k = rng.stream_key(self.seed, step, _SAMPLE_FINETUNE)
        idx = self.labeled_idx[_pick(k, ids, self.labeled_idx.numel())]
        out = self._buffer(b)
        self._view(out, self.train_images, idx, self.weak, step, _VIEW_FINETUNE, self.rank * b)
        return out, self.train_labels[idx]

    def eval_batches(self, split: str = "test", batch_size: int = 512
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized, un-augmented (x [b,C,H,W] model dtype, y int64 [b]) batches of ``split``
        ("test", "val" or "train"), in order; rank r gets rows r, r + world_size, ..."""
        if split == "test":
            if not hasattr(self, "_test_images"):
                self._test_images = self.dataset.test_images.to(self.device)
                self._test_labels = self.dataset.test_labels.to(self.device)
            images, labels = self._test_images, self._test_labels
        elif split == "train":
            images, labels = self.train_images, self.train_labels
        elif split == "val":
            if self.dataset.val_images is None:
                raise ValueError("this data set has no validation split (val_fraction=0)")
            if not hasattr(self, "_val_images"):
                self._val_images = self.dataset.val_images.to(self.device)
                self._val_labels = self.dataset.val_labels.to(self.device)
            images, labels = self._val_images, self._val_labels
        else:
            raise ValueError(f"split must be 'test', 'val' or 'train', got {split!r}")
        rows = torch.arange(self.rank, images.shape[0], self.world_size, device=self.device)
        for i in range(0, rows.numel(), batch_size):
            r = rows[i:i + batch_size]
            out = self._buffer(r.numel())
            x = images[r].to(torch.float32) * self._scale + self._shift
            out.copy_(x.permute(0, 3, 1, 2))
            yield out, labels[r]
