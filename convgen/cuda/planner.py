"""The CUDA planner: every legal plan for a workload, ranked by the cost model; the choice.

``candidates`` enumerates (``plan.enumerate_plans``), refuses the illegal (``check_plan``)
and those that would spill, and prices the rest (``cost.costs_of``); ``choose`` takes the
cheapest of the allowed arithmetic; ``resolve`` turns a user's ``plan=`` into a CudaPlan.
"""
from __future__ import annotations

import functools

from ..core.planning import Candidate, format_explain
from ..core.spec import Workload
from ..target import Target
from ..target.cuda_arch import CudaArch
from .cost import REGISTER_LIMIT, costs_of, fits_gemm_budget, registers
from .plan import (
    ALGORITHMS,
    CudaPlan,
    PlanError,
    algorithms_for,
    check_plan,
    enumerate_plans,
    maths_for,
    wgmma_applies,
)


def candidates(workload: Workload, target: Target) -> list[Candidate]:
    """Every plan the planner considers for the workload, cheapest first."""
    arch = target.cuda
    legal = []
    for plan in enumerate_plans(workload, arch):
        try:
            check_plan(plan, workload, arch)
        except PlanError:
            continue
        if registers(plan, workload) > REGISTER_LIMIT:   # would spill: never listed
            continue
        if plan.is_gemm and plan.math == "tf32" and not fits_gemm_budget(plan, workload):
            continue   # TF32 tiles run in 128 registers (2+ blocks per SM) or not at all
        legal.append(plan)
    found = [Candidate(plan, cost, why)
             for plan, (cost, why) in zip(legal, costs_of(legal, workload, arch))]
    found.sort(key=lambda c: (c.cost_s, str(c.plan)))
    return found




# -- the planner's choice ---------------------------------------------------------------------
def default_math(workload: Workload, arch: CudaArch) -> str:
    if workload.dtype == "float64":
        return "fp64"
    return "tf32" if arch.allow_tf32 and arch.tensor_cores_tf32 else "fp32"


def allowed_maths(workload: Workload, arch: CudaArch) -> tuple[str, ...]:
    """What "auto" may use: the dtype's own arithmetic, and TF32 too where allowed."""
    wanted = default_math(workload, arch)
    return ("tf32", "fp32") if wanted == "tf32" else (wanted,)


@functools.lru_cache(maxsize=4096)
def choose(workload: Workload, target: Target) -> CudaPlan:
    """The cheapest candidate of the allowed arithmetic (TF32 only where allowed)."""
    allowed = allowed_maths(workload, target.cuda)
    for cand in candidates(workload, target):
        if cand.plan.math in allowed:
            return cand.plan
    raise PlanError(f"no CUDA plan fits {workload.spec.describe()} on {target.cuda.name}")


def resolve(requested, workload: Workload, target: Target) -> CudaPlan:
    """``plan=`` of convgen.compile for a CUDA target: "auto", an algorithm name (optionally
    with ``+tf32``, e.g. "implicit_gemm+tf32"), a plan string or a CudaPlan."""
    arch = target.cuda
    if isinstance(requested, CudaPlan):
        chosen = requested
    elif requested == "auto":
        return choose(workload, target)
    elif isinstance(requested, str) and requested.split("+")[0] in ALGORITHMS:
        algorithm, _, math_ = requested.partition("+")
        math_ = math_ or default_math(workload, arch)
        if algorithm not in algorithms_for(workload):
            raise PlanError(f"plan: algorithm {algorithm!r} does not apply to "
                            f"{workload.spec.op} on the CUDA targets; choose one of "
                            f"{algorithms_for(workload)}")
        if algorithm in ("direct", "depthwise") and math_ == "tf32":
            math_ = "fp32"
        if algorithm == "wgmma_gemm":   # TF32 tensor cores or nothing
            math_ = "tf32"
            why = wgmma_applies(workload, arch)
            if why:
                raise PlanError(f"plan: wgmma_gemm does not apply: {why}")
        if math_ not in maths_for(workload, arch):
            raise PlanError(f"plan: math={math_!r} does not apply to {workload.dtype} on "
                            f"{arch.name}; choose one of {maths_for(workload, arch)}")
        ranked = [c.plan for c in candidates(workload, target)
                  if c.plan.algorithm == algorithm and c.plan.math == math_]
        if not ranked:
            raise PlanError(f"plan: no {algorithm} plan with math={math_} fits this workload "
                            f"on {arch.name}")
        chosen = ranked[0]
    elif isinstance(requested, str) and "=" in requested:
        chosen = CudaPlan.parse(requested)
    else:
        raise PlanError(f"plan must be 'auto', a CUDA algorithm name {ALGORITHMS} (with "
                        f"'+tf32' for tensor cores), a CUDA plan string or a CudaPlan for "
                        f"target {target.name!r}, got {requested!r}")
    check_plan(chosen, workload, arch)
    return chosen


def explain(workload: Workload, target: Target, top: int = 5, accuracy: str = "fast",
            chosen: CudaPlan | None = None) -> str:
    """The ranking as text; ``chosen`` (default: the planner's choice) is marked.
    (``accuracy`` is the CPU planner's; CUDA plans are exact in their arithmetic.)"""
    ranked = candidates(workload, target)
    chosen = chosen if chosen is not None else choose(workload, target)
    notes = f"; the default math is {default_math(workload, target.cuda)}"
    return format_explain(workload, target, ranked, chosen, top, notes)
