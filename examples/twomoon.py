"""The Meta Pseudo Labels paper's TwoMoon illustration, run with mplfast's own ``MPLStep``.

2,000 training points of two interleaved moons, 3 labels per moon, MLP teacher and student,
no UDA (lambda_u = 0), no augmentation (both unlabeled "views" are the same points). Accuracy
is measured on a fresh 2,000-point draw of the same distribution, never used to choose
anything. Rows, each over the same seeds (same data, labels, initial weights and batches):

    supervised    the student trained on the 6 labeled points alone
    pl:<mode>     pseudo labels from a teacher that never sees the student (MPLStep with
                  meta_signal="none": the teacher learns from the 6 labels, the student from
                  its hard / sampled / soft labels) -- the control for the MPL term
    mpl:<mode>    MPL, h = L_old - L_new (hard, sample) or the exact meta-gradient (soft)

    python examples/twomoon.py --out runs/twomoon            # table + figure, < 5 min on 2 cores
    python examples/twomoon.py --out runs/twomoon --explore  # + the search for a setting where
                                                             #   the feedback beats pseudo labels

Writes ``twomoon.md`` / ``twomoon.json`` (per-seed numbers, paired differences with 95 %
t-intervals) and ``twomoon.png`` (decision boundaries of the first seed); every finished run
is kept in ``runs.jsonl``, so the same command again (or with ``--explore`` added) reuses them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from mplfast import MPLConfig, MPLStep
from mplfast.train.stats import mean_std, paired

N_POINTS, LABELS_PER_CLASS, NOISE = 2000, 3, 0.1
GRID = (-1.6, 2.6, -1.1, 1.6)  # x0, x1, y0, y1 of the decision-boundary figure


@dataclass(frozen=True)
class Setting:
    """One row: how teacher and student are trained (defaults: the illustration's)."""

    name: str
    mode: str = "hard"             # supervised | hard | sample | soft
    meta_signal: str = "loss_diff"  # loss_diff | grad_dot | none (pseudo labels, h = 0)
    meta_sign: int = 1
    meta_scale: float = 1.0
    baseline: float = 0.0          # meta_baseline_decay
    steps: int = 1000
    teacher_lr: float = 0.1
    student_lr: float = 0.1
    teacher_momentum: float = 0.9
    student_momentum: float = 0.9
    unlabeled_batch: int = 128
    mpl_only_after: int = -1       # >= 0: from this step on L_sup no longer trains the teacher
    control: str | None = None     # the h = 0 row this one is paired against

    def as_control(self) -> "Setting":
        """The h = 0 twin: same labels and optimisation, no MPL term (nor MPL-only teacher)."""
        return replace(self, name=f"pl:{self.mode}|{self._opt_key()}", meta_signal="none",
                       meta_sign=1, meta_scale=1.0, baseline=0.0, mpl_only_after=-1, control=None)

    def _opt_key(self) -> str:
        return (f"steps={self.steps},tlr={self.teacher_lr:g},slr={self.student_lr:g},"
                f"tmom={self.teacher_momentum:g},smom={self.student_momentum:g},U={self.unlabeled_batch}")


def make_data(seed: int) -> dict[str, torch.Tensor]:
    """Training moons (2,000), 3 labeled indices per moon, and a fresh 2,000-point test draw."""
    from sklearn.datasets import make_moons

    x, y = make_moons(N_POINTS, noise=NOISE, random_state=seed)
    xt, yt = make_moons(N_POINTS, noise=NOISE, random_state=1_000_003 + seed)
    rng = np.random.default_rng(seed)
    lab = np.concatenate([rng.choice(np.flatnonzero(y == c), LABELS_PER_CLASS, replace=False)
                          for c in (0, 1)])
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"x": f(x), "y": torch.tensor(y), "x_l": f(x[lab]), "y_l": torch.tensor(y[lab]),
            "x_test": f(xt), "y_test": torch.tensor(yt)}


def mlp(hidden: int = 64) -> nn.Module:
    """2 -> hidden -> hidden -> 2, ReLU: no batch norm and no dropout."""
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))


