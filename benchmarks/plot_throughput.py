"""Plot steps/s per variant and batch size from step_throughput.py's JSON.

    python benchmarks/plot_throughput.py RESULTS.json [-o benchmarks/plots/step_throughput.png]

Grouped bars (one group per batch size, one bar per variant), each mplfast bar labelled with its
speed-up over the eager reference at the same batch size; failed variants are listed in the
caption, never drawn as zero. The title names the device, torch version and date of the run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and the GPU machine have no display
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "plots" / "step_throughput.png"


def plot(results: dict[str, Any], out: Path) -> Path:
    """Write the bar chart for one step_throughput run to ``out`` and return the path."""
    ok = [r for r in results["results"] if r.get("ok")]
    failed = [r for r in results["results"] if not r.get("ok")]
    if not ok:
        raise ValueError("no successful measurement to plot")
    batch_sizes = sorted({r["batch_size"] for r in ok})
    variants = list(dict.fromkeys(r["variant"] for r in results["results"]))
    eager = {r["batch_size"]: r["steps_per_s"] for r in ok if r["variant"] == "eager"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs, ys, labels = [], [], []
        for j, b in enumerate(batch_sizes):
            r = next((r for r in ok if r["variant"] == v and r["batch_size"] == b), None)
            if r is None:
                continue
            xs.append(j + (i - (len(variants) - 1) / 2) * width)
            ys.append(r["steps_per_s"])
            labels.append(f"{r['steps_per_s']:.1f}" + (f"\n{r['steps_per_s'] / eager[b]:.1f}×"
                                                       if v != "eager" and b in eager else ""))
        bars = ax.bar(xs, ys, width, label=v)
        ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    env = results.get("env", {})
    mu = ok[0].get("mu")
    ax.set_xticks(range(len(batch_sizes)), [f"B={b}, μ={mu}" for b in batch_sizes])
    ax.set_ylabel("MPL steps/s (data + augmentation included)")
    kw = ok[0].get("model_kwargs") or {}
    model = ok[0].get("model", "?") + (f"({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else "")
    ax.set_title(f"{model} MPL step on {env.get('device', '?')}\n"
                 f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, {env.get('date_utc', '?')}",
                 fontsize=9)
    ax.margins(y=0.2)
    ax.legend()
    if failed:
        fig.text(0.01, 0.01, "failed: " + "; ".join(f"{r['variant']} B={r['batch_size']}" for r in failed),
                 fontsize=7, color="tab:red")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", help="output of step_throughput.py --json")
    p.add_argument("-o", "--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    path = plot(json.loads(Path(args.json).read_text()), Path(args.out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
