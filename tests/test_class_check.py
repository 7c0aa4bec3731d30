"""bench/class_check.sh (make bench-class): every step of a machine class's tables runs, in
order, with the suites and arguments it is given, each into its own file; a failing step
is reported and fails the check without stopping the others. The Python it drives is a
stand-in here that records its arguments (the real run takes 20 minutes of timings)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!/usr/bin/env bash
# the machine model's JSON, then every other call recorded and answered with a line
if [ "$1" = "-c" ]; then exec {python} "$@"; fi
if [ "$*" = "-m convgen.cli machine --json" ]; then
  echo '{{"machine_class": "test-class"}}'; exit 0
fi
echo "$*" >> {calls}
echo "output of: $*"
case "$*" in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 7;; esac
exit 0
"""


def _run(tmp_path, fail_on=""):
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python"
    stand_in.write_text(STAND_IN.format(python=sys.executable, calls=calls))
    stand_in.chmod(0o755)
    env = dict(os.environ, PY=str(stand_in), FAIL_ON=fail_on,
               CLASS_CHECK_SUITE="my_suite.json", CLASS_CHECK_CLASSES_SUITE="my_classes.json",
               CLASS_CHECK_ARGS="--min-time 0.1", CLASS_CHECK_COMPARE_ARGS="--no-onnxruntime")
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "bench" / "class_check.sh"), str(out)],
                          capture_output=True, text=True, env=env, timeout=60)
    return done, out, calls.read_text().splitlines()


def test_every_step_runs_with_its_suite_and_arguments(tmp_path):
    done, out, calls = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls[0] == "-m convgen.cli machine" and len(calls) == 6
    assert '"machine_class": "test-class"' in (out / "machine.json").read_text()
    compare = [c for c in calls if c.startswith("bench/compare.py")]
    regret = [c for c in calls if c.startswith("bench/regret.py")]
    assert len(compare) == 3 and len(regret) == 2
    for call in compare:
        assert "--repeat 3" in call and "--min-time 0.1" in call and "--no-onnxruntime" in call
    assert "--threads 2 --suite my_suite.json" in compare[0]
    assert "--threads 1 --skip-threading-check --suite my_suite.json" in compare[1]
    assert "--threads 2 --skip-threading-check --suite my_classes.json" in compare[2]
    for call, threads in zip(regret, (2, 1)):
        assert f"--threads {threads} --candidates 12 --suite my_suite.json --min-time 0.1" in call
        assert f"--json {out}/regret_{threads}t.json" in call and "--no-onnxruntime" not in call
    for name in ("machine.txt", "suite_2t.txt", "suite_1t.txt", "classes_2t.txt",
                 "regret_2t.txt", "regret_1t.txt"):
        assert (out / name).read_text().startswith("output of: "), name
    log = (out / "class_check.log").read_text()
    assert "machine class test-class" in log and "done, status 0" in log
    assert log.count("    ok in ") == 7


def test_a_failing_step_fails_the_check_and_the_rest_still_run(tmp_path):
    done, out, calls = _run(tmp_path, fail_on="--threads 1 --skip-threading-check --suite my_suite")
    assert done.returncode == 1
    log = (out / "class_check.log").read_text()
    assert "public suite, 1 thread" in log and "FAILED (exit 7)" in log
    assert log.count("FAILED") == 1 and "done, status 1" in log
    assert sum(c.startswith("bench/regret.py") for c in calls) == 2   # after the failure
