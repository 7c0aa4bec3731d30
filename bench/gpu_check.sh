#!/usr/bin/env bash
# The one-call GPU check: everything convgen's CUDA backend wants to learn from a lent GPU,
# in one command, every table and log written under one folder.
#
#   bash bench/gpu_check.sh [OUTDIR]        # default: $OUT if set, else ./gpu-check-out
#   bash bench/gpu_check.sh --prepare-only [OUTDIR]   # the preparation alone (no GPU needed)
#
# 1. the machine: nvidia-smi, python3, torch, nvcc (no GPU: exit 3 at once, saying so);
# 2. cffi and pycparser from the wheels carried in bench/wheels/ (the GPU image lacks cffi),
#    installed into a temporary folder put on PYTHONPATH with this checkout (nothing is
#    installed into the image's Python);
# 3. the GPU tests: tests/test_cuda_gpu.py (every kernel family against torch on the GPU,
#    the sm_90a path where the GPU is a 9.0 one), 60 s per test where pytest-timeout is
#    there, then apart the AOT CUDA build of the zoo model run on the GPU
#    (tests/test_aot_cuda.py, never run on one yet) -> gpu_tests.log. Where the sm_90a
#    (wgmma) tests fail, the comparisons below run with CONVGEN_CUDA_ARCH=sm_90 (the sm_80
#    main loop) and the log says so;
# 4. bench/cuda_compare.py, each with --candidates 8 (the planner's choice, which is what
#    --candidates 1 times, and the best of its 8 best, so the table has both and the
#    planner's regret): the public suite (bench/suite_public.json, batch 1) in TF32 then
#    FP32, then the GPU-sized suite (bench/suite_gpu.json, batch 32) in TF32 then FP32 ->
#    compare.txt (every table) and compare_{tf32,fp32,gpu_tf32,gpu_fp32}.json (packed);
# 5. compute-sanitizer memcheck over the GPU tests of the GEMM, phase-GEMM, wgmma and
#    depthwise kernels (kernels already compiled by step 3) -> sanitizer.log;
# 6. the cost model refitted to this run's timings and every earlier run's
#    (bench/gpu_results/*/), then the public suite compared again in TF32 with the refitted
#    planner, so one lease both measures the planner and checks its correction
#    (GPU_CHECK_REFIT_S, 0 to skip) -> compare.txt, compare_refit_tf32.json, timings.json;
# 7. bench/cuda_check_plans.py: the planner's GPU_CHECK_PLANS_N (4) best plans of every
#    public-suite layer, both precisions, at the layer's real size against torch, through
#    convgen's own arrays and torch tensors -> appended to gpu_tests.log;
# 8. Nsight Compute on the kernels whose speed the first run questioned (wgmma at 38% of
#    the TF32 peak, the TF32 mma.sync GEMM, a 1x1 layer): speed of light, occupancy, warp
#    stalls (GPU_CHECK_NCU_S, 0 to skip) -> ncu.txt.
# Files written (the device runner returns 8 at most): gpu_check.log (the environment
# too), gpu_tests.log, compare.txt, sanitizer.log, ncu.txt and results.tar.gz (every
# compare_*.json and the refitted timings.json; unpack it into bench/gpu_results/NEW/).
# Exit status: 0 all ran and the tests passed; 1 a step failed (see gpu_check.log);
# 3 no GPU. Each step has its own time limit (GPU_CHECK_TEST_S, GPU_CHECK_COMPARE_S for
# each public-suite run, GPU_CHECK_GPU_SUITE_S for each batch-32 run, GPU_CHECK_SANITIZER_S,
# GPU_CHECK_REFIT_S, GPU_CHECK_PLANS_S for each precision of step 7, GPU_CHECK_NCU_S;
# 0 skips 6, 7 or 8). On an
# H200 the whole run takes about 7 minutes; the limits together allow 15, so under a 600 s
# lease the last steps (the least needed) may be cut: the tarball is rewritten after every
# comparison, so a run stopped at its limit still returns what it measured.
set -u -o pipefail

