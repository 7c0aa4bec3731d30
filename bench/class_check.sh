#!/usr/bin/env bash
# The one-call CPU machine-class check: every table bench/RESULTS.md keeps for a machine
# class, measured in one command and written under one folder. Run it on a machine class
# not measured yet (RESULTS names them; the one-FMA AMD EPYC class, for one), then copy
# the tables into RESULTS.md.
#
#   make bench-class                       # the host's own ISA
#   CONVGEN_MAX_CPU_ISA=avx2 make bench-class   # this host as an AVX2 machine (torch capped alike)
#   bash bench/class_check.sh [OUTDIR]     # default: bench/class_results/<machine class>-<date>
#
# 1. machine.txt: `convgen machine` (CPU model, caches, the measured machine model) and
#    machine.json (the same, as JSON);
# 2. suite_2t.txt, suite_1t.txt: bench/compare.py on the public suite, 2 threads then 1,
#    three processes per layer (the targets' table: torch, modules, onnxruntime, % peak);
# 3. classes_2t.txt: the same for the layer classes (bench/suite_classes.json), 2 threads;
# 4. regret_2t.txt/.json, regret_1t.txt/.json: bench/regret.py, the planner's first choice
#    against its top 12 and every other algorithm's and loop order's best-ranked plan.
# About 20 minutes on a 2-core VM. Run nothing else meanwhile: the tables are timings.
# CLASS_CHECK_SUITE and CLASS_CHECK_CLASSES_SUITE replace the two suites; CLASS_CHECK_ARGS
# is passed to every compare.py and regret.py run (e.g. "--min-time 0.1"), and
# CLASS_CHECK_COMPARE_ARGS to compare.py's alone (e.g. "--no-onnxruntime").
# Exit status: 0 every step ran; 1 a step failed (the others still run; class_check.log says
# which).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CLASS=$($PY -m convgen.cli machine --json \
        | $PY -c "import json, sys; print(json.load(sys.stdin)['machine_class'])") \
    || { echo "class_check: convgen machine failed (is the venv set up? make bench-class does it)" >&2; exit 1; }
SUITE=${CLASS_CHECK_SUITE:-bench/suite_public.json}
CLASSES=${CLASS_CHECK_CLASSES_SUITE:-bench/suite_classes.json}
read -r -a ARGS <<< "${CLASS_CHECK_ARGS:-}"
read -r -a COMPARE_ARGS <<< "${CLASS_CHECK_COMPARE_ARGS:-}"
OUTDIR=${1:-bench/class_results/${CLASS}-$(date -u +%Y-%m-%d)}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/class_check.log"
: > "$LOG"
status=0

step() {   # step NAME OUTFILE COMMAND...: run one step, its output to OUTFILE, a line to the log
  local name=$1 out=$2
  shift 2
  local started=$SECONDS
  echo "[$(date -u +%H:%M:%S)] $name: $*" >> "$LOG"
  if "$@" > "$out" 2>&1; then
    echo "    ok in $((SECONDS - started)) s -> $out" >> "$LOG"
  else
    echo "    FAILED (exit $?) in $((SECONDS - started)) s; the end of $out:" >> "$LOG"
    tail -5 "$out" | sed 's/^/      /' >> "$LOG"
    status=1
  fi
}

echo "class_check: machine class $CLASS, CONVGEN_MAX_CPU_ISA=${CONVGEN_MAX_CPU_ISA:-unset}, into $OUTDIR" >> "$LOG"
step "machine model" "$OUTDIR/machine.txt" $PY -m convgen.cli machine
step "machine model (json)" "$OUTDIR/machine.json" $PY -m convgen.cli machine --json
COMPARE=($PY bench/compare.py --repeat 3 "${ARGS[@]}" "${COMPARE_ARGS[@]}")
step "public suite, 2 threads" "$OUTDIR/suite_2t.txt" "${COMPARE[@]}" --threads 2 --suite "$SUITE"
step "public suite, 1 thread" "$OUTDIR/suite_1t.txt" \
    "${COMPARE[@]}" --threads 1 --skip-threading-check --suite "$SUITE"
step "layer classes, 2 threads" "$OUTDIR/classes_2t.txt" \
    "${COMPARE[@]}" --threads 2 --skip-threading-check --suite "$CLASSES"
for threads in 2 1; do
  step "regret, $threads thread(s)" "$OUTDIR/regret_${threads}t.txt" \
      $PY bench/regret.py --threads "$threads" --candidates 12 --suite "$SUITE" "${ARGS[@]}" \
      --json "$OUTDIR/regret_${threads}t.json"
done
echo "class_check: done, status $status" >> "$LOG"
cat "$LOG"
exit $status
