"""Build the pieces a run needs from its ``TrainConfig``: data, models, optimizers, precision.

Every failure a user can cause (missing files, too many labels, unknown model) leaves here as
a one-line :class:`mplfast.errors.UserError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mplfast.errors import UserError
from mplfast.train.config import TrainConfig
from mplfast.train.distributed import DistInfo


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class DataBundle:
    """The data set, its labeled split and the batcher of this rank."""

    dataset: Any            # mplfast.data.ImageDataset
    labeled_idx: torch.Tensor
    batcher: Any            # mplfast.data.MPLBatcher
    per_rank_batch: int
    num_classes: int
    in_chans: int
    stream: bool = False    # image folder streamed from disk (data.stream), not held in memory


def load_data(cfg: TrainConfig) -> Any:
    """The data set of ``cfg``, its validation split already carved out of the training pool
    (``val_fraction``; see ``data.splits.carve_validation``). An image folder is first sized up:
    one too large for memory (or ``stream=True``) comes back as a ``data.stream.StreamDataset``
    (file lists, decoded by DALI at every step). Missing files and bad data are UserErrors."""
    from mplfast.data.splits import carve_validation

    import dataclasses

    if cfg.dataset == "imagefolder" and cfg.data is not None:
        reason, streamed = _load_streamed(cfg)
        if streamed is not None:
            return streamed
        ds = carve_validation(_load_in_memory(cfg), cfg.val_fraction, cfg.seed)
        return dataclasses.replace(ds, storage=reason)
    return carve_validation(_load_in_memory(cfg), cfg.val_fraction, cfg.seed)


def _load_in_memory(cfg: TrainConfig) -> Any:
    """``mplfast.data.load_dataset`` for ``cfg``; missing files and bad data become UserErrors."""
    from mplfast.data import load_dataset

    kw: dict[str, Any] = dict(cfg.synthetic_kw) if cfg.dataset == "synthetic" else {}
    try:
        return load_dataset(cfg.dataset, cfg.data, unlabeled=cfg.unlabeled,
                            image_size=cfg.image_size, strict=cfg.strict_data,
                            test_fraction=cfg.test_fraction, **kw)
    except FileNotFoundError as e:
        raise UserError(_first_line(e)) from None
    except TypeError as e:
        if cfg.dataset != "synthetic" or "keyword argument" not in str(e):
            raise  # not a keyword the user gave: a bug, keep the traceback
        raise UserError(f"synthetic_kw: {_first_line(e)}") from None  # unknown keyword
    except (ValueError, OSError) as e:  # a corrupt file, an empty folder, a bad value
        raise UserError(f"cannot load data set {cfg.dataset}: {_first_line(e)}") from None


def default_labels(train_labels: torch.Tensor, num_classes: int, *, extra_unlabeled: bool) -> int:
    """The labeled count of a recipe sized to the data (``labels=None``).

    With a separate unlabeled set (``--unlabeled``) every training image keeps its label
    (class-balanced: the smallest class sets the per-class count). Without one, the labeled
    data set doubles as the semi-supervised benchmark the method is made for: a class-balanced
    10 % (at least 4 per class) is labeled and every training image serves as unlabeled.
    """
    counts = torch.bincount(train_labels.to(torch.int64).cpu(), minlength=num_classes)
    smallest = int(counts.min()) if counts.numel() else 0
    if extra_unlabeled:
        per = smallest
    else:
        per = min(max(4, int(train_labels.numel()) // 10 // max(1, num_classes)), smallest)
    return max(1, per) * num_classes


def fit_to_data(cfg: TrainConfig, ds: Any) -> TrainConfig:
    """``cfg`` with the fields left to the data (``labels=None``) filled in from ``ds``.

    The result is concrete, so the run's saved config.yaml reproduces it as is. Two fields are
    left to the data: the labeled count (``labels=None``), and the depth of ``small_cnn``
    (``model_kwargs.input_size``, when not given, from the image side; see
    ``models.small_cnn.extra_stages``), so that the digits net is not run unchanged on 32 px
    images, where its receptive field sees a few pixels of each image.
    """
    from dataclasses import replace

    side = int(ds.image_shape[0])
    # (not with --pretrained: the weights fix the architecture)
    if (cfg.model == "small_cnn" and cfg.teacher_model in (None, "small_cnn")
            and "input_size" not in cfg.model_kwargs and side > 8 and cfg.pretrained is None):
        cfg = replace(cfg, model_kwargs={**cfg.model_kwargs, "input_size": side})
    if cfg.labels is not None:
        return cfg
    # extra unlabeled images: decoded in memory, or listed as files by a streamed folder
    extra = getattr(ds, "unlabeled_images", None) is not None or bool(getattr(ds, "unlabeled_files", None))
    n = default_labels(ds.train_labels, int(ds.num_classes), extra_unlabeled=extra)
    return replace(cfg, labels=n)


def _labels_origin(cfg: TrainConfig) -> str:
    # a count the user never typed must say where it came from (issue: `labels=128000`)
    if cfg.preset not in ("digits", "auto"):
        return f" (labels={cfg.labels} comes from --preset {cfg.preset}; pass --labels N)"
    return ""



def _fit_label_budget(cfg: TrainConfig, ds: Any, info: DistInfo, names: list[str]) -> TrainConfig:
    """``cfg`` with its labeled count fitted to ``ds`` (in memory or streamed), after checking
    that the count, the classes and the ranks allow a class-balanced labeled split."""
    from mplfast.data.splits import check_labels_per_class

    n_train = int(ds.train_labels.numel())
    cfg = fit_to_data(cfg, ds)
    assert cfg.labels is not None
    if cfg.labels > n_train:
        raise UserError(f"labels={cfg.labels} is more than the {n_train} training images of "
                        f"{cfg.dataset}{_labels_origin(cfg)}")
    if cfg.labels < ds.num_classes:
        raise UserError(f"labels={cfg.labels} is fewer than the {ds.num_classes} classes of "
                        f"{cfg.dataset} (the split is class-balanced){_labels_origin(cfg)}")
    if cfg.batch_size % info.world_size != 0:
        raise UserError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks "
                        f"({info.world_size})")
    check_labels_per_class(ds.train_labels, cfg.labels, names)
    return cfg

def build_data(cfg: TrainConfig, info: DistInfo, *, dataset: Any = None) -> DataBundle:
    """Data set, class-balanced labeled split (keyed by seed) and this rank's batcher."""
    from mplfast.data import MPLBatcher, labeled_split
    from mplfast.data.splits import carve_validation, class_names
    from mplfast.data.stream import StreamDataset
    from mplfast.train.pretrained import with_normalization

    ds = dataset if dataset is not None else load_data(cfg)
    ds = with_normalization(cfg, ds)  # the pretrained weights' statistics (or --mean/--std)
    if isinstance(ds, StreamDataset):
        return _build_stream_data(cfg, info, ds)
    # the validation split (best.pt) leaves the training pool before the labeled split is drawn
    # (a no-op for a data set load_data carved already)
    ds = carve_validation(ds, cfg.val_fraction, cfg.seed)
    # labels=None: derived from the images the labeled split is drawn from
    cfg = _fit_label_budget(cfg, ds, info, class_names(ds))
    try:
        labeled_idx = labeled_split(ds.train_labels, cfg.labels, ds.num_classes, cfg.seed)
    except ValueError as e:  # e.g. a class with fewer images than its share of the labels
        raise UserError(f"cannot draw {cfg.labels} class-balanced labels: {_first_line(e)}"
                        f"{_labels_origin(cfg)}") from None
    per_rank = cfg.batch_size // info.world_size
    batcher = MPLBatcher(ds, labeled_idx, batch_size=per_rank, mu=cfg.mu, seed=cfg.seed,
                         device=info.device, randaug_n=cfg.randaug_n, randaug_m=cfg.randaug_m,
                         cutout=cfg.cutout, channels_last=cfg.channels_last,
                         backend=cfg.aug_backend, rank=info.rank, world_size=info.world_size)
    return DataBundle(dataset=ds, labeled_idx=labeled_idx, batcher=batcher,
                      per_rank_batch=per_rank, num_classes=int(ds.num_classes),
                      in_chans=int(ds.train_images.shape[-1]))


