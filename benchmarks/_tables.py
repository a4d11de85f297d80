"""Markdown tables of the benchmark results, without importing torch (benchmarks/suite_summary.py
rebuilds the GPU suite's summary after every stage; a torch import there cost ~5 s each time)."""
from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any


def write_results(data: dict[str, Any], md: str, json_path: str | None, md_path: str | None) -> None:
    """A benchmark script's last act: the JSON and the markdown where asked, the table printed last."""
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=1, default=str))
    if md_path:
        Path(md_path).write_text(md)
    print(md)


def step_markdown(out: dict[str, Any]) -> str:
    """Results table with speed-up over eager at the same batch size."""
    eager = {r["batch_size"]: r["steps_per_s"] for r in out["results"] if r["variant"] == "eager" and r.get("ok")}
    lines = ["| variant | B | μ | steps/s | images/s | ms/step | peak mem (GiB) | MFU | × eager | compile | precision |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in out["results"]:
        if not r.get("ok"):
            lines.append(f"| {r['variant']} | {r['batch_size']} | {r['mu']} | failed: {r.get('error', '')[:120]} "
                         "| | | | | | | |")
            continue
        mem = f"{r['peak_mem_bytes'] / 2**30:.2f}" if r.get("peak_mem_bytes") else "n/a"
        mfu = f"{100 * r['mfu']:.2f}%" if "mfu" in r else "n/a"
        ratio = f"{r['steps_per_s'] / eager[r['batch_size']]:.2f}" if r["batch_size"] in eager else "n/a"
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r['mu']} | {r['steps_per_s']:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['ms_per_step']:.2f} | {mem} | {mfu} | {ratio} | "
                     f"{r.get('compile')} | {r.get('precision')} |")
    return "\n".join(lines) + "\n"


def ops_markdown(res: dict[str, Any], invalid: Collection[tuple[str, str]] = ()) -> str:
    """op | backend | shape | GB/s | fraction of copy (+ µs per call and the graph-replay GB/s).
    ``invalid``: (gate op name, backend) pairs that failed the correctness gate."""
    lines = [f"copy ceiling (same run): {res['copy']['bytes_per_s'] / 1e9:.1f} GB/s, bytes read + written", "",
             "| op | backend | shape | GB/s | fraction of copy | µs/call | GB/s (graph replay) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        gate_name = r["op"].split()[0]
        bad = (gate_name, r["backend"]) in invalid
        if r["status"] != "ok":
            lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {r['status']} | | | |")
            continue
        mark = " (INVALID: failed the gate)" if bad else ""
        gg = f"{r['graph_gb_per_s']:.1f}" if "graph_gb_per_s" in r else ""
        lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {r['gb_per_s']:.1f}{mark} | "
                     f"{r['fraction_of_copy']:.3f} | {r['seconds'] * 1e6:.1f} | {gg} |")
    return "\n".join(lines) + "\n"
