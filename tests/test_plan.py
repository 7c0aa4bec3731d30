"""The planner: its public signature, the candidate space and the explanation."""
from __future__ import annotations

import convgen
from convgen.plan import Plan, candidates, check_plan, explain, plan
from convgen.spec import ConvSpec, workload_of
from convgen.target import get_target

SPEC = ConvSpec.conv(2, 12, 24, 3, padding=1, groups=3)


def test_plan_takes_spec_shape_dtype_target():
    chosen = plan(SPEC, (2, 12, 17, 9), "float64", "cpu")
    assert isinstance(chosen, Plan)
    assert chosen == convgen.compile(SPEC, (2, 12, 17, 9), dtype="float64").plan
    # unbatched shapes plan as batch 1
    assert plan(SPEC, (12, 17, 9)) == plan(SPEC, (1, 12, 17, 9))


def test_candidates_are_legal_ranked_and_parse_back():
    workload, _ = workload_of(SPEC, (2, 12, 17, 9), "float32")
    ranked = candidates(workload, get_target("cpu"), threads=2)
    costs = [c.cost_s for c in ranked]
    assert costs == sorted(costs) and len(ranked) > 10
    assert {c.plan.oc_block for c in ranked} == {1, 2, 4, 8}   # the divisors of 8 per group
    for cand in ranked:
        check_plan(cand.plan, workload)
        assert Plan.parse(str(cand.plan)) == cand.plan


def test_explain_shows_the_choice_first():
    workload, _ = workload_of(SPEC, (2, 12, 17, 9), "float32")
    text = explain(workload, get_target("cpu"), top=3)
    best = str(plan(workload))
    assert "candidate plans" in text
    starred = next(line for line in text.splitlines() if line.strip().startswith("*"))
    assert best in starred


def test_more_threads_than_work_items_do_not_win_on_balance():
    # batch 1, 2 output channels, a single output row: splitting just n would idle a thread
    spec = ConvSpec.conv(2, 4, 2, (3, 3), padding=1)
    chosen = plan(spec, (1, 4, 1, 4096), threads=2)
    assert chosen.threads == 1 or chosen.parallel_loops >= 2
