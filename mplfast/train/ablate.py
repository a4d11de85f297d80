"""``mplfast ablate``: does the MPL term help? Every row over the same seeds, paired.

Every run of one seed shares the data split, initialisation, batches and augmentation; a row
changes only what its name says. The rows (``VARIANTS``):

    supervised     the student architecture on the labeled images only
    uda            the teacher of the h = 0 run (plain UDA), reported as a teacher
    mpl:none       the student of that same run: it learns from the pseudo labels of a
                   teacher that never sees it. THE CONTROL for the MPL term (hard labels).
    mpl:loss_diff  MPL, hard labels, h = L_old - L_new (the default of ``mplfast train``)
    mpl:grad_dot   MPL, hard labels, h = -<grad L_new(theta'), theta' - theta>
    mpl:sample     MPL, labels sampled from the teacher (the paper's estimator)
    mpl:soft       MPL, soft labels with the exact meta-gradient
    port           the public PyTorch port's choices: meta_sign -1, student labels from the
                   weak view, L_old from the [x_l; x_us] forward
    flip           MPL with h's sign flipped (a negative control: if it matches mpl:loss_diff
                   the term does nothing)
    chaos          seed(s) of ``--chaos-seeds`` of mpl:loss_diff rerun with 1e-7 added to one
                   student weight: how far a run moves for no reason at all
    chaos:none     the same for the h = 0 control

Label modes other than hard (and the weak view of ``port``) are paired against an h = 0
control with the same student labels (``none:sample``, ``none:soft``; ``none:port`` also reads
L_old the port's way, which changes how the student's batch-norm buffers are updated), added
automatically. Students are always compared as their EMA weights (the plain weights when
``ema_decay=0``); teachers' accuracies are reported in their own column. ``--meta-scale 1,10``
repeats every row with an MPL term at each weight. Finished runs are reused (same resolved
config), stopped ones resumed; the table is rewritten after every seed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
from dataclasses import dataclass, field
from typing import Any

import yaml

from mplfast import safe_yaml
from mplfast.errors import UserError
from mplfast.train import pretrained
from mplfast.train.config import TrainConfig, apply_overrides, resolve, validate
from mplfast.train.stats import Paired, binomial_se, mean_std, paired

CHAOS_PERTURBATION = 1e-7


@dataclass(frozen=True)
class Variant:
    """One row: the overrides that define its run and what it reports."""

    description: str
    overrides: dict[str, Any]
    reports: str = "student"          # "student" (EMA weights) or "teacher"
    control: str | None = None        # the h = 0 row it is paired against
    meta: bool = False                # has an MPL term (repeated per --meta-scale)
    run: str | None = None            # key of the run it shares (uda and mpl:none are one run)
    chaos_of: str | None = None       # chaos rows: the row whose run is perturbed


_UDA = {"method": "uda", "meta_signal": "none"}
_MPL = {"method": "mpl", "meta_signal": "loss_diff"}

VARIANTS: dict[str, Variant] = {
    "supervised": Variant("Supervised (labeled only)", {"method": "supervised"}),
    "uda": Variant("UDA teacher (h = 0)", _UDA, reports="teacher", run="uda"),
    "mpl:none": Variant("h = 0 control: student of the UDA teacher, hard labels", _UDA, run="uda"),
    "mpl:loss_diff": Variant("MPL, hard labels, h = L_old − L_new (default)", _MPL,
                             control="mpl:none", meta=True),
    "mpl:grad_dot": Variant("MPL, hard labels, h = −⟨∇L_new, step⟩",
                            {**_MPL, "meta_signal": "grad_dot"}, control="mpl:none", meta=True),
    "mpl:sample": Variant("MPL, sampled labels (the paper's estimator)",
                          {**_MPL, "pseudo_label": "sample"}, control="none:sample", meta=True),
    "mpl:soft": Variant("MPL, soft labels, exact meta-gradient",
                        {**_MPL, "pseudo_label": "soft"}, control="none:soft", meta=True),
    "port": Variant("Port's configuration (meta_sign −1, weak view, L_old concat)",
                    {**_MPL, "meta_sign": -1, "pseudo_label_view": "weak",
                     "l_old_forward": "concat"}, control="none:port", meta=True),
    "flip": Variant("Sign-flipped MPL (negative control), hard, meta_sign −1",
                    {**_MPL, "meta_sign": -1}, control="mpl:none", meta=True),
    "none:sample": Variant("h = 0 control, sampled labels", {**_UDA, "pseudo_label": "sample"}),
    "none:soft": Variant("h = 0 control, soft labels", {**_UDA, "pseudo_label": "soft"}),
    # with l_old_forward="concat" the L_new forward also updates the student's batch-norm
    # running buffers, so the port's control must read L_old the same way to isolate h
    "none:port": Variant("h = 0 control for the port: weak view, L_old concat",
                         {**_UDA, "pseudo_label_view": "weak", "l_old_forward": "concat"}),
    "chaos": Variant("Chaos: mpl:loss_diff with 1e-7 added to one student weight",
                     {**_MPL, "init_perturbation": CHAOS_PERTURBATION}, meta=True,
                     chaos_of="mpl:loss_diff"),
    "chaos:none": Variant("Chaos: h = 0 control with 1e-7 added to one student weight",
                          {**_UDA, "init_perturbation": CHAOS_PERTURBATION}, chaos_of="mpl:none"),
}
DEFAULT_VARIANTS = ("supervised", "uda", "mpl:none", "mpl:loss_diff", "mpl:grad_dot",
                    "mpl:sample", "mpl:soft", "port", "flip", "chaos", "chaos:none")
CONTROL = "mpl:none"


# ------------------------------------------------------------------------------------ parsing
MAX_SEEDS = 10_000  # far more runs than any ablation trains; refuses a typo'd count at once


def parse_seeds(text: str, *, count: bool = True, option: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``"10"`` -> [0..9] (with ``count``, else [10]);
    ``"3-5,9"`` -> [3, 4, 5, 9]."""
    text = text.strip()
    bad = UserError(f"{option}: expected {'a count N, or ' if count else ''}a comma-separated "
                    f"list of seeds and ranges A-B, got {text!r}")
    if count and text.isdigit():
        n = int(text)
        if n < 1:
            raise UserError(f"{option}: a count must be >= 1, got {n}")
        if n > MAX_SEEDS:
            raise UserError(f"{option}: at most {MAX_SEEDS} seeds, got a count of {n}")
        return list(range(n))
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        a, dash, b = part.partition("-")
        if not a.strip().isdigit() or (dash and not b.strip().isdigit()):
            raise bad
        lo, hi = int(a), int(b) if dash else int(a)
        if hi < lo:
            raise UserError(f"{option}: empty range {part!r}")
        if hi >= 2**32:  # the range TrainConfig.seed accepts
            raise UserError(f"{option}: seeds must be in [0, 2^32), got {hi}")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:  # before building a list that cannot fit
            raise UserError(f"{option}: at most {MAX_SEEDS} seeds, got {text!r}")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise UserError(f"{option}: no seeds given")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{option}: duplicate seeds in {text!r}")
    return seeds


