"""Image folders too large for memory: the in-memory-or-stream decision and the streamed data.

Decision (``decide_stream``): the in-memory path holds every image decoded as uint8
``S x S x 3`` and briefly about twice that while it splits and copies (validation carve, the
unlabeled pool); so a folder is streamed when ``2 x decoded bytes`` exceeds 3/4 of the memory
this process may use (``MemAvailable``, lowered to the cgroup limit inside a container).
``--stream`` / ``--no-stream`` override the estimate.

Streaming (``StreamDataset`` + ``StreamBatcher``): file lists and labels only are held; training
batches come from :class:`mplfast.data.dali.DALIStreamBatcher` (DALI readers, decode and
random-resized-crop, then mplfast's augmentation), evaluation batches from a DALI resize
pipeline over the split's files, sharded by rank. The normalization is estimated on a seeded
sample of 256 images of the training pool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from mplfast.errors import UserError

MEMORY_HEADROOM = 0.75   # fraction of available memory the in-memory path may plan to use
LOAD_FACTOR = 2          # peak / final bytes of the in-memory path while loading
STATS_SAMPLE = 256


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate: ``MemAvailable`` of /proc/meminfo, lowered to what
    the cgroup (v2 or v1) limit leaves; None where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit_f, used_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = _read_int(limit_f), _read_int(used_f)
        if limit is not None and used is not None and limit < (1 << 60):
            left = max(0, limit - used)
            avail = left if avail is None else min(avail, left)
            break
    return avail


def decoded_bytes(num_images: int, image_size: int, channels: int = 3) -> int:
    """Bytes of ``num_images`` decoded uint8 images of ``image_size`` x ``image_size``."""
    return int(num_images) * int(image_size) ** 2 * int(channels)


def _gb(n: float) -> str:
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@dataclass
class StreamChoice:
    """Whether to stream, and the one line that says why."""

    stream: bool
    reason: str


def decide_stream(requested: bool | None, num_images: int, image_size: int, *,
                  available: int | None = None, dali_ok: bool | None = None) -> StreamChoice:
    """Stream or hold in memory (see the module docstring); ``UserError`` when streaming is
    needed or asked for but DALI is not installed."""
    from . import dali

    dali_ok = dali.available() if dali_ok is None else dali_ok
    need = decoded_bytes(num_images, image_size)
    size = f"{num_images} images at {image_size}x{image_size} decode to {_gb(need)}"
    if requested is True:
        if not dali_ok:
            raise UserError("--stream needs NVIDIA DALI, which is not installed "
                            "(pip install nvidia-dali-cuda130); or drop --stream")
        return StreamChoice(True, f"{size}; streaming from disk with DALI (--stream)")
    if requested is False:
        return StreamChoice(False, f"{size}; held in memory (--no-stream)")
    if available is None:
        return StreamChoice(False, f"{size}; held in memory (available memory unknown; "
                                   f"--stream streams from disk)")
    fits = LOAD_FACTOR * need <= MEMORY_HEADROOM * available
    if fits:
        return StreamChoice(False, f"{size}; held in memory ({_gb(available)} available)")
    if not dali_ok:
        raise UserError(f"{size}, more than the {_gb(available)} of memory available allows; "
                        f"install NVIDIA DALI (pip install nvidia-dali-cuda130) to stream it from "
                        f"disk, or lower --set image_size")
    return StreamChoice(True, f"{size}, too much for the {_gb(available)} of memory available; "
                              f"streaming from disk with DALI")


# ----------------------------------------------------------------------------------------------
@dataclass
class StreamDataset:
    """An image folder as file lists (nothing decoded but a statistics sample)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    train_files: list[Path]
    train_labels: Tensor            # int64 [N]
    test_files: list[Path]
    test_labels: Tensor
    val_files: list[Path] | None = None
    val_labels: Tensor | None = None
    unlabeled_files: list[Path] = field(default_factory=list)
    hflip: bool = True
    val_images: None = None         # nothing is held in memory (the in-memory data's field)
    unlabeled_images: None = None
    streamed: bool = True
    storage: str = ""               # the in-memory / stream decision, in words

    def __post_init__(self) -> None:
        # shape-only stand-ins (device "meta": no memory) for code that reads the sizes of the
        # in-memory arrays; indexing them gives no pixels
        S = self.image_size
        self.train_images = torch.empty((len(self.train_files), S, S, 3), dtype=torch.uint8,
                                        device="meta")
        self.test_images = torch.empty((len(self.test_files), S, S, 3), dtype=torch.uint8,
                                       device="meta")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def split(self, split: str) -> tuple[list[Path], Tensor]:
        if split == "test":
            return self.test_files, self.test_labels
        if split == "train":
            return self.train_files, self.train_labels
        if split == "val":
            if self.val_files is None or self.val_labels is None:
                raise ValueError("this data set has no validation split (val_fraction=0)")
            return self.val_files, self.val_labels
        raise ValueError(f"split must be 'test', 'val' or 'train', got {split!r}")


