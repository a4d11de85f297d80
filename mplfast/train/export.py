"""``mplfast export RUN --out model.safetensors``: one model's weights as safetensors, plus a
small JSON file beside them (``model.json``) with what is needed to use them.

The JSON (also embedded in the safetensors header under ``mplfast``, so the weights file alone
suffices) holds: the registry model name and its kwargs, the number of classes and input
channels, the class names, the normalization (mean/std in [0, 1] units) and the image size
(height, width; images are resized to it, bilinear, aspect ratio not kept, as in training).
Loading an export (:func:`load_export`) needs nothing but mplfast: no run folder, no data set.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from mplfast.errors import UserError
from mplfast.train.model_file import MODEL_KEYS, arch_of, load_models, load_weights, resolve_run_file

EXPORT_FORMAT = "mplfast-export"
EXPORT_VERSION = 1
_META_KEY = "mplfast"


def json_path_for(weights_path: str) -> str:
    """``model.safetensors`` -> ``model.json``."""
    return os.path.splitext(weights_path)[0] + ".json"


def export_meta(saved: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """The export description of model ``key`` of a loaded model file."""
    cfg = saved["config"]
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": arch_of(cfg, key),
        "model_kwargs": dict(cfg.get("model_kwargs") or {}),
        "num_classes": int(saved["num_classes"]),
        "in_chans": int(saved["in_chans"]),
        "class_names": [str(c) for c in saved["class_names"]],
        "mean": [float(v) for v in saved["mean"]],
        "std": [float(v) for v in saved["std"]],
        "image_size": [int(v) for v in saved["image_size"]],
        "resize": "bilinear to image_size, aspect ratio not kept",
        "source": {"file": os.path.abspath(source), "step": int(saved["step"]), "weights": key,
                   "dataset": cfg.get("dataset"), "method": cfg.get("method"),
                   "seed": cfg.get("seed"), "val_acc": saved.get("val_acc")},
    }


def export_run(src: str, out: str, *, model: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """Export from a run folder (``best.pt``, else ``last.pt``) or a model file.

    ``model``: teacher | student | ema | finetuned; default the run's headline model.
    Returns (weights path, JSON path, the description written)."""
    from safetensors.torch import save

    from mplfast.train.fileio import write_atomic

    if not out.endswith(".safetensors"):
        raise UserError(f"--out must name a .safetensors file, got {out!r}")
    path = resolve_run_file(src)
    if os.path.basename(path) == "checkpoint.pt":
        raise UserError(f"{src} has only a resume checkpoint (checkpoint.pt), no best.pt or "
                        f"last.pt model file to export")
    saved = load_models(path)
    key = model or saved["headline"]
    if key not in saved["models"]:
        raise UserError(f"{path} has no {key!r} model; it has {', '.join(saved['models'])}")
    meta = export_meta(saved, key, path)
    sd = {k: v.contiguous() for k, v in saved["models"][key].items()}
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UserError(f"--out {out}: folder {out_dir} does not exist")
    text = json.dumps(meta, indent=2)
    # safetensors' save_file creates its file 0600; write_atomic gives the umask's mode
    data = save(sd, metadata={_META_KEY: json.dumps(meta)})
    write_atomic(out, lambda f: f.write(data))
    jpath = json_path_for(out)
    with open(jpath, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return out, jpath, meta


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    bad = UserError(f"{where} is not an mplfast export description")
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise bad
    for key, tp in (("model", str), ("model_kwargs", dict), ("num_classes", int),
                    ("in_chans", int), ("class_names", list), ("mean", list), ("std", list),
                    ("image_size", list)):
        if not isinstance(meta.get(key), tp):
            raise UserError(f"{where}: missing or malformed {key!r}")
    if len(meta["class_names"]) != meta["num_classes"] or len(meta["image_size"]) != 2 or \
            len(meta["mean"]) != meta["in_chans"] or len(meta["std"]) != meta["in_chans"]:
        raise UserError(f"{where}: class_names, image_size, mean or std have the wrong length")
    return meta


def read_export(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(description, weights) of an export, given its .safetensors or its .json file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path.endswith(".json"):
        jpath, wpath = path, os.path.splitext(path)[0] + ".safetensors"
    else:
        jpath, wpath = json_path_for(path), path
    if not os.path.isfile(wpath):
        raise UserError(f"export weights not found: {wpath}")
    try:
        with safe_open(wpath, framework="pt") as f:
            header = f.metadata() or {}
        sd = load_file(wpath)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise UserError(f"cannot read {wpath} as safetensors: {str(e).splitlines()[0][:160]}") \
            from None
    meta: Any = None
    if _META_KEY in header:
        try:
            meta = json.loads(header[_META_KEY])
        except json.JSONDecodeError:
            meta = None
    if meta is None or path.endswith(".json"):
        if not os.path.isfile(jpath):
            raise UserError(f"{wpath} has no mplfast description and {jpath} does not exist")
        try:
            with open(jpath, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {jpath}: {str(e).splitlines()[0][:160]}") from None
    return _check_meta(meta, jpath if path.endswith(".json") else wpath), sd


def build_from_meta(meta: dict[str, Any], sd: dict[str, torch.Tensor],
                    device: torch.device | str = "cpu", *, where: str = "export") -> nn.Module:
    """The model an export describes, with its weights, in eval mode."""
    from mplfast.models import create_model

    try:
        model = create_model(meta["model"], meta["num_classes"], in_chans=meta["in_chans"],
                             **meta["model_kwargs"])
    except TypeError as e:
        raise UserError(f"model {meta['model']}: {str(e).splitlines()[0]}") from None
    load_weights(model, sd, what=meta["model"], path=where)
    return model.to(device).eval()


def load_export(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, description) of an export written by :func:`export_run`."""
    meta, sd = read_export(path)
    return build_from_meta(meta, sd, device, where=path), meta


def load_any(src: str, device: torch.device | str = "cpu", *, model: str | None = None
             ) -> tuple[nn.Module, dict[str, Any]]:
    """A model and its description from an export (.safetensors/.json), a model file (.pt) or a
    run folder (``best.pt``, else ``last.pt``)."""
    if src.endswith((".safetensors", ".json")):
        if model is not None:
            raise UserError("--model applies to runs and model files, not to an export")
        return load_export(src, device)
    path = resolve_run_file(src)
    if os.path.basename(path) == "checkpoint.pt":
        raise UserError(f"{src} has only a resume checkpoint (checkpoint.pt), no best.pt or "
                        f"last.pt model file")
    saved = load_models(path)
    key = model or saved["headline"]
    if key not in saved["models"] or key not in MODEL_KEYS:
        raise UserError(f"{path} has no {key!r} model; it has {', '.join(saved['models'])}")
    meta = export_meta(saved, key, path)
    return build_from_meta(meta, saved["models"][key], device, where=path), meta
