"""``TrainConfig``: every setting of a training run in one dataclass (nanoGPT style).

A run's configuration is built in layers, each applied on top of the previous one:

1. the dataclass defaults (equal to the ``digits`` preset),
2. a preset (``--preset``; a dict of overrides in :mod:`mplfast.train.presets`),
3. a YAML file (``--config FILE.yaml``; a mapping ``field: value``),
4. the dedicated CLI flags (``--dataset``, ``--steps``, ...),
5. ``--set key=value`` pairs, in the order given.

The MPL step's settings are nested (``TrainConfig.mpl`` is a :class:`mplfast.MPLConfig`), so
every MPLConfig field is configurable without being listed here: ``mpl: {threshold: 0.9}`` in
YAML, ``--set mpl.threshold=0.9``, or the flat alias ``threshold`` (YAML, ``--set``, presets,
``TrainConfig(threshold=0.9)``, ``dataclasses.replace``; ``cfg.threshold`` reads it).

Every user mistake (unknown key, wrong type, out-of-range value, incompatible options) raises
:class:`mplfast.errors.UserError` with one line that says what is wrong and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from mplfast import safe_yaml
from mplfast.errors import UserError
from mplfast.config import MPLConfig  # noqa: I001 - kept apart from the line above for merges

MPL_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(MPLConfig))

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder", "synthetic")
METHODS = ("mpl", "uda", "supervised")
PROGRESS = ("auto", "rich", "plain", "none")
DATA_ENV = "MPLFAST_DATA"  # default --data root when the option is not given
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """All settings of one run. Defaults are the ``digits`` preset (CPU-friendly, ~1-2 min).

    The digits values were tuned on 2 CPU cores: a 16-wide small CNN, B = 16, mu = 3, 1,000
    steps, and a milder strong view (RandAugment magnitude 5, cutout 1/4) than the CIFAR
    recipe, because 16 of 64 pixels cut out of an 8x8 digit often erases it.
    """

    # --- run -------------------------------------------------------------------------------
    preset: str = "digits"            # recorded for reference; applying it is done by resolve()
    method: str = "mpl"               # mpl | uda (teacher trained with h = 0) | supervised
    seed: int = 0
    out: str | None = None            # output directory; None: nothing is written (the CLI picks runs/...)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    init_perturbation: float = 0.0    # added to one student weight after init (ablate's chaos row)

    # --- data ------------------------------------------------------------------------------
    dataset: str = "digits"
    data: str | None = None           # root of the data set files (not needed for digits/synthetic)
    unlabeled: str | None = None      # extra unlabeled image folder (imagefolder only)
    labels: int | None = 50           # size of the class-balanced labeled subset; None: from the data
    image_size: int | None = None     # resize for image folders
    mean: list[float] | None = None   # per-channel normalization in [0, 1] units; None: the weights' (--pretrained) or the data's
    std: list[float] | None = None
    strict_data: bool = False         # imagefolder: fail on unreadable files instead of skipping
    test_fraction: float = 0.2        # imagefolder without val/ or test/: part of each class held out for testing
    val_fraction: float = 0.1         # part of each class of the training pool held out (never trained on) to pick best.pt; 0: no best.pt
    stream: bool | None = None        # imagefolder: stream from disk with DALI; None: when it would not fit in RAM
    synthetic_kw: dict[str, Any] = field(default_factory=dict)  # passed to load_dataset
    batch_size: int = 16              # labeled images per step, summed over all ranks
    mu: int = 3                       # unlabeled batch = mu * batch_size
    randaug_n: int = 2
    randaug_m: float = 5.0
    cutout: float = 0.25              # fraction of the image side
    aug_backend: str | None = None    # None: fastest available augmentation backend

    # --- models ----------------------------------------------------------------------------
    model: str = "small_cnn"          # student (and teacher unless teacher_model is set)
    teacher_model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 16})
    pretrained: str | None = None     # weights file (.safetensors, .pt, .pth) or "timm" (timm/<name> models)
    pretrained_student: str = "same"  # same: the student starts from the weights too; none: from scratch
    pretrained_sha256: str | None = None  # of the weights file, filled in at start; a changed file is refused
    backbone_lr_scale: float | None = None  # lr of all but the classifier head, x lr; None: 0.1 if pretrained, else 1

    # --- optimisation ----------------------------------------------------------------------
    steps: int = 1000
    teacher_lr: float = 0.05
    student_lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    teacher_weight_decay: float = 5e-4
    student_weight_decay: float = 5e-4
    warmup_steps: int = 50
    student_wait_steps: int = 0       # student lr is 0 for its first N steps (paper: 3000)
    ema_decay: float = 0.995          # 0 disables the EMA student
    eval_ema: bool = True             # evaluate (and finetune) the EMA weights

    # --- MPL: the step's settings, nested so every MPLConfig field is configurable ---------
    # Set as `mpl: {threshold: 0.9}` in YAML, `--set mpl.threshold=0.9`, or by the flat alias
    # `threshold` (YAML, --set, presets). `precision` lives at the top level (it also drives
    # evaluation and finetuning) and is copied into the step's config by mpl_config().
    # uda_steps: 200 suits the digits recipe's 1,000 steps (MPLConfig's own default is 5000).
    mpl: MPLConfig = field(default_factory=lambda: MPLConfig(uda_steps=200))

    # --- precision and speed ---------------------------------------------------------------
    precision: str = "auto"           # auto | fp32 | bf16 | fp16
    channels_last: bool = False
    cpu_threads: int = 1              # torch intra-op threads on CPU; 0: torch's default.
    #                                   1 suits the small digits net: OpenMP threads of tiny ops
    #                                   cost more than they give, and far more on a busy machine
    compile: str = "none"             # none | default | reduce-overhead | max-autotune (true = default)

    # --- finetune (labeled only, EMA student; 0 epochs: off) --------------------------------
    finetune_epochs: int = 0
    finetune_batch_size: int = 512
    finetune_lr: float = 3e-5
    finetune_weight_decay: float = 0.0
    finetune_momentum: float = 0.9

    # --- logging / evaluation / checkpoints ------------------------------------------------
    log_interval: int = 50
    eval_interval: int = 250          # 0: evaluate only at the end
    ckpt_interval: int = 500          # 0: checkpoint only at the end and on interruption
    keep: int = 0                     # also keep the N latest step-<N>.pt model files of the checkpoint intervals
    eval_batch_size: int = 512
    tensorboard: bool = True
    plot: bool = True
    check_memory: bool = True         # refuse a step estimated not to fit in memory
    progress: str = "auto"            # auto (rich on a TTY, else plain lines) | rich | plain | none

    def __getattr__(self, name: str) -> Any:
        # read-only flat aliases of the nested MPL fields (cfg.threshold == cfg.mpl.threshold);
        # only reached when normal lookup fails, so real fields are never shadowed
        if name in MPL_FIELD_NAMES and "mpl" in self.__dict__:
            return getattr(self.__dict__["mpl"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def mpl_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``mplfast.MPLConfig`` for this run's step."""
        return effective_mpl(self).to_dict()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-safe) of every field."""
        return asdict(self)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))


def _accept_flat_mpl_kwargs(init: Any) -> Any:
    # TrainConfig(threshold=0.9) and dataclasses.replace(cfg, meta_signal="grad_dot") keep
    # working: flat MPL keyword arguments are applied on top of the nested `mpl`
    @functools.wraps(init)
    def __init__(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in MPL_FIELD_NAMES and k not in FIELD_NAMES}
        init(self, *args, **kwargs)
        if flat:
            self.mpl = dataclasses.replace(self.mpl, **flat)
    return __init__


TrainConfig.__init__ = _accept_flat_mpl_kwargs(TrainConfig.__init__)  # type: ignore[method-assign]
# MPL fields that TrainConfig also has at its top level: the top-level one is the authority
SHARED_MPL_FIELDS: tuple[str, ...] = tuple(n for n in MPL_FIELD_NAMES if n in FIELD_NAMES)
# every key a user may write: top-level fields, flat MPL aliases and dotted mpl.<field>
ALL_KEYS: tuple[str, ...] = tuple(dict.fromkeys(
    [n for n in FIELD_NAMES if n != "mpl"] + list(MPL_FIELD_NAMES)
    + [f"mpl.{n}" for n in MPL_FIELD_NAMES]))


def effective_mpl(cfg: TrainConfig) -> MPLConfig:
    """The step's MPLConfig: cfg.mpl with the shared top-level fields and ``--method uda``."""
    changes: dict[str, Any] = {n: getattr(cfg, n) for n in SHARED_MPL_FIELDS}
    if cfg.method == "uda":
        changes["meta_signal"] = "none"  # uda trains the teacher with h = 0
    return _build_mpl(cfg.mpl, changes)


