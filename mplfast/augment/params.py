"""Augmentation policy constants and per-image parameters (shared by every backend).

The semantics are written down in ``docs/augmentation.md``; this module is their single source
of truth for the *random* part: which op, which sign, which flip/shift/cutout, and the composed
inverse affine map. The Triton kernel re-derives the same numbers from the same counter stream
(see ``kernels/augment.py``); the tests hold it to this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import rng

# Op ids: the RandAugment list of the issue, in this order (the kernel uses the same numbers).
IDENTITY, AUTOCONTRAST, EQUALIZE, ROTATE, SOLARIZE, COLOR, POSTERIZE, CONTRAST, BRIGHTNESS, \
    SHARPNESS, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y = range(14)
OP_NAMES = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
            "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
            "translate_y")
NUM_OPS = len(OP_NAMES)
GEOMETRIC = frozenset({ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y})

# Random slots per image (rng.SLOTS = 32 leaves room for up to 13 RandAugment layers).
SLOT_FLIP, SLOT_TX, SLOT_TY, SLOT_CUT_X, SLOT_CUT_Y, SLOT_OPS = 0, 1, 2, 3, 4, 5
MAX_LAYERS = (rng.SLOTS - SLOT_OPS) // 2

FILL = 128.0  # constant fill of translate / rotate / shear and of cutout (raw pixel units)

# View ids feed the stream key, so the labeled, weak and strong views draw independent numbers.
VIEW_LABELED, VIEW_WEAK, VIEW_STRONG = 0, 1, 2


@dataclass(frozen=True)
class Policy:
    """What one view does. ``n_ops == 0`` and ``cutout == 0`` is the weak view.

    All magnitude-derived numbers are host constants (the magnitude is fixed per run and only the
    sign is random), so cos/sin are computed once on the host and every backend uses the very
    same float32 values: no device trigonometry to disagree on.
    """

    height: int
    width: int
    hflip: bool
    n_ops: int = 0
    magnitude: float = 16.0          # RandAugment m on the 0-10 scale (m=16 -> 1.6x nominal max)
    cutout: float = 0.0              # cutout side as a fraction of min(H, W) (0.5 -> 16 px at 32)
    translate_frac: float = 0.125    # weak translate, fraction of the side (integer pixels)
    op_set: tuple[int, ...] = tuple(range(14))  # ops a layer draws from, uniformly (tests pin one)

    def __post_init__(self) -> None:
        if not 0 <= self.n_ops <= MAX_LAYERS:
            raise ValueError(f"randaug n must be in [0, {MAX_LAYERS}], got {self.n_ops}")
        if self.magnitude < 0:
            raise ValueError(f"randaug magnitude must be >= 0, got {self.magnitude}")
        if not self.op_set or any(not 0 <= o < NUM_OPS for o in self.op_set):
            raise ValueError(f"op_set must be a non-empty tuple of op ids in [0, {NUM_OPS})")
        if not 0 <= self.cutout <= 1:
            raise ValueError(f"cutout must be a fraction in [0, 1], got {self.cutout}")

    # --- weak view ----------------------------------------------------------------------------
    @property
    def pad_x(self) -> int:
        return int(round(self.translate_frac * self.width))

    @property
    def pad_y(self) -> int:
        return int(round(self.translate_frac * self.height))

    # --- RandAugment constants (frac = m / 10, clamped where the op would degenerate) ---------
    @property
    def frac(self) -> float:
        return self.magnitude / 10.0

    @property
    def rotate_deg(self) -> float:
        return min(30.0 * self.frac, 45.0)

    @property
    def cos_sin(self) -> tuple[float, float]:
        a = math.radians(self.rotate_deg)
        return float(torch.tensor(math.cos(a), dtype=torch.float32)), \
            float(torch.tensor(math.sin(a), dtype=torch.float32))

    @property
    def shear(self) -> float:
        return float(torch.tensor(min(0.3 * self.frac, 0.45), dtype=torch.float32))

    @property
    def translate_px(self) -> tuple[float, float]:
        t = min(0.3 * self.frac, 0.45)
        return (float(torch.tensor(t * self.width, dtype=torch.float32)),
                float(torch.tensor(t * self.height, dtype=torch.float32)))

    @property
    def solarize_threshold(self) -> int:
        return 256 - int(math.floor(min(self.frac, 1.0) * 128))

    @property
    def posterize_shift(self) -> int:
        return int(math.floor(min(self.frac, 1.0) * 4))

    @property
    def enhance(self) -> float:
        """Enhance ops use factor 1 +- enhance (color, contrast, brightness, sharpness)."""
        return float(torch.tensor(min(0.9 * self.frac, 0.95), dtype=torch.float32))

    @property
    def cutout_px(self) -> int:
        return int(round(self.cutout * min(self.height, self.width)))


@dataclass
class ImageParams:
    """Per-image random parameters of one view; every tensor has leading dim N (the images)."""

    flip: Tensor      # bool [N]
    tx: Tensor        # int64 [N] weak shift in pixels, content moves right by tx
    ty: Tensor        # int64 [N]
    ops: Tensor       # int64 [N, n] op ids, applied in layer order (geometric ones composed first)
    signs: Tensor     # float32 [N, n] +-1
    cut_x0: Tensor    # int64 [N] cutout left column (may be < 0: the square is clipped)
    cut_y0: Tensor    # int64 [N]
    affine: Tensor    # float32 [N, 6] inverse map (a, b, c, d, e, f), centred coordinates


def draw_params(policy: Policy, key: int, ids: Tensor) -> ImageParams:
    """Parameters of images ``ids`` (int64 [N], their position in the step's view) for stream
    ``key`` (``rng.stream_key(seed, step, view)``)."""
    ids = ids.to(torch.int64)
    n = policy.n_ops
    dev = ids.device
    if policy.hflip:
        flip = rng.randint(rng.u32(key, ids, SLOT_FLIP), 2) == 1
    else:
        flip = torch.zeros_like(ids, dtype=torch.bool)
    px, py = policy.pad_x, policy.pad_y
    tx = rng.randint(rng.u32(key, ids, SLOT_TX), 2 * px + 1) - px
    ty = rng.randint(rng.u32(key, ids, SLOT_TY), 2 * py + 1) - py
    if n > 0:
        op_slots = SLOT_OPS + 2 * torch.arange(n, device=dev)
        table = torch.tensor(policy.op_set, dtype=torch.int64, device=dev)
        ops = table[rng.randint(rng.u32(key, ids, op_slots), len(policy.op_set))]
        signs = torch.where(rng.randint(rng.u32(key, ids, op_slots + 1), 2) == 1, 1.0, -1.0)
        signs = signs.to(torch.float32)
    else:
        ops = torch.zeros((ids.numel(), 0), dtype=torch.int64, device=dev)
        signs = torch.zeros((ids.numel(), 0), dtype=torch.float32, device=dev)
    L = policy.cutout_px
    cx = rng.randint(rng.u32(key, ids, SLOT_CUT_X), policy.width)
    cy = rng.randint(rng.u32(key, ids, SLOT_CUT_Y), policy.height)
    affine = compose_affine(policy, flip, tx, ty, ops, signs)
    return ImageParams(flip, tx, ty, ops, signs, cx - L // 2, cy - L // 2, affine)


def _op_matrix(policy: Policy, op: Tensor, sign: Tensor) -> list[Tensor]:
    """Inverse-map matrix (a..f) of one RandAugment layer per image; identity for colour ops."""
    one = torch.ones_like(sign)
    zero = torch.zeros_like(sign)
    cos, sin = policy.cos_sin
    k = policy.shear
    tpx, tpy = policy.translate_px
    rot = op == ROTATE
    a = torch.where(rot, cos * one, one)
    b = torch.where(rot, sign * sin, torch.where(op == SHEAR_X, sign * k, zero))
    c = torch.where(op == TRANSLATE_X, -(sign * tpx), zero)
    d = torch.where(rot, -(sign * sin), torch.where(op == SHEAR_Y, sign * k, zero))
    e = torch.where(rot, cos * one, one)
    f = torch.where(op == TRANSLATE_Y, -(sign * tpy), zero)
    return [a, b, c, d, e, f]


def _right_mul(m: list[Tensor], m2: list[Tensor]) -> list[Tensor]:
    # M <- M @ M2 in a fixed float32 operation order (the kernel repeats it verbatim).
    a, b, c, d, e, f = m
    a2, b2, c2, d2, e2, f2 = m2
    return [a * a2 + b * d2, a * b2 + b * e2, (a * c2 + b * f2) + c,
            d * a2 + e * d2, d * b2 + e * e2, (d * c2 + e * f2) + f]


def compose_affine(policy: Policy, flip: Tensor, tx: Tensor, ty: Tensor, ops: Tensor,
                   signs: Tensor) -> Tensor:
    """float32 [N, 6]: the inverse map of flip, then weak shift, then each geometric layer.

    Content transforms T1 (flip), T2 (shift), T3.. (layers) are applied in that order, so the
    output pixel p reads the input at M1 @ M2 @ ... @ Mk @ p, Mi being Ti's inverse map in
    centred coordinates (u = x + 0.5 - W/2, v = y + 0.5 - H/2)."""
    sign_x = torch.where(flip, -1.0, 1.0).to(torch.float32)
    zero = torch.zeros_like(sign_x)
    one = torch.ones_like(sign_x)
    m = [sign_x, zero, zero, zero, one, zero]
    m = _right_mul(m, [one, zero, -tx.to(torch.float32), zero, one, -ty.to(torch.float32)])
    for s in range(ops.shape[1]):
        m = _right_mul(m, _op_matrix(policy, ops[:, s], signs[:, s]))
    return torch.stack(m, dim=1)
