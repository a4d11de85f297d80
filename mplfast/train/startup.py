"""What a run says before it does any work: the summary block, and the memory check.

The summary block names everything a user would otherwise have to guess (which recipe, how
many images of which classes, which models, how long), and the memory check turns an
out-of-memory kill with no message into one line that says what to lower.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from mplfast.data.stream import available_memory
from mplfast.errors import UserError

# fraction of the available memory a run may plan to use: the estimate is rough (allocator
# slack, augmentation buffers, autograd temporaries), so leave room
MEMORY_HEADROOM = 0.8


def param_count(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _fmt_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


def fmt_bytes(n: float) -> str:
    """``1.2 GB`` / ``340 MB``."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{max(n, 0) / 1e6:.0f} MB"


def class_names(ds: Any) -> list[str] | None:
    """Class names of a data set if it carries them (image folders), else None."""
    for attr in ("classes", "class_names"):
        names = getattr(ds, attr, None)
        if names:
            return [str(c) for c in names]
    return None


def _activation_bytes_per_image(model: nn.Module, image_shape: tuple[int, int, int],
                                device: torch.device, channels_last: bool) -> int:
    """Bytes of module outputs for one image: what autograd keeps for the backward pass.

    Measured with a forward of 2 zero images in eval mode under no_grad, so neither the
    batch-norm running statistics nor any RNG stream is touched (runs stay reproducible).
    """
    total = [0]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    c, h, w = image_shape
    x = torch.zeros(2, c, h, w, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for hd in handles:
            hd.remove()
    return total[0] // 2


def estimate_step_bytes(*, teacher: nn.Module | None, student: nn.Module,
                        image_shape: tuple[int, int, int], batch: int, mu: int,
                        device: torch.device, channels_last: bool = False,
                        data_bytes: int = 0) -> int:
    """Rough peak memory of one training step on this rank, in bytes.

    Activations: the teacher's forward over [x_l; x_uw; x_us] ((1 + 2 mu) B images) and the
    student's over [x_l; x_us] ((1 + mu) B) plus its L_old/L_new forwards over x_l, each image
    costing what its module outputs take. Parameters: weights, gradients, momentum, the EMA
    copy and the pre-update snapshot (5 copies, fp32). ``data_bytes``: the data set when it
    lives on the device (CUDA); on CPU it is already counted as used.
    """
    per_img_s = _activation_bytes_per_image(student, image_shape, device, channels_last)
    act = per_img_s * ((1 + mu) * batch + 2 * batch)
    params = param_count(student)
    if teacher is not None:
        per_img_t = _activation_bytes_per_image(teacher, image_shape, device, channels_last)
        act += per_img_t * (1 + 2 * mu) * batch
        params += param_count(teacher)
    else:
        act = per_img_s * batch
    # x2: autograd temporaries (ReLU masks, BN saved statistics, the gradient of each output)
    return int(2 * act + 5 * 4 * params + data_bytes)


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still allocate on ``device`` (None if unknown)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    # containers (Docker, Slurm, k8s) kill at the cgroup limit, not at the host's free memory
    avail = available_memory()
    if "MPLFAST_MEMORY_LIMIT_MB" in os.environ:  # for tests and shared machines
        lim = int(float(os.environ["MPLFAST_MEMORY_LIMIT_MB"]) * 1e6)
        avail = lim if avail is None else min(avail, lim)
    return avail


def check_memory(estimate: int, available: int | None, *, batch: int, mu: int,
                 image_size: int, model: str, device: torch.device, method: str) -> None:
    """Refuse (one-line UserError) a step that would not fit, before it is killed."""
    if available is None or estimate <= MEMORY_HEADROOM * available:
        return
    unl = "" if method == "supervised" else f" + {mu * batch} unlabeled"
    raise UserError(
        f"one training step needs about {fmt_bytes(estimate)} on {device} ({batch} labeled{unl} "
        f"images of {image_size} px, model {model}) but only {fmt_bytes(available)} is "
        f"available; lower --set batch_size (now {batch}), mu (now {mu}) or image_size, or "
        "pick a smaller model (`--set check_memory=false` to try anyway)")


def summary_lines(*, cfg: Any, ds: Any, teacher: nn.Module | None, student: nn.Module,
                  device: torch.device, precision: str, world_size: int,
                  finetune_steps: int, estimate: int | None, available: int | None,
                  out: str | None, resumed_at: int | None = None) -> list[str]:
    """The start-up summary block, one string per line."""
    from mplfast.train.presets import PRESET_HELP
    from mplfast.train.pretrained import summary_line as pretrained_summary_line

    n_train = int(ds.train_labels.numel())
    n_test = int(ds.test_labels.numel())
    val = getattr(ds, "val_labels", None)
    n_val = int(val.numel()) if val is not None else 0
    extra = getattr(ds, "unlabeled_images", None)
    # a streamed folder lists its extra unlabeled files instead of holding them decoded
    n_extra = int(extra.shape[0]) if extra is not None else len(getattr(ds, "unlabeled_files", None) or [])
    h, w, c = (int(v) for v in ds.train_images.shape[1:])
    k = int(ds.num_classes)
    names = class_names(ds)
    shown = ", ".join(names[:10]) + (f", ... ({k - 10} more)" if k > 10 else "") if names else ""
    preset = f"{cfg.preset} ({PRESET_HELP[cfg.preset]})" if cfg.preset in PRESET_HELP else cfg.preset
    # the built-in sets read no files (a config of an older mplfast may still name a folder)
    where = f" from {cfg.data}" if cfg.data and cfg.dataset not in ("digits", "synthetic") else ""
    unl = f"{n_train + n_extra} unlabeled" + (f" ({n_train} train + {n_extra} extra)" if n_extra else
                                             " (the train images)")
    models = []
    if teacher is not None:
        models.append(f"teacher {cfg.teacher_model or cfg.model} ({_fmt_count(param_count(teacher))} params)")
    models.append(f"student {cfg.model} ({_fmt_count(param_count(student))} params)")
    batch = (f"batch {cfg.batch_size} labeled" if cfg.method == "supervised"
             else f"batch {cfg.batch_size} labeled + {cfg.mu * cfg.batch_size} unlabeled")
    if world_size > 1:
        batch += f" over {world_size} ranks"
    ft = f"finetune {finetune_steps} steps" if finetune_steps else "no finetune"
    threads = f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""
    pretrained_line = pretrained_summary_line(cfg, {"teacher": teacher, "student": student})
    lines = [
        f"mplfast train: {cfg.method} on {cfg.dataset}, seed {cfg.seed}",
        f"  preset     {preset}",
        f"  data       {cfg.dataset}{where}: {n_train} train, {n_val} validation, {n_test} test, "
        f"{unl}",
        (f"  validation {n_val} images held out of the training pool (never trained on) to pick best.pt"
         if n_val else "  validation none (val_fraction=0): best.pt is not written, last.pt holds "
         "the final models"),
        f"  classes    {k}" + (f": {shown}" if shown else ""),
        f"  images     {h}x{w}, {c} channel(s)",
        *([f"  storage    {ds.storage}"] if getattr(ds, "storage", "") else []),  # memory / streamed
        f"  labeled    {cfg.labels} ({cfg.labels // max(1, k)} per class, drawn with seed {cfg.seed})",
        f"  models     {', '.join(models)}",
        *([pretrained_line] if pretrained_line else []),
        f"  device     {device}, {precision}{threads}" + (f", {world_size} ranks" if world_size > 1 else ""),
        f"  steps      {cfg.steps} ({batch}; {ft})"
        + (f"; resuming at step {resumed_at}" if resumed_at else ""),
    ]
    if estimate is not None:
        avail = f" of {fmt_bytes(available)} available" if available is not None else ""
        lines.append(f"  memory     ~{fmt_bytes(estimate)} per step (estimate){avail}")
    lines.append(f"  output     {out or '(nothing written)'}")
    return lines
