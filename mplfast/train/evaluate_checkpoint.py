"""``mplfast eval --checkpoint PATH``: rebuild the models a checkpoint holds and test them."""
from __future__ import annotations

import copy

from mplfast.precision import resolve_precision
from mplfast.train import builders
from mplfast.train import checkpoint as ckpt_io
from mplfast.train.config import TrainConfig, apply_overrides
from mplfast.train.distributed import DistInfo, _pick_device
from mplfast.train.evaluate import accuracy


def evaluate_checkpoint(path: str, *, data: str | None = None,
                        device: str | None = None) -> tuple[int, dict[str, float]]:
    """(step, accuracies in percent) of the teacher, student, EMA student and finetuned model
    in the checkpoint at ``path``.

    ``data`` overrides the data root saved in the checkpoint (files moved since training).
    """
    st = ckpt_io.load(path)
    overrides = {"data": data} if data is not None else {}
    if device is not None:
        overrides["device"] = device
    cfg = apply_overrides(apply_overrides(TrainConfig(), st["config"], "checkpoint config"),
                          overrides, "option")
    dev = _pick_device(cfg.device, 0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    # world_size 1: the checkpoint's global batch size needs no divisibility here
    data_bundle = builders.build_data(cfg, info)
    precision = resolve_precision(cfg.precision, dev)
    kw = dict(precision=precision, device=dev, batch_size=cfg.eval_batch_size)
    student = builders.build_model(cfg, cfg.model, data_bundle, dev)
    out: dict[str, float] = {}
    if st.get("teacher") is not None:
        teacher = builders.build_model(cfg, cfg.teacher_model or cfg.model, data_bundle, dev)
        teacher.load_state_dict(st["teacher"])
        out["teacher_acc"] = accuracy(teacher, data_bundle.batcher, **kw)
    student.load_state_dict(st["student"])
    out["student_acc"] = accuracy(student, data_bundle.batcher, **kw)
    if st.get("ema") is not None:
        ema_model = copy.deepcopy(student)
        ema_model.load_state_dict(st["ema"]["module"])
        out["ema_acc"] = accuracy(ema_model, data_bundle.batcher, **kw)
    # finetuned weights: final ones of a finished run, or partial ones of a stopped finetune
    ft_sd, key = st.get("finetuned"), "finetune_acc"
    if ft_sd is None and st.get("finetune") is not None:
        ft_sd, key = st["finetune"]["model"], "finetune_acc_partial"
    if ft_sd is not None:
        # the finetuned model is the headline one: the teacher for uda, else the student
        arch = (cfg.teacher_model or cfg.model) if cfg.method == "uda" else cfg.model
        ft_model = builders.build_model(cfg, arch, data_bundle, dev)
        ft_model.load_state_dict(ft_sd)
        out[key] = accuracy(ft_model, data_bundle.batcher, **kw)
    return int(st["step"]), out
