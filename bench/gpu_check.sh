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
#    the sm_90a path where the GPU is a 9.0 one) -> gpu_tests.log;
# 4. bench/cuda_compare.py on the suite in bench/suite_public.json, TF32 then FP32, each with
#    --candidates 8: the planner's choice (what --candidates 1 times) and the best of its 8
#    best, so the table has both and the planner's regret -> compare_{tf32,fp32}.{txt,json}.
# Files written (8 at most, what the device runner returns): gpu_check.log, env.txt,
# gpu_tests.log, compare_tf32.txt, compare_tf32.json, compare_fp32.txt, compare_fp32.json.
# Exit status: 0 all ran and the tests passed; 1 a step failed (see gpu_check.log);
# 3 no GPU. Each step has its own time limit (GPU_CHECK_TEST_S, GPU_CHECK_COMPARE_S), so the
# whole run ends within about 9 minutes whatever happens.
set -u -o pipefail

PREPARE_ONLY=0
if [ "${1:-}" = "--prepare-only" ]; then PREPARE_ONLY=1; shift; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/gpu-check-out}}"
TEST_S="${GPU_CHECK_TEST_S:-180}"
COMPARE_S="${GPU_CHECK_COMPARE_S:-170}"
PYTHON="${GPU_CHECK_PYTHON:-python3}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
STATUS=0

# -- preparation: files, wheels, a private site folder ------------------------------------
cd "$ROOT" || exit 1
for f in bench/suite_public.json bench/cuda_compare.py tests/test_cuda_gpu.py; do
  [ -f "$f" ] || { log "missing $f: this checkout is incomplete"; exit 1; }
done
shopt -s nullglob
WHEELS=(bench/wheels/*.whl)
shopt -u nullglob
[ "${#WHEELS[@]}" -gt 0 ] || { log "no wheels in bench/wheels (run: make gpu-wheels)"; exit 1; }
log "wheels: ${WHEELS[*]}"
if [ "$PREPARE_ONLY" = 1 ]; then
  log "prepared: suite $(grep -c '"name"' bench/suite_public.json) layers, ${#WHEELS[@]} wheels; output in $OUTDIR"
  exit 0
fi

# -- the machine ----------------------------------------------------------------------------
if ! command -v nvidia-smi > /dev/null 2>&1; then
  log "no GPU: nvidia-smi is not installed here; nothing to check (exit 3)"; exit 3
fi
if ! timeout 30 nvidia-smi -L > "$OUTDIR/env.txt" 2>&1; then
  log "no GPU: nvidia-smi -L failed: $(head -c 300 "$OUTDIR/env.txt"); nothing to check (exit 3)"
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
} >> "$OUTDIR/env.txt" 2>&1 || { log "the environment check failed: $(tail -5 "$OUTDIR/env.txt")"; exit 1; }
if ! grep -q "^device " "$OUTDIR/env.txt" || grep -q "^device NONE" "$OUTDIR/env.txt"; then
  log "no GPU visible to torch: $(tail -3 "$OUTDIR/env.txt") (exit 3)"; exit 3
fi
log "environment: $(grep -E '^(python|device|convgen)' "$OUTDIR/env.txt" | tr '\n' ' ')"

# -- the GPU tests ----------------------------------------------------------------------------
JOBS="$(nproc 2>/dev/null || echo 8)"
log "GPU tests (limit ${TEST_S}s, $JOBS workers)"
timeout --kill-after=10 "$TEST_S" "$PYTHON" -m pytest -q -n "$JOBS" -p no:cacheprovider \
  tests/test_cuda_gpu.py > "$OUTDIR/gpu_tests.log" 2>&1
rc=$?
log "GPU tests: exit $rc: $(tail -1 "$OUTDIR/gpu_tests.log")"
[ $rc -eq 0 ] || STATUS=1

# -- convgen vs torch, with the planner's regret -------------------------------------------------
for precision in tf32 fp32; do
  log "cuda_compare --precision $precision --candidates 8 (limit ${COMPARE_S}s)"
  timeout --kill-after=10 "$COMPARE_S" "$PYTHON" bench/cuda_compare.py --precision "$precision" \
    --candidates 8 --jobs "$JOBS" --min-time 0.2 --warmup 0.5 --markdown \
    --json "$OUTDIR/compare_$precision.json" > "$OUTDIR/compare_$precision.txt" 2>&1
  rc=$?
  log "cuda_compare $precision: exit $rc: $(grep -m1 'geometric mean' "$OUTDIR/compare_$precision.txt")"
  [ $rc -eq 0 ] || STATUS=1
done
log "done (status $STATUS); files: $(ls "$OUTDIR" | tr '\n' ' ')"
exit $STATUS
