"""The fused Triton augmentation kernel against the torch reference (interpreter on CPU).

Under TRITON_INTERPRET=1 (tests/conftest.py) the kernel's float32 arithmetic is numpy's, without
FMA contraction, so the output must equal the reference bit for bit. Sizes are tiny: the
interpreter runs one numpy program per image.
"""
from __future__ import annotations

import os

import pytest
import torch

from mplfast.augment import augment_view, rng
from mplfast.augment import params as P

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _imgs(n, h, w, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, h, w, c), dtype=torch.uint8, generator=g)


def _both(imgs, idx, pol, *, seed=3, step=4, view=2, id_offset=0, dtype=torch.float32,
          channels_last=True, mean=None, std=None):
    N = idx.numel()
    _, H, W, C = imgs.shape
    mean = mean or tuple(0.3 + 0.1 * i for i in range(C))
    std = std or tuple(0.2 + 0.05 * i for i in range(C))
    outs = []
    for backend in ("triton", "reference"):
        if channels_last:
            out = torch.empty(N, H, W, C, dtype=dtype, device=DEV).permute(0, 3, 1, 2)
        else:
            out = torch.empty(N, C, H, W, dtype=dtype, device=DEV)
        augment_view(out, imgs.to(DEV), idx.to(DEV), pol, seed=seed, step=step, view=view,
                     id_offset=id_offset, mean=mean, std=std, backend=backend)
        outs.append(out.cpu())
    return outs


@pytest.mark.parametrize("op", range(P.NUM_OPS), ids=P.OP_NAMES)
def test_triton_each_op_rgb(op):
    imgs = _imgs(5, 17, 19, 3, seed=op)  # >= 256 pixels so equalize acts
    pol = P.Policy(17, 19, True, n_ops=1, magnitude=12.0, op_set=(op,))
    tri, ref = _both(imgs, torch.tensor([4, 0, 2]), pol, seed=op)
    assert torch.equal(tri, ref)


@pytest.mark.parametrize("op", [P.AUTOCONTRAST, P.EQUALIZE, P.CONTRAST, P.SHARPNESS, P.ROTATE,
                                P.COLOR], ids=lambda o: P.OP_NAMES[o])
def test_triton_each_op_gray_digits(op):
    imgs = _imgs(4, 8, 8, 1, seed=10 + op)
    pol = P.Policy(8, 8, False, n_ops=1, magnitude=16.0, op_set=(op,))
    tri, ref = _both(imgs, torch.tensor([1, 3, 2]), pol)
    assert torch.equal(tri, ref)


def test_triton_equalize_gray_large():
    imgs = _imgs(2, 20, 16, 1, seed=77)
    imgs[0] = imgs[0] // 4 + 100  # narrow histogram
    pol = P.Policy(20, 16, False, n_ops=1, op_set=(P.EQUALIZE,))
    tri, ref = _both(imgs, torch.tensor([0, 1]), pol)
    assert torch.equal(tri, ref)


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, True), (torch.bfloat16, True),
                                                 (torch.float16, False)])
