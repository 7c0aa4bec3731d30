"""bench/regret.py's sweep: the planner's top candidates, then the best-ranked plan of every
other algorithm and loop order that applies, each with its rank among all candidates."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.plan import GATHER_ALGORITHMS
from convgen.cpu.planner import candidates

_PATH = Path(__file__).resolve().parents[1] / "bench" / "regret.py"
_SPEC = importlib.util.spec_from_file_location("regret", _PATH)
regret = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(regret)


def test_sweep_adds_each_other_algorithm_and_loop_orders_best_plan():
    workload, _ = workload_of(ConvSpec.conv(2, 32, 32, 3, padding=1), (1, 32, 20, 20), "float32")
    ranked = candidates(workload, get_target("cpu"), threads=2)
    swept = regret.sweep(ranked, 3)
    assert [s.plan for s in swept[:3]] == [c.plan for c in ranked[:3]]
    assert [s.rank for s in swept[:3]] == [1, 2, 3]

    def kind(plan):
        return plan.algorithm, plan.loop_order

    kinds = {kind(c.plan) for c in ranked if c.plan.algorithm not in GATHER_ALGORITHMS}
    assert {kind(s.plan) for s in swept} == kinds
    assert len({c.plan.loop_order for c in ranked}) > 1     # the layer has loop orders to add
    for s in swept[3:]:     # the first of its kind in the ranking, below the top 3
        first = next(i for i, c in enumerate(ranked) if kind(c.plan) == kind(s.plan))
        assert s.rank == first + 1 > 3 and ranked[first].plan == s.plan
    assert len({kind(s.plan) for s in swept[3:]}) == len(swept) - 3
