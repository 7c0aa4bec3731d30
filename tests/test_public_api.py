"""The public names a user is pointed to: Kernel.explain(), convgen.threading_status() and the
warning for an oversubscribed CONVGEN_NUM_THREADS."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

import convgen
from convgen.runtime import threads

SPEC = convgen.ConvSpec.conv(2, 8, 8, 3, padding=1)


def test_kernel_explain_ranks_candidates_and_marks_its_plan():
    k = convgen.compile(SPEC, (1, 8, 12, 12), plan="direct")
    text = k.explain(3)
    lines = text.splitlines()
    assert lines[0] == SPEC.describe() and "the best 3:" in lines[2]
    assert text.count(" ms  algorithm=") == 4          # the top 3, then its own plan, ranked
    marked = [line for line in lines if line.lstrip().startswith("*")]
    assert len(marked) == 1 and str(k.plan) in marked[0] and "ranked" in marked[0]
    with pytest.raises(ValueError, match="top must be a positive number"):
        k.explain(0)


def test_kernel_explain_shows_the_ranking_it_is_asked_for():
    """A kernel compiled with accuracy="strict" shows the exact algorithms' ranking when
    asked: no Winograd plan among them, its own plan marked."""
    k = convgen.compile(convgen.ConvSpec.conv(2, 32, 32, 3, padding=1), (1, 32, 28, 28),
                        accuracy="strict")
    strict = k.explain(50, accuracy="strict")
    assert "winograd" not in strict and "accuracy strict" in strict
    assert [line for line in strict.splitlines() if line.lstrip().startswith("*")]
    assert "winograd" in k.explain(50)          # the default ranking is the fast one
    with pytest.raises(ValueError, match="accuracy"):
        k.explain(accuracy="exact")


def test_threading_status_is_public_and_says_what_was_done(monkeypatch):
    assert "threading_status" in convgen.__all__
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("CONVGEN_NUM_THREADS", raising=False)
    status = convgen.threading_status()
    assert isinstance(status, convgen.ThreadingStatus)
    assert (status.threads, status.source, status.usable_cores) == (cores, "usable cores", cores)
    assert status.openmp == convgen.runtime.openmp.STATUS and not status.oversubscribed
    assert status.spin_count == os.environ.get("GOMP_SPINCOUNT")
    monkeypatch.setenv("CONVGEN_NUM_THREADS", str(cores + 1))
    status = convgen.threading_status()
    assert status.threads == cores + 1 and status.source == "CONVGEN_NUM_THREADS"
    assert status.oversubscribed and "more threads than cores" in str(status)


def test_threading_status_in_a_fresh_process_reports_convgens_spin_setting():
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "CONVGEN_NUM_THREADS")}
    code = "import convgen; print(convgen.threading_status())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    assert "OpenMP, at import: GOMP_SPINCOUNT=3000000" in done.stdout
    assert f"usable cores: {len(os.sched_getaffinity(0))}" in done.stdout


def test_more_threads_than_cores_warns_once(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads, "_WARNED", set())
    monkeypatch.setenv("CONVGEN_NUM_THREADS", str(cores + 1))
    with pytest.warns(RuntimeWarning, match=f"CONVGEN_NUM_THREADS={cores + 1} exceeds the "
                      f"{cores} core"):
        assert threads.default_threads() == cores + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threads.default_threads()                  # said once is enough
        monkeypatch.setenv("CONVGEN_NUM_THREADS", str(cores))
        assert threads.default_threads() == cores  # as many as the cores: no warning
