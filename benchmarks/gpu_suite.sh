#!/usr/bin/env bash
# One-call GPU measurement suite for issue 6 (run from the repository root on the GPU machine).
#
#   bash benchmarks/gpu_suite.sh                 # writes everything under $OUT (or /tmp/mplfast_suite_out)
#
# Stages, in priority order, each independent (a failure is recorded, never fatal), each under
# its own time limit, all inside one global budget (MPLFAST_SUITE_BUDGET seconds, default 560,
# so one device call of at most 600 s finishes with its files written):
#   env       device, driver, CUDA, torch, triton, cuDNN versions
#   build     MPLFAST_CUDA=ON pip install --no-build-isolation --no-deps -e .   (CUDA kernels)
#   ceilings  device-to-device copy bandwidth and 8192^3 bf16 matmul rate (mplfast.perf)
#   step      benchmarks/step_throughput.py: eager vs mplfast at B=64 and B=128, mu=7, WRN-28-2,
#             then mplfast without compile (both B), the whole step in one CUDA graph
#             (MPLStep(cuda_graph=True), both B), with compile but no CUDA graphs (B=64), and
#             the eager step without its data pipeline (B=64);
#             JSON rewritten after each configuration; torch.profiler kernel breakdown of the
#             mplfast step at B=64
#   plot      benchmarks/plot_throughput.py -> benchmarks/plots/step_throughput.png
#   tests     pytest -m "not slow" tests/   (the GPU paths of every module)
#   opsbench  benchmarks/ops/bench_*.py and every other benchmarks/test_bench_*.py (augmentation) with --benchmark-json
#   stepbench benchmarks/test_bench_step.py --benchmark-json (pytest-benchmark view of the step)
#   summary   summary.md: versions, stage status, step table, ceilings, top kernels
#
# $OUT gets at most 8 files (the device tool's limit): summary.md, suite.log, step.json,
# step_throughput.png, profile.md, bench_ops.json, bench_step.json, artifacts.tar.gz (per-stage
# logs, env, junit, markdown tables).
#
# Knobs (environment): MPLFAST_SUITE_DEVICE (cuda; "cpu" runs the CPU-capable parts at tiny
# size, for checking this script without a GPU), MPLFAST_SUITE_SKIP_BUILD=1, MPLFAST_SUITE_BUDGET,
# MPLFAST_SUITE_STAGES (space-separated subset, default all), PYTHON (default python3).
set -u
set -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/mplfast_suite_out}  # outside the tree: a local check leaves no untracked files
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/mplfast-suite.XXXXXX)
PY=${PYTHON:-python3}
DEVICE=${MPLFAST_SUITE_DEVICE:-cuda}
BUDGET=${MPLFAST_SUITE_BUDGET:-560}
STAGES=${MPLFAST_SUITE_STAGES:-"env build ceilings step plot tests opsbench stepbench"}
START=$(date +%s)
export PYTHONUNBUFFERED=1
STATUS_FILE=$WORK/status.tsv
: >"$STATUS_FILE"
LOG=$OUT/suite.log
: >"$LOG"

log() { echo "[suite $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# run_stage NAME CAP_SECONDS MIN_SECONDS CMD...: runs CMD under timeout min(CAP, time left - 20 s
# kept for the summary); skipped when fewer than MIN_SECONDS remain. Output -> $WORK/NAME.log
# and suite.log. Status (ok / failed rc=N / timeout / skipped) -> status.tsv.
run_stage() {
  local name=$1 cap=$2 min=$3; shift 3
  case " $STAGES " in *" $name "*) ;; *) echo -e "$name\tnot selected\t0" >>"$STATUS_FILE"; return 0 ;; esac
  local avail=$(( $(left) - 20 ))
  local limit=$(( cap < avail ? cap : avail ))
  if (( limit < min )); then
    log "stage $name: skipped, ${avail}s left of the budget (needs ${min}s)"
    echo -e "$name\tskipped (no time)\t0" >>"$STATUS_FILE"
    return 0
  fi
  log "stage $name: start (limit ${limit}s): $*"
  local t0=$(date +%s) rc
  # Stage functions run in a child bash (timeout cannot run a shell function directly).
  timeout --kill-after=10 "$limit" bash -c "$*" >"$WORK/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 60 "$WORK/$name.log" >>"$LOG"
  local st="ok"
  if (( rc == 124 || rc == 137 )); then st="timeout after ${limit}s"; elif (( rc != 0 )); then st="failed rc=$rc"; fi
  log "stage $name: $st (${dt}s)"
  echo -e "$name\t$st\t$dt" >>"$STATUS_FILE"
}

