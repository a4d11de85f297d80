"""The eager reference MPL step, written plainly the way the most used PyTorch port does it.

This is the baseline mplfast's step is measured against (issue 6), so it deliberately keeps the
port's costs instead of optimising them:

- data: a CPU ``DataLoader`` over uint8 HWC arrays; every image goes through PIL, per image, in
  the worker processes: flip + reflect-padded random crop (weak view), the same plus a PIL
  RandAugment (2 ops at magnitude m on a 0-10 scale) and a 16x16 grey cutout (strong view),
  then ``ToTensor`` + ``Normalize``; batches are copied to the GPU unpinned, synchronously;
- fp16 autocast with one ``GradScaler`` per model (``amp=True``, the port's ``--amp``);
- one teacher forward on ``cat(x_l, x_uw, x_us)``, one student forward on ``cat(x_l, x_us)``,
  a student update, then a second student forward on ``x_l`` for L_new;
- the port's meta signal ``h = L_new - L_old`` (its sign; see docs/algorithm.md);
- label smoothing as an explicit one-hot mix, UDA loss as composite torch ops;
- ``torch.optim.SGD`` (the default implementation torch picks), ``LambdaLR`` warmup + cosine,
  an EMA of the student updated tensor by tensor;
- the per-step ``.item()`` calls of the port's logging (a host sync every step).

The networks come from ``mplfast.models.create_model`` so both variants run the same WRN.
The only dependencies are torch, numpy and PIL; torchvision's transforms are used for the weak
view when torchvision imports (as in the port), else identical PIL/numpy code.
"""
from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

try:  # the port uses torchvision.transforms for flip/crop/ToTensor/Normalize
    import torchvision.transforms as _tvt

    _TORCHVISION_ERROR: str | None = None
except Exception as _exc:  # noqa: BLE001 - e.g. a CUDA torchvision next to a CPU torch
    _tvt = None
    _TORCHVISION_ERROR = f"{type(_exc).__name__}: {_exc}"

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------
# Per-image PIL transforms


def _weak_pil(img: Image.Image, pad: int) -> Image.Image:
    """Random horizontal flip, then a random crop of the reflect-padded image (PIL/numpy)."""
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = img.size[1], img.size[0]
    top, left = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
    return Image.fromarray(arr[top:top + h, left:left + w])


class _Normalize:
    """uint8 PIL image -> normalized float CHW tensor (ToTensor + Normalize)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if _tvt is not None:
            self.fn = _tvt.Compose([_tvt.ToTensor(), _tvt.Normalize(mean, std)])
        else:
            m = torch.tensor(mean).view(-1, 1, 1)
            s = torch.tensor(std).view(-1, 1, 1)
            self.fn = lambda img: (torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 - m) / s

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.fn(img)


class WeakTransform:
    """The port's weak view: flip + random crop with 4-pixel (12.5 %) reflect padding."""

    def __init__(self, size: int) -> None:
        self.pad = int(size * 0.125)
        if _tvt is not None:
            self.fn = _tvt.Compose([_tvt.RandomHorizontalFlip(),
                                    _tvt.RandomCrop(size, padding=self.pad, padding_mode="reflect")])
        else:
            self.fn = lambda img: _weak_pil(img, self.pad)

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.fn(img)


def _level(m: float, max_v: float) -> float:
    # Magnitudes are on the 0-10 scale; m = 16 (the recipe) is 1.6x the nominal maximum.
    return m / 10.0 * max_v


def _signed(v: float) -> float:
    return -v if random.random() < 0.5 else v


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=(128, 128, 128))


