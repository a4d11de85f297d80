"""NVIDIA DALI input pipelines for image folders.

``fn.readers.file`` + ``fn.decoders.image`` then ``fn.resize`` (evaluation / loading into an
``ImageDataset``) or ``fn.random_resized_crop`` (training on large trees that are not held in
memory). ``device="cpu"`` builds a CPU-only pipeline (``device_id=None``; runs without a GPU, and
is what the tests exercise); ``device="gpu"`` decodes with ``mixed`` (nvJPEG) so the uint8 NHWC
batch lands on the GPU and feeds the fused augmentation kernel directly. The GPU path cannot be
tested on the CPU-only development machine.

Sharding under torchrun: ``shard_id=rank, num_shards=world_size`` on the reader, so each rank
reads a disjoint slice. Files should first pass ``imagefolder.preflight`` (corrupt files are
skipped with a warning there; a corrupt file inside a DALI pipeline would stop the run).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor


def available() -> bool:
    """True when ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or a broken install: use PIL
        return False
    return True


def imagefolder_pipeline(files: Sequence[str | Path], labels: Sequence[int] | None, *,
                         batch_size: int, image_size: int, device: str = "cpu",
                         random_crop: bool = False, shuffle: bool = False, seed: int = 0,
                         shard_id: int = 0, num_shards: int = 1, num_threads: int = 2,
                         device_id: int | None = None, crop_area: tuple[float, float] = (0.08, 1.0),
                         pad_last_batch: bool = True):
    """A built DALI pipeline whose outputs are (images uint8 [B, S, S, 3] HWC, labels int32 [B, 1]).

    device: "cpu" (``device_id`` must be None: CPU-only) or "gpu" (mixed decoding on
    ``device_id``, default the current CUDA device). With ``pad_last_batch`` the last batch of an
    epoch is padded by repeating the last sample, so every shard yields ``ceil(n_shard / B)``
    batches per epoch (exact epochs); without it the reader runs on into the next epoch
    (training streams)."""
    from nvidia.dali import fn, pipeline_def, types

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and device_id is None:
        device_id = torch.cuda.current_device()
    if device == "cpu":
        device_id = None
    if labels is None:
        labels = [0] * len(files)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed, prefetch_queue_depth=2)
    def pipe():
        jpegs, lab = fn.readers.file(files=[str(f) for f in files], labels=list(labels),
                                     shard_id=shard_id, num_shards=num_shards,
                                     random_shuffle=shuffle, pad_last_batch=pad_last_batch,
                                     name="Reader")
        dec = "mixed" if device == "gpu" else "cpu"
        img = fn.decoders.image(jpegs, device=dec, output_type=types.RGB)
        if random_crop:
            img = fn.random_resized_crop(img, size=[image_size, image_size],
                                         random_area=list(crop_area))
        else:
            img = fn.resize(img, resize_x=image_size, resize_y=image_size,
                            interp_type=types.INTERP_LINEAR)
        return img, lab

    p = pipe()
    p.build()
    return p


def shard_size(n: int, shard_id: int, num_shards: int) -> int:
    """Samples DALI's file reader gives shard ``shard_id`` of ``n`` (its contiguous split)."""
    return (n * (shard_id + 1)) // num_shards - (n * shard_id) // num_shards


def run_batch(pipe) -> tuple[Tensor, Tensor]:
    """One pipeline batch as (uint8 [B, S, S, 3], int64 [B]); CUDA images for GPU pipelines
    (copied device to device with DALI's torch plugin), CPU tensors otherwise."""
    imgs, labs = pipe.run()
    if type(imgs).__name__ == "TensorListGPU":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = imgs.as_tensor()
        x = torch.empty(t.shape(), dtype=torch.uint8, device=torch.device("cuda", pipe.device_id))
        feed_ndarray(t, x, cuda_stream=torch.cuda.current_stream(x.device))
    else:
        x = torch.from_numpy(np.array(imgs.as_array()))
    labs = labs.as_cpu() if type(labs).__name__ == "TensorListGPU" else labs
    y = torch.from_numpy(np.asarray(labs.as_array()).reshape(-1).astype(np.int64))
    return x, y.to(x.device)