def plan_imagefolder(root: str, *, image_size: int, requested: bool | None,
                     unlabeled: str | None = None) -> tuple[Any, StreamChoice]:
    """(the folder's scan, the stream decision) from file counts alone (nothing decoded)."""
    from .imagefolder import list_images, scan_imagefolder

    scan = scan_imagefolder(root)
    n = len(scan.all_files())
    if unlabeled is not None and Path(unlabeled).expanduser().is_dir():
        n += len(list_images(Path(unlabeled).expanduser()))
    return scan, decide_stream(requested, n, image_size, available=available_memory())


def load_stream_dataset(scan: Any, *, image_size: int, strict: bool, test_fraction: float,
                        val_fraction: float, seed: int, unlabeled: str | None = None
                        ) -> StreamDataset:
    """File lists of a scanned folder: pre-flight checked, test split held out (flat layouts,
    as ``load_imagefolder``), validation split carved (as ``splits.carve_validation``), and the
    normalization estimated on a sample."""
    from .datasets import _stats
    from .imagefolder import _checked, decode, list_images, preflight, train_test_files
    from .splits import holdout_split

    classes = scan.classes
    files, labels, tfiles, tlabels = train_test_files(scan, strict, test_fraction)
    # statistics of the training pool before the validation carve, as load_imagefolder has them
    g = torch.Generator().manual_seed(0)
    sample = torch.randperm(len(files), generator=g)[:STATS_SAMPLE].sort().values.tolist()
    mean, std = _stats(decode([files[i] for i in sample], image_size))
    vfiles = vlabels = None
    if scan.val_dir is not None:
        vfiles, vlabels = _checked(scan.val_files or [], scan.val_labels or [], strict,
                                   scan.val_dir, classes, "val")
    elif val_fraction > 0:
        keep, held = holdout_split(torch.tensor(labels), val_fraction, classes, seed + 104_729,
                                   what="val", require_all=False)
        vfiles, vlabels = [files[i] for i in held.tolist()], [labels[i] for i in held.tolist()]
        files, labels = [files[i] for i in keep.tolist()], [labels[i] for i in keep.tolist()]
    ufiles: list[Path] = []
    if unlabeled is not None:
        ud = Path(unlabeled).expanduser()
        if not ud.is_dir():
            raise FileNotFoundError(f"unlabeled folder not found: expected {ud}")
        ufiles, _ = preflight(list_images(ud), None, strict=strict)
    return StreamDataset(
        "imagefolder", len(classes), tuple(classes), mean, std, image_size, files,
        torch.tensor(labels, dtype=torch.int64), tfiles, torch.tensor(tlabels, dtype=torch.int64),
        vfiles, None if vlabels is None else torch.tensor(vlabels, dtype=torch.int64), ufiles)


