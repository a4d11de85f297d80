"""Pretrained weights for the registry's models: read a weights file without running code, load it
into a freshly built model with a new classifier head, and tell which parameters are the head.

A source is a path or, for a ``timm/<name>`` model, the word ``timm`` (timm's own published
weights, which timm downloads and caches on the user's machine).

* ``.safetensors`` files are read with safetensors (no code at all); anything else is read with
  ``torch.load(weights_only=True)``, which refuses a pickle that names a callable. The file may
  hold a flat state dict, ``{"state_dict": ...}`` / ``{"model": ...}`` around one (DDP's
  ``module.`` prefix removed), or be an mplfast model file (``best.pt``/``last.pt``: its headline
  model).
* Loading is exact: every key of the model outside its classifier head must be in the file with
  the same shape, and the file may hold nothing else. The head is the model's classifier module
  (timm's ``get_classifier()``, else the model's ``fc``, else its last ``nn.Linear``); its
  tensors are loaded when their shapes match and left at their fresh initialisation when they
  differ (new classes) or are absent (a backbone-only file). That is timm's rule too.
* A model may translate a foreign layout: a model class with ``map_pretrained_keys(sd) -> sd``
  is asked first (the project's ``resnet50`` reads torchvision's layout this way).
* The input configuration the weights were trained with (image size, normalization) is read
  where the file carries one: an mplfast export's header, an mplfast model file, a timm-style
  ``config.json`` beside the file (``pretrained_cfg``), or timm's ``pretrained_cfg`` for
  ``timm``. See docs/pretrained.md.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mplfast.errors import UserError

TIMM = "timm"          # the source word for timm's own weights
_HASH_CHUNK = 1 << 20


@dataclass
class InputConfig:
    """What the weights expect of an image: square side (None: unknown), per-channel mean/std
    in [0, 1] units (None: unknown) and where this was read."""

    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    origin: str | None = None


@dataclass
class SourceInfo:
    """A checked source: the file read (None for timm weights not found in a cache), its
    sha256, and the input configuration it carries."""

    source: str
    path: str | None
    sha256: str | None
    input: InputConfig = field(default_factory=InputConfig)


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit]


def is_timm_model(name: str) -> bool:
    """Whether ``name`` is a ``timm/<name>`` registry name."""
    return name.startswith("timm/")


def import_timm(for_what: str) -> Any:
    """``import timm``, or a one-line UserError that says how to install it without replacing
    the installed torch (``pip install timm`` alone would)."""
    try:
        import timm
    except Exception as e:  # ImportError, or a torchvision built for another torch (RuntimeError)
        raise UserError(
            f"{for_what} needs timm, which is not importable here ({_first_line(e, 120)}); install "
            "it without replacing your torch: `pip install huggingface_hub && pip install --no-deps "
            "timm` plus the torchvision built for your torch (see README, 'Start from a pretrained "
            "backbone')") from None
    return timm


# ----------------------------------------------------------------------------------- reading
def check_source(source: str, model_name: str) -> None:
    """Refuse, with one line, a source that cannot be used with ``model_name``: ``timm`` for a
    model that is not ``timm/<name>`` (or without timm), a path that is not a file."""
    if source == TIMM:
        if not is_timm_model(model_name):
            raise UserError(f"--pretrained timm loads timm's own weights and works only with a "
                            f"timm/<name> model, not {model_name!r}; pass a weights file instead")
        import_timm(f"--pretrained timm (model {model_name})")
        return
    _check_file(source)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"pretrained weights file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"pretrained weights must be a file, {path} is not one")


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise UserError(f"cannot read {path} as weights: it claims more memory than this machine "
                        "has") from None
    except Exception as e:  # noqa: BLE001 - any refusal of the restricted unpickler
        raise UserError(f"cannot read {path} as weights: not a PyTorch file, or one that would run "
                        f"code when loaded (refused by torch.load(weights_only=True): "
                        f"{_first_line(e, 120)})") from None


def _unwrap(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The state dict inside what a weights file holds (see the module docstring)."""
    if isinstance(obj, dict) and obj.get("format") == "mplfast-models":
        from mplfast.train.model_file import validate_models

        saved = validate_models(obj, path)
        obj = saved["models"][saved["headline"]]
    elif isinstance(obj, dict) and not _all_tensors(obj):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict) and _all_tensors(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        what = type(obj).__name__ if not isinstance(obj, dict) else (
            "an empty dict" if not obj else "a dict whose values are not all tensors")
        raise UserError(f"{path} is not a state dict (a dict of parameter name -> tensor); it "
                        f"holds {what}")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _all_tensors(d: dict[Any, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a weights file (CPU tensors); no code from the file runs.

    ``.safetensors``: safetensors; anything else: ``torch.load(weights_only=True)``. A file that
    cannot be read this way, or holds no state dict, is a one-line UserError."""
    _check_file(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(path), path)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise UserError(f"cannot read {path} as safetensors: {_first_line(e)}") from None
    return _unwrap(_torch_load(path), path)


def _input_from(mean: Any, std: Any, size: Any, origin: str) -> InputConfig:
    """An InputConfig from loosely typed values (JSON), keeping only what is well formed."""
    def floats(v: Any) -> tuple[float, ...] | None:
        if isinstance(v, (list, tuple)) and v and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return tuple(float(x) for x in v)
        return None

    side = None
    if isinstance(size, (list, tuple)) and len(size) >= 2 and all(isinstance(s, int) for s in size):
        h, w = size[-2], size[-1]  # [H, W] (mplfast) or [C, H, W] (timm)
        side = h if h == w and h > 0 else None
    m, s = floats(mean), floats(std)
    if m is None or s is None or len(m) != len(s):
        m = s = None
    return InputConfig(side, m, s, origin if (side or m) else None)


def read_input_config(path: str) -> InputConfig:
    """The input configuration a weights file carries (empty when it carries none): an mplfast
    export's header (or its .json), an mplfast model file, or a timm-style ``config.json`` with
    ``pretrained_cfg`` in the same folder."""
    meta: Any = None
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
            meta = json.loads(header["mplfast"]) if "mplfast" in header else None
        except Exception:  # noqa: BLE001 - unreadable headers are reported by read_state_dict
            meta = None
        if isinstance(meta, dict):
            return _input_from(meta.get("mean"), meta.get("std"), meta.get("image_size"),
                               "the mplfast export's header")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - not a zip file (mmap) or unreadable: reported later
            obj = None
        if isinstance(obj, dict) and obj.get("format") == "mplfast-models":
            return _input_from(obj.get("mean"), obj.get("std"), obj.get("image_size"),
                               "the mplfast model file")
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                pc = json.load(f).get("pretrained_cfg")
        except (OSError, ValueError, AttributeError):
            pc = None
        if isinstance(pc, dict):
            return _input_from(pc.get("mean"), pc.get("std"), pc.get("input_size"), cfg_path)
    return InputConfig()


def _timm_weights_file(pc: dict[str, Any]) -> str | None:
    """Where timm cached the weights it loaded for ``pretrained_cfg`` ``pc`` (None if unknown):
    a local ``file``, the Hugging Face cache, or torch.hub's checkpoints folder."""
    if pc.get("file") and os.path.isfile(pc["file"]):
        return str(pc["file"])
    if pc.get("hf_hub_id"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except Exception:  # noqa: BLE001
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            names = [pc["hf_hub_filename"]] if pc.get("hf_hub_filename") else []
            for name in names + ["model.safetensors", "open_clip_model.safetensors",
                                 "pytorch_model.bin"]:
                found = try_to_load_from_cache(pc["hf_hub_id"], name)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    if pc.get("url"):
        from urllib.parse import urlparse

        p = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(pc["url"]).path))
        if os.path.isfile(p):
            return p
    return None


def inspect_source(source: str, model_name: str, model_kwargs: dict[str, Any] | None = None,
                   num_classes: int | None = None, in_chans: int = 3) -> SourceInfo:
    """Check ``source`` for ``model_name`` and describe it: the file, its sha256 and the input
    configuration of its weights. For ``timm`` this downloads timm's weights (timm caches
    them) so that the file that will be loaded can be hashed."""
    check_source(source, model_name)
    if source != TIMM:
        return SourceInfo(source, os.path.abspath(source), sha256_file(source),
                          read_input_config(source))
    try:
        model = create_timm(model_name, num_classes, in_chans, pretrained=True,
                            **(model_kwargs or {}))
    except TypeError as e:  # a keyword of model_kwargs the model does not take
        raise UserError(f"model {model_name}: {_first_line(e)} (check model_kwargs)") from None
    pc = dict(getattr(model, "pretrained_cfg", None) or {})
    path = _timm_weights_file(pc)
    return SourceInfo(TIMM, path, sha256_file(path) if path else None,
                      _input_from(pc.get("mean"), pc.get("std"), pc.get("input_size"),
                                  "timm's pretrained_cfg"))


def create_timm(model_name: str, num_classes: int | None, in_chans: int, *, pretrained: bool,
                 **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for registry name ``timm/<name>`` (``num_classes=None``: the
    weights' own head); timm's own failures to fetch or load its weights become one line."""
    name = model_name[len("timm/"):]
    timm = import_timm(f"model {model_name!r}")
    if not timm.is_model(name):
        raise UserError(f"timm has no model named {name!r}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if not pretrained:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, in_chans=in_chans, **kwargs)
    except TypeError:
        raise  # a keyword the model does not take: the caller reports it as model_kwargs
    except Exception as e:  # noqa: BLE001 - no network, no weights for this name, a bad cache
        raise UserError(f"cannot get timm's pretrained weights for {name}: {_first_line(e)}") \
            from None


# ----------------------------------------------------------------------------------- loading
def _module_name(model: nn.Module, target: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is target:
            return name
    return None


def classifier_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes (``"fc."``) of the model's classifier head: timm's
    ``get_classifier()``, else a module named ``fc``, else the last ``nn.Linear``."""
    heads: list[nn.Module] = []
    get = getattr(model, "get_classifier", None)
    if callable(get):
        got = get()
        heads = [m for m in (got if isinstance(got, (tuple, list)) else [got])
                 if isinstance(m, nn.Module)]
    elif isinstance(getattr(model, "fc", None), nn.Module):
        heads = [model.fc]
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        heads = linears[-1:]
    out = []
    for m in heads:
        name = _module_name(model, m)
        if name is not None and any(True for _ in m.parameters()):
            out.append(f"{name}." if name else "")
    if not out:
        raise UserError(f"cannot tell the classifier head of {type(model).__name__} (no "
                        "get_classifier(), fc or nn.Linear)")
    return out


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the classifier head (see :func:`classifier_prefixes`)."""
    prefixes = classifier_prefixes(model)
    return [p for n, p in model.named_parameters() if any(n.startswith(pre) for pre in prefixes)]


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def load_pretrained(model: nn.Module, sd: dict[str, torch.Tensor], *, source: str,
                    model_name: str) -> list[str]:
    """Copy ``sd`` into ``model`` exactly, except the classifier head where its shapes differ
    or it is absent; returns the head keys left at their fresh initialisation.

    A key of the model missing from ``sd``, a key of ``sd`` the model lacks, or a shape that
    differs outside the head is a one-line UserError naming the first of each."""
    mapper = getattr(model, "map_pretrained_keys", None)
    if callable(mapper):
        sd = mapper(sd)
    ref = model.state_dict()
    prefixes = classifier_prefixes(model)

    def is_head(k: str) -> bool:
        return any(k.startswith(p) for p in prefixes)

    missing = [k for k in ref if k not in sd and not is_head(k)]
    unexpected = sorted(k for k in sd if k not in ref)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]!r}" + (f" and {len(missing) - 1} more"
                                                      if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[0]!r}" + (f" and {len(unexpected) - 1} more"
                                                            if len(unexpected) > 1 else ""))
        raise UserError(f"{source} does not hold weights for model {model_name}: "
                        f"{'; '.join(parts)} (weights for another architecture?)")
    fresh = []
    for k, r in ref.items():
        if k not in sd:
            fresh.append(k)
            continue
        t = sd[k]
        if t.shape != r.shape:
            if is_head(k):
                fresh.append(k)  # the head of other classes: replaced for this task's
                continue
            raise UserError(f"{source} does not hold weights for model {model_name}: {k} has "
                            f"shape {_shape(t)} in the file, the model needs {_shape(r)}")
    with torch.no_grad():
        for k, r in ref.items():
            if k not in fresh:
                r.copy_(sd[k])  # in place: same storage as the model's tensor (casts dtype)
    return fresh


# the attribute create_model leaves on a model it loaded weights into (for reports)
LOADED_ATTR = "mplfast_pretrained"


def mark_loaded(model: nn.Module, source: str, fresh: list[str]) -> nn.Module:
    """Record on ``model`` that it starts from ``source`` with the head keys ``fresh`` newly
    initialised; :func:`loaded_from` reads it back."""
    setattr(model, LOADED_ATTR, {"source": source, "fresh_keys": list(fresh)})
    return model


def loaded_from(model: nn.Module | None) -> dict[str, Any] | None:
    """``{"source", "fresh_keys"}`` of a model built with pretrained weights, else None."""
    return getattr(model, LOADED_ATTR, None) if model is not None else None


def timm_fresh_head(model: nn.Module, num_classes: int) -> list[str]:
    """The head keys timm left newly initialised: all of them when ``num_classes`` differs
    from the weights' (timm drops their head then), else none."""
    pc = getattr(model, "pretrained_cfg", None) or {}
    if pc.get("num_classes") == num_classes:
        return []
    prefixes = classifier_prefixes(model)
    return [k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)]
