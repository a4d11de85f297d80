"""``mplfast eval --checkpoint PATH``: rebuild the models a checkpoint holds and test them."""
from __future__ import annotations

import copy
from typing import Any

from mplfast.precision import resolve_precision
from mplfast.train import builders
from mplfast.train import checkpoint as ckpt_io
from mplfast.train.distributed import DistInfo, _pick_device
from mplfast.train.evaluate import accuracy


def evaluate_checkpoint(path: str, *, data: str | None = None,
                        device: str | None = None) -> tuple[int, dict[str, float]]:
    """(step, accuracies in percent) of the teacher, student, EMA student and finetuned model
    in the checkpoint at ``path``.

    ``data`` overrides the data root saved in the checkpoint (files moved since training).
    """
    # safe unpickling + layout checks, then the config through --config's validation
    st = ckpt_io.load_checkpoint(path, expect="weights")
    overrides: dict[str, Any] = {"data": data} if data is not None else {}
    if device is not None:
        overrides["device"] = device
    cfg = ckpt_io.checkpoint_config(st, path, overrides)
    dev = _pick_device(cfg.device, 0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    # world_size 1: the checkpoint's global batch size needs no divisibility here
    data_bundle = builders.build_data(cfg, info)
    precision = resolve_precision(cfg.precision, dev)
    kw = dict(precision=precision, device=dev, batch_size=cfg.eval_batch_size)
    student = builders.build_model(cfg, cfg.model, data_bundle, dev)
    ckpt_io.check_state_dict(student, st["student"], what="student", path=path)  # fail before any work
    out: dict[str, float] = {}
    if st.get("teacher") is not None:
        teacher = builders.build_model(cfg, cfg.teacher_model or cfg.model, data_bundle, dev)
        ckpt_io.load_weights(teacher, st["teacher"], what="teacher", path=path)
        out["teacher_acc"] = accuracy(teacher, data_bundle.batcher, **kw)
    ckpt_io.load_weights(student, st["student"], what="student", path=path)
    out["student_acc"] = accuracy(student, data_bundle.batcher, **kw)
    if st.get("ema") is not None:
        ema_model = copy.deepcopy(student)
        ckpt_io.load_weights(ema_model, st["ema"]["module"], what="ema", path=path)
        out["ema_acc"] = accuracy(ema_model, data_bundle.batcher, **kw)
    # finetuned weights: final ones of a finished run, or partial ones of a stopped finetune
    ft_sd, key = st.get("finetuned"), "finetune_acc"
    if ft_sd is None and st.get("finetune") is not None:
        ft_sd, key = st["finetune"]["model"], "finetune_acc_partial"
    if ft_sd is not None:
        # the finetuned model is the headline one: the teacher for uda, else the student
        arch = (cfg.teacher_model or cfg.model) if cfg.method == "uda" else cfg.model
        ft_model = builders.build_model(cfg, arch, data_bundle, dev)
        ckpt_io.load_weights(ft_model, ft_sd, what=key.replace("_acc", ""), path=path)
        out[key] = accuracy(ft_model, data_bundle.batcher, **kw)
    return int(st["step"]), out