class StreamBatcher:
    """``MPLBatcher``'s interface (``batch``, ``labeled_batch``, ``eval_batches``) over a
    ``StreamDataset``, decoding with DALI at every step."""

    def __init__(self, dataset: StreamDataset, labeled_idx: Tensor, *, batch_size: int, mu: int,
                 seed: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
                 randaug_n: int = 2, randaug_m: float = 16.0, cutout: float = 0.5,
                 backend: str | None = None, rank: int = 0, world_size: int = 1,
                 num_threads: int = 2) -> None:
        from mplfast.augment import Policy
        from mplfast.augment.reference import normalize_constants

        from .dali import DALIStreamBatcher

        self.dataset = dataset
        self.device = torch.device(device)
        self.dali_device = "gpu" if self.device.type == "cuda" else "cpu"
        self.batch_size, self.mu, self.seed = batch_size, mu, seed
        self.rank, self.world_size, self.dtype, self.backend = rank, world_size, dtype, backend
        self.num_threads = num_threads
        idx = labeled_idx.tolist()
        self.labeled_files = [dataset.train_files[i] for i in idx]
        self.labeled_labels = [int(dataset.train_labels[i]) for i in idx]
        unl = list(dataset.train_files) + list(dataset.unlabeled_files)
        self.inner = DALIStreamBatcher(
            self.labeled_files, self.labeled_labels, unl, batch_size=batch_size, mu=mu,
            image_size=dataset.image_size, mean=dataset.mean, std=dataset.std, seed=seed,
            device=self.dali_device, dtype=dtype, hflip=dataset.hflip, randaug_n=randaug_n,
            randaug_m=randaug_m, cutout=cutout, rank=rank, world_size=world_size,
            num_threads=num_threads, backend=backend)
        self.weak = Policy(dataset.image_size, dataset.image_size, dataset.hflip)
        self._scale, self._shift = (t.to(self.device) for t in
                                    normalize_constants(dataset.mean, dataset.std))
        self._finetune_pipes: dict[int, Any] = {}

    def _buffer(self, n: int) -> Tensor:
        S = self.dataset.image_size
        return torch.empty((n, S, S, 3), dtype=self.dtype, device=self.device).permute(0, 3, 1, 2)

    def batch(self, step: int, out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_l, y_l, x_uw, x_us) of ``step`` (see ``DALIStreamBatcher.batch``); ``out`` is not
        supported (the streamed batch has its own buffer)."""
        if out is not None:
            raise ValueError("StreamBatcher.batch does not write into a given buffer")
        return self.inner.batch(step)

    def labeled_batch(self, step: int, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Weak view of a streamed labeled batch (supervised runs, finetune)."""
        from mplfast.augment import augment_view

        from .dali import imagefolder_pipeline, run_batch

        b = batch_size or self.batch_size
        if b not in self._finetune_pipes:
            self._finetune_pipes[b] = imagefolder_pipeline(
                self.labeled_files, self.labeled_labels, batch_size=b,
                image_size=self.dataset.image_size, device=self.dali_device, random_crop=True,
                shuffle=True, seed=self.seed * 1000 + 2 * self.rank + 7919 + b,
                shard_id=self.rank, num_shards=self.world_size, num_threads=self.num_threads,
                pad_last_batch=False)
        x_u8, y = run_batch(self._finetune_pipes[b])
        out = self._buffer(b)
        augment_view(out, x_u8, torch.arange(b, device=x_u8.device), self.weak, seed=self.seed,
                     step=step, view=3, id_offset=self.rank * b, mean=self.dataset.mean,
                     std=self.dataset.std, backend=self.backend)
        return out, y

    def eval_batches(self, split: str = "test", batch_size: int = 512
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized, resized (not augmented) batches of ``split``; rank r gets its DALI shard."""
        from .dali import imagefolder_pipeline, iterate, shard_size

        files, labels = self.dataset.split(split)
        n = shard_size(len(files), self.rank, self.world_size)
        if n == 0:
            return
        pipe = imagefolder_pipeline(files, labels.tolist(), batch_size=min(batch_size, n),
                                    image_size=self.dataset.image_size, device=self.dali_device,
                                    shard_id=self.rank, num_shards=self.world_size,
                                    num_threads=self.num_threads, pad_last_batch=True)
        for x_u8, y in iterate(pipe, n):
            x = x_u8.to(self.device).to(torch.float32) * self._scale + self._shift
            out = self._buffer(x.shape[0])
            out.copy_(x.permute(0, 3, 1, 2))
            yield out, y.to(self.device)