def _user_message(e: BaseException) -> str:
    # MPLConfig names its fields `MPLConfig.threshold`; the user wrote `threshold`
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"\bMPLConfig\.", "", msg).replace("MPLConfig: ", "")


def _build_mpl(base: MPLConfig, changes: dict[str, Any]) -> MPLConfig:
    """``dataclasses.replace(base, **changes)`` with MPLConfig's ValueError as a UserError."""
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as e:
        raise UserError(_user_message(e)) from None


# ----------------------------------------------------------------------------------------
# typed parsing
# ----------------------------------------------------------------------------------------
def canonical_key(key: str) -> str | None:
    """The field a user's key names: a top-level field, or ``mpl.<field>`` (flat alias or
    dotted); shared fields (``precision``) map to the top level. None if unknown."""
    name = key[4:] if key.startswith("mpl.") else key
    if name in SHARED_MPL_FIELDS:
        return name
    if key.startswith("mpl."):
        return key if name in MPL_FIELD_NAMES else None
    if key in FIELD_NAMES:
        return key
    return f"mpl.{key}" if key in MPL_FIELD_NAMES else None


def _field_type(name: str) -> Any:
    key = canonical_key(name) or name
    if key.startswith("mpl."):
        return typing.get_type_hints(MPLConfig)[key[4:]]
    return typing.get_type_hints(TrainConfig)[key]


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) != len(typing.get_args(tp))
    return tp, False