stage_env() {
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  if git rev-parse --short HEAD >/dev/null 2>&1; then
    echo "git: $(git rev-parse --short HEAD) ($(git status --porcelain | wc -l) changed paths)"
  else
    echo "git: no repository metadata here"
  fi
  echo "uname: $(uname -a)"
  echo "cpus: $(nproc)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || echo "nvidia-smi: unavailable"
  nvcc --version 2>&1 | tail -n 2 || echo "nvcc: unavailable"
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton unavailable:", e)
try:
    import torchvision; print("torchvision", torchvision.__version__)
except Exception as e:
    print("torchvision unavailable:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs", f"{p.total_memory / 2**30:.1f} GiB")
else:
    print("device: no CUDA device visible to torch")
EOF
}

stage_build() {
  if [[ "${MPLFAST_SUITE_SKIP_BUILD:-0}" == 1 ]]; then echo "build skipped (MPLFAST_SUITE_SKIP_BUILD=1)"; return 0; fi
  local cuda=ON
  [[ "$DEVICE" == cuda ]] || cuda=auto
  # --no-deps: the GPU machine has no registry; every dependency is already in its image.
  MPLFAST_CUDA=$cuda CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install --no-build-isolation --no-deps -e . 2>&1
  "$PY" -c "import mplfast, json; print(json.dumps(mplfast.backends(), indent=1))"
}

stage_ceilings() {
  "$PY" - "$DEVICE" <<'EOF'
import json, sys, torch
from mplfast import perf
dev = sys.argv[1]
mm = perf.measure_matmul_rate(dev)
bw = perf.measure_copy_bandwidth(dev)
print(json.dumps({"matmul": mm, "copy": bw}))
print(f"{mm['dtype']} matmul {mm['n']}^3: {mm['flops_per_s'] / 1e12:.1f} TFLOP/s; "
      f"copy {bw['nbytes'] / 2**30:.1f} GiB moved: {bw['bytes_per_s'] / 1e12:.2f} TB/s (read + write)")
EOF
}

stage_step() {
  if [[ "$DEVICE" == cuda ]]; then
    "$PY" benchmarks/step_throughput.py --device cuda --preset full --batch-sizes 64 128 \
      --variants eager mplfast mplfast-eager mplfast-graph mplfast-inductor@64 eager-prefetched@64 --steps 40 --eager-steps 15 --warmup 10 --repeats 3 \
      --profile mplfast --profile-steps 5 \
      --json "$OUT/step.json" --markdown "$WORK/step.md" --profile-out "$OUT/profile.md"
  else
    "$PY" benchmarks/step_throughput.py --device cpu --preset tiny --variants eager mplfast mplfast-graph \
      --steps 2 --warmup 1 --repeats 1 --num-images 64 --profile mplfast --profile-steps 2 \
      --json "$OUT/step.json" --markdown "$WORK/step.md" --profile-out "$OUT/profile.md"
  fi
}

stage_plot() {
  # Only a GPU run produces the repository's plot; a CPU check writes beside its other outputs.
  local dest=benchmarks/plots/step_throughput.png
  [[ "$DEVICE" == cuda ]] || dest=$WORK/step_throughput.png
  "$PY" benchmarks/plot_throughput.py "$OUT/step.json" -o "$dest" && cp "$dest" "$OUT/step_throughput.png"
}

stage_tests() {
  # One process runs the not-slow suite in about 4 min of CPU time, past this stage's limit; the
  # device has 16 cores and pytest-xdist (KINDS.md), so spread it over up to 8 workers.
  local par=() n
  n=$(nproc)
  if (( n >= 4 )) && "$PY" -c "import xdist" 2>/dev/null; then par=(-n "$(( n < 8 ? n : 8 ))"); fi
  "$PY" -m pytest -q -m "not slow" tests/ "${par[@]}" -p no:cacheprovider --junitxml="$WORK/junit.xml" -ra
}

