"""convgen.tune end to end on small layers with tiny budgets: trials recorded, the next
compile uses the tuned plan, failing candidates (compile error, crash, wrong answer) are
recorded and never chosen, Ctrl-C keeps what was measured, two tuners share a database,
and the search itself."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import convgen
from convgen.backends import backend_for, get_target
from convgen.core.spec import workload_of
from convgen.tuning import TuningDB, tune
from convgen.tuning.search import Search, Space

SPEC = convgen.ConvSpec.conv(2, 8, 16, 3, padding=1)
SHAPE = (1, 8, 12, 12)
FAST = {"min_time": 0.01, "progress": False}


def space_of(spec=SPEC, shape=SHAPE):
    workload = workload_of(spec, shape, "float32")[0]
    target = get_target("cpu")
    backend = backend_for(target)
    return workload, backend.candidates(workload, target), backend.choose(workload, target)


def test_tune_records_every_trial_and_the_next_compile_uses_the_best(private_cache):
    result = tune(SPEC, SHAPE, trials=5, **FAST)
    assert len(result.trials) == 5
    assert result.trials[0].plan == result.default and result.trials[0].source == "default"
    # at least 5 timed runs, 3 for a plan 10x slower than the best so far
    assert all(t.ok and t.time.median_s > 0 and t.time.runs >= 3 for t in result.trials)
    assert len({t.plan for t in result.trials}) == 5
    assert result.confirmed and result.best in {t.plan for t in result.trials}
    assert result.best_time is not None and result.speedup >= 1.0
    records = TuningDB().records()
    assert [r["kind"] for r in records] == ["trial"] * 5 + ["decision"]
    assert records[-1]["plan"] == str(result.best)
    assert records[-1]["default_plan"] == str(result.default)
    assert convgen.compile(SPEC, SHAPE).plan == result.best
    assert "speedup" in result.summary() or "kept the default" in result.summary()


def test_user_plans_are_measured_right_after_the_default(tmp_path):
    _, ranked, default = space_of()
    extra = ranked[-1].plan   # the model's last choice
    result = tune(SPEC, SHAPE, trials=2, db=tmp_path / "db.jsonl", plans=[str(extra)], **FAST)
    assert [t.plan for t in result.trials] == [default, extra]
    assert result.trials[1].source == "user"


FAKE_CC = textwrap.dedent("""\
    import json, os, re, sys
    real = os.environ["REAL_CC"]
    args = sys.argv[1:]
    if args == ["--version"] or "-###" in args:   # its identity, not a kernel
        os.execv(real, [real] + args)
    faults = json.loads(os.environ.get("CONVGEN_TEST_FAULTS", "{}"))
    sources = [a for a in args if a.endswith(".c")]
    main = open(sources[0]).read()
    plan = re.search(r"plan:\\s+(.*)", main).group(1).strip()
    fault = faults.get(plan)
    if fault == "compile":
        sys.exit("kernel.c:1:1: error: a compile failure injected by the test")
    if fault in ("crash", "wrong"):
        prefix = re.search(r"Exports: (\\w+)_run\\(", main).group(1)
        body = "raise(SIGSEGV);" if fault == "crash" else "((float *)y)[0] += 1.0f;"
        copy = sources[0][:-2] + "_fault.c"
        with open(copy, "w") as f:
            f.write(main.replace(prefix + "_run(", prefix + "_real_run("))
            f.write("\\n#include <signal.h>\\nint " + prefix + "_run(const void *x, "
                    "const void *wp, const void *bias, void *y, void *work) {\\n"
                    "  int status = " + prefix + "_real_run(x, wp, bias, y, work);\\n  "
                    + body + "\\n  return status;\\n}\\n")
        args = [copy if a == sources[0] else a for a in args]
    os.execv(real, [real] + args)