class LabeledGradGate(nn.Module):
    """Teacher wrapper: once ``on``, the first ``n`` rows' logits (the labeled batch, which
    MPLStep puts first) are detached, so L_sup no longer trains the teacher; only the MPL term
    (and a zero UDA term) does."""

    def __init__(self, net: nn.Module, n: int) -> None:
        super().__init__()
        self.net, self.n, self.on = net, n, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return torch.cat([z[:self.n].detach(), z[self.n:]]) if self.on else z


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def _grid_pred(model: nn.Module, n: int = 150) -> np.ndarray:
    xs, ys = np.linspace(GRID[0], GRID[1], n), np.linspace(GRID[2], GRID[3], n)
    g = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=torch.float32)
    with torch.no_grad():
        return model(g).argmax(1).reshape(n, n).numpy().astype(np.uint8)


def run_one(setting: Setting, seed: int, grid: bool = False) -> dict[str, Any]:
    """Train one setting with one seed; accuracies of student and teacher on the test draw."""
    torch.set_num_threads(1)
    d = make_data(seed)
    torch.manual_seed(seed)
    teacher_net, student = mlp(), mlp()  # same initial weights in every row of a seed
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"name": setting.name, "seed": seed}
    if setting.mode == "supervised":
        opt = torch.optim.SGD(student.parameters(), lr=setting.student_lr,
                              momentum=setting.student_momentum)
        for _ in range(setting.steps):
            loss = nn.functional.cross_entropy(student(d["x_l"]), d["y_l"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        teacher = LabeledGradGate(teacher_net, d["x_l"].shape[0])
        t_opt = torch.optim.SGD(teacher.parameters(), lr=setting.teacher_lr,
                                momentum=setting.teacher_momentum)
        s_opt = torch.optim.SGD(student.parameters(), lr=setting.student_lr,
                                momentum=setting.student_momentum)
        cfg = MPLConfig(lambda_u=0.0, uda_steps=1, label_smoothing=0.0,
                        meta_signal=setting.meta_signal, meta_sign=setting.meta_sign,
                        meta_scale=setting.meta_scale, meta_baseline_decay=setting.baseline,
                        pseudo_label=setting.mode, precision="fp32")
        step = MPLStep(teacher, student, t_opt, s_opt, cfg, seed=seed)
        hs = []
        for i in range(setting.steps):
            teacher.on = 0 <= setting.mpl_only_after <= i
            idx = torch.randint(0, N_POINTS, (setting.unlabeled_batch,), generator=gen)
            x_u = d["x"][idx]
            m = step(d["x_l"], d["y_l"], x_u, x_u)
            hs.append(m["h"])
        h = torch.stack(hs)
        out.update(mean_h=float(h.mean()), mean_abs_h=float(h.abs().mean()),
                   teacher_acc=_accuracy(teacher_net, d["x_test"], d["y_test"]))
        if grid:
            out["teacher_grid"] = _grid_pred(teacher_net).tolist()
    out["student_acc"] = _accuracy(student, d["x_test"], d["y_test"])
    if grid:
        out["grid"] = _grid_pred(student).tolist()
    out["seconds"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- the experiments
def default_settings(steps: int) -> list[Setting]:
    """The illustration: supervised, pseudo labels and MPL in every label mode."""
    rows = [Setting("supervised", mode="supervised", steps=steps)]
    for mode in ("hard", "sample", "soft"):
        mpl = Setting(f"mpl:{mode}", mode=mode, steps=steps)
        pl = replace(mpl.as_control(), name=f"pl:{mode}")
        rows += [pl, replace(mpl, control=pl.name)]
    return rows


def explore_settings(steps: int) -> list[Setting]:
    """Every setting tried in the search for a win of the feedback over pseudo labels."""
    out: list[Setting] = []

    def add(name: str, **kw: Any) -> None:
        s = Setting(name, steps=kw.pop("steps", steps), **kw)
        out.append(replace(s, control=s.as_control().name))  # paired with its own h = 0 twin

    for mode in ("hard", "sample", "soft"):
        add(f"flip:{mode}", mode=mode, meta_sign=-1)                 # the sign test at x1
    for mode in ("soft", "sample"):                                  # weighted up, both signs
        add(f"{mode}:x10", mode=mode, meta_scale=10.0)
        add(f"flip:{mode}:x10", mode=mode, meta_scale=10.0, meta_sign=-1)
    add("sample:baseline0.9", mode="sample", baseline=0.9)
    add("sample:x10:baseline0.9", mode="sample", meta_scale=10.0, baseline=0.9)
    for mode in ("soft", "sample"):
        for sc in (1.0, 10.0):
            sfx = "" if sc == 1.0 else f":x{sc:g}"
            add(f"{mode}:student_sgd{sfx}", mode=mode, student_momentum=0.0, student_lr=0.5,
                meta_scale=sc)                                         # momentum-free student
            add(f"{mode}:mpl_only_after200{sfx}", mode=mode, mpl_only_after=200, meta_scale=sc)
        add(f"{mode}:teacher_lr0.5", mode=mode, teacher_lr=0.5)
    add("hard:grad_dot", mode="hard", meta_signal="grad_dot")
    add("hard:x10", mode="hard", meta_scale=10.0)
    for mode in ("soft", "sample"):
        add(f"{mode}:x100", mode=mode, meta_scale=100.0)
        add(f"flip:{mode}:x100", mode=mode, meta_scale=100.0, meta_sign=-1)
    for mode in ("soft", "sample"):
        add(f"{mode}:steps{3 * steps}", mode=mode, steps=3 * steps)
    for mode in ("soft", "sample"):  # the sign test of the momentum-free x10 settings
        add(f"flip:{mode}:student_sgd:x10", mode=mode, student_momentum=0.0, student_lr=0.5,
            meta_scale=10.0, meta_sign=-1)
    return out


def _with_controls(settings: list[Setting]) -> list[Setting]:
    """``settings`` with each one's h = 0 twin inserted after the first setting that needs it."""
    out: list[Setting] = []
    names = {s.name for s in settings}
    for s in settings:
        out.append(s)
        if s.control and s.control not in names:
            out.append(s.as_control())
            names.add(s.control)
    return out


def _key(s: Setting) -> str:
    """What makes two settings the same run (names and pairing do not)."""
    return json.dumps({k: v for k, v in asdict(s).items() if k not in ("name", "control")},
                      sort_keys=True)


def run_all(settings: list[Setting], seeds: list[int], workers: int, grid_names: set[str],
            cache: str | None = None, train: bool = True) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (setting, seed), on ``workers`` processes (1: in this process).

    Settings that differ only in name run once. With ``cache`` (a JSON-lines file), finished
    runs are read back instead of rerun, and new ones appended: a stopped command resumes.
    """
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if cache and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    done[(r["key"], r["seed"])] = r
    want_grid = {_key(s) for s in settings if s.name in grid_names}
    unique: dict[str, Setting] = {}
    for s in settings:  # in the given order: each setting is followed by its control
        unique.setdefault(_key(s), s)
    jobs = []
    for k, s in unique.items():
        for seed in seeds:
            grid = k in want_grid and seed == seeds[0]
            if train and ((k, seed) not in done or (grid and "grid" not in done[(k, seed)])):
                jobs.append((s, seed, grid))
    sink = open(cache, "a", encoding="utf-8") if cache else None
    try:
        if workers <= 1:
            results = map(lambda j: run_one(*j), jobs)
            ex = None
        else:
            ex = ProcessPoolExecutor(max_workers=workers)
            results = ex.map(run_one, *zip(*jobs), chunksize=2) if jobs else iter(())
        for (s, seed, _), r in zip(jobs, results):
            r = dict(r, key=_key(s))
            done[(r["key"], seed)] = r
            if sink:
                sink.write(json.dumps(r) + "\n")
                sink.flush()
        if ex is not None:
            ex.shutdown()
    finally:
        if sink:
            sink.close()
    return {(s.name, seed): dict(done[(_key(s), seed)], name=s.name)
            for s in settings for seed in seeds if (_key(s), seed) in done}


def summarize(settings: list[Setting], res: dict[tuple[str, int], dict[str, Any]],
              seeds: list[int]) -> list[dict[str, Any]]:
    """Per row: student/teacher mean ± std, paired Δ vs its control and vs supervised."""
    rows = []
    for s in settings:
        acc = [res[(s.name, k)]["student_acc"] for k in seeds]
        r: dict[str, Any] = {"name": s.name, "setting": asdict(s), "student_acc": acc}
        r["mean"], r["std"] = mean_std(acc)
        if s.mode != "supervised":
            t = [res[(s.name, k)]["teacher_acc"] for k in seeds]
            r["teacher_acc"], (r["teacher_mean"], r["teacher_std"]) = t, mean_std(t)
            r["mean_abs_h"] = float(np.mean([res[(s.name, k)]["mean_abs_h"] for k in seeds]))
        if s.control:
            r["control"] = s.control
            r["vs_control"] = paired(acc, [res[(s.control, k)]["student_acc"] for k in seeds])
        if ("supervised", seeds[0]) in res and s.name != "supervised":
            r["vs_supervised"] = paired(acc, [res[("supervised", k)]["student_acc"] for k in seeds])
        rows.append(r)
    return rows


def markdown(rows: list[dict[str, Any]], seeds: list[int], title: str) -> str:
    def cell(p: Any) -> str:
        return "—" if p is None else f"{p.ci_text()} ({p.wins}/{p.ties}/{p.losses})"

    lines = [title, "",
             "| row | student | teacher | mean abs h | Δ vs h = 0 control [95 % CI] (W/T/L) | Δ vs supervised |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['teacher_mean']:.2f} ± {r['teacher_std']:.2f}" if "teacher_mean" in r else "—"
        h = f"{r['mean_abs_h']:.2e}" if "mean_abs_h" in r else "—"
        lines.append(f"| `{r['name']}` | {r['mean']:.2f} ± {r['std']:.2f} | {t} | {h} | "
                     f"{cell(r.get('vs_control'))} | {cell(r.get('vs_supervised'))} |")
    lines += ["", f"Seeds {seeds[0]}–{seeds[-1]} (n = {len(seeds)}); test accuracy (%) on a fresh "
              f"{N_POINTS}-point draw; mean ± sample std over seeds."]
    return "\n".join(lines)


def plot(res: dict[tuple[str, int], dict[str, Any]], names: list[str], seed: int, path: str) -> None:
    """Decision boundaries of the students (and the first teacher) for one seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = make_data(seed)
    panels = [(n, res[(n, seed)]["grid"]) for n in names]
    teacher = next((n for n in names if n.startswith("pl:")), None)
    if teacher:
        panels.insert(1, (f"{teacher} teacher", res[(teacher, seed)]["teacher_grid"]))
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(3.2 * cols, 2.6 * math.ceil(len(panels) / cols)))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (name, g) in zip(np.ravel(axes), panels):
        ax.axis("on")
        ax.imshow(np.array(g), origin="lower", extent=GRID, cmap="coolwarm", alpha=0.35,
                  vmin=0, vmax=1, aspect="auto")
        ax.scatter(d["x"][:, 0], d["x"][:, 1], c=d["y"], cmap="coolwarm", s=1, alpha=0.4)
        ax.scatter(d["x_l"][:, 0], d["x_l"][:, 1], c=d["y_l"], cmap="coolwarm", s=60,
                   edgecolors="k", linewidths=1.2)
        acc = res[(name.split(" ")[0], seed)]["teacher_acc" if name.endswith("teacher") else "student_acc"]
        ax.set_title(f"{name}: {acc:.1f} %", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"TwoMoon, seed {seed}: 6 labeled points (large), 2,000 unlabeled", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in r.items()} for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seeds", type=int, default=10, help="number of seeds (0..N-1), default 10")
    ap.add_argument("--steps", type=int, default=1000, help="MPL steps per run (default 1000)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes (default: 2 or the CPU count)")
    ap.add_argument("--explore", action="store_true",
                    help="also run every setting of the search (explore.md / explore.json)")
    ap.add_argument("--confirm", metavar="NAMES",
                    help="rerun these explore settings (comma-separated) and their controls on "
                    "fresh seeds --first-seed.. (fresh data and test draws): a setting picked "
                    "because it looked good on seeds 0..N-1 is judged on seeds it was not picked on")
    ap.add_argument("--first-seed", type=int, default=10, help="first seed of --confirm (default 10)")
    ap.add_argument("--cached-only", action="store_true",
                    help="train nothing: tabulate the settings whose runs are all in runs.jsonl "
                    "(and list the others as not run)")
    args = ap.parse_args(argv)
    if args.seeds < 2 or args.steps < 1 or args.workers < 1:
        print("twomoon: error: --seeds must be >= 2, --steps and --workers >= 1", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "runs.jsonl")
    if args.confirm:
        return _confirm(args, cache)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    base = default_settings(args.steps)
    res = run_all(base, seeds, args.workers, {s.name for s in base}, cache,
                  train=not args.cached_only)
    rows = summarize(base, res, seeds)
    md = markdown(rows, seeds, f"TwoMoon ({N_POINTS} points, noise {NOISE}, {LABELS_PER_CLASS} labels "
                  f"per moon, {args.steps} steps, MLP 2-64-64-2, SGD momentum 0.9, lr 0.1)")
    plot(res, [s.name for s in base], seeds[0], os.path.join(args.out, "twomoon.png"))
    with open(os.path.join(args.out, "twomoon.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "twomoon.json"), "w", encoding="utf-8") as f:
        json.dump({"seeds": seeds, "rows": _json_rows(rows),
                   "runs": [{k: v for k, v in r.items() if "grid" not in k and k != "key"}
                            for r in res.values()]}, f, indent=1)
    print(md)
    print(f"[twomoon] {len(res)} runs in {time.perf_counter() - t0:.0f} s; outputs in {args.out}")
    if args.explore:
        t1 = time.perf_counter()
        ex = _with_controls(explore_settings(args.steps))
        res_ex = run_all(ex, seeds, args.workers, set(), cache, train=not args.cached_only)
        have = {s.name for s in ex if all((s.name, k) in res_ex for k in seeds)}
        tried = [s for s in ex if s.control and s.name in have and s.control in have]
        not_run = [s.name for s in ex if s.control and s not in tried]
        rows_ex = summarize(tried, res_ex, seeds)
        md_ex = markdown(rows_ex, seeds, "TwoMoon: every setting tried, each paired against its own "
                         "h = 0 twin (same labels, optimiser, steps; pseudo labels of a teacher that "
                         "never sees the student)")
        if not_run:
            md_ex += "\n\nNot run (no time): " + ", ".join(f"`{n}`" for n in not_run) + "."
        with open(os.path.join(args.out, "explore.md"), "w", encoding="utf-8") as f:
            f.write(md_ex + "\n")
        with open(os.path.join(args.out, "explore.json"), "w", encoding="utf-8") as f:
            json.dump({"seeds": seeds, "rows": _json_rows(rows_ex), "not_run": not_run,
                       "controls": _json_rows(summarize(
                           [s for s in ex if not s.control and s.name in have], res_ex, seeds))},
                      f, indent=1)
        print(md_ex)
        print(f"[twomoon] explore: {len(res_ex)} runs in {time.perf_counter() - t1:.0f} s")
    return 0


def _confirm(args: argparse.Namespace, cache: str) -> int:
    """``--confirm``: the named explore settings and their controls on fresh seeds."""
    known = {s.name: s for s in explore_settings(args.steps)}
    names = [n.strip() for n in args.confirm.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        print(f"twomoon: error: --confirm: unknown setting(s) {unknown}; choose from "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    ex = _with_controls([known[n] for n in names])
    res = run_all(ex, seeds, args.workers, set(), cache, train=not args.cached_only)
    have = {s.name for s in ex if all((s.name, k) in res for k in seeds)}
    rows = summarize([s for s in ex if s.control and s.name in have and s.control in have],
                     res, seeds)
    md = markdown(rows, seeds, f"TwoMoon confirmation on fresh seeds {seeds[0]}–{seeds[-1]} "
                  "(settings chosen on seeds 0–9, each paired against its own h = 0 twin)")
    stem = os.path.join(args.out, f"confirm-{seeds[0]}-{seeds[-1]}")
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write(md + "\n")
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump({"seeds": seeds, "rows": _json_rows(rows)}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