def _type_name(tp: Any) -> str:
    inner, opt = _split_optional(tp)
    base = getattr(typing.get_origin(inner) or inner, "__name__", str(inner))
    return f"{base} or null" if opt else base


def coerce_value(name: str, value: Any) -> Any:
    """Convert ``value`` (a YAML scalar or a string from the command line) to the field's type.

    Strings are first parsed as YAML so ``--set lr=1e-3``, ``--set nesterov=false`` and
    ``--set model_kwargs={dropout: 0.2}`` all work; the result must then fit the field's type.
    """
    name = name[4:] if name.startswith("mpl.") else name  # messages name the user's field
    tp = _field_type(name)
    inner, optional = _split_optional(tp)
    if name == "compile" and str(value).lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        # `--set compile=true` reads naturally; true means torch.compile's default mode
        return "default" if str(value).lower() in ("true", "yes", "on", "1") else "none"
    if isinstance(value, str) and inner is not str:
        try:
            value = safe_yaml.load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"{name}: cannot parse {value!r} as {_type_name(tp)}") from None
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise UserError(f"{name}: a value is required ({_type_name(tp)})")
    origin = typing.get_origin(inner) or inner
    bad = UserError(f"{name}: expected {_type_name(tp)}, got {value!r}")
    if origin in (int, float) and isinstance(value, str):
        # PyYAML (YAML 1.1) reads "1e-3" and "3e5" as strings; Python's float() does not
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if origin is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # "3e5" parses as a float; 300000 steps is still an integer
        raise bad
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if origin is str:
        return str(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if origin is list:
        # "0.485,0.456,0.406" from the command line (plain YAML reads it as one string)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        items = value if isinstance(value, list) else [value]
        try:
            out = [float(v) for v in items if not isinstance(v, bool)]
        except (TypeError, ValueError):
            raise bad from None
        if len(out) != len(items) or not out:
            raise bad
        return out
    raise bad


def unknown_key_error(key: str, where: str = "config") -> UserError:
    """A UserError for an unknown field, listing the closest field names."""
    close = difflib.get_close_matches(key, ALL_KEYS, n=3, cutoff=0.7)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `mplfast train --help-config`"
    return UserError(f"unknown {where} key {key!r}{hint}")


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], where: str = "config") -> TrainConfig:
    """Return a copy of ``cfg`` with ``overrides`` applied, each value typed and checked.

    Keys are top-level fields, ``mpl`` (a mapping, merged into the current MPL settings),
    ``mpl.<field>`` or a flat MPL field name (``threshold``).
    """
    changes: dict[str, Any] = {}
    mpl_changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "mpl":
            if isinstance(value, str):
                try:  # user text: plain data only, bounded depth and size
                    value = safe_yaml.load(value)
                except yaml.YAMLError:
                    value = None
            if isinstance(value, MPLConfig):
                value = value.to_dict()
            if not isinstance(value, dict):
                raise UserError(f"mpl: expected a mapping of MPL fields, got {value!r}")
            items = [(f"mpl.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for k, v in items:
            canon = canonical_key(str(k))
            if canon is None:
                raise unknown_key_error(str(k), where)
            if canon.startswith("mpl."):
                mpl_changes[canon[4:]] = coerce_value(canon, v)
            else:
                changes[canon] = coerce_value(canon, v)
    if changes.get("pretrained", cfg.pretrained) != cfg.pretrained and "pretrained_sha256" not in changes:
        changes["pretrained_sha256"] = None  # a recorded hash belongs to the file it was taken of
    new = dataclasses.replace(cfg, **changes)
    mpl_changes.update({n: getattr(new, n) for n in SHARED_MPL_FIELDS})  # keep mpl.precision in sync
    new.mpl = _build_mpl(new.mpl, mpl_changes)
    return new


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (values typed later by apply_overrides)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {pair!r}")
        out[key] = value
    return out


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping of config fields; a missing or malformed file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = safe_yaml.load(f)
    except yaml.MarkedYAMLError as e:
        raise UserError(yaml_error_line(path, e)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot parse config file {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of field: value")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:  # `1: x` or `null: x` is no field name (and difflib's hints need strings)
        raise UserError(f"config file {path}: {bad[0]!r} is not a field name")
    return data


def yaml_error_line(path: str, e: yaml.MarkedYAMLError) -> str:
    """``FILE:LINE:COL: cannot parse config file: PROBLEM (CONTEXT at L:C)`` on one line, the
    form editors and terminals jump to (PyYAML's own text spreads it over four lines with a
    snippet). Line and column are 1-based, where the parser noticed the problem."""
    mark = e.problem_mark or e.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = " ".join(str(e.problem or e.context or type(e).__name__).split())
    context = ""
    if e.context and e.problem:
        cm = e.context_mark
        at = f" started at {cm.line + 1}:{cm.column + 1}" if cm is not None and cm is not mark else ""
        context = f" ({' '.join(str(e.context).split())}{at})"
    return f"{where}: cannot parse config file: {problem}{context}"


def save_yaml(cfg: TrainConfig, path: str, header: str = "") -> None:
    """Write the resolved config so ``--config path`` reproduces the run.

    ``header``: comment lines written first (the run's reproducibility record).
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def _drop_own_out(overrides: dict[str, Any], config_file: str) -> dict[str, Any]:
    # a run's own config.yaml names its own folder as `out`; reusing the file to reproduce the
    # run must start a new run elsewhere, not collide with the finished one
    out = overrides.get("out")
    if isinstance(out, str):
        here = os.path.dirname(os.path.abspath(config_file))
        if os.path.abspath(os.path.expanduser(out)) == here:
            return {k: v for k, v in overrides.items() if k != "out"}
    return overrides


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


def validate(cfg: TrainConfig) -> None:
    """Check ranges and combinations that do not need the data; raise UserError on the first."""
    _check(cfg.method in METHODS, f"method: unknown {cfg.method!r}; choose from {', '.join(METHODS)}")
    _check(cfg.dataset in DATASETS,
           f"dataset: unknown {cfg.dataset!r}; choose from {', '.join(DATASETS)}")
    _check(cfg.progress in PROGRESS, f"progress: choose from {', '.join(PROGRESS)}")
    _check(cfg.compile in COMPILE_MODES, f"compile: choose from {', '.join(COMPILE_MODES)}")
    # torch, numpy and the augmentation streams take 32-bit seeds (numpy refuses negative
    # ones, torch overflows past 64 bits): refuse instead of a traceback deep in a run
    _check(0 <= cfg.seed < 2**32, f"seed must be in [0, 2^32), got {cfg.seed}")
    _check(cfg.steps >= 0, f"steps must be >= 0, got {cfg.steps}")
    _check(cfg.labels is None or cfg.labels >= 1, f"labels must be >= 1, got {cfg.labels}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.mu >= 1, f"mu must be >= 1, got {cfg.mu}")
    _check(cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    for name in ("teacher_lr", "student_lr", "finetune_lr", "teacher_weight_decay",
                 "student_weight_decay", "finetune_weight_decay", "randaug_m"):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("momentum", "finetune_momentum", "cutout"):
        v = getattr(cfg, name)
        _check(0 <= v <= 1, f"{name} must be in [0, 1], got {v}")
    _check(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    for name in ("warmup_steps", "student_wait_steps", "finetune_epochs", "log_interval",
                 "eval_interval", "ckpt_interval", "randaug_n", "cpu_threads"):
        v = getattr(cfg, name)
        _check(v >= 0, f"{name} must be >= 0, got {v}")
    _check(math.isfinite(cfg.init_perturbation),
           f"init_perturbation must be finite, got {cfg.init_perturbation}")
    _check(cfg.finetune_batch_size >= 1,
           f"finetune_batch_size must be >= 1, got {cfg.finetune_batch_size}")
    _check(cfg.image_size is None or cfg.image_size >= 1,
           f"image_size must be >= 1, got {cfg.image_size}")
    _validate_pretrained(cfg)
    _check(cfg.unlabeled is None or cfg.dataset == "imagefolder",
           "--unlabeled works only with --dataset imagefolder")
    _check(0 < cfg.test_fraction < 1, f"test_fraction must be in (0, 1), got {cfg.test_fraction}")
    _check(0 <= cfg.val_fraction < 1, f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    _check(cfg.keep >= 0, f"keep must be >= 0, got {cfg.keep}")
    _check(not cfg.stream or cfg.dataset == "imagefolder",
           "--stream works only with --dataset imagefolder (the other data sets fit in memory)")
    _check(cfg.dataset in ("digits", "synthetic") or cfg.data is not None,
           f"dataset {cfg.dataset} needs --data PATH or ${DATA_ENV} (mplfast never downloads)")
    if cfg.method == "uda":
        # uda trains the teacher with h = 0; a meta signal would silently be ignored
        _check(cfg.meta_signal in ("loss_diff", "none"),
               f"--method uda trains without a meta signal; meta_signal={cfg.meta_signal} "
               "is incompatible (use --method mpl)")
    for name in ("data", "unlabeled"):
        path = getattr(cfg, name)
        if path is not None and not os.path.exists(path):
            env = f" (from ${DATA_ENV})" if name == "data" and path == os.environ.get(DATA_ENV) else ""
            raise UserError(f"{name} path does not exist: {path}{env}")
    mpl_config(cfg)  # MPL field ranges (threshold 2.5, unknown meta_signal, ...)


def _validate_pretrained(cfg: TrainConfig) -> None:
    """The pretrained-backbone fields (the weights file itself is checked at start-up)."""
    _check(cfg.pretrained_student in ("same", "none"),
           f"pretrained_student: choose same or none, got {cfg.pretrained_student!r}")
    _check(cfg.pretrained is None or cfg.pretrained.strip() != "",
           "pretrained: give a weights file or timm (or leave it unset)")
    if cfg.pretrained == "timm":
        from mplfast.train.pretrained import loading_models

        for role, arch in loading_models(cfg):
            _check(arch.startswith("timm/"),
                   f"--pretrained timm loads timm's own weights and works only with timm/<name> "
                   f"models, not the {role}'s {arch!r}; pass a weights file instead")
    s = cfg.backbone_lr_scale
    _check(s is None or (math.isfinite(s) and s >= 0),
           f"backbone_lr_scale must be a finite number >= 0, got {s}")
    for name in ("mean", "std"):
        v = getattr(cfg, name)
        _check(v is None or all(math.isfinite(x) for x in v), f"{name} must be finite numbers")
    _check((cfg.mean is None) == (cfg.std is None), "give both mean and std, or neither")
    _check(cfg.mean is None or len(cfg.mean) == len(cfg.std or []),
           f"mean and std need one value per channel each, got {len(cfg.mean or [])} and "
           f"{len(cfg.std or [])}")
    _check(cfg.std is None or all(x > 0 for x in cfg.std), f"std must be > 0, got {cfg.std}")


# What `--resume` may change: where and how the run is computed, shown and saved, never what
# it computes. Every other field (seed, labels, data set and its path, splits, model, method,
# batch sizes, augmentation, optimisation, the MPL step, precision, finetune) defines the run:
# changing one mid-run would silently mix two runs under the second one's name. A new field is
# defining unless listed here. (`aug_backend`: the backends are bit-compatible; `stream` is not
# listed: DALI streaming draws other images, with a random resized crop, than the in-memory path.)
RESUME_MAY_CHANGE: frozenset[str] = frozenset({
    "out", "device", "cpu_threads", "compile", "channels_last", "aug_backend",
    "strict_data", "progress", "log_interval", "eval_interval", "ckpt_interval", "keep",
    "eval_batch_size", "tensorboard", "plot", "check_memory"})


def _same_path(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return os.path.realpath(os.path.expanduser(str(a))) == os.path.realpath(os.path.expanduser(str(b)))


def resume_changes(saved: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` of every setting that defines the run and differs
    (paths compared as resolved paths; MPL fields as ``mpl.<field>``)."""
    a, b = saved.to_dict(), new.to_dict()
    out: list[tuple[str, Any, Any]] = []
    for key in a:
        if key in RESUME_MAY_CHANGE:
            continue
        if key == "mpl":
            out += [(f"mpl.{n}", v, b["mpl"].get(n)) for n, v in a["mpl"].items()
                    if n not in SHARED_MPL_FIELDS and v != b["mpl"].get(n)]
        elif key in ("data", "unlabeled"):
            if not _same_path(a[key], b[key]):
                out.append((key, a[key], b[key]))
        elif a[key] != b.get(key):
            out.append((key, a[key], b.get(key)))
    return out


def mpl_config(cfg: TrainConfig) -> MPLConfig:
    """The ``mplfast.MPLConfig`` of ``cfg``'s step; its ValueError becomes a one-line UserError."""
    return effective_mpl(cfg)


# ----------------------------------------------------------------------------------------
# layering: defaults -> preset -> YAML file -> CLI flags -> --set
# ----------------------------------------------------------------------------------------
def _default_data_root(cfg: TrainConfig, set_overrides: dict[str, Any]) -> TrainConfig:
    """``data`` from $MPLFAST_DATA when no layer names it and the data set needs files; it is
    recorded in the config, so the run reproduces without the variable."""
    dataset = set_overrides.get("dataset", cfg.dataset)
    if cfg.data is not None or "data" in set_overrides or dataset in ("digits", "synthetic"):
        return cfg
    root = os.environ.get(DATA_ENV)
    return dataclasses.replace(cfg, data=root) if root else cfg


def _infer_dataset(preset: str | None, file_overrides: dict[str, Any], flags: dict[str, Any],
                   set_overrides: dict[str, Any]) -> dict[str, Any]:
    """``flags`` with ``dataset: imagefolder`` when a layer gives ``data`` but none names the
    data set (nor a named preset does) and ``data`` has an image-folder layout; a ``UserError``
    when it has not. Without this, ``--data DIR`` alone trained on the built-in digits."""
    from mplfast.data.imagefolder import LAYOUT, looks_like_imagefolder
    from mplfast.train.presets import PRESETS

    layers = (file_overrides, flags, set_overrides)
    named = preset if preset is not None else file_overrides.get("preset")
    dataset = next((d["dataset"] for d in reversed(layers) if d.get("dataset") is not None),
                   PRESETS.get(str(named), {}).get("dataset"))
    data = next((d["data"] for d in reversed(layers) if d.get("data") is not None), None)
    if data is None:
        return flags
    if dataset in ("digits", "synthetic"):
        raise UserError(f"--data {data}: the {dataset} data set reads no files; for your own "
                        "images add --dataset imagefolder")
    if dataset is not None:
        return flags
    if not os.path.exists(str(data)):
        raise UserError(f"data path does not exist: {data}")
    if not looks_like_imagefolder(str(data)):
        files = ", ".join(d for d in DATASETS if d not in ("digits", "synthetic"))
        raise UserError(f"--data {data} without --dataset: it is not an image folder ({LAYOUT}); "
                        f"name its data set with --dataset ({files})")
    return {**flags, "dataset": "imagefolder"}


def resolve(preset: str | None = None, config_file: str | None = None,
            flags: dict[str, Any] | None = None, sets: list[str] | None = None,
            base: TrainConfig | None = None, check: bool = True) -> TrainConfig:
    """Build a validated config from its layers (see the module docstring).

    ``check=False`` skips :func:`validate` (paths, ranges): ``--help-config`` shows what a
    preset would use without needing its data.

    ``preset=None`` (and no ``preset:`` in the YAML file) starts from ``digits`` for the
    built-in data and from ``auto`` (sized to the data) for any other ``--dataset``: a named
    recipe such as ``cifar10-4k`` applies only when asked for.
    ``base`` (used by ``--resume``) replaces defaults + preset with a saved config.
    """
    from mplfast.train.presets import default_preset, get_preset

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_overrides = _drop_own_out(load_yaml(config_file), config_file) if config_file else {}
    set_overrides = parse_set_args(sets or [])
    if base is not None:
        cfg = base
    else:
        flags = _infer_dataset(preset, file_overrides, flags, set_overrides)
        if preset is None:
            preset = file_overrides.get("preset")
        if preset is None:
            dataset = set_overrides.get("dataset", flags.get("dataset", file_overrides.get("dataset")))
            preset = default_preset(str(dataset) if dataset else None)
        cfg = apply_overrides(TrainConfig(), get_preset(str(preset)), "preset")
    # the file's `preset:` only chooses the starting point above; it is not a field override
    cfg = apply_overrides(cfg, {k: v for k, v in file_overrides.items() if k != "preset"},
                          "config file")
    cfg = apply_overrides(cfg, flags, "option")
    cfg = _default_data_root(cfg, set_overrides)
    cfg = apply_overrides(cfg, set_overrides, "--set")
    if check:
        validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------
# documentation of every field (for `mplfast train --help-config`)
# ----------------------------------------------------------------------------------------
# name -> (allowed values, one line of meaning); MPL fields are documented by MPLConfig's own
# docstring (parsed below), so a new MPLConfig field is listed without touching this table
FIELD_DOCS: dict[str, tuple[str, str]] = {
    "preset": ("see --preset", "the recipe this config started from (recorded; --preset applies one)"),
    "method": ("|".join(METHODS), "mpl: teacher learns from the student; uda: teacher with h = 0; "
               "supervised: labeled images only"),
    "seed": ("int", "seeds the labeled split, init, data order and augmentation"),
    "out": ("path or null", "output folder (default: a new runs/<dataset>-<method>-seed<seed>)"),
    "device": ("auto|cpu|cuda|cuda:N", "where to train (auto: CUDA if available)"),
    "init_perturbation": ("finite float", "added to one student weight after init (the chaos "
                          "control of `mplfast ablate`; 0: off)"),
    "dataset": ("|".join(DATASETS), "which data set to load"),
    "data": ("path or null", "root of the data set's files (mplfast never downloads)"),
    "unlabeled": ("path or null", "extra folder of unlabeled images (imagefolder only)"),
    "labels": (">= classes, a multiple of them, or null", "size of the class-balanced labeled "
               "subset (null: derived from the data)"),
    "image_size": (">= 1 or null", "side length image folders are resized to (null: the "
                   "pretrained weights' size, else 32)"),
    "mean": ("list of floats or null", "per-channel mean of the normalization, in [0, 1] units "
             "(null: the pretrained weights', else the training images')"),
    "std": ("list of floats > 0 or null", "per-channel std of the normalization (with mean)"),
    "strict_data": ("bool", "fail on an unreadable image instead of warning and skipping it"),
    "test_fraction": ("(0, 1)", "imagefolder without val/ or test/: part of each class held out "
                      "(seeded) for the final test report"),
    "val_fraction": ("[0, 1)", "part of each class of the training pool held out (never trained "
                     "on) to pick best.pt (0: no validation split, no best.pt)"),
    "stream": ("bool or null", "imagefolder: decode from disk at every step with DALI (null: "
               "only when the decoded folder would not fit in memory)"),
    "synthetic_kw": ("mapping", "keyword arguments of the synthetic data set (tests)"),
    "batch_size": (">= 1", "labeled images per step, summed over all ranks"),
    "mu": (">= 1", "unlabeled images per step = mu * batch_size"),
    "randaug_n": (">= 0", "RandAugment operations per strong view"),
    "randaug_m": (">= 0", "RandAugment magnitude"),
    "cutout": ("[0, 1]", "cutout square side as a fraction of the image side"),
    "aug_backend": ("null|torch|triton|native", "augmentation backend (null: fastest available)"),
    "model": ("see `mplfast models`", "student model (and teacher unless teacher_model is set)"),
    "teacher_model": ("model name or null", "teacher model if it differs from the student"),
    "model_kwargs": ("mapping", "keyword arguments of the model (width, dropout, ...)"),
    "pretrained": ("file or timm or null", "weights to start teacher and student from: "
                   ".safetensors, .pt/.pth (read without running code), or timm (timm's own, "
                   "for timm/<name> models); the classifier head is new where its shape differs"),
    "pretrained_student": ("same|none", "none: only the teacher starts from the pretrained "
                           "weights, the student from scratch"),
    "pretrained_sha256": ("hex or null", "sha256 of the weights file, recorded at start-up; a "
                          "file that no longer matches is refused"),
    "backbone_lr_scale": (">= 0 or null", "learning rate of everything but the classifier head, "
                          "as a multiple of the lr (null: 0.1 for pretrained weights, else 1)"),
    "steps": (">= 0", "training steps"),
    "teacher_lr": (">= 0", "teacher peak learning rate (warmup then cosine decay)"),
    "student_lr": (">= 0", "student peak learning rate"),
    "momentum": ("[0, 1]", "SGD momentum of both models"),
    "nesterov": ("bool", "Nesterov momentum"),
    "teacher_weight_decay": (">= 0", "teacher weight decay (not on batch-norm parameters)"),
    "student_weight_decay": (">= 0", "student weight decay"),
    "warmup_steps": (">= 0", "linear learning-rate warmup steps"),
    "student_wait_steps": (">= 0", "the student's lr is 0 for its first N steps (paper: 3000)"),
    "ema_decay": ("[0, 1)", "decay of the EMA student (0: no EMA)"),
    "eval_ema": ("bool", "report (and finetune) the EMA student rather than the raw one"),
    "mpl": ("mapping", "the MPL step's settings (the mpl.* rows); also settable by their flat names"),
    "precision": ("|".join(("auto", "fp32", "bf16", "fp16")), "compute precision (auto: bf16 "
                  "on GPUs that have it, else fp32)"),
    "channels_last": ("bool", "channels-last memory format (faster convolutions on GPUs)"),
    "cpu_threads": (">= 0", "torch intra-op threads on CPU (0: torch's default)"),
    "compile": ("|".join(COMPILE_MODES) + " (true = default)", "torch.compile mode"),
    "finetune_epochs": (">= 0", "labeled-only finetune epochs after training (0: off)"),
    "finetune_batch_size": (">= 1", "finetune batch size"),
    "finetune_lr": (">= 0", "finetune learning rate"),
    "finetune_weight_decay": (">= 0", "finetune weight decay"),
    "finetune_momentum": ("[0, 1]", "finetune SGD momentum"),
    "log_interval": (">= 0", "steps between metric lines (metrics.jsonl, TensorBoard, screen)"),
    "eval_interval": (">= 0", "steps between test evaluations (0: only at the end)"),
    "ckpt_interval": (">= 0", "steps between checkpoints (0: at the end and on interruption)"),
    "keep": (">= 0", "also keep the N latest step-<N>.pt model files of the checkpoint "
             "intervals (0: only last.pt and best.pt)"),
    "eval_batch_size": (">= 1", "evaluation batch size"),
    "tensorboard": ("bool", "write TensorBoard events (out/tb)"),
    "plot": ("bool", "write curves.png at the end"),
    "check_memory": ("bool", "refuse a step estimated not to fit in memory"),
    "progress": ("|".join(PROGRESS), "progress display (auto: a bar on a terminal, else lines)"),
}


def mpl_field_docs() -> dict[str, str]:
    """``{field: "allowed: meaning"}`` from the "Fields and allowed ranges" of MPLConfig's
    docstring (continuation lines joined)."""
    doc = MPLConfig.__doc__ or ""
    out: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        m = re.match(r"^\s{6}(\w+)\s+(.*)$", line)
        if m and m.group(1) in MPL_FIELD_NAMES:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith(" " * 8) and line.strip():
            out[current] += " " + line.strip()
        elif not line.strip():
            current = None
    return out


def _split_doc(text: str) -> tuple[str, str]:
    """``'[0, 1]: UDA mask threshold. More.'`` -> (allowed, first sentence of the meaning).

    MPLConfig's docstring writes "ALLOWED: meaning" or "ALLOWED (meaning)"; the split is the
    first ': ' outside brackets, else the first ' (' outside brackets."""
    depth, paren = 0, None
    for i, ch in enumerate(text):
        if ch in "([":
            if ch == "(" and depth == 0 and paren is None and i > 0 and text[i - 1] == " ":
                paren = i
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ":" and depth == 0 and text[i + 1:i + 2] == " ":
            allowed, meaning = text[:i].strip(), text[i + 2:].strip()
            break
    else:
        if paren is None:
            return "", _first_sentence(text)
        allowed, meaning = text[:paren].strip(), text[paren + 1:].strip().rstrip(".").rstrip(")")
    return allowed, _first_sentence(meaning)


def _first_sentence(text: str) -> str:
    m = re.search(r"\.\s", text)
    return (text[:m.start()] if m else text).rstrip(".").strip()


def field_rows(cfg: TrainConfig | None = None) -> list[tuple[str, str, str, str, str, str]]:
    """(key, type, default, value in ``cfg``, allowed, meaning) for every user-settable key:
    each top-level field, then each MPL field as ``mpl.<field>`` (also settable flat)."""
    default = TrainConfig()
    cfg = cfg or default
    mdocs = mpl_field_docs()
    rows = []
    for f in fields(TrainConfig):
        if f.name == "mpl":
            continue
        allowed, meaning = FIELD_DOCS.get(f.name, ("", ""))
        rows.append((f.name, _type_name(_field_type(f.name)), repr(getattr(default, f.name)),
                     repr(getattr(cfg, f.name)), allowed, meaning))
    for f in fields(MPLConfig):
        if f.name in SHARED_MPL_FIELDS:
            continue
        allowed, meaning = _split_doc(mdocs.get(f.name, ""))
        rows.append((f"mpl.{f.name}", _type_name(_field_type(f"mpl.{f.name}")),
                     repr(getattr(default.mpl, f.name)), repr(getattr(cfg.mpl, f.name)),
                     allowed, meaning))
    return rows
