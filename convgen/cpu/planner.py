"""The CPU planner: every legal plan for a workload, ranked by the cost model; the choice.

``legal_plans`` enumerates (``plan.enumerate_plans``) and refuses the illegal
(``check_plan``); ``candidates`` prices them (``cost.estimate``); ``choose`` takes the
cheapest, memoised per (workload, target, threads, accuracy); ``resolve`` turns a user's
``plan=`` argument into a checked Plan.
"""
from __future__ import annotations

import functools
import math

from ..core.planning import Candidate, check_accuracy, format_explain
from ..core.spec import Workload
from ..runtime import machine as machine_model
from ..runtime.threads import default_threads
from ..target import Target
from ..target.machine import Machine
from . import measure
from .canonical import planned
from .cost import estimate
from .plan import ALGORITHMS, Plan, algorithms_for, check_plan, enumerate_plans


def model(target: Target) -> Machine:
    """The machine the cost model prices plans for (measured on first use; runtime.machine)."""
    return machine_model.current(target, measure.measure)


def legal_plans(workload: Workload, target: Target, threads: int | None = None,
                accuracy: str = "fast") -> list[Plan]:
    """Every legal plan for the workload, in the order enumerated, unpriced."""
    workload = planned(workload)
    found = []
    for plan in enumerate_plans(workload, target, threads or default_threads(), accuracy):
        try:
            check_plan(plan, workload, target, accuracy)
        except ValueError:
            continue
        found.append(plan)
    return found


def candidates(workload: Workload, target: Target, threads: int | None = None,
               accuracy: str = "fast", machine: Machine | None = None) -> list[Candidate]:
    """Every legal plan for the workload, cheapest first, priced for ``machine`` (default:
    the current model of this host)."""
    machine, load = machine or model(target), planned(workload)
    found = [Candidate(plan, *estimate(plan, load, target, machine))
             for plan in legal_plans(workload, target, threads, accuracy)]
    found.sort(key=lambda c: (c.cost_s, str(c.plan)))
    return found


def choose(workload: Workload, target: Target, threads: int | None = None,
           accuracy: str = "fast") -> Plan:
    """The cheapest candidate (memoised: the hot path of every compile call; the machine
    model is part of the memo's key, so a refitted model re-plans)."""
    return _best(workload, target, threads or default_threads(), accuracy,
                 model(target))


@functools.lru_cache(maxsize=4096)
def _best(workload: Workload, target: Target, threads: int, accuracy: str,
          machine: Machine) -> Plan:
    return candidates(workload, target, threads, accuracy, machine)[0].plan


def resolve(requested, workload: Workload, target: Target, accuracy: str = "fast") -> Plan:
    """A user's ``plan=`` argument ("auto", an algorithm name, a plan string, a Plan) as a Plan."""
    accuracy = check_accuracy(accuracy)
    if isinstance(requested, Plan):
        chosen = requested
    elif isinstance(requested, str) and requested == "auto":
        return choose(workload, target, accuracy=accuracy)
    elif isinstance(requested, str) and requested in ALGORITHMS:
        ranked = [c.plan for c in candidates(workload, target) if c.plan.algorithm == requested]
        if not ranked:
            raise ValueError(f"plan: algorithm {requested!r} does not apply to this "
                             f"{workload.spec.op}; choose one of {algorithms_for(workload)}")
        chosen = ranked[0]
    elif isinstance(requested, str) and "=" in requested:
        chosen = Plan.parse(requested)
    else:
        raise ValueError(f"plan must be 'auto', an algorithm name {ALGORITHMS}, a plan string "
                         f"or a Plan, got {requested!r}")
    check_plan(chosen, planned(workload), target, accuracy)
    return chosen


def explain(workload: Workload, target: Target, top: int = 5, accuracy: str = "fast",
            chosen: Plan | None = None) -> str:
    """The ranking as text; ``chosen`` (default: the planner's choice) is marked."""
    accuracy = check_accuracy(accuracy)
    ranked = candidates(workload, target, accuracy=accuracy)
    chosen = chosen if chosen is not None else (ranked[0].plan if ranked else None)
    notes = f", accuracy {accuracy}"
    if planned(workload) is not workload:
        notes += (f"\nplanned as one row of {math.prod(workload.out_spatial)} pixels "
                  f"(a 1x1 kernel, unit stride, no padding: the same computation)")
    return format_explain(workload, target, ranked, chosen, top, notes)