# (name, function(img, m) -> img): the usual CIFAR RandAugment pool, written against PIL.
_RANDAUG_OPS: list[tuple[str, Any]] = [
    ("identity", lambda img, m: img),
    ("autocontrast", lambda img, m: ImageOps.autocontrast(img)),
    ("equalize", lambda img, m: ImageOps.equalize(img)),
    ("brightness", lambda img, m: ImageEnhance.Brightness(img).enhance(max(0.0, 1 + _signed(_level(m, 0.9))))),
    ("color", lambda img, m: ImageEnhance.Color(img).enhance(max(0.0, 1 + _signed(_level(m, 0.9))))),
    ("contrast", lambda img, m: ImageEnhance.Contrast(img).enhance(max(0.0, 1 + _signed(_level(m, 0.9))))),
    ("sharpness", lambda img, m: ImageEnhance.Sharpness(img).enhance(max(0.0, 1 + _signed(_level(m, 0.9))))),
    ("posterize", lambda img, m: ImageOps.posterize(img, max(1, 8 - int(_level(m, 4))))),
    ("solarize", lambda img, m: ImageOps.solarize(img, max(0, 256 - int(_level(m, 256))))),
    ("rotate", lambda img, m: img.rotate(_signed(_level(m, 30)), Image.BILINEAR, fillcolor=(128, 128, 128))),
    ("shear_x", lambda img, m: _affine(img, (1, _signed(_level(m, 0.3)), 0, 0, 1, 0))),
    ("shear_y", lambda img, m: _affine(img, (1, 0, 0, _signed(_level(m, 0.3)), 1, 0))),
    ("translate_x", lambda img, m: _affine(img, (1, 0, _signed(_level(m, 0.3)) * img.size[0], 0, 1, 0))),
    ("translate_y", lambda img, m: _affine(img, (1, 0, 0, 0, 1, _signed(_level(m, 0.3)) * img.size[1]))),
]


class RandAugmentPIL:
    """n ops drawn uniformly from the pool, each applied with probability 0.5 at magnitude m,
    then a square cutout (side ``cutout`` x image side, grey fill), as the port's strong view."""

    def __init__(self, n: int = 2, m: float = 16.0, cutout: float = 0.5) -> None:
        if n < 0 or m < 0 or not 0 <= cutout <= 1:
            raise ValueError(f"RandAugmentPIL: bad n={n}, m={m} or cutout={cutout}")
        self.n, self.m, self.cutout = n, m, cutout

    def __call__(self, img: Image.Image) -> Image.Image:
        for _, op in random.choices(_RANDAUG_OPS, k=self.n):
            if random.random() < 0.5:
                img = op(img, self.m)
        side = int(self.cutout * min(img.size))
        if side > 0:
            cx, cy = random.uniform(0, img.size[0]), random.uniform(0, img.size[1])
            x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            x1, y1 = int(min(img.size[0], x0 + side)), int(min(img.size[1], y0 + side))
            img = img.copy()
            ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill=(127, 127, 127))
        return img


class LabeledSet(Dataset):
    """(weak view as a normalized tensor, label) per index of ``indices``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.weak = WeakTransform(images.shape[1])
        self.norm = _Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return self.norm(self.weak(Image.fromarray(self.images[j]))), int(self.labels[j])


class UnlabeledSet(Dataset):
    """(weak view, strong view), both normalized tensors, for every image."""

    def __init__(self, images: np.ndarray, *, randaug_n: int = 2, randaug_m: float = 16.0,
                 cutout: float = 0.5, mean: tuple[float, ...] = CIFAR_MEAN,
                 std: tuple[float, ...] = CIFAR_STD) -> None:
        self.images = images
        self.weak = WeakTransform(images.shape[1])
        self.strong = RandAugmentPIL(randaug_n, randaug_m, cutout)
        self.norm = _Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(self.images[i])
        return self.norm(self.weak(img)), self.norm(self.strong(self.weak(img)))


def _forever(loader: DataLoader) -> Iterator[Any]:
    # The port re-creates the iterator when an epoch ends; so does this.
    while True:
        yield from loader


@dataclass
class EagerData:
    """The port's two loaders, as endless iterators of CPU batches."""

    labeled: Iterator[tuple[torch.Tensor, torch.Tensor]]
    unlabeled: Iterator[tuple[torch.Tensor, torch.Tensor]]
    loaders: list[DataLoader] = field(default_factory=list)
    weak_transforms: str = "torchvision" if _tvt is not None else "pil"