def iterate(pipe, n: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 [b, S, S, 3], int64 [b]) batches of one epoch of ``n`` samples (padding dropped);
    the pipeline must have been built with ``pad_last_batch=True``."""
    seen = 0
    while seen < n:
        x, y = run_batch(pipe)
        take = min(x.shape[0], n - seen)
        seen += take
        yield x[:take], y[:take]


def decode_files(files: Sequence[str | Path], image_size: int, *, batch_size: int = 64,
                 num_threads: int = 2) -> Tensor:
    """Decode + resize every file with a CPU pipeline: uint8 [N, S, S, 3] in file order."""
    n = len(files)
    pipe = imagefolder_pipeline(files, None, batch_size=min(batch_size, max(n, 1)),
                                image_size=image_size, device="cpu", num_threads=num_threads)
    return torch.cat([x for x, _ in iterate(pipe, n)])


class DALIStreamBatcher:
    """MPL batches streamed from image folders too large to hold in memory.

    Two DALI readers (labeled files, unlabeled files), each sharded by rank, decode and
    random-resized-crop to ``image_size`` (``device="gpu"``: nvJPEG ``mixed`` decoding, the uint8
    batch stays on the GPU); ``mplfast.augment.augment_view`` then writes the weak labeled view
    and the weak/strong unlabeled views into consecutive slices of one normalized channels-last
    buffer, exactly as ``MPLBatcher`` does. Augmentation parameters are keyed by (seed, step,
    rank); the order of the files is DALI's shuffle (seeded by seed + rank), so unlike
    ``MPLBatcher`` a resumed run does not replay the same images. Files should be pre-flight
    checked (``imagefolder.preflight``) first.
    """

    def __init__(self, labeled_files: Sequence[str | Path], labels: Sequence[int],
                 unlabeled_files: Sequence[str | Path], *, batch_size: int, mu: int,
                 image_size: int, mean: Sequence[float], std: Sequence[float], seed: int,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, hflip: bool = True,
                 randaug_n: int = 2, randaug_m: float = 16.0, cutout: float = 0.5,
                 rank: int = 0, world_size: int = 1, num_threads: int = 2,
                 backend: str | None = None) -> None:
        from mplfast.augment import Policy

        if len(labeled_files) != len(labels) or not labeled_files or not unlabeled_files:
            raise ValueError("need as many labels as labeled files, and non-empty file lists")
        self.B, self.U = batch_size, mu * batch_size
        self.S = image_size
        self.seed, self.rank, self.dtype, self.backend = seed, rank, dtype, backend
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device == "gpu" \
            else torch.device("cpu")
        common = dict(image_size=image_size, device=device, random_crop=True, shuffle=True,
                      shard_id=rank, num_shards=world_size, num_threads=num_threads,
                      pad_last_batch=False)
        self._lab = imagefolder_pipeline(labeled_files, labels, batch_size=self.B,
                                         seed=seed * 1000 + 2 * rank, **common)
        self._unl = imagefolder_pipeline(unlabeled_files, None, batch_size=max(self.U, 1),
                                         seed=seed * 1000 + 2 * rank + 1, **common)
        self.weak = Policy(image_size, image_size, hflip)
        self.strong = Policy(image_size, image_size, hflip, n_ops=randaug_n,
                             magnitude=randaug_m, cutout=cutout)

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_l [B,3,S,S], y_l int64 [B], x_uw [muB,3,S,S], x_us [muB,3,S,S]), one buffer."""
        from mplfast.augment import augment_view
        from mplfast.augment import params as AP

        xl_u8, y = run_batch(self._lab)
        xu_u8, _ = run_batch(self._unl)
        B, U, S = self.B, self.U, self.S
        buf = torch.empty((B + 2 * U, S, S, 3), dtype=self.dtype,
                          device=xl_u8.device).permute(0, 3, 1, 2)
        kw = dict(seed=self.seed, step=step, mean=self.mean, std=self.std, backend=self.backend)
        ar_l = torch.arange(B, device=xl_u8.device)
        ar_u = torch.arange(U, device=xl_u8.device)
        augment_view(buf[:B], xl_u8, ar_l, self.weak, view=AP.VIEW_LABELED,
                     id_offset=self.rank * B, **kw)
        if U:
            xu_u8 = xu_u8[:U]
            augment_view(buf[B:B + U], xu_u8, ar_u, self.weak, view=AP.VIEW_WEAK,
                         id_offset=self.rank * U, **kw)
            augment_view(buf[B + U:], xu_u8, ar_u, self.strong, view=AP.VIEW_STRONG,
                         id_offset=self.rank * U, **kw)
        return buf[:B], y, buf[B:B + U], buf[B + U:]
