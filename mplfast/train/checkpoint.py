"""Checkpoints: atomic writes, a loader that never runs code, and structure checks.

A checkpoint is made only of tensors, numbers, strings, None, lists and dicts, so it loads with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler builds those and nothing else,
and a file whose pickle names any other callable (``os.system``, ``numpy``'s array
reconstruction, ...) is refused before anything from it runs. The global RNG states a bitwise
resume needs are stored in that form too (:func:`rng_state`).

Loading is two steps, both raising :class:`~mplfast.errors.UserError` with one line naming the
file:

1. :func:`load_checkpoint` unpickles safely and checks the layout: keys, types, the config
   (through the same typed parsing as ``--config``), the RNG states;
2. :func:`check_like`, :func:`check_state_dict` and :func:`check_optimizer` compare its parts
   with the models/optimizers the config builds (keys, shapes, dtypes), before any
   ``load_state_dict`` sees them.

Checkpoints written before this format (numpy RNG state pickled as an ndarray) are refused by
step 1; :func:`convert_trusted` rewrites one the user trusts (``mplfast convert-checkpoint
--trust FILE``).
"""
from __future__ import annotations

import dataclasses
import io
import os
import random
from typing import Any, Literal

import numpy as np
import torch

from mplfast.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
CKPT_VERSION = 2            # 2: RNG states as tensors/lists/ints (weights_only-loadable)
PHASES = ("train", "finetune", "done")
REFUSE = "not an mplfast checkpoint, or one that would run code when loaded; refusing"
CONVERT_HINT = ("if it is a checkpoint of an older mplfast that you trust, convert it with "
                "`mplfast convert-checkpoint --trust FILE`")
# a pickle can share one list many times (memo references); walking such a structure must stay
# cheap, so a checkpoint with more nodes or deeper nesting than any real one is refused
MAX_NODES = 5_000_000
MAX_DEPTH = 32