def build_model(cfg: TrainConfig, name: str, data: DataBundle, device: torch.device, *,
                pretrained: str | None = None) -> nn.Module:
    """One model on ``device`` (channels-last if asked), starting from the weights
    ``pretrained`` (a file or ``timm``; see mplfast.models.pretrained) when given."""
    from mplfast.models import create_model

    try:
        model = create_model(name, data.num_classes, in_chans=data.in_chans, pretrained=pretrained,
                             **cfg.model_kwargs)
    except TypeError as e:
        if "keyword argument" not in str(e):
            raise  # not about the user's model_kwargs: a bug, keep the traceback
        raise UserError(f"model {name}: {_first_line(e)} (check model_kwargs)") from None
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, nesterov: bool,
                   weight_decay: float, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """SGD over no-decay-on-BN/bias groups; the fastest implementation when mplfast.perf has it.

    ``backbone_lr_scale`` != 1: every parameter outside the classifier head gets
    ``lr * backbone_lr_scale`` (its own groups, which the lr schedule scales alike)."""
    from mplfast.optim import param_groups
    from mplfast.perf import make_sgd

    head = None
    if backbone_lr_scale != 1.0:
        from mplfast.models.pretrained import head_parameters

        head = head_parameters(model)
    groups = param_groups(model, weight_decay, head=head, backbone_lr_scale=backbone_lr_scale)
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = lr * g.pop("lr_scale")
    nesterov = nesterov and momentum > 0  # torch refuses nesterov without momentum
    # make_sgd's weight_decay is the default for groups without one; ours all set theirs
    return make_sgd(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int, wait: int) -> Any:
    """Warmup + cosine; warmup and wait are clipped so short runs (tests) stay valid."""
    from mplfast.schedule import warmup_cosine_schedule

    wait = min(wait, total)
    warmup = min(cfg.warmup_steps, total - wait)
    return warmup_cosine_schedule(opt, warmup_steps=warmup, total_steps=total, wait_steps=wait)


