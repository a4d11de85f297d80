"""``mplfast ablate``: supervised, UDA and MPL per meta signal over several seeds.

Every variant runs with the same config (preset, steps, batch sizes, schedule) except the
method / meta signal, so the table answers "does the MPL term help" and nothing else:

    supervised     the student architecture on the labeled images only (weak augmentation)
    uda            the teacher trained with UDA alone (MPLStep with h = 0)
    mpl:none       the student of that same run: learns from a UDA teacher's pseudo labels,
                   the teacher never sees the student (the control for the MPL term)
    mpl:loss_diff  MPL with h = L_old - L_new
    mpl:grad_dot   MPL with h = -<grad L_new(theta'), theta' - theta>

``uda`` and ``mpl:none`` are one and the same run (method uda trains exactly the h = 0 MPL
step), reported twice: once for its teacher, once for its student.
Finished runs are reused (same resolved config), stopped ones resumed.
"""
from __future__ import annotations

import csv
import math
import os
import shlex
import statistics
from dataclasses import dataclass, replace
from typing import Any

import yaml

from mplfast import safe_yaml
from mplfast.errors import UserError
from mplfast.train.config import TrainConfig, resolve

VARIANTS: dict[str, str] = {
    "supervised": "Supervised (labeled only)",
    "uda": "UDA teacher",
    "mpl:none": "UDA teacher -> student, h = 0 (no MPL term)",
    "mpl:loss_diff": "MPL, h = L_old - L_new",
    "mpl:grad_dot": "MPL, h = -<grad L_new, step>",
}
CONTROL = "mpl:none"


@dataclass
class AblationTable:
    """The aggregated result and where it was written."""

    markdown: str
    md_path: str
    csv_path: str
    runs_csv_path: str
    rows: list[dict[str, Any]]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``"5"`` -> [0..4]."""
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers or a count, got {text!r}") from None
    if len(parts) == 1 and "," not in text:
        if parts[0] < 1:
            raise UserError(f"--seeds: a count must be >= 1, got {parts[0]}")
        parts = list(range(parts[0]))
    if not parts:
        raise UserError("--seeds: no seeds given")
    if len(set(parts)) != len(parts):
        raise UserError(f"--seeds: duplicate seeds in {text!r}")
    return parts


def parse_variants(text: str) -> list[str]:
    """Comma-separated names from :data:`VARIANTS`."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    for v in names:
        if v not in VARIANTS:
            raise UserError(f"--variants: unknown {v!r}; choose from {', '.join(VARIANTS)}")
    if not names:
        raise UserError("--variants: nothing to run")
    return list(dict.fromkeys(names))


def _run_key(variant: str, cfg: TrainConfig) -> str:
    # mpl:none shares the uda run unless a finetune stage would finetune different models
    if variant == "mpl:none" and cfg.finetune_epochs == 0:
        return "uda"
    return variant


def _variant_config(base: TrainConfig, run_key: str, seed: int, out: str) -> TrainConfig:
    method, _, signal = run_key.partition(":")
    changes: dict[str, Any] = dict(method=method, seed=seed,
                                   out=os.path.join(out, f"{run_key.replace(':', '-')}-s{seed}"),
                                   progress="none")
    if method == "mpl":
        changes["meta_signal"] = signal
    if method == "uda":
        changes["meta_signal"] = "none"
    return replace(base, **changes)


def _execute(cfg: TrainConfig) -> tuple[dict[str, Any], bool]:
    """Run (or reuse, or resume) one configuration; (its summary, whether it was reused)."""
    import json

    from mplfast.train import checkpoint as ckpt_io
    from mplfast.train.runner import run

    assert cfg.out is not None
    summary_path = os.path.join(cfg.out, "summary.json")
    config_path = os.path.join(cfg.out, "config.yaml")
    if os.path.isfile(summary_path) and os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                same = safe_yaml.load(f) == safe_yaml.load(yaml.safe_dump(cfg.to_dict()))
        except yaml.YAMLError as e:  # a damaged (or hostile) config.yaml: one line, not a traceback
            why = " ".join(str(e).split())[:200]
            raise UserError(f"{config_path} is not a readable config ({why}); use another --out") from None
        if same:
            with open(summary_path, encoding="utf-8") as f:
                return json.load(f), True
        raise UserError(f"{cfg.out} holds a run with a different config; use another --out")
    ckpt_path = os.path.join(cfg.out, ckpt_io.CHECKPOINT_NAME)
    state = ckpt_io.load(ckpt_path) if os.path.isfile(ckpt_path) else None
    result = run(cfg, resume_state=state)
    if result.interrupted:
        raise KeyboardInterrupt  # the CLI reports it; rerunning the command resumes
    return result.summary, False


