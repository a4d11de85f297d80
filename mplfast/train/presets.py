"""Named presets: dicts of ``TrainConfig`` overrides.

``cifar10-4k`` is the paper recipe as fixed by ``docs/algorithm.md`` (official flags). The other
image presets follow the same recipe with the model and label budget of the paper's tables;
each reads files the user already has (``--data``), nothing is downloaded.
"""
from __future__ import annotations

from typing import Any

from mplfast.errors import UserError

# digits: 8x8 images, 50 labels (5 per class). Tuned on CPU so that `mplfast train` finishes in
# well under 3 minutes on 2 cores (measured: 28 s idle, 118 s with the cores shared); the
# TrainConfig defaults are this preset, except that it holds out no validation split: "50 labels"
# means the run sees 50 labeled images (a 10 % validation carve would add about 135 more), and
# the README's seeded results are measured that way. So a digits run writes no best.pt.
DIGITS: dict[str, Any] = {"val_fraction": 0.0}

# The paper's CIFAR-10-4K recipe (docs/algorithm.md, its training recipe around the step).
CIFAR10_4K: dict[str, Any] = dict(
    dataset="cifar10", labels=4000, model="wrn28_2",
    model_kwargs={"dropout": 0.2, "leaky_slope": 0.2},
    batch_size=128, mu=7, steps=300_000,
    teacher_lr=0.05, student_lr=0.05, momentum=0.9, nesterov=True,
    teacher_weight_decay=5e-4, student_weight_decay=5e-4,
    warmup_steps=5000, student_wait_steps=3000, ema_decay=0.995,
    label_smoothing=0.15, temperature=0.7, threshold=0.6, lambda_u=8.0, uda_steps=5000,
    randaug_n=2, randaug_m=16.0, cutout=0.5,
    finetune_epochs=625, finetune_batch_size=512, finetune_lr=3e-5, finetune_weight_decay=0.0,
    finetune_momentum=0.9,
    log_interval=100, eval_interval=5000, ckpt_interval=5000, channels_last=True, cpu_threads=0,
)

# CIFAR-100 with 10,000 labels: same recipe, WRN-28-8.
CIFAR100_10K: dict[str, Any] = {**CIFAR10_4K, "dataset": "cifar100", "labels": 10_000,
                                "model": "wrn28_8"}

# SVHN with 1,000 labels: same recipe; no horizontal flip (the data set says so).
SVHN_1K: dict[str, Any] = {**CIFAR10_4K, "dataset": "svhn", "labels": 1000}

# ImageNet with 10 % labels, ResNet-50 for both models, image folders. The paper's split has
# 128,116 images; the class-balanced split needs a multiple of 1,000 classes: 128 per class.
IMAGENET_10PCT: dict[str, Any] = dict(
    dataset="imagefolder", labels=128_000, image_size=224, model="resnet50", model_kwargs={},
    batch_size=128, mu=5, steps=300_000,
    teacher_lr=0.1, student_lr=0.1, momentum=0.9, nesterov=True,
    teacher_weight_decay=1e-4, student_weight_decay=1e-4,
    warmup_steps=5000, student_wait_steps=3000, ema_decay=0.999,
    label_smoothing=0.1, temperature=0.7, threshold=0.6, lambda_u=8.0, uda_steps=5000,
    randaug_n=2, randaug_m=16.0, cutout=0.25,
    finetune_epochs=0,
    log_interval=100, eval_interval=10_000, ckpt_interval=2000, eval_batch_size=256,
    channels_last=True, cpu_threads=0,
)

# auto: what a bare `--dataset X` gets (no preset named). The digits recipe's CPU-sized
# optimisation (small CNN, B = 16, mu = 3, 1,000 steps, no finetune), with the labeled count
# and the small CNN's depth derived from the data once it is loaded (labels=None; see
# builders.fit_to_data), and a UDA weight of 1 instead of 8. At 8 the consistency term, ramped
# in over 200 steps, outweighs what a teacher has learned from ~100 labels on an image folder:
# it grows confident in one class for most unlabeled images (mask rate 0.8 while 40 % right on
# its labeled batch), the student learns that one class, and both end at chance
# (docs/recipe-imagefolder.md). lambda_u = 1 is UDA's and FixMatch's published weight; it was
# chosen on validation accuracy. A paper recipe (WRN/ResNet-50, 300k steps, 625 finetune
# epochs) is only ever used when named.
AUTO: dict[str, Any] = dict(labels=None, lambda_u=1.0)

PRESETS: dict[str, dict[str, Any]] = {
    "digits": DIGITS,
    "auto": AUTO,
    "cifar10-4k": CIFAR10_4K,
    "cifar100-10k": CIFAR100_10K,
    "svhn-1k": SVHN_1K,
    "imagenet-10pct": IMAGENET_10PCT,
}

# one line of meaning per preset (for --help and --help-config)
PRESET_HELP: dict[str, str] = {
    "digits": "the built-in 8x8 digits, 50 labels, small CNN, ~1 min on 2 CPU cores",
    "auto": "sized to the data: small CNN, labeled count derived from the data, no finetune",
    "cifar10-4k": "the paper's CIFAR-10-4K recipe (WRN-28-2, 300k steps, 625 finetune epochs)",
    "cifar100-10k": "the CIFAR-10-4K recipe on CIFAR-100 with 10,000 labels, WRN-28-8",
    "svhn-1k": "the CIFAR-10-4K recipe on SVHN with 1,000 labels",
    "imagenet-10pct": "ImageNet 10 % labels, ResNet-50 at 224 px, 300k steps (needs a big GPU)",
}


def default_preset(dataset: str | None) -> str:
    """The preset used when none is named: digits for the built-in data, else ``auto``.

    A named preset applies only when asked for (``--preset``): a bare ``--dataset imagefolder``
    must never silently mean ResNet-50 at 224 px on a user's 300 images.
    """
    return "digits" if dataset in (None, "digits") else "auto"


def get_preset(name: str) -> dict[str, Any]:
    """The overrides of preset ``name`` (with ``preset`` recorded); unknown names are a UserError."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return {**PRESETS[name], "preset": name}
