"""summary.md of the GPU suite (benchmarks/gpu_suite.sh), rebuilt after every stage from what the
stages have written so far, so a call killed at any point still returns a readable summary.

    python benchmarks/suite_summary.py WORK OUT STATUS_TSV

Its first line is the gate's verdict: ``gate: ok``, ``gate: FAILED (...)`` or ``gate: not run
(...)``. Every timing of a step variant or an op backend that failed the gate is marked
INVALID, and one the gate did not check is marked unchecked.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import _tables  # noqa: E402


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - missing or cut short: the summary says so
        return None


def gate_verdict(gate: dict[str, Any] | None, gate_status: str | None) -> str:
    if gate is None:
        return f"gate: not run ({gate_status or 'stage not reached'}): no timing below is checked"
    if gate.get("partial") or "ok" not in gate:
        return (f"gate: FAILED (incomplete: the gate stage ended '{gate_status or 'running'}'; "
                "checks not reached are marked unchecked)")
    if gate["ok"]:
        return "gate: ok"
    return "gate: FAILED (" + "; ".join(gate.get("failures", []))[:1500] + ")"


def variant_validity(gate: dict[str, Any] | None) -> dict[str, str]:
    """variant -> "ok" | "INVALID (failed the gate)" | "unchecked (...)"."""
    out: dict[str, str] = {}
    for v, r in ((gate or {}).get("steps") or {}).get("variants", {}).items():
        st = r.get("status", "")
        out[v] = "ok" if st == "ok" else ("INVALID (failed the gate)" if st == "FAILED" else f"unchecked ({st})")
    return out


def step_table(step: dict[str, Any], validity: dict[str, str]) -> str:
    lines = _tables.step_markdown(step).rstrip("\n").split("\n")
    lines[0] += " gate |"
    lines[1] += "---|"
    for i, r in enumerate(step.get("results", []), start=2):
        lines[i] += f" {validity.get(r['variant'], 'unchecked (the gate did not reach it)')} |"
    return "\n".join(lines) + "\n"


def summarize(work: Path, out: Path, status: Path) -> str:
    rows = [(r.split("\t") + ["", ""])[:3] for r in status.read_text().splitlines()] if status.exists() else []
    st_by = {name: s for name, s, _ in rows}
    gate = _load(out / "gate.json")
    validity = variant_validity(gate)
    lines = [gate_verdict(gate, st_by.get("gate")), "", "# mplfast GPU suite summary", "",
             "## Stages", "", "| stage | status | seconds |", "|---|---|---:|"]
    lines += [f"| {n} | {s} | {d} |" for n, s, d in rows]
    env = work / "env.log"
    lines += ["", "## Environment", "```", env.read_text().strip() if env.exists() else "(env stage missing)", "```"]
    gmd = work / "gate.md"
    if gmd.exists():
        lines += ["", gmd.read_text().split("\n", 1)[1].strip()]  # its first line is the verdict above
    ceil = _load(work / "ceilings.json")
    if ceil:
        mm, bw = ceil["matmul"], ceil["copy"]
        lines += ["", "## Ceilings (ceilings stage)", "",
                  f"- {mm['dtype']} matmul {mm['n']}³: {mm['flops_per_s'] / 1e12:.2f} TFLOP/s",
                  f"- device copy: {bw['bytes_per_s'] / 1e9:.1f} GB/s (bytes read + written)"]
    ops = _load(out / "ops.json")
    if ops:
        invalid = {tuple(x) for x in (gate or {}).get("invalid_ops", [])}
        how = "CUDA events" if ops.get("device", "").startswith("cuda") else "perf_counter"
        lines += ["", f"## Ops (op benchmarks: {how} over back-to-back calls)", ""]
        if not (gate or {}).get("ops"):
            lines += ["**Unchecked: the gate's op checks did not run; no row below is validated.**", ""]
        lines += [_tables.ops_markdown(ops, invalid).strip()]
    step = _load(out / "step.json")
    if step:
        lines += ["", "## MPL step", "", step_table(step, validity).strip()]
        for r in step.get("results", []):
            if not r.get("ok"):
                lines.append(f"- {r['variant']} B={r['batch_size']} failed: {r.get('error')}")
    prof = out / "profile.md"
    if prof.exists():
        lines += ["", "## Kernel breakdown", "", prof.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: suite_summary.py WORK OUT STATUS_TSV", file=sys.stderr)
        return 2
    work, out, status = (Path(a) for a in args)
    text = summarize(work, out, status)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