stage_opsbench() {
  local files=()
  for f in benchmarks/ops/bench_*.py benchmarks/test_bench_*.py; do
    [[ "$f" == benchmarks/test_bench_step.py ]] || files+=("$f")
  done
  if (( ${#files[@]} == 0 )); then echo "no ops/augmentation benchmark files found"; return 0; fi
  "$PY" -m pytest -q "${files[@]}" -p no:cacheprovider --benchmark-json="$OUT/bench_ops.json" \
    --benchmark-columns=median,iqr,ops,rounds --benchmark-sort=name
}

stage_stepbench() {
  local size=full
  [[ "$DEVICE" == cuda ]] || size=tiny
  MPLFAST_BENCH_DEVICE=$DEVICE MPLFAST_BENCH_SIZE=$size "$PY" -m pytest -q benchmarks/test_bench_step.py \
    -p no:cacheprovider --benchmark-json="$OUT/bench_step.json" --benchmark-columns=median,iqr,ops,rounds
}

stage_summary() {
  "$PY" - "$WORK" "$OUT" "$STATUS_FILE" <<'EOF'
import json, sys
from pathlib import Path
work, out, status = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
lines = ["# mplfast GPU suite summary", ""]
env = (work / "env.log").read_text() if (work / "env.log").exists() else "(env stage missing)\n"
lines += ["## Environment", "```", env.strip(), "```", "", "## Stages", "", "| stage | status | seconds |", "|---|---|---:|"]
for row in status.read_text().splitlines():
    name, st, dt = (row.split("\t") + ["", ""])[:3]
    lines.append(f"| {name} | {st} | {dt} |")
step = out / "step.json"
if step.exists():
    d = json.loads(step.read_text())
    c = d.get("ceilings", {})
    if c:
        mm, bw = c["matmul"], c["copy"]
        lines += ["", "## Ceilings (measured in the step run)", "",
                  f"- {mm['dtype']} matmul {mm['n']}³: {mm['flops_per_s'] / 1e12:.1f} TFLOP/s",
                  f"- device copy: {bw['bytes_per_s'] / 1e12:.2f} TB/s (bytes read + written)"]
    try:  # from the JSON, so a step stage cut short by its time limit still gets a table
        sys.path.insert(0, "benchmarks")
        import step_throughput as st
        table = st.summary_markdown(d)
    except Exception as e:  # noqa: BLE001
        md = work / "step.md"
        table = md.read_text() if md.exists() else f"(no table: {e})"
    lines += ["", "## MPL step", "", table]
    for r in d.get("results", []):
        if not r.get("ok"):
            lines += [f"- {r['variant']} B={r['batch_size']} failed: {r.get('error')}"]
else:
    lines += ["", "step.json missing: the step stage did not finish"]
prof = out / "profile.md"
if prof.exists():
    lines += ["", "## Kernel breakdown", "", prof.read_text()]
for name in ("bench_ops.json", "bench_step.json"):
    p = out / name
    if p.exists():
        try:
            b = json.loads(p.read_text())
            lines += ["", f"## {name}", "", "| benchmark | group | median (ms) | extra |", "|---|---|---:|---|"]
            for bm in b.get("benchmarks", []):
                extra = {k: v for k, v in bm.get("extra_info", {}).items() if k in ("steps_per_s", "images_per_s", "peak_mem_bytes", "gb_per_s", "bandwidth_fraction")}
                lines.append(f"| {bm['name']} | {bm.get('group')} | {bm['stats']['median'] * 1e3:.4f} | {extra} |")
        except Exception as e:  # noqa: BLE001
            lines += [f"{name}: unreadable ({e})"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

# The stage functions and their settings, for the child shells run_stage starts.
export ROOT OUT WORK PY DEVICE
export -f stage_env stage_build stage_ceilings stage_step stage_plot stage_tests stage_opsbench stage_stepbench

log "mplfast GPU suite: device=$DEVICE budget=${BUDGET}s out=$OUT work=$WORK stages=[$STAGES]"
run_stage env 30 5 stage_env
run_stage build 240 60 stage_build
if [[ "$DEVICE" == cuda ]] && ! "$PY" -c "import mplfast" 2>/dev/null; then
  # The build failed: run the pure-Python package from the tree (ops fall back to reference).
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # child shells inherit it
  log "mplfast not importable after the build stage: using PYTHONPATH=$ROOT"
fi
run_stage ceilings 60 10 stage_ceilings
run_stage step 330 60 stage_step
run_stage plot 30 5 stage_plot
run_stage tests 120 30 stage_tests
run_stage opsbench 90 30 stage_opsbench
run_stage stepbench 120 60 stage_stepbench
stage_summary >"$WORK/summary.log" 2>&1 || log "summary failed: $(tail -n 5 "$WORK/summary.log")"
tail -n 80 "$WORK/summary.log"
tar -czf "$OUT/artifacts.tar.gz" -C "$WORK" . 2>/dev/null || log "could not pack artifacts"
log "done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