def finetune_steps(cfg: TrainConfig) -> tuple[int, int]:
    """(steps, batch size) of the finetune stage: epochs over the labeled set."""
    assert cfg.labels is not None, "fit_to_data fills labels before the run"
    bs = min(cfg.finetune_batch_size, cfg.labels)
    return cfg.finetune_epochs * math.ceil(cfg.labels / bs), bs


def _load_streamed(cfg: TrainConfig) -> tuple[str, Any]:
    """Decide in memory vs streamed from the file counts: (the decision in words, the
    ``StreamDataset`` to stream or None)."""
    from mplfast.data.stream import load_stream_dataset, plan_imagefolder

    try:
        scan, choice = plan_imagefolder(str(cfg.data), image_size=cfg.image_size or 32,
                                        requested=cfg.stream, unlabeled=cfg.unlabeled)
        if not choice.stream:
            return choice.reason, None
        ds = load_stream_dataset(scan, image_size=cfg.image_size or 32, strict=cfg.strict_data,
                                 test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                                 seed=cfg.seed, unlabeled=cfg.unlabeled)
        ds.storage = choice.reason
        return choice.reason, ds
    except FileNotFoundError as e:
        raise UserError(_first_line(e)) from None
    except (ValueError, OSError) as e:
        raise UserError(f"cannot load data set {cfg.dataset}: {_first_line(e)}") from None


def _build_stream_data(cfg: TrainConfig, info: DistInfo, ds: Any) -> DataBundle:
    """The streamed counterpart of ``build_data`` (file lists + DALI, nothing held decoded)."""
    from mplfast.data import labeled_split
    from mplfast.data.stream import StreamBatcher

    # labels=None (the auto recipe): derived from the file lists
    cfg = _fit_label_budget(cfg, ds, info, list(ds.class_names))
    try:
        labeled_idx = labeled_split(ds.train_labels, cfg.labels, ds.num_classes, cfg.seed)
    except ValueError as e:
        raise UserError(f"cannot draw {cfg.labels} class-balanced labels: {_first_line(e)}") from None
    per_rank = cfg.batch_size // info.world_size
    batcher = StreamBatcher(ds, labeled_idx, batch_size=per_rank, mu=cfg.mu, seed=cfg.seed,
                            device=info.device, randaug_n=cfg.randaug_n, randaug_m=cfg.randaug_m,
                            cutout=cfg.cutout, backend=cfg.aug_backend, rank=info.rank,
                            world_size=info.world_size)
    return DataBundle(dataset=ds, labeled_idx=labeled_idx, batcher=batcher, per_rank_batch=per_rank,
                      num_classes=int(ds.num_classes), in_chans=3, stream=True)

