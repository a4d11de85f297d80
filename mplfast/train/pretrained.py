"""Pretrained weights in a training run (``pretrained``, ``pretrained_student``,
``backbone_lr_scale``, ``mean``/``std``; see docs/pretrained.md).

At start-up :func:`resolve` checks the source, hashes the file and fills in what the weights'
own configuration says (image size for image folders, normalization) where the config leaves it
open, so the run's saved config.yaml is concrete and reproduces it. The models are then built
with :func:`source_for` their role, and their optimizers get :func:`lr_scale` for all but the
classifier head.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mplfast.errors import UserError

if TYPE_CHECKING:
    from mplfast.train.config import TrainConfig

# the backbone's share of the lr when starting from pretrained weights: fine-tuning practice
# (the head is new and learns at the full rate, the pretrained features move slowly)
DEFAULT_BACKBONE_LR_SCALE = 0.1


def loading_models(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(role, model name) of each model of the run that starts from ``cfg.pretrained``."""
    if cfg.pretrained is None:
        return []
    out = []
    if cfg.method != "supervised":
        out.append(("teacher", cfg.teacher_model or cfg.model))
    if cfg.pretrained_student == "same":
        out.append(("student", cfg.model))
    return out


def source_for(cfg: TrainConfig, role: str) -> str | None:
    """The weights source model ``role`` (teacher | student) starts from, or None."""
    return cfg.pretrained if any(r == role for r, _ in loading_models(cfg)) else None


def lr_scale(cfg: TrainConfig, role: str) -> float:
    """The backbone lr multiplier of model ``role``: ``backbone_lr_scale`` when set, else
    ``DEFAULT_BACKBONE_LR_SCALE`` for a model that starts from pretrained weights and 1."""
    if cfg.backbone_lr_scale is not None:
        return float(cfg.backbone_lr_scale)
    return DEFAULT_BACKBONE_LR_SCALE if source_for(cfg, role) else 1.0


def resolve(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``pretrained_sha256`` and, where the config leaves them null, the weights'
    image size (image folders) and normalization filled in. A source that cannot be used, or
    a file whose hash no longer matches a recorded ``pretrained_sha256``, is a UserError.
    Without pretrained weights ``cfg`` is returned as is."""
    from mplfast.models.pretrained import inspect_source

    models = loading_models(cfg)
    if not models:
        return cfg
    assert cfg.pretrained is not None
    info = inspect_source(cfg.pretrained, models[0][1], cfg.model_kwargs)
    old = cfg.pretrained_sha256
    if old and info.sha256 and old != info.sha256:
        raise UserError(f"pretrained weights {cfg.pretrained} have changed since this config "
                        f"recorded them (sha256 {old[:12]}..., now {info.sha256[:12]}...); set "
                        "pretrained_sha256 to null to start from the new file")
    changes: dict[str, Any] = {"pretrained_sha256": info.sha256 or old}
    if cfg.image_size is None and info.input.image_size and cfg.dataset == "imagefolder":
        changes["image_size"] = int(info.input.image_size)
    if cfg.mean is None and info.input.mean is not None and info.input.std is not None:
        changes["mean"] = [float(v) for v in info.input.mean]
        changes["std"] = [float(v) for v in info.input.std]
    return dataclasses.replace(cfg, **changes)


def with_normalization(cfg: TrainConfig, ds: Any) -> Any:
    """The data set ``ds`` normalized with ``cfg.mean``/``cfg.std`` when the config sets them
    (the pretrained weights' statistics), else unchanged (the data's own statistics)."""
    if cfg.mean is None or cfg.std is None:
        return ds
    channels = int(ds.image_shape[-1])
    if len(cfg.mean) != channels:
        raise UserError(f"mean/std have {len(cfg.mean)} values but the {cfg.dataset} images have "
                        f"{channels} channel(s); pass --mean and --std with {channels} value(s)")
    return dataclasses.replace(ds, mean=tuple(cfg.mean), std=tuple(cfg.std))


def summary_fields(cfg: TrainConfig) -> dict[str, Any]:
    """summary.json's record of the pretrained weights (empty without them)."""
    if cfg.pretrained is None:
        return {}
    return {"pretrained": {
        "source": cfg.pretrained,
        "sha256": cfg.pretrained_sha256,
        "models": [role for role, _ in loading_models(cfg)],
        "backbone_lr_scale": {role: lr_scale(cfg, role) for role in ("teacher", "student")
                              if role == "student" or cfg.method != "supervised"},
        "image_size": cfg.image_size,
        "mean": cfg.mean,
        "std": cfg.std,
    }}


def summary_line(cfg: TrainConfig, models: dict[str, Any]) -> str | None:
    """The start-up summary's line about the pretrained weights (None without them);
    ``models``: role -> the built model (None where the run has none)."""
    from mplfast.models.pretrained import loaded_from

    if cfg.pretrained is None:
        return None
    sha = f" (sha256 {cfg.pretrained_sha256[:12]}...)" if cfg.pretrained_sha256 else ""
    parts = []
    for role, _ in loading_models(cfg):
        rec = loaded_from(models.get(role))
        if rec is None:  # resumed: the weights come from the checkpoint
            parts.append(f"{role} (resumed)")
            continue
        head = "new head" if rec["fresh_keys"] else "head loaded too (same shape)"
        parts.append(f"{role} ({head}, backbone lr x{lr_scale(cfg, role):g})")
    return f"  pretrained {cfg.pretrained}{sha} -> {', '.join(parts)}"
