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
                         device_id: int | None = None, crop_area: tuple[float, float] = (0.08, 1.0)):
    """A built DALI pipeline whose outputs are (images uint8 [B, S, S, 3] HWC, labels int32 [B, 1]).

    device: "cpu" (``device_id`` must be None: CPU-only) or "gpu" (mixed decoding on
    ``device_id``, default the current CUDA device). The last batch is padded by repeating the
    last sample (``pad_last_batch``), so every shard yields ``ceil(n_shard / B)`` full batches."""
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
                                     random_shuffle=shuffle, pad_last_batch=True,
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


def iterate(pipe, n: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 [b, S, S, 3], int64 [b]) batches of one epoch of ``n`` samples (padding dropped).
    CPU pipelines yield CPU tensors; GPU pipelines yield CUDA tensors (copied via numpy/cupy-free
    ``as_cpu`` fallback only if the torch plugin is missing)."""
    seen = 0
    while seen < n:
        imgs, labs = pipe.run()
        if hasattr(imgs, "as_tensor") and type(imgs).__name__ == "TensorListGPU":
            try:
                from nvidia.dali.plugin.pytorch import feed_ndarray

                t = imgs.as_tensor()
                x = torch.empty(t.shape(), dtype=torch.uint8, device="cuda")
                feed_ndarray(t, x)
            except ImportError:
                x = torch.from_numpy(np.asarray(imgs.as_cpu().as_array()))
        else:
            x = torch.from_numpy(np.asarray(imgs.as_array()))
        y = torch.from_numpy(np.asarray(labs.as_array()).reshape(-1).astype(np.int64))
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
