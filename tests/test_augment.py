"""Augmentation semantics: counter stream, reference ops vs PIL, CPU path vs reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mplfast.augment import augment_view, cpu, native, resolve_backend
from mplfast.augment import params as P
from mplfast.augment import reference as R
from mplfast.augment import rng


def _images(n=6, h=12, w=10, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, h, w, c), dtype=torch.uint8, generator=g)


# ---- counter stream -------------------------------------------------------------------------
def test_mix32_torch_matches_python():
    xs = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    got = rng.mix32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [rng.mix32_int(x) for x in xs]
    assert len(set(got)) == len(xs)


def test_stream_uniform_and_randint():
    key = rng.stream_key(1, 2, 3)
    bits = rng.u32(key, torch.arange(20000), 0)
    u = rng.uniform(bits)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    r = rng.randint(bits, 14)
    counts = torch.bincount(r, minlength=14)
    assert r.max() == 13 and counts.min() > 20000 / 14 * 0.9
    assert rng.stream_key(1, 2, 3) != rng.stream_key(1, 2, 4) != rng.stream_key(2, 2, 3)


# ---- reference ops against PIL where the semantics are PIL's exactly -------------------------
@pytest.mark.parametrize("op", ["equalize", "solarize", "posterize", "autocontrast_cutoff0"])
def test_reference_colour_ops_match_pil(op):
    img = _images(1, 16, 16, 3, seed=5)[0]
    img[..., 1] = img[..., 1] // 3 + 40  # a narrow channel, so autocontrast/equalize matter
    pil = Image.fromarray(img.numpy())
    x = img.float()
    if op == "equalize":
        want, got = ImageOps.equalize(pil), R.equalize(x)
    elif op == "solarize":
        want, got = ImageOps.solarize(pil, 128), R.solarize(x, 128)
    elif op == "posterize":
        want, got = ImageOps.posterize(pil, 4), R.posterize(x, 4)
    else:
        want = ImageOps.autocontrast(pil)
        got = R.autocontrast(x)
    diff = (torch.from_numpy(np.array(want)).float() - got).abs()
    # autocontrast: PIL truncates where we round half up -> off by at most one level
    assert float(diff.max()) <= (1.0 if op.startswith("autocontrast") else 0.0)


def test_resample_flip_and_shift_exact():
    img = _images(1, 6, 8, 1, seed=1)[0]
    pol = P.Policy(6, 8, True)
    # flip then shift right by 2, down by -1: out(x, y) = in(W-1-(x-2), y+1), fill outside
    aff = P.compose_affine(pol, torch.tensor([True]), torch.tensor([2]), torch.tensor([-1]),
                           torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0))
    out = R.resample(img, aff[0])
    for y in range(6):
        for x in range(8):
            sx, sy = 7 - (x - 2), y + 1
            want = float(img[sy, sx, 0]) if 0 <= sx < 8 and 0 <= sy < 6 else P.FILL
            assert float(out[y, x, 0]) == want


def test_rotate_90ish_keeps_centre_pixel():
    img = _images(1, 9, 9, 1, seed=2)[0]
    pol = P.Policy(9, 9, False, n_ops=1, magnitude=15.0)  # 45 degrees (clamped)
    aff = P.compose_affine(pol, torch.tensor([False]), torch.tensor([0]), torch.tensor([0]),
                           torch.tensor([[P.ROTATE]]), torch.tensor([[1.0]]))
    out = R.resample(img, aff[0])
    assert out[4, 4, 0] == img[4, 4, 0]  # rotation about the centre
    assert (out == P.FILL).any()          # corners come from outside: fill
    assert not torch.equal(out, img.float())


def test_weak_view_digits_never_flips():
    pol = P.Policy(8, 8, False)
    prm = P.draw_params(pol, 123, torch.arange(500))
    assert not prm.flip.any() and prm.tx.abs().max() == 1 and prm.ty.abs().max() == 1
    prm = P.draw_params(P.Policy(32, 32, True), 123, torch.arange(500))
    assert 0.4 < prm.flip.float().mean() < 0.6 and prm.tx.abs().max() == 4


def test_policy_constants_recipe():
    pol = P.Policy(32, 32, True, n_ops=2, magnitude=16.0, cutout=0.5)
    assert pol.cutout_px == 16 and pol.rotate_deg == 45.0 and pol.solarize_threshold == 128
    assert pol.posterize_shift == 4 and abs(pol.enhance - 0.95) < 1e-6
    with pytest.raises(ValueError):
        P.Policy(32, 32, True, n_ops=99)


# ---- CPU path == reference, per op and for whole policies ------------------------------------
@pytest.mark.parametrize("op", range(P.NUM_OPS), ids=P.OP_NAMES)
@pytest.mark.parametrize("c", [1, 3])
def test_cpu_matches_reference_per_op(op, c):
    imgs = _images(12, 17, 19, c, seed=op)  # >= 256 pixels, else equalize is a no-op (PIL)
    idx = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:9]
    pol = P.Policy(17, 19, True, n_ops=1, magnitude=12.0, op_set=(op,))
    ids = torch.arange(50, 59)
    want = R.augment_pixels(imgs[idx], pol, 99, ids)
    got = cpu.augment_pixels(imgs, idx, pol, 99, ids)
    assert torch.equal(got, want)
    base = R.augment_pixels(imgs[idx], P.Policy(17, 19, True), 99, ids)
    if op != P.IDENTITY and not (op == P.COLOR and c == 1):  # the op really changes something
        assert not torch.equal(want, base)


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (7, 9, 3)])
def test_cpu_matches_reference_whole_policy(shape):
    h, w, c = shape
    imgs = _images(16, h, w, c, seed=h)
    idx = torch.arange(16).flip(0)
    pol = P.Policy(h, w, c == 3, n_ops=3, magnitude=16.0, cutout=0.5)
    for key in (1, 2):
        ids = torch.arange(16) + 1000 * key
        want = R.augment_pixels(imgs[idx], pol, key, ids)
        assert torch.equal(cpu.augment_pixels(imgs, idx, pol, key, ids), want)
        assert (want == 128).any()  # cutout / fill is there


def test_cutout_square():
    imgs = _images(4, 32, 32, 3, seed=3)
    pol = P.Policy(32, 32, True, n_ops=0, cutout=0.5, translate_frac=0.0, op_set=(0,))
    prm = P.draw_params(pol, 5, torch.arange(4))
    out = cpu.augment_pixels(imgs, torch.arange(4), pol, 5, torch.arange(4))
    for j in range(4):
        x0, y0 = int(prm.cut_x0[j]), int(prm.cut_y0[j])
        box = out[j, max(y0, 0):y0 + 16, max(x0, 0):x0 + 16]
        assert (box == 128).all()
        n_fill = int((out[j] == 128).all(-1).sum())
        assert n_fill == (min(y0 + 16, 32) - max(y0, 0)) * (min(x0 + 16, 32) - max(x0, 0))


def test_augment_view_determinism_and_backends():
    imgs = _images(10, 16, 16, 3, seed=9)
    idx = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    pol = P.Policy(16, 16, True, n_ops=2, magnitude=16.0, cutout=0.5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    def run(seed, step, backend, dtype=torch.float32):
        out = torch.empty(8, 16, 16, 3, dtype=dtype).permute(0, 3, 1, 2)
        augment_view(out, imgs, idx, pol, seed=seed, step=step, view=2, id_offset=0,
                     mean=mean, std=std, backend=backend)
        return out

    a = run(1, 5, "cpu")
    assert torch.equal(a, run(1, 5, "cpu")) and torch.equal(a, run(1, 5, "reference"))
    assert not torch.equal(a, run(2, 5, "cpu")) and not torch.equal(a, run(1, 6, "cpu"))
    torch.testing.assert_close(run(1, 5, "cpu", torch.bfloat16).float(), a, atol=0.03, rtol=0.01)
    # normalization: pixel 128 (fill) maps to (128/255 - mean) / std per channel
    fill = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    px = a.permute(0, 2, 3, 1).reshape(-1, 3)
    assert (px - fill).abs().amax(1).lt(1e-5).any()
    want = "native" if native.unavailable_reason() is None else "cpu"
    assert resolve_backend(None, torch.device("cpu")) == want
    with pytest.raises(ValueError):
        resolve_backend("bogus", torch.device("cpu"))


# ---- C++ backend == reference ----------------------------------------------------------------
needs_native = pytest.mark.skipif(native.unavailable_reason() is not None,
                                  reason=str(native.unavailable_reason()))


def _native_vs_ref(imgs, idx, pol, key, ids, dtype=torch.float32, channels_last=True, threads=1):
    N, (H, W, C) = idx.numel(), imgs.shape[1:]
    mean, std = tuple(0.4 + 0.05 * i for i in range(C)), tuple(0.2 + 0.03 * i for i in range(C))
    if channels_last:
        out = torch.empty(N, H, W, C, dtype=dtype).permute(0, 3, 1, 2)
    else:
        out = torch.empty(N, C, H, W, dtype=dtype)
    ref = torch.empty_like(out)
    native.augment(imgs, idx, out, pol, key, ids, mean, std, threads=threads)
    R.augment(imgs, idx, ref, pol, key, ids, mean, std)
    return out, ref


@needs_native
@pytest.mark.parametrize("op", range(P.NUM_OPS), ids=P.OP_NAMES)
@pytest.mark.parametrize("c", [1, 3])
def test_native_matches_reference_per_op(op, c):
    imgs = _images(10, 17, 19, c, seed=op + 40)
    pol = P.Policy(17, 19, c == 3, n_ops=1, magnitude=13.0, op_set=(op,))
    out, ref = _native_vs_ref(imgs, torch.tensor([9, 0, 4, 4, 7]), pol, 7 + op, torch.arange(5))
    assert torch.equal(out, ref)


@needs_native
@pytest.mark.parametrize("dtype,channels_last,threads", [(torch.float32, True, 2),
                                                         (torch.bfloat16, True, 1),
                                                         (torch.float32, False, 1)])
def test_native_matches_reference_whole_policy(dtype, channels_last, threads):
    imgs = _images(40, 32, 32, 3, seed=11)
    idx = torch.randint(0, 40, (33,), generator=torch.Generator().manual_seed(1))
    pol = P.Policy(32, 32, True, n_ops=2, magnitude=16.0, cutout=0.5)
    out, ref = _native_vs_ref(imgs, idx, pol, 2024, torch.arange(33) + 500, dtype,
                              channels_last, threads)
    assert torch.equal(out, ref)


@needs_native
def test_native_rejects_bad_index():
    imgs = _images(3, 8, 8, 3)
    out = torch.empty(1, 3, 8, 8)
    with pytest.raises(IndexError):
        native.augment(imgs, torch.tensor([3]), out, P.Policy(8, 8, True), 1, torch.arange(1),
                       (0.5,) * 3, (0.2,) * 3)