def _student_headline(summary: dict[str, Any]) -> float:
    return float(summary["ema_acc"] if "ema_acc" in summary else summary["student_acc"])


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def run_ablation(*, seeds: list[int], variants: list[str], preset: str | None,
                 config_file: str | None, flags: dict[str, Any], sets: list[str],
                 out: str | None, argv: list[str]) -> AblationTable:
    """Run every (variant, seed), then write ``ablation.md`` / ``ablation.csv`` / ``runs.csv``."""
    base = resolve(preset=preset, config_file=config_file, flags=flags, sets=sets)
    out = out or os.path.join("runs", f"ablate-{base.dataset}")
    os.makedirs(out, exist_ok=True)
    per_variant: dict[str, dict[int, float]] = {v: {} for v in variants}
    runs: list[dict[str, Any]] = []
    cache: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in seeds:
        for variant in variants:
            key = _run_key(variant, base)
            cfg = _variant_config(base, key, seed, out)
            if (key, seed) not in cache:
                print(f"[ablate] {key} seed {seed} -> {cfg.out}", flush=True)
                cache[(key, seed)], reused = _execute(cfg)
                s = cache[(key, seed)]
                how = "reused finished run" if reused else f"{s['wall_s']:.0f} s"
                print(f"[ablate] {key} seed {seed}: test_acc {s['test_acc']:.2f} ({how})", flush=True)
            s = cache[(key, seed)]
            acc = _student_headline(s) if (variant == "mpl:none" and key == "uda") else float(s["test_acc"])
            per_variant[variant][seed] = acc
            runs.append({"variant": variant, "seed": seed, "acc": acc, "run_dir": cfg.out,
                         "teacher_acc": s.get("teacher_acc"), "student_acc": s.get("student_acc"),
                         "ema_acc": s.get("ema_acc"), "finetune_acc": s.get("finetune_acc"),
                         "wall_s": s.get("wall_s")})
    rows = []
    for v in variants:
        accs = [per_variant[v][s] for s in seeds]
        mean, std = _mean_std(accs)
        row: dict[str, Any] = {"variant": v, "description": VARIANTS[v], "n": len(accs),
                               "mean": mean, "std": std, "per_seed": accs}
        if v.startswith("mpl:") and v != CONTROL and CONTROL in per_variant:
            diffs = [per_variant[v][s] - per_variant[CONTROL][s] for s in seeds]
            row["delta_mean"], row["delta_std"] = _mean_std(diffs)
        if v != "supervised" and "supervised" in per_variant:
            diffs = [per_variant[v][s] - per_variant["supervised"][s] for s in seeds]
            row["vs_sup_mean"], row["vs_sup_std"] = _mean_std(diffs)
        rows.append(row)
    command = "mplfast " + shlex.join(argv)
    md = _markdown(rows, base, seeds, command)
    md_path, csv_path, runs_path = (os.path.join(out, n) for n in ("ablation.md", "ablation.csv", "runs.csv"))
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(md)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["variant", "description", "n", "mean", "std", "delta_vs_control_mean",
                    "delta_vs_control_std", "delta_vs_supervised_mean", "delta_vs_supervised_std",
                    *[f"seed_{s}" for s in seeds]])
        for r in rows:
            w.writerow([r["variant"], r["description"], r["n"], f"{r['mean']:.4f}", f"{r['std']:.4f}",
                        _f(r.get("delta_mean")), _f(r.get("delta_std")),
                        _f(r.get("vs_sup_mean")), _f(r.get("vs_sup_std")),
                        *[f"{a:.4f}" for a in r["per_seed"]]])
    with open(runs_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(runs)
    return AblationTable(markdown=md, md_path=md_path, csv_path=csv_path, runs_csv_path=runs_path,
                         rows=rows)


def _f(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _markdown(rows: list[dict[str, Any]], cfg: TrainConfig, seeds: list[int], command: str) -> str:
    lines = [
        f"Ablation on {cfg.dataset}, {cfg.labels} labels, model {cfg.model}, {cfg.steps} steps "
        f"per run, seeds {', '.join(map(str, seeds))} (top-1 test accuracy, %, mean ± sample std; "
        "student numbers are its EMA weights).",
        "",
        "| variant | accuracy | Δ vs supervised | Δ vs h = 0 control (paired) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        sup = _pm(r["vs_sup_mean"], r["vs_sup_std"]) if "vs_sup_mean" in r else "—"
        ctl = _pm(r["delta_mean"], r["delta_std"]) if "delta_mean" in r else "—"
        lines.append(f"| {r['description']} (`{r['variant']}`) | {_pm(r['mean'], r['std'])} | "
                     f"{sup} | {ctl} |")
    lines += ["", "Command:", "", "```", command, "```", ""]
    return "\n".join(lines)
