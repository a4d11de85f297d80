#!/usr/bin/env bash
# The one-call GPU suite (issues 6, 21): run from the repository root on the GPU machine.
#
#   bash benchmarks/gpu_suite.sh                 # writes everything under $OUT (or /tmp/mplfast_suite_out)
#   MPLFAST_SUITE_DEVICE=cpu MPLFAST_SUITE_SKIP_BUILD=1 bash benchmarks/gpu_suite.sh   # CPU rehearsal
#
# Stages, in the order of what we must learn first. Each is independent (a failure is recorded,
# never fatal), runs under its own time cap (so one hang cannot eat the call), and is followed by
# a rewrite of summary.md, so a call killed at any point returns what it measured:
#   env       device, driver, CUDA, torch, triton, cuDNN versions
#   build     MPLFAST_CUDA=ON MPLFAST_CUDA_ARCHS=90-real pip install -e . (sm_90 only: the H100)
#   gate      benchmarks/gate.py: every step variant and every fused op x backend checked against
#             its reference BEFORE any timing; summary.md starts with its verdict, and every
#             timing of a variant or op backend that failed it is marked INVALID
#   ceilings  device copy bandwidth and bf16 8192^3 matmul rate (mplfast.perf)
#   opsbench  benchmarks/ops/op_bandwidth.py: every op x backend (Triton and native), CUDA
#             events over back-to-back calls, GB/s and the fraction of this run's copy ceiling
#   step      the headline: eager vs mplfast, WRN-28-2, B=64, mu=7, + the kernel profile
#   variants  mplfast-eager, mplfast-graph, mplfast-inductor, eager-prefetched at B=64
#             (appended to step.json; each compiled variant compiles once, its graphs already
#             in Inductor's caches from the gate)
#   tests     the test modules with CUDA paths (CUDA_TESTS below), not-slow, xdist
#   extras    eager vs mplfast at B=128 (appended), then the plot
# Budgets and the estimate behind them: benchmarks/README.md ("GPU suite").
#
# $OUT gets at most 8 files (the device tool's limit): summary.md, suite.log, gate.json,
# ops.json, step.json, profile.md, step_throughput.png, artifacts.tar.gz (per-stage logs,
# env, ceilings, junit, markdown tables; repacked after every stage).
#
# Knobs (environment): MPLFAST_SUITE_DEVICE (cuda; "cpu" runs every stage at a tiny size, for
# checking this script without a GPU), MPLFAST_SUITE_SKIP_BUILD=1, MPLFAST_SUITE_BUDGET,
# MPLFAST_SUITE_STAGES (space-separated subset, default all), MPLFAST_CUDA_ARCHS (default
# 90-real), PYTHON (default python3).
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
STAGES=${MPLFAST_SUITE_STAGES:-"env build gate ceilings opsbench step variants tests extras"}
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
  write_summary
}

# summary.md and the artifacts, rewritten after every stage: a killed call still returns them.
write_summary() {
  "$PY" benchmarks/suite_summary.py "$WORK" "$OUT" "$STATUS_FILE" >"$WORK/summary.log" 2>&1 \
    || log "summary failed: $(tail -n 5 "$WORK/summary.log")"
  tar -czf "$OUT/artifacts.tar.gz" -C "$WORK" . 2>/dev/null || log "could not pack artifacts"
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
  # sm_90 only on the device (the default build adds sm_80 and PTX: twice the nvcc time).
  MPLFAST_CUDA=$cuda MPLFAST_CUDA_ARCHS=${MPLFAST_CUDA_ARCHS:-90-real} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip install --no-build-isolation --no-deps -e . 2>&1
  "$PY" -c "import mplfast, json; print(json.dumps(mplfast.backends(), indent=1))"
}

stage_gate() {
  local args=(--device "$DEVICE" --json "$OUT/gate.json" --markdown "$WORK/gate.md")
  if [[ "$DEVICE" == cuda ]]; then args+=(--preset full); else args+=(--preset tiny); fi
  "$PY" benchmarks/gate.py "${args[@]}"
}

