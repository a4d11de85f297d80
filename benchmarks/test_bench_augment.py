"""Strong-view augmentation throughput (images/s), per CPU core, 32x32 RGB.

Run:  pytest benchmarks/test_bench_augment.py --benchmark-only -q -s

Every contender turns uint8 images into the normalized float32 strong view (flip + translate,
2 RandAugment ops, cutout where the contender has one, normalize):

  mplfast_native    C++ kernel (csrc/augment), 1 thread, whole batch, written in place
  mplfast_torch     batched vectorized torch path (mplfast.augment.cpu), 1 thread
  pil_randaugment   per image, the common DataLoader-worker path: torchvision.transforms on PIL
                    (RandomHorizontalFlip, RandomCrop(pad 4, fill 128), RandAugment(2, 9),
                    ToTensor, Normalize). Where torchvision does not import (e.g. a torchvision
                    built for another torch), the same pipeline written in plain PIL with
                    torchvision's RandAugment op list and magnitudes; the group name says which.
  tv2_tensor        torchvision.transforms.v2.RandAugment on uint8 CHW tensors, per image
  dali_gpu          nvidia.dali.auto_aug.rand_augment on GPU (skipped without CUDA)
  mplfast_triton    the fused kernel on GPU (skipped without CUDA; target >= 1e6 images/s on H100)

PIL gets no cutout (torchvision has no PIL cutout), i.e. slightly less work than mplfast.
At the end of the session (benchmarks/conftest.py, whatever order the tests ran in) the summary
prints images/s per contender and the mplfast-vs-PIL ratios (target >= 3x per core);
MPLFAST_BENCH_ASSERT=1 makes a missed 3x fail the run (off by default: shared CPUs are noisy).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mplfast.augment import augment_view, native
from mplfast.augment import params as P

N = 512          # images per round
S = 32
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
GROUP = "strong_view_32px_per_core"
_REC = None  # the session's ratio recorder (benchmarks/conftest.py), set by _targets

try:
    import torchvision.transforms as T
    import torchvision.transforms.v2 as T2

    _TV_ERROR: str | None = None
except Exception as e:  # noqa: BLE001 - e.g. torchvision built against another torch
    T = T2 = None
    _TV_ERROR = f"torchvision does not import: {type(e).__name__}: {str(e)[:80]}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core numbers
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (N, S, S, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module", autouse=True)
def _targets(ratios):
    global _REC
    _REC = ratios
    ratios.target(GROUP, "mplfast_native", "pil_randaugment", 3.0)
    for name in ("mplfast_torch", "tv2_tensor"):
        ratios.target(GROUP, name, "pil_randaugment")


def _record(benchmark, name: str, n: int = N, group: str = GROUP) -> None:
    if benchmark.stats is None:  # --benchmark-disable
        return
    rate = n / benchmark.stats.stats.min
    _REC.record(benchmark, group, name, note=f"{rate:,.0f} images/s")
    _REC.notes.append(f"strong view, 32x32 RGB: {name:22s} {rate:12,.0f} images/s"
                      + (" (1 core)" if group == GROUP else ""))


STRONG = P.Policy(S, S, True, n_ops=2, magnitude=16.0, cutout=0.5)


def _mplfast(images: torch.Tensor, backend: str, device: str = "cpu"):
    imgs = images.to(device)
    idx = torch.arange(N, device=device)
    out = torch.empty(N, S, S, 3, device=device).permute(0, 3, 1, 2)
    state = {"step": 0}

    def run():
        state["step"] += 1
        augment_view(out, imgs, idx, STRONG, seed=0, step=state["step"], view=2, id_offset=0,
                     mean=MEAN, std=STD, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


@pytest.mark.benchmark(group="strong_view_32px_per_core")
@pytest.mark.skipif(native.unavailable_reason() is not None,
                    reason=str(native.unavailable_reason()))
def test_mplfast_native(benchmark, images):
    benchmark.pedantic(_mplfast(images, "native"), rounds=5, warmup_rounds=1)
    _record(benchmark, "mplfast_native")


@pytest.mark.benchmark(group="strong_view_32px_per_core")
def test_mplfast_torch(benchmark, images):
    benchmark.pedantic(_mplfast(images, "cpu"), rounds=3, warmup_rounds=1)
    _record(benchmark, "mplfast_torch")


# ---- PIL: torchvision's pipeline, or the same in plain PIL -----------------------------------
def _plain_pil_pipeline():
    """torchvision's PIL RandAugment (num_ops=2, magnitude=9 of 31 bins, NEAREST, fill 128)
    behind flip + pad-4 crop, then ToTensor + Normalize, in plain PIL/numpy."""
    from PIL import Image, ImageEnhance, ImageOps

    bins = 31
    mag = 9
    fill = (128, 128, 128)

    def lin(hi):
        return hi * mag / (bins - 1)

    def affine(img, coeffs):
        return img.transform(img.size, Image.AFFINE, coeffs, Image.NEAREST, fillcolor=fill)

    ops = [
        lambda im, s: im,
        lambda im, s: affine(im, (1, s * lin(0.3), 0, 0, 1, 0)),  # shear x: tan(angle) = mag
        lambda im, s: affine(im, (1, 0, 0, s * lin(0.3), 1, 0)),
        lambda im, s: affine(im, (1, 0, -s * lin(150 / 331 * S), 0, 1, 0)),
        lambda im, s: affine(im, (1, 0, 0, 0, 1, -s * lin(150 / 331 * S))),
        lambda im, s: im.rotate(s * lin(30), Image.NEAREST, fillcolor=fill),
        lambda im, s: ImageEnhance.Brightness(im).enhance(1 + s * lin(0.9)),
        lambda im, s: ImageEnhance.Color(im).enhance(1 + s * lin(0.9)),
        lambda im, s: ImageEnhance.Contrast(im).enhance(1 + s * lin(0.9)),
        lambda im, s: ImageEnhance.Sharpness(im).enhance(1 + s * lin(0.9)),
        lambda im, s: ImageOps.posterize(im, 8 - int(round(4 * mag / (bins - 1)))),
        lambda im, s: ImageOps.solarize(im, 255 - int(255 * mag / (bins - 1))),
        lambda im, s: ImageOps.autocontrast(im),
        lambda im, s: ImageOps.equalize(im),
    ]
    mean = np.array(MEAN, np.float32)
    std = np.array(STD, np.float32)

    def tf(img):
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        padded = Image.new("RGB", (S + 8, S + 8), fill)
        padded.paste(img, (4, 4))
        x0, y0 = random.randint(0, 8), random.randint(0, 8)
        img = padded.crop((x0, y0, x0 + S, y0 + S))
        for _ in range(2):
            img = random.choice(ops)(img, random.choice((-1, 1)))
        arr = (np.asarray(img, np.float32) / 255.0 - mean) / std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    return tf


def _pil_pipeline():
    if T is None:
        return _plain_pil_pipeline(), "plain PIL (" + (_TV_ERROR or "") + ")"
    tf = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(S, padding=4, fill=128),
                    T.RandAugment(2, 9, fill=[128, 128, 128]), T.ToTensor(),
                    T.Normalize(MEAN, STD)])
    return tf, "torchvision.transforms on PIL"


@pytest.mark.benchmark(group="strong_view_32px_per_core")
def test_pil_randaugment(benchmark, images):
    from PIL import Image

    tf, what = _pil_pipeline()
    pils = [Image.fromarray(images[i].numpy()) for i in range(N)]
    benchmark.extra_info["implementation"] = what

    def run():
        return torch.stack([tf(im) for im in pils])

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    _record(benchmark, "pil_randaugment")


@pytest.mark.benchmark(group="strong_view_32px_per_core")
@pytest.mark.skipif(T2 is None, reason=_TV_ERROR or "")
def test_tv2_tensor(benchmark, images):
    chw = images.permute(0, 3, 1, 2).contiguous()
    tf = T2.Compose([T2.RandomHorizontalFlip(), T2.RandomCrop(S, padding=4, fill=128),
                     T2.RandAugment(2, 9, fill=128), T2.ToDtype(torch.float32, scale=True),
                     T2.Normalize(MEAN, STD)])

    def run():
        return torch.stack([tf(chw[i]) for i in range(N)])

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    _record(benchmark, "tv2_tensor")


# ---- GPU contenders ----------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.gpu
@pytest.mark.benchmark(group="strong_view_32px_gpu")
def test_mplfast_triton_gpu(benchmark):
    n = 65536
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(1, 256, (n, S, S, 3), dtype=torch.uint8, generator=g).cuda()
    idx = torch.arange(n, device="cuda")
    out = torch.empty(n, S, S, 3, device="cuda", dtype=torch.bfloat16).permute(0, 3, 1, 2)

    def run():
        augment_view(out, imgs, idx, STRONG, seed=0, step=1, view=2, id_offset=0, mean=MEAN,
                     std=STD, backend="triton")
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
    _record(benchmark, "mplfast_triton_gpu", n, "strong_view_32px_gpu")


@cuda
@pytest.mark.gpu
@pytest.mark.benchmark(group="strong_view_32px_gpu")
def test_dali_rand_augment_gpu(benchmark):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import rand_augment

    bs = 4096
    g = np.random.RandomState(0)
    batch = [g.randint(1, 256, (S, S, 3)).astype(np.uint8) for _ in range(bs)]

    @pipeline_def(batch_size=bs, num_threads=4, device_id=torch.cuda.current_device(),
                  enable_conditionals=True)
    def pipe():
        x = fn.external_source(source=lambda: batch, batch=True, device="gpu", layout="HWC")
        x = rand_augment.rand_augment(x, n=2, m=16, fill_value=128)
        return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="HWC",
                                        mean=[m * 255 for m in MEAN], std=[s * 255 for s in STD])

    p = pipe()
    p.build()
    benchmark.pedantic(p.run, rounds=10, warmup_rounds=2)
    _record(benchmark, "dali_gpu", bs, "strong_view_32px_gpu")
    del dali