""")


@pytest.fixture
def faulty_compiler(tmp_path, monkeypatch):
    """A C compiler that fails, or builds a crashing or wrong kernel, for chosen plans."""
    import shutil
    script = tmp_path / "fake_cc"
    script.write_text(f"#!{sys.executable}\n" + FAKE_CC)
    script.chmod(0o755)
    monkeypatch.setenv("REAL_CC", os.path.realpath(shutil.which(os.environ.get("CC", "cc"))))
    monkeypatch.setenv("CC", str(script))

    def inject(faults: dict):
        monkeypatch.setenv("CONVGEN_TEST_FAULTS", json.dumps({str(k): v
                                                              for k, v in faults.items()}))
    return inject


def test_failing_candidates_are_recorded_and_never_chosen(tmp_path, faulty_compiler):
    _, ranked, default = space_of()
    bad = [c.plan for c in ranked if c.plan != default][:3]
    faulty_compiler({bad[0]: "compile", bad[1]: "crash", bad[2]: "wrong"})
    path = tmp_path / "db.jsonl"
    result = tune(SPEC, SHAPE, trials=6, db=path, plans=bad, **FAST)
    status = {t.plan: t for t in result.trials}
    assert status[bad[0]].status == "compile_error"
    assert "injected" in status[bad[0]].error
    assert status[bad[1]].status == "crash" and "SIGSEGV" in status[bad[1]].error
    assert status[bad[2]].status == "wrong" and "relative error" in status[bad[2]].error
    assert status[default].ok
    assert sum(t.ok for t in result.trials) == 3   # the search went on after each failure
    assert result.best not in bad
    recorded = {r["plan"]: r["status"] for r in TuningDB(path).records() if r["kind"] == "trial"}
    assert recorded[str(bad[0])] == "compile_error" and recorded[str(bad[1])] == "crash"
    assert recorded[str(bad[2])] == "wrong"


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "convgen.cli", "tune", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


LAYER = ["conv2d", "--input", "1,8,12,12", "--weight", "16,8,3,3", "--padding", "1"]


def test_ctrl_c_stops_cleanly_keeping_what_was_measured(tmp_path):
    path = tmp_path / "db.jsonl"
    proc = _cli(*LAYER, "--trials", "300", "--db", str(path), "--min-time", "0.05")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    records = TuningDB(path).records()
    trials = [r for r in records if r["kind"] == "trial"]
    assert 3 <= len(trials) < 300
    assert all(r["status"] == "ok" for r in trials)
    decisions = [r for r in records if r["kind"] == "decision"]
    assert len(decisions) == 1 and decisions[0]["interrupted"]


def test_two_processes_tuning_into_one_database_lose_no_record(tmp_path):
    path = tmp_path / "db.jsonl"
    other = ["conv1d", "--input", "1,8,40", "--weight", "8,8,5", "--padding", "2"]
    procs = [_cli(*layer, "--trials", "4", "--db", str(path), "--min-time", "0.01")
             for layer in (LAYER, other)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "4 trials" in out
        assert "[  1/4]" in err    # plain progress lines when not on a terminal
    records = TuningDB(path).records()
    assert len(records) == 10 and len({r["id"] for r in records}) == 10
    assert sorted(r["kind"] for r in records).count("decision") == 2


def test_budgets_are_checked():
    for bad in ({"trials": 0}, {"trials": 2.5}, {"seconds": -1}, {"trials": None}):
        with pytest.raises(ValueError):
            tune(SPEC, SHAPE, **bad)


def test_a_seconds_budget_stops_the_search(tmp_path):
    start = time.monotonic()
    result = tune(SPEC, SHAPE, trials=None, seconds=3, db=tmp_path / "db.jsonl", **FAST)
    assert time.monotonic() - start < 120
    # the default plan is measured whatever the budget; no measurement starts after it
    assert result.trials and result.trials[0].plan == result.default
    assert all(t.elapsed_s < 3 + 30 for t in result.trials)


# -- the search, without measuring --------------------------------------------------------
def test_the_search_starts_with_the_planner_then_learns():
    workload, ranked, default = space_of(convgen.ConvSpec.conv(2, 32, 32, 3, padding=1),
                                         (1, 32, 28, 28))
    space = Space(ranked)
    search = Search(space, default, trials=24, seed=1)
    first = search.propose(4)
    assert first[0] == (default, "default")
    assert {source for _, source in first[1:]} == {"planner"}
    # a machine whose true times favour one algorithm the model ranks low
    favoured = ranked[-1].plan.algorithm if ranked[-1].plan.algorithm != "direct" else "direct_simd"

    def truth(plan):
        factor = 0.2 if plan.algorithm == favoured else 1.0
        return space.predicted[plan] * factor

    proposed = [p for p, _ in first]
    for plan in proposed:
        search.observe(plan, truth(plan))
    search.observe(next(p for p in space.plans if p.algorithm == favoured and p not in proposed),
                   None)   # a failure is not proposed again
    for _ in range(5):
        batch = search.propose(4)
        assert all(p not in proposed for p, _ in batch)
        proposed += [p for p, _ in batch]
        for plan, source in batch:
            if source == "search":
                search.observe(plan, truth(plan))
    later = proposed[-12:]
    assert sum(p.algorithm == favoured for p in later) >= 6
    assert len(set(proposed)) == len(proposed)


def test_plans_that_differ_only_in_a_flag_have_different_features():
    """The surrogate learns from the features: a panel with and without its prefetch
    (0 and 1, alike in log2) must not look the same to it."""
    _, ranked, _ = space_of(convgen.ConvSpec.conv(2, 256, 512, 1, stride=2), (1, 256, 14, 14))
    space = Space(ranked)
    fetching = next(p for p in space.plans if p.prefetch)
    plain = next(p for p in space.plans if p == dataclasses.replace(fetching, prefetch=0))
    assert space.features(fetching) != space.features(plain)


def test_neighbours_differ_in_one_field():
    _, ranked, default = space_of()
    space = Space(ranked)
    for other in space.neighbours(default):
        changed = [f for f in space.field_names if getattr(other, f) != getattr(default, f)]
        assert len(changed) == 1