stage_ceilings() {
  "$PY" - "$DEVICE" "$WORK/ceilings.json" <<'EOF'
import json, sys
from mplfast import perf
dev, path = sys.argv[1], sys.argv[2]
mm = perf.measure_matmul_rate(dev)
bw = perf.measure_copy_bandwidth(dev)
open(path, "w").write(json.dumps({"matmul": mm, "copy": bw}))
print(f"{mm['dtype']} matmul {mm['n']}^3: {mm['flops_per_s'] / 1e12:.2f} TFLOP/s; "
      f"copy {bw['nbytes'] / 2**30:.1f} GiB moved: {bw['bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
EOF
}

stage_opsbench() {
  "$PY" benchmarks/ops/op_bandwidth.py --device "$DEVICE" --json "$OUT/ops.json" --markdown "$WORK/ops.md"
}

# step_run ARGS...: benchmarks/step_throughput.py at the suite's size, appending to step.json,
# with the ceilings stage's numbers when it ran (MFU's denominator from the same run).
step_run() {
  [[ -s "$WORK/ceilings.json" ]] && set -- --ceilings-json "$WORK/ceilings.json" "$@"
  if [[ "$DEVICE" == cuda ]]; then
    "$PY" benchmarks/step_throughput.py --device cuda --preset full --steps 30 --eager-steps 10 --warmup 5 \
      --repeats 3 --json "$OUT/step.json" --append "$@"
  else
    "$PY" benchmarks/step_throughput.py --device cpu --preset tiny --steps 2 --warmup 1 --repeats 1 \
      --num-images 64 --json "$OUT/step.json" --append "$@"
  fi
}

stage_step() {
  local b=64
  [[ "$DEVICE" == cuda ]] || b=2
  step_run --batch-sizes $b --variants eager mplfast --profile mplfast --profile-steps 5 \
    --markdown "$WORK/step.md" --profile-out "$OUT/profile.md"
}

stage_variants() {
  local b=64 v="mplfast-eager mplfast-graph mplfast-inductor eager-prefetched"
  # CPU: Inductor's C++ compile of even the tiny model takes minutes on the build machine (the
  # gate checks that variant's tracing with aot_eager there); mplfast-graph runs eagerly there.
  if [[ "$DEVICE" != cuda ]]; then b=2; v="mplfast-eager mplfast-graph eager-prefetched"; fi
  # shellcheck disable=SC2086
  step_run --no-ceilings --batch-sizes $b --variants $v
}

# The test modules with CUDA paths (kernels, native CUDA ops, CUDA graphs, device placement).
CUDA_TESTS="tests/ops/test_soft_ce_triton.py tests/ops/test_uda_triton.py tests/ops/test_grad_dot_triton.py
  tests/ops/test_soft_ce_native.py tests/ops/test_uda_native.py tests/ops/test_grad_dot_native.py
  tests/ops/test_native_common.py tests/ops/test_native_cuda_helpers.py tests/ops/test_triton_launch.py
  tests/ops/test_backward_traffic.py tests/ops/test_compile.py tests/test_augment_triton.py tests/test_backends.py
  tests/test_step_cuda_graph.py tests/test_train_set_device.py tests/test_perf.py"

stage_tests() {
  local par=() n sel=()
  n=$(nproc)
  if (( n >= 4 )) && "$PY" -c "import xdist" 2>/dev/null; then par=(-n "$(( n < 8 ? n : 8 ))"); fi
  # Without a GPU the CUDA cases skip; -k cuda keeps the rehearsal to them (their collection is
  # checked; the CPU and interpreter cases of these modules run in CI).
  [[ "$DEVICE" == cuda ]] || sel=(-k cuda)
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -m "not slow" $CUDA_TESTS "${sel[@]}" "${par[@]}" -p no:cacheprovider \
    --junitxml="$WORK/junit.xml" -ra
}

stage_extras() {
  if [[ "$DEVICE" == cuda ]]; then
    step_run --no-ceilings --batch-sizes 128 --variants eager mplfast
  fi
  # Only a GPU run produces the repository's plot; a CPU check writes beside its other outputs.
  local dest=benchmarks/plots/step_throughput.png
  [[ "$DEVICE" == cuda ]] || dest=$WORK/step_throughput.png
  mkdir -p "$(dirname "$dest")"
  "$PY" benchmarks/plot_throughput.py "$OUT/step.json" -o "$dest" && cp "$dest" "$OUT/step_throughput.png"
}

# The stage functions and their settings, for the child shells run_stage starts.
export ROOT OUT WORK PY DEVICE CUDA_TESTS
export -f stage_env stage_build stage_gate stage_ceilings stage_opsbench step_run stage_step stage_variants \
  stage_tests stage_extras

rm -f "$OUT/step.json" "$OUT/gate.json" "$OUT/ops.json" "$OUT/profile.md"  # --append must not see an old run
log "mplfast GPU suite: device=$DEVICE budget=${BUDGET}s out=$OUT work=$WORK stages=[$STAGES]"
# Caps in seconds; the expected time of each stage on the H100 is in benchmarks/README.md.
run_stage env 20 5 stage_env
run_stage build 300 60 stage_build
if [[ "$DEVICE" == cuda ]] && ! "$PY" -c "import mplfast" 2>/dev/null; then
  # The build failed: run the pure-Python package from the tree (ops fall back to reference).
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # child shells inherit it
  log "mplfast not importable after the build stage: using PYTHONPATH=$ROOT"
fi
run_stage gate 120 30 stage_gate
run_stage ceilings 20 5 stage_ceilings
run_stage opsbench 45 10 stage_opsbench
run_stage step 60 20 stage_step
run_stage variants 60 20 stage_variants
run_stage tests 60 20 stage_tests
run_stage extras 60 20 stage_extras
write_summary
tail -n 80 "$WORK/summary.log"
head -n 1 "$OUT/summary.md" 2>/dev/null
log "done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