def parse_variants(text: str) -> list[str]:
    """Comma-separated names from :data:`VARIANTS`, deduplicated, in the order given."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    for v in names:
        if v not in VARIANTS:
            raise UserError(f"--variants: unknown {v!r}; choose from {', '.join(VARIANTS)}")
    if not names:
        raise UserError("--variants: nothing to run")
    return list(dict.fromkeys(names))


def parse_scales(text: str | None) -> list[float] | None:
    """``"1,10"`` -> [1.0, 10.0] (each >= 0); None stays None (the config's meta_scale)."""
    if text is None:
        return None
    try:
        scales = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--meta-scale: expected comma-separated numbers, got {text!r}") from None
    if not scales or any(not (s >= 0 and math.isfinite(s)) for s in scales):
        raise UserError(f"--meta-scale: expected numbers >= 0, got {text!r}")
    return list(dict.fromkeys(scales))


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ablation's own options (the CLI adds the data and config options)."""
    parser.add_argument("--seeds", default="10", metavar="N|LIST",
                        help="a count N (seeds 0..N-1, default 10) or a list such as 0,1,2 or "
                        "0-9 (one seed: 3-3)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), metavar="LIST",
                        help=f"rows to run (default: {','.join(DEFAULT_VARIANTS)}; also "
                        "none:sample, none:soft, none:port, which paired rows add themselves)")
    parser.add_argument("--meta-scale", dest="meta_scale", metavar="LIST",
                        help="weights of the MPL term to sweep, e.g. 1,10 (default: the config's)")
    parser.add_argument("--chaos-seeds", dest="chaos_seeds", metavar="LIST",
                        help="seeds rerun with a 1e-7 perturbation (default: the first seed)")
    parser.add_argument("--cpu-threads", dest="ablate_cpu_threads", type=int, default=1,
                        metavar="N", help="torch threads per run, fixed so runs are comparable "
                        "and repeatable (default 1)")
    parser.add_argument("--out", metavar="DIR",
                        help="directory for the runs and the table (default runs/ablate-<dataset>)")
    parser.add_argument("--report-only", dest="report_only", action="store_true",
                        help="train nothing: tabulate the runs already finished in --out")


def cmd_ablate(args: argparse.Namespace, flags: dict[str, Any]) -> AblationTable:
    """Run the ablation the parsed ``args`` describe (``flags``: the data options given)."""
    if args.ablate_cpu_threads < 1:
        raise UserError("--cpu-threads must be >= 1 (0, torch's default, varies with the machine)")
    seeds = parse_seeds(args.seeds)
    chaos = (parse_seeds(args.chaos_seeds, count=False, option="--chaos-seeds")
             if args.chaos_seeds else seeds[:1])
    return run_ablation(seeds=seeds, variants=parse_variants(args.variants), preset=args.preset,
                        config_file=args.config,
                        flags={**flags, "cpu_threads": args.ablate_cpu_threads}, sets=args.sets,
                        out=args.out, argv=args.argv, meta_scales=parse_scales(args.meta_scale),
                        chaos_seeds=chaos, report_only=args.report_only)


# ------------------------------------------------------------------------------------ runs
@dataclass
class Row:
    """A row of the table after expansion over meta scales."""

    name: str            # e.g. "mpl:loss_diff" or "mpl:loss_diff@x10"
    variant: Variant
    scale: float | None  # meta_scale of the run (None: no MPL term)
    control: str | None
    chaos_of: str | None = None
    seeds: list[int] = field(default_factory=list)


def _suffix(scale: float) -> str:
    return "" if scale == 1.0 else f"@x{scale:g}"


def expand_rows(variants: list[str], scales: list[float], seeds: list[int],
                chaos_seeds: list[int]) -> list[Row]:
    """Rows for ``variants`` at every meta scale, plus the controls paired rows need."""
    names = list(variants)
    for v in variants:  # controls and the rows chaos runs are compared with come along
        for need in (VARIANTS[v].control, VARIANTS[v].chaos_of):
            if need and need not in names:
                names.append(need)
    rows: list[Row] = []
    for v in names:
        var = VARIANTS[v]
        row_scales: list[float | None] = list(scales) if var.meta else [None]
        if var.chaos_of:
            row_scales = row_scales[:1]
        for s in row_scales:
            sfx = _suffix(s) if s is not None else ""
            ctl = var.control
            chaos_of = None
            if var.chaos_of:
                chaos_of = var.chaos_of + (sfx if VARIANTS[var.chaos_of].meta else "")
            rows.append(Row(name=v + sfx, variant=var, scale=s, control=ctl, chaos_of=chaos_of,
                            seeds=list(chaos_seeds if var.chaos_of else seeds)))
    return rows


def _run_key(row: Row) -> str:
    base = row.variant.run or row.name.split("@")[0]
    return base + (_suffix(row.scale) if row.scale is not None else "")


def _run_dir(out: str, key: str, seed: int) -> str:
    return os.path.join(out, f"{key.replace(':', '-').replace('@', '-')}-s{seed}")


def _row_config(base: TrainConfig, row: Row, seed: int, out: str) -> TrainConfig:
    changes: dict[str, Any] = {**row.variant.overrides, "seed": seed, "progress": "none",
                               "out": _run_dir(out, _run_key(row), seed)}
    if row.scale is not None and row.scale != getattr(base, "meta_scale", 1.0):
        changes["meta_scale"] = row.scale
    cfg = apply_overrides(base, changes, "ablate")
    validate(cfg)
    return cfg


# Fields added to the config after runs may have been written, with the value that does
# exactly what the code did before the field existed: a saved config without them still
# describes the same run. (l_old_forward is NOT here: its default changed what a run does.)
_NO_OP_FIELDS: dict[str, Any] = {"meta_scale": 1.0, "init_perturbation": 0.0, "check_memory": True,
                                 "keep": 0, "mean": None, "std": None, "pretrained": None,
                                 "pretrained_student": "same", "pretrained_sha256": None,
                                 "backbone_lr_scale": None}
# Fields the run derives from the data when the config leaves them null (the auto recipe:
# ``labels: null``): a run saves the concrete value, which the null asked for.
_DERIVED_FIELDS = ("labels",)


def _saved_config(path: str) -> Any:
    """A run's config.yaml as plain data (mplfast.safe_yaml); one line if it is unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return safe_yaml.load(f)
    except yaml.YAMLError as e:  # a damaged (or hostile) config.yaml: one line, not a traceback
        why = " ".join(str(e).split())[:200]
        raise UserError(f"{path} is not a readable config ({why}); use another --out") from None


def _plain(cfg: TrainConfig) -> Any:
    """``cfg`` as config.yaml holds it (after a YAML round trip)."""
    return safe_yaml.load(yaml.safe_dump(cfg.to_dict()))


def _same_config(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a saved config.yaml describes the run ``current`` asks for."""
    def strip(d: dict[str, Any], ref: dict[str, Any], top: bool) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(ref.get(k), dict):
                v = strip(v, ref[k], False)
            if k in _NO_OP_FIELDS and k not in ref and v == _NO_OP_FIELDS[k]:
                continue
            if top and k in _DERIVED_FIELDS and v is None and k in ref:
                v = ref[k]  # derived from the data by the saved run: what null asks for
            out[k] = v
        return out

    return isinstance(saved, dict) and strip(current, saved, True) == saved


LOCK_NAME = "ablate.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_run(run_dir: str) -> bool:
    """Take ``run_dir``'s lock (True), or find it held by another live process (False).

    Several ablations may share one ``--out`` (e.g. one per range of seeds, or a second
    command adding rows): whoever holds a run's lock trains it, the others wait for its
    summary. A lock whose process died is stale and taken over (the run then resumes).
    """
    os.makedirs(run_dir, exist_ok=True)
    lock = os.path.join(run_dir, LOCK_NAME)
    mine = f"{lock}.{os.getpid()}"
    with open(mine, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    try:
        while True:
            try:
                os.link(mine, lock)  # atomic: fails if the lock exists
                return True
            except FileExistsError:
                try:
                    with open(lock, encoding="utf-8") as f:
                        pid = int(f.read().strip())
                except (OSError, ValueError):
                    continue  # removed meanwhile: try again
                if pid == os.getpid() or _alive(pid):
                    return pid == os.getpid()
                try:
                    os.remove(lock)  # stale
                except FileNotFoundError:
                    pass
    finally:
        os.remove(mine)


def _finished(cfg: TrainConfig) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``cfg``, else None."""
    assert cfg.out is not None
    summary_path = os.path.join(cfg.out, "summary.json")
    config_path = os.path.join(cfg.out, "config.yaml")
    if not (os.path.isfile(summary_path) and os.path.isfile(config_path)):
        return None
    if not _same_config(_saved_config(config_path), _plain(cfg)):
        return None
    with open(summary_path, encoding="utf-8") as f:
        return json.load(f)


def _execute(cfg: TrainConfig, poll_s: float = 5.0) -> tuple[dict[str, Any], bool]:
    """Run (or reuse, or resume) one configuration; (its summary, whether it was reused)."""
    import time

    from mplfast.train import checkpoint as ckpt_io
    from mplfast.train.runner import run

    assert cfg.out is not None
    summary_path = os.path.join(cfg.out, "summary.json")
    config_path = os.path.join(cfg.out, "config.yaml")
    waiting = False
    while True:
        if os.path.isfile(config_path):
            same = _same_config(_saved_config(config_path), _plain(cfg))
            if not same:
                raise UserError(f"{cfg.out} holds a run with a different config; use another --out")
            if os.path.isfile(summary_path):
                with open(summary_path, encoding="utf-8") as f:
                    return json.load(f), True
        if claim_run(cfg.out):
            break
        if not waiting:
            print(f"[ablate] {cfg.out} is being trained by another process; waiting", flush=True)
            waiting = True
        time.sleep(poll_s)
    try:
        if os.path.isfile(summary_path):  # finished between the check and the claim
            with open(summary_path, encoding="utf-8") as f:
                return json.load(f), True
        ckpt_path = os.path.join(cfg.out, ckpt_io.CHECKPOINT_NAME)
        state = ckpt_io.load(ckpt_path) if os.path.isfile(ckpt_path) else None
        result = run(cfg, resume_state=state)
        if result.interrupted:
            raise KeyboardInterrupt  # the CLI reports it; rerunning the command resumes
        return result.summary, False
    finally:
        os.remove(os.path.join(cfg.out, LOCK_NAME))


def student_acc(summary: dict[str, Any]) -> float:
    """The student's accuracy as the ablation compares it: EMA weights when there are any."""
    return float(summary["ema_acc"] if summary.get("ema_acc") is not None else summary["student_acc"])


def _mean_h(run_dir: str) -> float | None:
    """Mean of the logged h over the run (None when nothing was logged)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    hs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("phase") == "train" and rec.get("h") is not None:
                hs.append(float(rec["h"]))
    return sum(hs) / len(hs) if hs else None


def machine_info(cpu_threads: int) -> dict[str, Any]:
    """What the numbers were measured on (CPU model, cores, AVX-512, torch, threads)."""
    import torch

    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    info = {"cpu": model, "logical_cpus": os.cpu_count(), "avx512": "avx512f" in flags.split(),
            "torch": torch.__version__, "cpu_threads": cpu_threads, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def _machine_text(m: dict[str, Any]) -> str:
    text = (f"{m['cpu']}, {m['logical_cpus']} logical CPUs{', AVX-512' if m['avx512'] else ''}; "
            f"torch {m['torch']}, {m['cpu_threads']} CPU thread(s) per run")
    return text + (f"; GPU {m['cuda']}" if m["cuda"] else "")


def _test_size(cfg: TrainConfig) -> int:
    from mplfast.train.builders import load_data

    return int(load_data(cfg).test_labels.numel())


# ------------------------------------------------------------------------------------ table
@dataclass
class AblationTable:
    """The aggregated result and where it was written."""

    markdown: str
    md_path: str
    json_path: str
    plot_path: str | None
    rows: list[dict[str, Any]]


def run_ablation(*, seeds: list[int], variants: list[str], preset: str | None,
                 config_file: str | None, flags: dict[str, Any], sets: list[str],
                 out: str | None, argv: list[str], meta_scales: list[float] | None = None,
                 chaos_seeds: list[int] | None = None, report_only: bool = False) -> AblationTable:
    """Run every (row, seed), seed by seed; after each seed rewrite the table, JSON and plot.

    ``report_only``: train nothing; tabulate the runs already finished in ``out`` (each row
    over the seeds it and the runs it is paired with have finished).
    """
    base = resolve(preset=preset, config_file=config_file, flags=flags, sets=sets)
    # once for every run: the weights' hash and input config, so each run's saved config is
    # compared (reuse) against the concrete values it records
    base = pretrained.resolve(base)
    out = out or os.path.join("runs", f"ablate-{base.dataset}")
    os.makedirs(out, exist_ok=True)
    scales = meta_scales if meta_scales is not None else [float(getattr(base, "meta_scale", 1.0))]
    rows = expand_rows(variants, scales, seeds, chaos_seeds if chaos_seeds is not None else seeds[:1])
    n_test = _test_size(base)
    command = "mplfast " + shlex.join(argv)
    machine = machine_info(base.cpu_threads)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    order = list(dict.fromkeys(seeds + [s for r in rows for s in r.seeds]))
    table: AblationTable | None = None
    if report_only:
        for seed in order:
            for row in rows:
                cfg = _row_config(base, row, seed, out)
                s = _finished(cfg) if seed in row.seeds else None
                if s is not None:
                    runs[(_run_key(row), seed)] = dict(s, run_dir=cfg.out, mean_h=_mean_h(cfg.out))
        if not runs:
            raise UserError(f"--report-only: no finished runs of these rows in {out}")
        return _write(rows, runs, seeds, base, out, command, machine, n_test)
    for seed in order:
        for row in rows:
            if seed not in row.seeds:
                continue
            key = _run_key(row)
            if (key, seed) in runs:
                continue
            cfg = _row_config(base, row, seed, out)
            print(f"[ablate] {key} seed {seed} -> {cfg.out}", flush=True)
            s, reused = _execute(cfg)
            s = dict(s, run_dir=cfg.out, mean_h=_mean_h(cfg.out))
            runs[(key, seed)] = s
            how = "reused finished run" if reused else f"{s['wall_s']:.0f} s"
            teacher = f", teacher {s['teacher_acc']:.2f}" if "teacher_acc" in s else ""
            print(f"[ablate] {key} seed {seed}: student {student_acc(s):.2f}{teacher} ({how})",
                  flush=True)
        done = [s for s in seeds if all((_run_key(r), s) in runs for r in rows if s in r.seeds)]
        if done and seed in seeds:
            table = _write(rows, runs, done, base, out, command, machine, n_test)
    assert table is not None
    return table


def _acc(row: Row, s: dict[str, Any]) -> float:
    return float(s["teacher_acc"]) if row.variant.reports == "teacher" else student_acc(s)


def _aggregate(rows: list[Row], runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int],
               n_test: int) -> list[dict[str, Any]]:
    by_name = {r.name: r for r in rows}
    out = []
    for r in rows:
        # a row's seeds: those where it and the runs it is paired with all finished
        partners = [by_name[n] for n in (r.control, r.chaos_of) if n and n in by_name]
        rs = [s for s in r.seeds if s in seeds and (_run_key(r), s) in runs
              and all((_run_key(o), s) in runs for o in partners)]
        if not rs:
            continue
        sums = [runs[(_run_key(r), s)] for s in rs]
        accs = [_acc(r, s) for s in sums]
        mean, std = mean_std(accs)
        teachers = [float(s["teacher_acc"]) for s in sums if s.get("teacher_acc") is not None]
        hs = [s["mean_h"] for s in sums if s.get("mean_h") is not None]
        rec: dict[str, Any] = {
            "row": r.name, "reports": r.variant.reports,
            "description": r.variant.description + (f", meta_scale {r.scale:g}"
                                                    if r.scale not in (None, 1.0) else ""),
            "meta_scale": r.scale, "seeds": rs, "acc": accs, "mean": mean, "std": std,
            "binomial_se": binomial_se(mean, n_test),
            "teacher_acc": teachers if r.variant.reports == "student" and len(teachers) == len(rs) else None,
            "mean_h": statistics.fmean(hs) if len(hs) == len(rs) and r.variant.meta else None,
            "run_dirs": [s["run_dir"] for s in sums],
        }
        if rec["teacher_acc"]:
            rec["teacher_mean"], rec["teacher_std"] = mean_std(rec["teacher_acc"])

        def vs(other: str) -> Paired | None:
            o = by_name[other]
            both = [i for i, s in enumerate(rs) if (_run_key(o), s) in runs]
            if not both:
                return None
            return paired([accs[i] for i in both], [_acc(o, runs[(_run_key(o), rs[i])]) for i in both])

        if r.control and r.control in by_name:
            rec["control"] = r.control
            rec["vs_control"] = vs(r.control)
        if r.chaos_of:
            rec["chaos_of"] = r.chaos_of
            rec["vs_unperturbed"] = vs(r.chaos_of)
        if r.name != "supervised" and "supervised" in by_name and not r.chaos_of:
            rec["vs_supervised"] = vs("supervised")
            if rec["vs_supervised"] is None:
                del rec["vs_supervised"]
        out.append(rec)
    return out


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def _paired_cell(p: Paired | None) -> str:
    if p is None:
        return "—"
    wl = f" ({p.wins}/{p.ties}/{p.losses})" if p.n > 1 else ""
    return f"{p.ci_text()} (sd {p.std:.2f}){wl}" if p.n > 1 else p.ci_text()


def _markdown(aggr: list[dict[str, Any]], cfg: TrainConfig, seeds: list[int], command: str,
              machine: dict[str, Any], n_test: int) -> str:
    ema = "EMA weights" if cfg.ema_decay > 0 and cfg.eval_ema else "plain weights"
    lines = [
        f"Ablation on {cfg.dataset}, {cfg.labels} labels, model {cfg.model}"
        + (f" starting from {cfg.pretrained} (sha256 {(cfg.pretrained_sha256 or '?')[:12]}..., "
           f"pretrained student: {cfg.pretrained_student})" if cfg.pretrained else "")
        + f", {cfg.steps} steps per "
        f"run, seeds {_seed_text(seeds)} (n: the seeds a row has finished, with the runs it is "
        "paired with). Top-1 accuracy (%) on the "
        f"{n_test} test images, mean ± sample std over seeds; students are their {ema}, teachers "
        "are reported in their own column.",
        "",
        "Δ columns are paired over seeds: mean difference [95 % t-interval] (sd of the "
        "differences) (wins/ties/losses). SE is the binomial standard error of one run's "
        f"accuracy on {n_test} test images.",
        "",
        "| row | n | student | teacher | SE | mean h | Δ vs its h = 0 control | Δ vs supervised |",
        "|---|---|---|---|---|---|---|---|",
    ]
    chaos = []
    for r in aggr:
        if "vs_unperturbed" in r:
            chaos.append(r)
            continue
        acc = _pm(r["mean"], r["std"])
        student, teacher = (acc, "—") if r["reports"] == "student" else ("—", acc)
        if r.get("teacher_acc"):
            teacher = _pm(r["teacher_mean"], r["teacher_std"])
        ctl = _paired_cell(r.get("vs_control"))
        if "control" in r:
            ctl += f" vs `{r['control']}`"
        h = f"{r['mean_h']:+.4f}" if r.get("mean_h") is not None else "—"
        lines.append(f"| {r['description']} (`{r['row']}`) | {len(r['seeds'])} | {student} | {teacher} | "
                     f"{r['binomial_se']:.2f} | {h} | {ctl} | {_paired_cell(r.get('vs_supervised'))} |")
    if chaos:
        lines += ["", f"Chaos: the same run with {CHAOS_PERTURBATION:g} added to one weight of the "
                  "student at initialisation (nothing else changes).", "",
                  "| row | seeds | perturbed accuracy | Δ vs the unperturbed run |", "|---|---|---|---|"]
        for r in chaos:
            d = r["vs_unperturbed"]
            per = ", ".join(f"{x:+.2f}" for x in d.diffs)
            lines.append(f"| {r['description']} (`{r['row']}` vs `{r['chaos_of']}`) | "
                         f"{_seed_text(r['seeds'])} | {', '.join(f'{a:.2f}' for a in r['acc'])} | {per} |")
    lines += ["", "Per seed (" + _seed_text(seeds) + "):", "",
              "| row | " + " | ".join(f"s{s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for r in aggr:
        if "vs_unperturbed" in r:
            continue
        by_seed = dict(zip(r["seeds"], r["acc"]))
        lines.append(f"| `{r['row']}` | " + " | ".join(
            f"{by_seed[s]:.2f}" if s in by_seed else "—" for s in seeds) + " |")
    lines += ["", f"Machine: {_machine_text(machine)}.", "", "Command:", "", "```", command, "```", ""]
    return "\n".join(lines)


def _seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _plot(aggr: list[dict[str, Any]], path: str, title: str) -> str | None:
    """Paired differences vs the h = 0 control (dots per seed, bar: 95 % interval)."""
    items = [(r["row"], r["vs_control"]) for r in aggr if r.get("vs_control") is not None]
    items += [(r["row"] + " vs unperturbed", r["vs_unperturbed"]) for r in aggr
              if r.get("vs_unperturbed") is not None]
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(items) + 1.4))
    for i, (name, p) in enumerate(items):
        y = len(items) - 1 - i
        ax.scatter(p.diffs, [y] * len(p.diffs), s=12, color="0.6", zorder=2)
        if not math.isnan(p.lo):
            ax.errorbar([p.mean], [y], xerr=[[p.mean - p.lo], [p.hi - p.mean]], fmt="o",
                        color="C0" if p.hi < 0 or p.lo > 0 else "C1", capsize=4, zorder=3)
        else:
            ax.scatter([p.mean], [y], color="C1", zorder=3)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([n for n, _ in reversed(items)])
    ax.set_xlabel("paired Δ accuracy vs the h = 0 control (points); bar: 95 % t-interval")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write(rows: list[Row], runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int],
           base: TrainConfig, out: str, command: str, machine: dict[str, Any],
           n_test: int) -> AblationTable:
    aggr = _aggregate(rows, runs, seeds, n_test)
    md = _markdown(aggr, base, seeds, command, machine, n_test)
    md_path, json_path = os.path.join(out, "ablation.md"), os.path.join(out, "ablation.json")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(md)
    doc = {"command": command, "machine": machine, "seeds": seeds, "test_images": n_test,
           "config": base.to_dict(),
           "rows": [{k: (v.to_dict() if isinstance(v, Paired) else v) for k, v in r.items()}
                    for r in aggr]}
    from mplfast.train.fileio import write_text_atomic

    write_text_atomic(json_path, json.dumps(_json_safe(doc), indent=1))
    plot = _plot(aggr, os.path.join(out, "ablation.png"),
                 f"{base.dataset}, {base.labels} labels, {base.steps} steps, n = {len(seeds)} seeds")
    return AblationTable(markdown=md, md_path=md_path, json_path=json_path, plot_path=plot, rows=aggr)


def _json_safe(o: Any) -> Any:
    """JSON has no NaN: a std over one seed (NaN) is written as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o