def test_triton_whole_strong_policy(dtype, channels_last):
    imgs = _imgs(8, 16, 16, 3, seed=5)
    pol = P.Policy(16, 16, True, n_ops=3, magnitude=16.0, cutout=0.5)
    tri, ref = _both(imgs, torch.tensor([7, 1, 1, 0, 5, 3]), pol, dtype=dtype,
                     channels_last=channels_last, id_offset=2**27 + 5)
    if dtype == torch.bfloat16 and DEV == "cpu":
        # the interpreter emulates fp32 -> bf16 by truncation (numpy has no bf16); a GPU rounds
        # to nearest even like torch. Allow exactly that: one bf16 step towards zero.
        _, ref32 = _both(imgs, torch.tensor([7, 1, 1, 0, 5, 3]), pol, dtype=torch.float32,
                         channels_last=channels_last, id_offset=2**27 + 5)
        trunc = (ref32.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
        assert torch.equal(tri, trunc)
    else:
        assert torch.equal(tri, ref)


def test_triton_weak_view_and_large_key():
    imgs = _imgs(6, 12, 12, 3, seed=6)
    pol = P.Policy(12, 12, True)
    # find a seed whose key is >= 2^31 (an int64 kernel argument) and one below
    seeds = [s for s in range(50) if rng.stream_key(s, 0, 1) >= 2**31][:1] + \
            [s for s in range(50) if rng.stream_key(s, 0, 1) < 2**31][:1]
    for s in seeds:
        tri, ref = _both(imgs, torch.arange(6), pol, seed=s, step=0, view=1)
        assert torch.equal(tri, ref)


def test_triton_deterministic_and_seed_sensitive():
    imgs = _imgs(4, 10, 10, 3, seed=8)
    pol = P.Policy(10, 10, True, n_ops=2, magnitude=16.0, cutout=0.5)
    a, _ = _both(imgs, torch.arange(4), pol, seed=1)
    b, _ = _both(imgs, torch.arange(4), pol, seed=1)
    c, _ = _both(imgs, torch.arange(4), pol, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batcher_triton_backend_matches_cpu():
    from mplfast.data import MPLBatcher, make_synthetic

    ds = make_synthetic(num_train=12, num_test=2, image_size=8)
    kw = dict(batch_size=2, mu=1, seed=5, device=DEV)
    a = MPLBatcher(ds, torch.arange(12), backend="triton", **kw).batch(9)
    b = MPLBatcher(ds, torch.arange(12), backend="cpu", **kw).batch(9)
    for p, q in zip(a, b):
        assert torch.equal(p.cpu(), q.cpu())


def test_triton_sampling_matches_torch():
    from mplfast.data.batcher import _pick
    from mplfast.kernels.augment import sample_rows

    table = torch.arange(1000, 1037, dtype=torch.int64)
    for key, off, n in ((rng.stream_key(1, 2, 16), 0, 37), (rng.stream_key(9, 99, 17), 640, 50000)):
        ids = torch.arange(off, off + 300)
        want = _pick(key, ids, n)
        got = sample_rows(key, off, 300, n, None, torch.device(DEV)).cpu()
        assert torch.equal(got, want) and int(want.max()) < n
        if n == 37:
            got_t = sample_rows(key, off, 300, n, table.to(DEV), torch.device(DEV)).cpu()
            assert torch.equal(got_t, table[want])


def test_batcher_triton_sampling_path_matches_torch():
    from mplfast.data import MPLBatcher, make_synthetic

    ds = make_synthetic(num_train=40, num_test=2, image_size=8)
    kw = dict(batch_size=3, mu=2, seed=5, device="cpu", rank=1, world_size=2)
    a = MPLBatcher(ds, torch.arange(0, 40, 2), **kw)
    b = MPLBatcher(ds, torch.arange(0, 40, 2), **kw)
    b._triton_sampling = True  # the CUDA code path, run by the interpreter
    for step in (0, 7):
        for p, q in zip(a.indices(step), b.indices(step)):
            assert torch.equal(p, q)


def test_images_above_the_tile_limit_take_the_torch_path(monkeypatch):
    """One program holds a whole image in registers; a tile above 4096 elements (64x64 grey,
    32x32 RGB) spills in Triton 3.6's sm_90 build (64x64 RGB: ~4 KB per thread), so the
    automatic choice routes such images (64x64 RGB, ImageNet's 224 px) to the torch path with
    one warning; asking for triton raises."""
    import mplfast.augment as A
    from mplfast.kernels.augment import fits

    assert fits(64, 64, 1) and fits(32, 32, 3) and fits(8, 8, 1)
    assert not fits(64, 64, 3) and not fits(32, 64, 3) and not fits(72, 72, 1) and not fits(8, 8, 2)
    imgs = _imgs(2, 64, 64, 3, seed=9)
    pol = P.Policy(64, 64, True, n_ops=1, magnitude=5.0)
    monkeypatch.setattr(A, "resolve_backend", lambda backend, device: backend or "triton")
    monkeypatch.setattr(A, "_warned", set())
    called = []
    import mplfast.kernels.augment as ka
    monkeypatch.setattr(ka, "augment", lambda *a, **k: called.append(1))
    out = torch.empty(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="using the torch path"):
        A.augment_view(out, imgs, torch.tensor([1, 0]), pol, seed=1, step=0, view=2, id_offset=0,
                       mean=(0.5,) * 3, std=(0.2,) * 3)
    assert not called
    ref = torch.empty_like(out)
    A.augment_view(ref, imgs, torch.tensor([1, 0]), pol, seed=1, step=0, view=2, id_offset=0,
                   mean=(0.5,) * 3, std=(0.2,) * 3, backend="reference")
    assert torch.equal(out, ref)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="up to 64x64 grey / 32x32 RGB"):
        ka.augment(imgs, torch.tensor([0]), out[:1], pol, 1, 0, (0.5,) * 3, (0.2,) * 3)