Expect = Literal["weights", "resume"]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` so that a crash at any moment leaves either the old or the new
    file, never a truncated one (:func:`mplfast.train.fileio.write_atomic`: temp file in the
    same directory, fsync, ``os.replace``, fsync of the directory; the umask's file mode)."""
    from mplfast.train.fileio import write_atomic

    write_atomic(path, lambda f: torch.save(obj, f))


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Write a checkpoint atomically (see :func:`save_atomic`). ``state`` must hold only what
    ``torch.load(weights_only=True)`` reads back (tensors, numbers, str, None, list, tuple,
    dict); RNG states come from :func:`rng_state`, which already is in that form."""
    save_atomic(state, path)


# ---------------------------------------------------------------------------------------------
# RNG states as plain tensors / lists / ints
# ---------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from (dropout, sampling, numpy, python), in
    a form the safe loader reads back exactly:

    * ``torch``: uint8 tensor (``torch.get_rng_state()``), ``cuda``: list of them;
    * ``numpy``: ``{"name": "MT19937", "key": int64 tensor [624], "pos": int,
      "has_gauss": int, "cached_gaussian": float}`` (``np.random.get_state()``; the uint32 key
      words fit int64 exactly);
    * ``python``: ``{"version": int, "state": list of 625 ints, "gauss": float or None}``.
    """
    name, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (checked by :func:`load_checkpoint`)."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["key"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _legacy_rng_to_safe(rng: Any) -> Any:
    """An RNG entry of a version-1 checkpoint (numpy tuple with an ndarray, python tuple)
    in the :func:`rng_state` form; entries already in that form pass through."""
    if not isinstance(rng, dict):
        return rng
    out = dict(rng)
    npst = rng.get("numpy")
    if isinstance(npst, tuple) and len(npst) == 5:
        name, key, pos, has_gauss, cached = npst
        out["numpy"] = {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                        "pos": int(pos), "has_gauss": int(has_gauss),
                        "cached_gaussian": float(cached)}
    py = rng.get("python")
    if isinstance(py, tuple) and len(py) == 3:
        out["python"] = {"version": int(py[0]), "state": [int(v) for v in py[1]], "gauss": py[2]}
    if isinstance(rng.get("cuda"), tuple):
        out["cuda"] = list(rng["cuda"])
    return out


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
class _Bad(Exception):
    """A structural problem; turned into a one-line UserError naming the file."""


def _fail(path: str, why: str) -> UserError:
    # one line, whatever the file put into the reason (a value's repr can span lines)
    why = " ".join(why.split())
    return UserError(f"checkpoint {path}: {why if len(why) <= 300 else why[:297] + '...'}")


def _is(v: Any, *choices: Any) -> bool:
    """``v`` is a plain str/int equal to one of ``choices`` (a tensor from the file compares
    elementwise, and ``bool(tensor)`` of many elements raises: never compare those)."""
    return type(v) in (str, int) and v in choices


def _short(v: Any) -> str:
    """A short one-line description of a value read from a file, for messages."""
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    r = " ".join(repr(v).split())
    return r if len(r) <= 60 else r[:57] + "..."


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; any failure (a pickle that names a
    callable, a corrupt or truncated archive, not a torch file) is ``UserError`` with the one
    refusal line naming ``path``. For every reader of mplfast's .pt files (model files too)."""
    return _safe_unpickle(path)


def _safe_unpickle(path: str) -> Any:
    """``torch.load(weights_only=True)``; every failure is the one refusal line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise UserError(f"cannot read checkpoint {path}: {REFUSE} (it claims more memory than this machine has)") from None
    except Exception as e:  # noqa: BLE001 - any failure of the restricted unpickler: refuse
        # the numpy global is what a checkpoint of an older mplfast needs; say how to convert
        old = "numpy" in str(e) and "Unsupported global" in str(e)
        raise UserError(f"cannot read checkpoint {path}: {REFUSE}" + (f"; {CONVERT_HINT}" if old else "")) from None


def _check_size(obj: Any) -> None:
    """Iterative walk counting nodes (shared references each time) and depth."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    n = 0
    while stack:
        o, depth = stack.pop()
        n += 1
        if n > MAX_NODES or depth > MAX_DEPTH:
            raise _Bad("nested too deeply or too large for a checkpoint")
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for v in o.values())
            stack.extend((k, depth + 1) for k in o.keys())
        elif isinstance(o, (list, tuple)):
            stack.extend((v, depth + 1) for v in o)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _state_dict_like(v: Any, name: str) -> None:
    if not isinstance(v, dict) or not v:
        raise _Bad(f"{name!r} is not a non-empty dict of tensors")
    for k, t in v.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor):
            raise _Bad(f"{name!r} holds {type(k).__name__} -> {type(t).__name__}, not name -> tensor")


def _optimizer_like(v: Any, name: str) -> None:
    if not isinstance(v, dict) or not isinstance(v.get("state"), dict) or \
            not isinstance(v.get("param_groups"), list):
        raise _Bad(f"{name!r} is not an optimizer state (dict with 'state' and 'param_groups')")
    for g in v["param_groups"]:
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or \
                not all(_int(p) for p in g["params"]):
            raise _Bad(f"{name!r} has a malformed parameter group")


def _check_rng(rng: Any, where: str) -> None:
    if not isinstance(rng, dict):
        raise _Bad(f"{where} is not a dict of RNG states")
    t = rng.get("torch")
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1 or \
            t.numel() != torch.get_rng_state().numel():
        raise _Bad(f"{where}.torch is not a torch RNG state (uint8 [{torch.get_rng_state().numel()}])")
    npst = rng.get("numpy")
    if not isinstance(npst, dict) or not _is(npst.get("name"), "MT19937"):
        raise _Bad(f"{where}.numpy is not a numpy MT19937 state")
    key = npst.get("key")
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or tuple(key.shape) != (624,) \
            or bool(((key < 0) | (key >= 2**32)).any()):
        raise _Bad(f"{where}.numpy.key is not 624 words in [0, 2^32) (int64 tensor)")
    if not (_int(npst.get("pos")) and 0 <= npst["pos"] <= 624 and _is(npst.get("has_gauss"), 0, 1)
            and _num(npst.get("cached_gaussian"))):
        raise _Bad(f"{where}.numpy has a malformed pos / has_gauss / cached_gaussian")
    py = rng.get("python")
    if not isinstance(py, dict) or not _is(py.get("version"), 3) or not isinstance(py.get("state"), list) \
            or len(py["state"]) != 625 or not all(_int(v) and 0 <= v < 2**32 for v in py["state"]) \
            or py["state"][-1] > 624 or not (py.get("gauss") is None or _num(py["gauss"])):
        raise _Bad(f"{where}.python is not a python random state (version 3, 625 ints)")
    cuda = rng.get("cuda")
    if cuda is not None and (not isinstance(cuda, list) or not all(
            isinstance(c, torch.Tensor) and c.dtype == torch.uint8 and c.dim() == 1 for c in cuda)):
        raise _Bad(f"{where}.cuda is not a list of CUDA RNG states (uint8 tensors)")


def validate_checkpoint(st: Any, expect: Expect = "weights") -> Any:
    """Check the layout of a loaded checkpoint; return its config as a ``TrainConfig``.

    ``expect="weights"`` (eval, export, predict) needs the config, step, method, phase and the
    weights; ``"resume"`` also the optimizer/scheduler/step/RNG states. Raises ``_Bad``."""
    from mplfast.train.config import METHODS, TrainConfig, apply_overrides, validate

    if not isinstance(st, dict) or not all(isinstance(k, str) for k in st):
        raise _Bad(f"holds a {type(st).__name__}, not an mplfast checkpoint (a dict)")
    _check_size(st)
    if "version" not in st or "config" not in st or "step" not in st:
        missing = [k for k in ("version", "config", "step") if k not in st]
        raise _Bad(f"missing {', '.join(repr(k) for k in missing)}; not an mplfast checkpoint")
    if not _is(st["version"], CKPT_VERSION):
        hint = f"; {CONVERT_HINT}" if _is(st["version"], 1) else ""
        raise _Bad(f"format version {_short(st['version'])} is not supported (expected {CKPT_VERSION}){hint}")
    if not _int(st["step"]) or st["step"] < 0:
        raise _Bad(f"'step' must be an integer >= 0, got {_short(st['step'])}")
    if not isinstance(st["config"], dict) or not all(isinstance(k, str) for k in st["config"]):
        raise _Bad("'config' is not a mapping of config field names to values")
    try:
        cfg = apply_overrides(TrainConfig(), st["config"], "checkpoint config")
        # --config's validation too; its paths may have moved since (checked where used, after
        # `--data`), so they stand in as "." here
        validate(dataclasses.replace(cfg, data="." if cfg.data is not None else None,
                                     unlabeled="." if cfg.unlabeled is not None else None))
    except UserError as e:
        raise _Bad(str(e)) from None
    if not _is(st.get("method"), *METHODS) or st["method"] != cfg.method:
        raise _Bad(f"'method' {_short(st.get('method'))} does not match its config ({cfg.method!r})")
    if not _is(st.get("phase"), *PHASES):
        raise _Bad(f"'phase' must be one of {', '.join(PHASES)}, got {_short(st.get('phase'))}")
    if "student" not in st:
        raise _Bad("has no model weights ('student' is missing)")
    _state_dict_like(st["student"], "student")
    if cfg.method != "supervised":
        if st.get("teacher") is None:
            raise _Bad(f"a {cfg.method} checkpoint without teacher weights")
        _state_dict_like(st["teacher"], "teacher")
    elif st.get("teacher") is not None:
        raise _Bad("a supervised checkpoint must not hold teacher weights")
    ema = st.get("ema")
    if ema is not None:
        if not isinstance(ema, dict) or not _num(ema.get("decay")):
            raise _Bad("'ema' is not an EMA state (dict with 'decay' and 'module')")
        _state_dict_like(ema.get("module"), "ema.module")
    if st.get("finetuned") is not None:
        _state_dict_like(st["finetuned"], "finetuned")
    ft = st.get("finetune")
    if ft is not None:
        if not isinstance(ft, dict) or not _int(ft.get("step")) or ft["step"] < 0 or \
                not isinstance(ft.get("stepper"), dict):
            raise _Bad("'finetune' is not a finetune state (step, model, optimizer, stepper)")
        _state_dict_like(ft.get("model"), "finetune.model")
        _optimizer_like(ft.get("optimizer"), "finetune.optimizer")
    commands = st.get("commands")
    if commands is not None and (not isinstance(commands, list)
                                 or not all(isinstance(c, str) for c in commands)):
        raise _Bad("'commands' is not a list of command lines")
    results = st.get("results", {})
    if not isinstance(results, dict) or not all(isinstance(k, str) and _num(v)
                                                for k, v in results.items()):
        raise _Bad("'results' is not a mapping of names to numbers")
    if expect == "resume":
        for name in ("student_optimizer", "teacher_optimizer"):
            if name == "teacher_optimizer" and cfg.method == "supervised":
                continue
            _optimizer_like(st.get(name), name)
        for name in ("student_scheduler", "teacher_scheduler", "step_state"):
            if name == "teacher_scheduler" and cfg.method == "supervised":
                continue
            if not isinstance(st.get(name), dict):
                raise _Bad(f"{name!r} is missing or not a dict (needed to resume)")
        if not _int(st.get("world_size")) or st["world_size"] < 1:
            raise _Bad("'world_size' must be an integer >= 1")
        rngs = st.get("rng")
        if not isinstance(rngs, list) or not rngs:
            raise _Bad("'rng' is missing or not a list of per-rank RNG states")
        for i, r in enumerate(rngs):
            _check_rng(r, f"rng[{i}]")
        if not _num(st.get("train_time", 0.0)):
            raise _Bad("'train_time' is not a number")
        rm = st.get("running_metrics")
        if rm is not None and not (isinstance(rm, dict) and _int(rm.get("n")) and rm["n"] >= 0
                                   and isinstance(rm.get("sums", {}), dict)
                                   and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           and v.dim() == 0 for k, v in rm.get("sums", {}).items())):
            raise _Bad("'running_metrics' is not a mapping of names to scalar tensors")
    return cfg


def load_checkpoint(path: str, *, expect: Expect = "weights") -> dict[str, Any]:
    """Load a checkpoint without running any code from it, and check its layout.

    ``expect``: ``"weights"`` for readers of the models (eval, export, predict), ``"resume"``
    for ``--resume`` (training state too). Returns the checkpoint dict. A missing file, one the
    restricted unpickler refuses, or one whose layout is wrong raises ``UserError`` (one line
    naming ``path``). Shapes are checked against the models later (:func:`check_state_dict`)."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    return validate_loaded(_safe_unpickle(path), path, expect=expect)


def validate_loaded(st: Any, path: str, *, expect: Expect = "weights") -> dict[str, Any]:
    """:func:`validate_checkpoint` on an object :func:`safe_torch_load` returned (for readers
    that load once and then tell a model file from a checkpoint); ``UserError`` naming ``path``."""
    try:
        validate_checkpoint(st, expect)
    except _Bad as e:
        raise _fail(path, str(e)) from None
    return st


def load(path: str) -> dict[str, Any]:
    """``load_checkpoint(path, expect="resume")`` (the name older callers use)."""
    return load_checkpoint(path, expect="resume")


def checkpoint_config(st: dict[str, Any], path: str, overrides: dict[str, Any] | None = None) -> Any:
    """The checkpoint's config with ``overrides`` (e.g. a moved ``data`` root) applied, through
    the same typed parsing and validation as ``--config``; ``UserError`` names ``path``."""
    from mplfast.train.config import TrainConfig, apply_overrides, validate

    try:
        cfg = apply_overrides(TrainConfig(), st["config"], "checkpoint config")
    except UserError as e:
        raise _fail(path, str(e)) from None
    cfg = apply_overrides(cfg, overrides or {}, "option")
    try:
        validate(cfg)
    except UserError as e:
        moved = " (pass --data DIR if the data moved)" if "path does not exist" in str(e) else ""
        raise _fail(path, f"its config is invalid here: {e}{moved}") from None
    return cfg


# ---------------------------------------------------------------------------------------------
# checks against the objects the config builds
# ---------------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_state_dict(model: torch.nn.Module, sd: dict[str, Any], *, what: str, path: str) -> None:
    """``UserError`` unless ``sd`` has exactly the model's keys with the same shapes and dtypes."""
    ref = model.state_dict()
    missing = [k for k in ref if k not in sd]
    extra = [k for k in sd if k not in ref]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"unexpected {extra[0]!r}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        raise _fail(path, f"{what} weights do not match the model its config builds: {'; '.join(parts)}")
    for k, r in ref.items():
        t = sd[k]
        if not isinstance(t, torch.Tensor):
            raise _fail(path, f"{what}.{k} is a {type(t).__name__}, not a tensor")
        if t.shape != r.shape:
            raise _fail(path, f"{what}.{k} has shape {_shape(t)}, the model its config builds "
                              f"needs {_shape(r)}")
        if t.dtype != r.dtype:
            raise _fail(path, f"{what}.{k} is {t.dtype}, the model needs {r.dtype}")


def load_weights(model: torch.nn.Module, sd: dict[str, Any], *, what: str, path: str) -> None:
    """:func:`check_state_dict`, then ``model.load_state_dict(sd)``."""
    check_state_dict(model, sd, what=what, path=path)
    model.load_state_dict(sd)


def check_like(ref: Any, got: Any, *, what: str, path: str) -> None:
    """``UserError`` unless ``got`` has the structure of ``ref`` (a freshly built object's
    state_dict): same dict keys, list lengths, scalar types, tensor shapes and dtypes."""
    stack: list[tuple[Any, Any, str]] = [(ref, got, what)]
    while stack:
        r, g, where = stack.pop()
        if isinstance(r, torch.Tensor):
            if not isinstance(g, torch.Tensor) or g.shape != r.shape or g.dtype != r.dtype:
                desc = (f"{g.dtype} {_shape(g)}" if isinstance(g, torch.Tensor) else type(g).__name__)
                raise _fail(path, f"{where} is {desc}, expected {r.dtype} {_shape(r)}")
        elif isinstance(r, dict):
            if not isinstance(g, dict):
                raise _fail(path, f"{where} is a {type(g).__name__}, expected a dict")
            if set(r) != set(g):
                diff = sorted(map(str, set(r) ^ set(g)))
                raise _fail(path, f"{where} keys differ from what this version writes "
                                  f"(e.g. {diff[0]!r})")
            stack.extend((r[k], g[k], f"{where}.{k}") for k in r)
        elif isinstance(r, (list, tuple)):
            if not isinstance(g, (list, tuple)) or len(g) != len(r):
                raise _fail(path, f"{where} is not a list of {len(r)}")
            stack.extend((a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(r, g)))
        elif r is None:
            if g is not None:
                raise _fail(path, f"{where} should be empty (None), got a {type(g).__name__}")
        elif isinstance(r, bool):
            if not isinstance(g, bool):
                raise _fail(path, f"{where} is a {type(g).__name__}, expected a bool")
        elif isinstance(r, int):
            if not _int(g):
                raise _fail(path, f"{where} is a {type(g).__name__}, expected an int")
        elif isinstance(r, float):
            if not _num(g):
                raise _fail(path, f"{where} is a {type(g).__name__}, expected a number")
        elif type(g) is not type(r):
            raise _fail(path, f"{where} is a {type(g).__name__}, expected {type(r).__name__}")


def check_optimizer(opt: torch.optim.Optimizer, sd: dict[str, Any], *, what: str, path: str) -> None:
    """``UserError`` unless ``sd`` fits ``opt``: same parameter groups and sizes, per-parameter
    state tensors of the parameter's shape (a momentum buffer of the wrong shape would only
    fail mid-training otherwise)."""
    groups = opt.param_groups
    if len(sd["param_groups"]) != len(groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(sd["param_groups"], groups)):
        raise _fail(path, f"{what} does not match the model's parameter groups")
    params = [p for g in groups for p in g["params"]]
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    if sorted(ids) != list(range(len(params))):
        raise _fail(path, f"{what} numbers its parameters wrongly")
    by_id = dict(zip(ids, params))
    for g_ref, g in zip(groups, sd["param_groups"]):
        check_like({k: v for k, v in g_ref.items() if k != "params"},
                   {k: v for k, v in g.items() if k != "params"}, what=f"{what}.param_groups",
                   path=path)
    for pid, pstate in sd["state"].items():
        if pid not in by_id or not isinstance(pstate, dict):
            raise _fail(path, f"{what} holds state for an unknown parameter {pid!r}")
        p = by_id[pid]
        for k, v in pstate.items():
            if not isinstance(v, torch.Tensor) and not _num(v):
                raise _fail(path, f"{what}.state[{pid}].{k} is a {type(v).__name__}")
            if isinstance(v, torch.Tensor) and v.dim() > 0 and (v.shape != p.shape or
                                                                not v.is_floating_point()):
                raise _fail(path, f"{what}.state[{pid}].{k} has shape {_shape(v)}, its parameter "
                                  f"{_shape(p)}")


# ---------------------------------------------------------------------------------------------
# converting a trusted older checkpoint
# ---------------------------------------------------------------------------------------------
def convert_trusted(path: str, out: str | None = None) -> tuple[str, bool]:
    """Rewrite a checkpoint of an older mplfast in the current, safely loadable format.

    This runs the full unpickler on ``path`` (it can run code): only for a file the user
    trusts. Writes ``out`` (default: ``path`` itself, atomically); returns (where it is,
    whether it was converted: False for a file already in the safe format).
    ``UserError`` if the result still does not load safely or is not a valid checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        safe_already = True
    except Exception:  # noqa: BLE001 - not loadable safely: that is what we convert
        safe_already = False
    if safe_already:
        st = load_checkpoint(path, expect="weights")
        if out is None or os.path.abspath(out) == os.path.abspath(path):
            return path, False  # nothing to do
        save_checkpoint(st, out)
        return out, False
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(st, dict):
        raise _fail(path, f"holds a {type(st).__name__}, not an mplfast checkpoint")
    st = dict(st)
    if isinstance(st.get("rng"), (list, tuple)):
        st["rng"] = [_legacy_rng_to_safe(r) for r in st["rng"]]
    if st.get("version") == 1:
        st["version"] = CKPT_VERSION
    buf = io.BytesIO()
    torch.save(st, buf)
    buf.seek(0)
    try:
        torch.load(buf, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        raise _fail(path, "holds objects other than tensors, numbers, strings, lists and dicts "
                          "even after converting its RNG states; cannot convert") from None
    try:
        validate_checkpoint(st, "weights")
    except _Bad as e:
        raise _fail(path, str(e)) from None
    target = out or path
    save_checkpoint(st, target)
    return target, True
