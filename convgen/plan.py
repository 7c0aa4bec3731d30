"""Plans and the planner.

A ``Plan`` says how one workload is computed: the algorithm (which template), the order
of the outer loops, the output-channel block held in registers, and how the outer loops
are split across threads. The planner enumerates every legal plan for a workload and
ranks them with a small analytical cost model; ``explain`` shows the ranking.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from itertools import permutations

from .spec import AXIS_NAMES, Workload, workload_of
from .target import Target, get_target

ALGORITHMS = ("direct", "transposed_gather")
MAX_OC_BLOCK = 16   # accumulators per pixel: beyond this they spill out of registers
# Calling into an OpenMP team costs a few microseconds; below this much work one thread wins.
_PARALLEL_OVERHEAD_S = 5e-6
_SCALAR_MACS_PER_S = 6.0e9   # per thread: what the gather kernel reaches here (about 12 GMAC/s on 2 threads)


@dataclass(frozen=True)
class Plan:
    algorithm: str
    loop_order: tuple[str, ...]   # outer loops, outermost first: "n", "oc_block", spatial axes
    oc_block: int                 # output channels accumulated together per output pixel
    parallel_loops: int           # the outermost loops collapsed and split across threads
    threads: int

    def __str__(self) -> str:
        return (f"algorithm={self.algorithm} loop_order={','.join(self.loop_order)} "
                f"oc_block={self.oc_block} parallel_loops={self.parallel_loops} "
                f"threads={self.threads}")

    @classmethod
    def parse(cls, text: str) -> "Plan":
        """Inverse of ``str(plan)``."""
        fields = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"plan: expected key=value, got {item!r} in {text!r}")
            fields[key] = value
        expected = {"algorithm", "loop_order", "oc_block", "parallel_loops", "threads"}
        if set(fields) != expected:
            raise ValueError(f"plan: expected the fields {sorted(expected)}, got {sorted(fields)}")
        try:
            return cls(fields["algorithm"], tuple(fields["loop_order"].split(",")),
                       int(fields["oc_block"]), int(fields["parallel_loops"]),
                       int(fields["threads"]))
        except ValueError as exc:
            raise ValueError(f"plan: malformed number in {text!r}") from exc


def default_threads() -> int:
    """CONVGEN_NUM_THREADS, else every core this process may run on."""
    env = os.environ.get("CONVGEN_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"CONVGEN_NUM_THREADS must be a positive integer, got {env!r}")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def algorithms_for(workload: Workload) -> tuple[str, ...]:
    return ("transposed_gather",) if workload.spec.transposed else ("direct",)


def loop_extents(plan_loops: tuple[str, ...], workload: Workload, oc_block: int) -> dict[str, int]:
    extents = {"n": workload.input_shape[0], "oc_block": workload.spec.out_channels // oc_block}
    extents.update(zip(AXIS_NAMES[workload.spec.ndim], workload.out_spatial))
    return {name: extents[name] for name in plan_loops}


def check_plan(plan: Plan, workload: Workload) -> None:
    """Refuse a plan that cannot compute this workload, saying why."""
    spec = workload.spec
    if plan.algorithm not in algorithms_for(workload):
        raise ValueError(f"plan: algorithm {plan.algorithm!r} does not apply to {spec.op}; "
                         f"choose one of {algorithms_for(workload)}")
    loops = ("n", "oc_block", *AXIS_NAMES[spec.ndim])
    if sorted(plan.loop_order) != sorted(loops) or plan.loop_order[0] != "n":
        raise ValueError(f"plan: loop_order must be 'n' followed by a permutation of {loops[1:]}, "
                         f"got {plan.loop_order}")
    if plan.oc_block < 1 or spec.cout_per_group % plan.oc_block:
        raise ValueError(f"plan: oc_block={plan.oc_block} must divide the output channels per "
                         f"group ({spec.cout_per_group})")
    if not 1 <= plan.parallel_loops <= len(plan.loop_order):
        raise ValueError(f"plan: parallel_loops must be in 1..{len(plan.loop_order)}, "
                         f"got {plan.parallel_loops}")
    if plan.threads < 1:
        raise ValueError(f"plan: threads must be positive, got {plan.threads}")


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    cost_s: float     # predicted seconds
    why: str


def candidates(workload: Workload, target: Target, threads: int | None = None) -> list[Candidate]:
    """Every legal plan for the workload, cheapest first."""
    threads = threads or default_threads()
    spec = workload.spec
    spatial = AXIS_NAMES[spec.ndim]
    found = []
    for algorithm in algorithms_for(workload):
        for oc_block in _oc_blocks(spec.cout_per_group):
            for inner in _loop_orders(spatial):
                order = ("n", *inner)
                for parallel_loops in (1, 2):
                    for team in sorted({1, threads}):
                        plan = Plan(algorithm, order, oc_block, parallel_loops, team)
                        cost, why = _cost(plan, workload, target)
                        found.append(Candidate(plan, cost, why))
    found.sort(key=lambda c: (c.cost_s, str(c.plan)))
    return found


def _oc_blocks(cout_per_group: int) -> list[int]:
    # Blocks never straddle groups, so they divide the group's channels (33 -> 1, 3, 11).
    return [b for b in range(1, min(cout_per_group, MAX_OC_BLOCK) + 1) if cout_per_group % b == 0]


def _loop_orders(spatial: tuple[str, ...]):
    # Spatial axes stay in memory order (outer to inner); the channel-block loop goes
    # before them (weights stay hot) or after them (the input window stays hot).
    yield ("oc_block", *spatial)
    yield (*spatial, "oc_block")


def _cost(plan: Plan, workload: Workload, target: Target) -> tuple[float, str]:
    """Predicted seconds: MACs at a per-thread rate, scaled by load traffic and balance."""
    extents = loop_extents(plan.loop_order, workload, plan.oc_block)
    work_items = math.prod(list(extents.values())[: plan.parallel_loops])
    per_thread = max(1, math.ceil(work_items / plan.threads))
    balance = max(work_items, 1) / (per_thread * plan.threads)
    # Each input tap loaded is reused by oc_block accumulators; the weight walk adds a load too.
    loads_per_mac = 1.0 / plan.oc_block + 1.0
    # Channel blocks innermost re-read the same input window from L1: a little cheaper.
    locality = 0.95 if plan.loop_order[-1] == "oc_block" else 1.0
    # Wider register blocks spill past what the ISA holds.
    spill = 1.0 + max(0, plan.oc_block - (16 if target.isa == "avx512" else 8)) * 0.05
    compute = workload.macs * loads_per_mac * locality * spill / _SCALAR_MACS_PER_S
    seconds = compute / (plan.threads * balance)
    if plan.threads > 1:
        seconds += _PARALLEL_OVERHEAD_S * plan.threads
    why = (f"{workload.macs} MACs, {loads_per_mac:.2f} loads/MAC, {work_items} parallel items "
           f"over {plan.threads} threads (balance {balance:.2f})")
    return seconds, why


def plan(spec, input_shape=None, dtype="float32", target="cpu", threads=None) -> Plan:
    """The planner's choice for ``spec`` on inputs of ``input_shape`` (batched or not).

    ``spec`` may also be a Workload, which already carries the shape and dtype.
    """
    if isinstance(spec, Workload):
        workload = spec
    else:
        workload, _ = workload_of(spec, input_shape, dtype)
    resolved = get_target(target)
    if resolved.lang == "cuda":
        from .cuda import plan_cuda
        return plan_cuda(workload, resolved)
    return choose(workload, resolved, threads)


def choose(workload: Workload, target: Target, threads: int | None = None) -> Plan:
    """The cheapest candidate (memoised: the hot path of every compile call)."""
    return _best(workload, target, threads or default_threads())


@functools.lru_cache(maxsize=4096)
def _best(workload: Workload, target: Target, threads: int) -> Plan:
    return candidates(workload, target, threads)[0].plan


def resolve(requested, workload: Workload, target: Target) -> Plan:
    """A user's ``plan=`` argument ("auto", an algorithm name, a plan string, a Plan) as a Plan."""
    if isinstance(requested, Plan):
        chosen = requested
    elif requested == "auto":
        chosen = choose(workload, target)
    elif isinstance(requested, str) and requested in ALGORITHMS:
        ranked = [c.plan for c in candidates(workload, target) if c.plan.algorithm == requested]
        if not ranked:
            raise ValueError(f"plan: algorithm {requested!r} does not apply to "
                             f"{workload.spec.op}; choose one of {algorithms_for(workload)}")
        chosen = ranked[0]
    elif isinstance(requested, str) and "=" in requested:
        chosen = Plan.parse(requested)
    else:
        raise ValueError(f"plan must be 'auto', an algorithm name {ALGORITHMS}, a plan string "
                         f"or a Plan, got {requested!r}")
    check_plan(chosen, workload)
    return chosen


def explain(workload: Workload, target: Target, top: int = 5) -> str:
    ranked = candidates(workload, target)
    lines = [f"{workload.spec.describe()}", f"input {workload.input_shape} -> output "
             f"{workload.output_shape}, {workload.dtype}, target {target.description}",
             f"{len(ranked)} candidate plans; the best {min(top, len(ranked))}:"]
    for i, cand in enumerate(ranked[:top]):
        lines.append(f"  {'*' if i == 0 else ' '} {cand.cost_s * 1e3:9.3f} ms  {cand.plan}")
        lines.append(f"                 {cand.why}")
    return "\n".join(lines)
