"""bench/compare.py judges issue 11's targets by the class of the machine it runs on: GEMM-like
layers at 85% of the measured peak on a core with one FMA unit, 75% on one with two."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def compare(monkeypatch):
    """bench/compare.py, imported without leaving its OMP_WAIT_POLICY in this process."""
    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("compare")
    if wait_policy is None:
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = wait_policy
    yield module
    sys.modules.pop("compare", None)


def _row(name, share_of_peak, peak=100.0):
    seconds = 1.0 / (share_of_peak * peak)       # 1 GFLOP at that rate
    return {"name": name, "gflop": 1.0, "convgen_s": seconds, "convgen_alone_s": seconds,
            "torch_s": 2 * seconds, "module_s": seconds, "torch_module_s": 2 * seconds,
            "ort_s": 1.5 * seconds, "gemm_like": True}


@pytest.mark.parametrize("fma_per_cycle, share", [(0.98, 0.85), (1.0, 0.85), (1.79, 0.75),
                                                  (1.93, 0.75), (2.0, 0.75)])
def test_the_peak_share_follows_the_measured_fma_units(compare, fma_per_cycle, share):
    assert compare.peak_share_target(fma_per_cycle) == share


def test_a_layer_at_80_percent_meets_the_two_fma_target_and_misses_the_one_fma(compare,
                                                                               capsys):
    rows = [_row("dense_a", 0.80), _row("dense_b", 0.90)]
    compare.print_targets(rows, 100.0, compare.peak_share_target(1.9))
    two = capsys.readouterr().out
    assert "[met] GEMM-like layers at >= 75% of peak, alone" in two
    compare.print_targets(rows, 100.0, compare.peak_share_target(1.0))
    one = capsys.readouterr().out
    assert "[MISSED] GEMM-like layers at >= 85% of peak, alone (dense_a)" in one