def make_eager_data(images: np.ndarray, labels: np.ndarray, labeled_idx: np.ndarray, *, batch_size: int,
                    mu: int, workers: int, seed: int, randaug_n: int = 2, randaug_m: float = 16.0,
                    cutout: float = 0.5, mean: tuple[float, ...] = CIFAR_MEAN,
                    std: tuple[float, ...] = CIFAR_STD) -> EagerData:
    """Loaders as the port builds them: RandomSampler, drop_last, ``workers`` processes each,
    no pinned memory. ``images`` is uint8 [N, H, W, 3]; every image is also unlabeled."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(labeled_idx) < batch_size or len(images) < batch_size * mu:
        raise ValueError("not enough images for one labeled and one unlabeled batch")
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    lab = DataLoader(LabeledSet(images, labels, labeled_idx, mean, std), batch_size=batch_size,
                     sampler=RandomSampler(range(len(labeled_idx)), generator=g1), num_workers=workers,
                     drop_last=True, persistent_workers=workers > 0)
    unl = DataLoader(UnlabeledSet(images, randaug_n=randaug_n, randaug_m=randaug_m, cutout=cutout,
                                  mean=mean, std=std), batch_size=batch_size * mu,
                     sampler=RandomSampler(range(len(images)), generator=g2), num_workers=workers,
                     drop_last=True, persistent_workers=workers > 0)
    return EagerData(_forever(lab), _forever(unl), [lab, unl])


# ---------------------------------------------------------------------------------------------
# The step


def smooth_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean CE against (1 - eps) * onehot + eps / C, spelled out as the port does."""
    n_cls = logits.shape[-1]
    onehot = F.one_hot(targets, n_cls).to(logits.dtype)
    target = onehot * (1 - eps) + eps / n_cls
    return (-(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1)).mean()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # The port's grouping: only names containing "bn" escape weight decay, so biases decay
    # (mplfast.param_groups(..., decay_biases=True) gives the same groups on mplfast's models).
    no_decay = ("bn",)
    return [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
             "weight_decay": weight_decay},
            {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
             "weight_decay": 0.0}]


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                        wait: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    def fn(step: int) -> float:
        if step < wait:
            return 0.0
        if step < wait + warmup:
            return (step - wait) / max(1, warmup)
        progress = (step - wait - warmup) / max(1, total - wait - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


class PortEMA:
    """The port's EMA: a deep copy updated tensor by tensor (one small kernel per tensor)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        self.param_keys = [k for k, _ in self.module.named_parameters()]
        self.buffer_keys = [k for k, _ in self.module.named_buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        msd, esd = model.state_dict(), self.module.state_dict()
        for k in self.param_keys:
            esd[k].copy_(esd[k] * self.decay + (1.0 - self.decay) * msd[k].detach())
        for k in self.buffer_keys:
            esd[k].copy_(msd[k])


@dataclass
class EagerConfig:
    """The CIFAR-10-4K recipe's settings that change the step's work."""

    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_steps: int = 5000
    total_steps: int = 300_000
    student_wait_steps: int = 3000
    temperature: float = 0.7
    threshold: float = 0.6
    lambda_u: float = 8.0
    uda_steps: int = 5000
    label_smoothing: float = 0.15
    ema: float = 0.995
    grad_clip: float = 0.0
    amp: bool | None = None  # None: fp16 autocast + GradScalers on CUDA, fp32 elsewhere


class EagerMPL:
    """Teacher, student, their optimizers, schedulers, scalers and the student EMA, stepped the
    way the port's ``train_loop`` does. ``step`` updates both models in place."""

    def __init__(self, teacher: nn.Module, student: nn.Module, device: torch.device | str,
                 cfg: EagerConfig | None = None) -> None:
        self.cfg = cfg = cfg or EagerConfig()
        self.device = torch.device(device)
        self.teacher, self.student = teacher.to(self.device), student.to(self.device)
        self.amp = (self.device.type == "cuda") if cfg.amp is None else cfg.amp
        kw = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        self.t_opt = torch.optim.SGD(_param_groups(self.teacher, cfg.weight_decay), **kw)
        self.s_opt = torch.optim.SGD(_param_groups(self.student, cfg.weight_decay), **kw)
        self.t_sched = _cosine_with_warmup(self.t_opt, cfg.warmup_steps, cfg.total_steps)
        self.s_sched = _cosine_with_warmup(self.s_opt, cfg.warmup_steps, cfg.total_steps, cfg.student_wait_steps)
        self.t_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.s_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.ema = PortEMA(self.student, cfg.ema) if cfg.ema > 0 else None
        self.t = 0

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def step(self, images_l: torch.Tensor, targets: torch.Tensor, images_uw: torch.Tensor,
             images_us: torch.Tensor) -> dict[str, torch.Tensor]:
        """One MPL step on device tensors; returns the port's logged quantities (0-dim tensors)."""
        cfg = self.cfg
        self.teacher.train()
        self.student.train()
        with self._autocast():
            bs = images_l.shape[0]
            t_logits = self.teacher(torch.cat((images_l, images_uw, images_us)))
            t_logits_l = t_logits[:bs]
            t_logits_uw, t_logits_us = t_logits[bs:].chunk(2)
            del t_logits
            t_loss_l = smooth_cross_entropy(t_logits_l, targets, cfg.label_smoothing)
            soft_pseudo_label = torch.softmax(t_logits_uw.detach() / cfg.temperature, dim=-1)
            max_probs, hard_pseudo_label = torch.max(soft_pseudo_label, dim=-1)
            mask = max_probs.ge(cfg.threshold).float()
            t_loss_u = torch.mean(-(soft_pseudo_label * torch.log_softmax(t_logits_us, dim=-1)).sum(dim=-1) * mask)
            weight_u = cfg.lambda_u * min(1.0, (self.t + 1) / cfg.uda_steps)
            t_loss_uda = t_loss_l + weight_u * t_loss_u

            s_logits = self.student(torch.cat((images_l, images_us)))
            s_logits_l, s_logits_us = s_logits[:bs], s_logits[bs:]
            del s_logits
            s_loss_l_old = F.cross_entropy(s_logits_l.detach(), targets)
            s_loss = smooth_cross_entropy(s_logits_us, hard_pseudo_label, cfg.label_smoothing)

        self.s_scaler.scale(s_loss).backward()
        if cfg.grad_clip > 0:
            self.s_scaler.unscale_(self.s_opt)
            nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.s_scaler.step(self.s_opt)
        self.s_scaler.update()
        self.s_sched.step()
        if self.ema is not None:
            self.ema.update(self.student)

        with self._autocast():
            with torch.no_grad():
                s_logits_l = self.student(images_l)
            s_loss_l_new = F.cross_entropy(s_logits_l.detach(), targets)
            dot_product = s_loss_l_new - s_loss_l_old  # the port's sign
            _, hard_pseudo_label = torch.max(t_logits_us.detach(), dim=-1)
            t_loss_mpl = dot_product * F.cross_entropy(t_logits_us, hard_pseudo_label)
            t_loss = t_loss_uda + t_loss_mpl

        self.t_scaler.scale(t_loss).backward()
        if cfg.grad_clip > 0:
            self.t_scaler.unscale_(self.t_opt)
            nn.utils.clip_grad_norm_(self.teacher.parameters(), cfg.grad_clip)
        self.t_scaler.step(self.t_opt)
        self.t_scaler.update()
        self.t_sched.step()
        self.teacher.zero_grad()
        self.student.zero_grad()
        self.t += 1
        return {"student_loss": s_loss.detach(), "teacher_loss": t_loss.detach(),
                "teacher_loss_l": t_loss_l.detach(), "uda_loss": t_loss_u.detach(),
                "mpl_loss": t_loss_mpl.detach(), "mask_rate": mask.mean(), "h": dot_product.detach(),
                "student_loss_l_old": s_loss_l_old, "student_loss_l_new": s_loss_l_new}

    def train_step(self, data: EagerData) -> dict[str, float]:
        """Fetch one batch from the loaders, copy it to the device, step, and log as the port
        does (``.item()`` on each logged value: a host sync every step)."""
        images_l, targets = next(data.labeled)
        images_uw, images_us = next(data.unlabeled)
        images_l, targets = images_l.to(self.device), targets.to(self.device)
        images_uw, images_us = images_uw.to(self.device), images_us.to(self.device)
        return self.logged_step(images_l, targets, images_uw, images_us)

    def logged_step(self, images_l: torch.Tensor, targets: torch.Tensor, images_uw: torch.Tensor,
                    images_us: torch.Tensor) -> dict[str, float]:
        """``step`` plus the port's per-step ``.item()`` logging, on batches already on the device."""
        out = self.step(images_l, targets, images_uw, images_us)
        return {k: out[k].item() for k in ("student_loss", "teacher_loss", "teacher_loss_l", "uda_loss",
                                           "mpl_loss", "mask_rate")}