PREPARE_ONLY=0
if [ "${1:-}" = "--prepare-only" ]; then PREPARE_ONLY=1; shift; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/gpu-check-out}}"
TEST_S="${GPU_CHECK_TEST_S:-150}"
COMPARE_S="${GPU_CHECK_COMPARE_S:-110}"
GPU_SUITE_S="${GPU_CHECK_GPU_SUITE_S:-55}"
SANITIZER_S="${GPU_CHECK_SANITIZER_S:-50}"
PLANS_S="${GPU_CHECK_PLANS_S:-60}"
PLANS_N="${GPU_CHECK_PLANS_N:-4}"
REFIT_S="${GPU_CHECK_REFIT_S:-100}"
NCU_S="${GPU_CHECK_NCU_S:-90}"
PYTHON="${GPU_CHECK_PYTHON:-python3}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
STATUS=0

# -- preparation: files, wheels, a private site folder ------------------------------------
cd "$ROOT" || exit 1
for f in bench/suite_public.json bench/suite_gpu.json bench/cuda_compare.py \
         bench/cuda_check_plans.py bench/cuda_profile_one.py tests/test_cuda_gpu.py; do
  [ -f "$f" ] || { log "missing $f: this checkout is incomplete"; exit 1; }
done
shopt -s nullglob
WHEELS=(bench/wheels/*.whl)
shopt -u nullglob
[ "${#WHEELS[@]}" -gt 0 ] || { log "no wheels in bench/wheels (run: make gpu-wheels)"; exit 1; }
log "wheels: ${WHEELS[*]}"
if [ "$PREPARE_ONLY" = 1 ]; then
  log "prepared: suites of $(grep -c '"name"' bench/suite_public.json) and $(grep -c '"name"' bench/suite_gpu.json) layers, ${#WHEELS[@]} wheels; output in $OUTDIR"
  exit 0
fi

ENV_TXT="$(mktemp)"
# -- the machine ----------------------------------------------------------------------------
if ! command -v nvidia-smi > /dev/null 2>&1; then
  log "no GPU: nvidia-smi is not installed here; nothing to check (exit 3)"; exit 3
fi
if ! timeout 30 nvidia-smi -L > "$ENV_TXT" 2>&1; then
  log "no GPU: nvidia-smi -L failed: $(head -c 300 "$ENV_TXT"); nothing to check (exit 3)"
  exit 3
fi
SITE="$(mktemp -d)/site"
if ! timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
    --disable-pip-version-check --target "$SITE" "${WHEELS[@]}" >> "$LOG" 2>&1; then
  log "installing the carried wheels failed (see above)"; exit 1
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CONVGEN_CACHE_DIR="${CONVGEN_CACHE_DIR:-$(mktemp -d)/convgen-cache}"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.sm,temperature.gpu,power.draw \
    --format=csv
  command -v nvcc && nvcc --version | tail -2
  "$PYTHON" - <<'EOF'
import platform, torch, cffi, numpy, jinja2
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "cffi", cffi.__version__, "numpy",
      numpy.__version__, "jinja2", jinja2.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
import convgen
from convgen.backends import get_target
print("convgen", convgen.__version__, "target cuda ->", get_target("cuda").cuda)
EOF
} >> "$ENV_TXT" 2>&1 || { log "the environment check failed: $(tail -5 "$ENV_TXT")"; exit 1; }
if ! grep -q "^device " "$ENV_TXT" || grep -q "^device NONE" "$ENV_TXT"; then
  log "no GPU visible to torch: $(tail -3 "$ENV_TXT") (exit 3)"; exit 3
fi
log "environment: $(grep -E '^(python|device|convgen)' "$ENV_TXT" | tr '\n' ' ')"
cat "$ENV_TXT" >> "$LOG"

# -- the GPU tests ----------------------------------------------------------------------------
JOBS="$(nproc 2>/dev/null || echo 8)"
export CONVGEN_TEST_CACHE_DIR="$CONVGEN_CACHE_DIR"   # the sanitizer step reuses the kernels
PER_TEST=()
"$PYTHON" -c "import pytest_timeout" 2> /dev/null && PER_TEST=(--timeout 60)
log "GPU tests (limit ${TEST_S}s, $JOBS workers, ${PER_TEST[*]:-no per-test limit})"
timeout --kill-after=10 "$TEST_S" "$PYTHON" -m pytest -q -n "$JOBS" -p no:cacheprovider \
  "${PER_TEST[@]}" tests/test_cuda_gpu.py > "$OUTDIR/gpu_tests.log" 2>&1
rc=$?
log "GPU tests: exit $rc: $(tail -1 "$OUTDIR/gpu_tests.log")"
[ $rc -eq 0 ] || STATUS=1
# apart, so that a collection error there (it exports an ONNX model) cannot stop the above
echo "=== tests/test_aot_cuda.py::test_cuda_build_runs_on_the_gpu ===" >> "$OUTDIR/gpu_tests.log"
timeout --kill-after=10 90 "$PYTHON" -m pytest -q -p no:cacheprovider "${PER_TEST[@]}" \
  tests/test_aot_cuda.py::test_cuda_build_runs_on_the_gpu >> "$OUTDIR/gpu_tests.log" 2>&1
rc=$?
log "the AOT CUDA build on the GPU: exit $rc: $(tail -1 "$OUTDIR/gpu_tests.log")"
[ $rc -eq 0 ] || STATUS=1
if grep -q "^FAILED.*wgmma" "$OUTDIR/gpu_tests.log"; then
  export CONVGEN_CUDA_ARCH=sm_90
  log "the sm_90a (wgmma) tests failed: comparing with CONVGEN_CUDA_ARCH=sm_90 (no wgmma)"
fi

# -- convgen vs torch, with the planner's regret -------------------------------------------------
RESULTS="$(mktemp -d)/results"   # packed into one file at the end: the runner returns 8
mkdir -p "$RESULTS"
: > "$OUTDIR/compare.txt"
compare() {   # compare NAME SUITE PRECISION LIMIT
  log "cuda_compare $1: --suite $2 --precision $3 --candidates 8 (limit ${4}s)"
  echo "=== $1: $2, $3 ===" >> "$OUTDIR/compare.txt"
  timeout --kill-after=10 "$4" "$PYTHON" bench/cuda_compare.py --suite "$2" --precision "$3" \
    --candidates 8 --jobs "$JOBS" --min-time 0.2 --warmup 0.5 --markdown \
    --json "$RESULTS/compare_$1.json" >> "$OUTDIR/compare.txt" 2>&1
  local rc=$?
  log "cuda_compare $1: exit $rc: $(grep 'geometric mean' "$OUTDIR/compare.txt" | tail -1)"
  [ $rc -eq 0 ] || STATUS=1
  pack
}
pack() {   # after every step that adds results: a run stopped at its limit keeps them
  tar -czf "$OUTDIR/results.tar.gz" -C "$RESULTS" . 2>> "$LOG" || STATUS=1
}
compare tf32 bench/suite_public.json tf32 "$COMPARE_S"
compare fp32 bench/suite_public.json fp32 "$COMPARE_S"
compare gpu_tf32 bench/suite_gpu.json tf32 "$GPU_SUITE_S"
compare gpu_fp32 bench/suite_gpu.json fp32 "$GPU_SUITE_S"

# -- out-of-bounds accesses: compute-sanitizer over a sample of the GPU tests ---------------------
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null)"
if [ -n "$SANITIZER" ]; then
  log "compute-sanitizer memcheck (limit ${SANITIZER_S}s)"
  timeout --kill-after=10 "$SANITIZER_S" "$SANITIZER" --tool memcheck --error-exitcode 9 \
    --print-limit 20 "$PYTHON" -m pytest -q -x -p no:cacheprovider tests/test_cuda_gpu.py \
    -k "wgmma_on_hopper or depthwise_on_gpu or tf32_on_gpu or phase_gemm_on_gpu" \
    > "$OUTDIR/sanitizer.log" 2>&1
  rc=$?
  log "compute-sanitizer: exit $rc: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUTDIR/sanitizer.log" | tail -2 | tr '\n' ' ')"
  [ $rc -eq 0 ] || [ $rc -eq 124 ] || STATUS=1   # 124: the sample ran out of time, not an error
else
  log "compute-sanitizer not found: memcheck skipped"
fi
# -- the cost model refitted to these timings, and checked at once ------------------------------
if [ "$REFIT_S" -gt 0 ] && ls "$RESULTS"/compare_*.json > /dev/null 2>&1; then
  log "refitting the CUDA cost model to this run's timings and bench/gpu_results/*/"
  echo "=== bench/fit_cuda_model.py ===" >> "$OUTDIR/compare.txt"
  if timeout 60 "$PYTHON" bench/fit_cuda_model.py bench/gpu_results/*/compare_*.json \
      "$RESULTS"/compare_*.json --write >> "$OUTDIR/compare.txt" 2>&1; then
    cp convgen/cuda/timings.json "$RESULTS/timings.json"
    pack
    log "refit: $(grep 'regret within' "$OUTDIR/compare.txt" | tail -1)"
    compare refit_tf32 bench/suite_public.json tf32 "$REFIT_S"
  else
    log "the refit failed (see compare.txt)"; STATUS=1
  fi
fi
# -- every candidate plan at the layers' real sizes ----------------------------------------------
if [ "$PLANS_S" -gt 0 ]; then
  for precision in tf32 fp32; do
    log "cuda_check_plans $precision: $PLANS_N plans a layer (limit ${PLANS_S}s)"
    echo "=== cuda_check_plans --precision $precision --candidates $PLANS_N ===" \
      >> "$OUTDIR/gpu_tests.log"
    timeout --kill-after=10 "$PLANS_S" "$PYTHON" bench/cuda_check_plans.py \
      --precision "$precision" --candidates "$PLANS_N" --jobs "$JOBS" \
      >> "$OUTDIR/gpu_tests.log" 2>&1
    rc=$?
    log "cuda_check_plans $precision: exit $rc: $(grep 'plans checked' "$OUTDIR/gpu_tests.log" | tail -1)"
    [ $rc -eq 0 ] || STATUS=1
  done
fi
# -- Nsight Compute on the kernels in question ------------------------------------------------
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null \
       | head -1)"
if [ "$NCU_S" -gt 0 ] && [ -n "$NCU" ]; then
  log "Nsight Compute (limit ${NCU_S}s)"
  : > "$OUTDIR/ncu.txt"
  deadline=$(( $(date +%s) + NCU_S ))
  # LAYER PRECISION PLAN: wgmma well below peak; the mma.sync GEMM; a 1x1 layer
  while read -r layer precision plan; do
    left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 5 ] || break
    echo "=== $layer $precision $plan ===" >> "$OUTDIR/ncu.txt"
    timeout --kill-after=5 "$left" "$NCU" --clock-control none --section SpeedOfLight \
      --section Occupancy --section WarpStateStats --section LaunchStats -k regex:cg_ \
      --launch-skip 2 --launch-count 2 "$PYTHON" bench/cuda_profile_one.py "$layer" \
      --precision "$precision" --plan "$plan" --calls 3 >> "$OUTDIR/ncu.txt" 2>&1 \
      || echo "(ncu: exit $?)" >> "$OUTDIR/ncu.txt"
  done <<'LAYERS'
resnet_3x3_256_b32 tf32 auto
resnet_3x3_64_b32 tf32 algorithm=implicit_gemm tile=128x64x32 warp=32x64 stages=4 split_k=1 math=tf32 threads=128
resnet_1x1_256_64_b32 tf32 auto
LAYERS
  log "Nsight Compute: $(grep -c '^===' "$OUTDIR/ncu.txt") kernel runs profiled"
else
  log "Nsight Compute skipped (${NCU:-ncu not found}, limit ${NCU_S}s)"
fi
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active \
  --format=csv >> "$LOG" 2>&1
log "done (status $STATUS); files: $(ls "$OUTDIR" | tr '\n' ' ')"
exit $STATUS
