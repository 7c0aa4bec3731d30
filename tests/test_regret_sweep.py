"""bench/regret.py's sweep: the planner's top candidates, then the best-ranked plan of every
other algorithm and loop order that applies, each with its rank among all candidates."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.plan import GATHER_ALGORITHMS
from convgen.cpu.planner import candidates, model

_PATH = Path(__file__).resolve().parents[1] / "bench" / "regret.py"
_SPEC = importlib.util.spec_from_file_location("regret", _PATH)
regret = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(regret)


def test_sweep_adds_each_other_algorithm_and_loop_orders_best_plan():
    workload, _ = workload_of(ConvSpec.conv(2, 32, 32, 3, padding=1), (1, 32, 20, 20), "float32")
    target = get_target("cpu")
    ranked = candidates(workload, target, threads=2)
    level = regret.working_set_level_of(workload, target, model(target))
    swept = regret.sweep(ranked, 3, level)
    assert [s.plan for s in swept[:3]] == [c.plan for c in ranked[:3]]
    assert [s.rank for s in swept[:3]] == [1, 2, 3]

    def kind(plan):
        return plan.algorithm, plan.loop_order, level(plan)

    kinds = {kind(c.plan) for c in ranked if c.plan.algorithm not in GATHER_ALGORITHMS}
    assert {kind(s.plan) for s in swept} == kinds
    assert len({c.plan.loop_order for c in ranked}) > 1     # the layer has loop orders to add
    for s in swept[3:]:     # the first of its kind in the ranking, below the top 3
        first = next(i for i, c in enumerate(ranked) if kind(c.plan) == kind(s.plan))
        assert s.rank == first + 1 > 3 and ranked[first].plan == s.plan
    assert len({kind(s.plan) for s in swept[3:]}) == len(swept) - 3


def test_sweep_takes_a_panel_for_each_cache_level_it_fits():
    """A panel that stays in L1 and one streamed from L2 are different kernels: on a 1x1
    layer of 256 channels (pointwise_256_128) the sweep times the best-ranked of each, and
    each panel's level is its per-thread panel's size against the machine's caches."""
    from convgen.cpu.canonical import planned
    from convgen.cpu.derived import derive

    workload, _ = workload_of(ConvSpec.conv(2, 256, 128, 1), (1, 256, 28, 28), "float32")
    target = get_target("cpu")
    machine = model(target)
    ranked = candidates(workload, target, threads=2)
    level = regret.working_set_level_of(workload, target, machine)
    panels = [s.plan for s in regret.sweep(ranked, 3, level) if s.plan.loop_order == "panel"]
    by_algorithm: dict[str, set[str]] = {}
    for plan in panels:
        by_algorithm.setdefault(plan.algorithm, set()).add(level(plan))
    assert any(len(levels) > 1 for levels in by_algorithm.values())
    assert "L1" in set().union(*by_algorithm.values())
    for plan in panels:
        size = derive(planned(workload), plan, target).panel * 4
        assert (level(plan) == "L1") == (size <= machine.l1d_bytes)
    assert all(level(c.plan) == "" for c in ranked if c.plan.loop_order != "panel")


def test_sweep_takes_a_winograd_block_for_each_cache_level_it_fits():
    """A Winograd block whose scratch fits the L2 beside all the transformed weights, and one
    that does not, are different kernels: on inception_3x3 (96 channels, 35 x 35; 1.27 MiB
    of F(4,3) weights) the sweep times the best-ranked of each, their level the scratch and
    the weights against the caches (a 2 MiB L2)."""
    from convgen.cpu.canonical import planned
    from convgen.cpu.derived import derive
    from convgen.cpu.plan import WINOGRAD_ALGORITHMS

    workload, _ = workload_of(ConvSpec.conv(2, 96, 96, 3, padding=1), (1, 96, 35, 35),
                              "float32")
    target = get_target("cpu")
    machine = dataclasses.replace(model(target), l1d_bytes=48 << 10, l2_bytes=2 << 20)
    ranked = candidates(workload, target, threads=1, machine=machine)
    level = regret.working_set_level_of(workload, target, machine)
    swept = [s.plan for s in regret.sweep(ranked, 3, level)
             if s.plan.algorithm == "winograd4"]
    assert {level(plan) for plan in swept} == {level(c.plan) for c in ranked
                                               if c.plan.algorithm == "winograd4"}
    assert len(swept) > 1
    for plan in swept:
        geo = derive(planned(workload), plan, target).winograd
        size = (geo.scratch + 36 * 96 * 96) * 4
        assert level(plan) == ("L2" if machine.l1d_bytes < size <= machine.l2_bytes else "L3")
    assert all(level(c.plan) == "" for c in ranked
               if c.plan.algorithm not in WINOGRAD_ALGORITHMS and c.plan.loop_order != "panel")


def test_medians_run_the_preparation_untimed_before_every_call():
    """--fresh-input: the input rewritten before every timed call, outside the timing."""
    events, now = [], [0.0]

    def clock():
        return now[0]

    def prepare():
        events.append("prepare")
        now[0] += 100.0            # would dominate the medians if it were timed

    def runner(name):
        def run():
            events.append(name)
            now[0] += 1.0
        return run

    times = regret.medians([runner("a"), runner("b")], clock, 0.0, min_reps=3,
                           prepare=prepare)
    assert times == [1.0, 1.0]
    timed = events[2:]             # after the two warm-up calls
    assert len(timed) == 12 and timed[0::2] == ["prepare"] * 6
    assert sorted(timed[1::2]) == ["a"] * 3 + ["b"] * 3


def test_a_layers_regret_with_the_input_rewritten(monkeypatch):
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "1")
    layer = {"name": "tiny", "op": "conv2d", "x": [1, 8, 10, 12], "w": [16, 8, 3, 3],
             "args": {"padding": 1}}
    row = regret.layer_regret(layer, 1, 2, 0.01, fresh_input=True)
    assert row["fresh_input"] is True and row["chosen_s"] > 0 and row["regret"] >= 0
