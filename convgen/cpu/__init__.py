"""The CPU backend: C for x86-64 (AVX2, AVX-512) or portable C, compiled with the system C
compiler.

    Workload -> Plan (plan.py; ranked by cost.py in planner.py; facts in derived.py)
             -> C sources (render.py, templates/cpu/) -> shared library (compile.py)
             -> cache and load (runtime.pipeline) -> Kernel (kernel.py)

``BACKEND`` is what the registry (``convgen.backends``) hands the front ends: the build
(``build.py``: render, compile, symbols) with the planner and the loaded kernels.
"""
from __future__ import annotations

from ..core.spec import Workload
from ..runtime import machine as machine_model
from ..runtime.kernel import kernel_for
from ..target import Target
from . import cost, kernel, measure, peak, planner
from .build import CpuBuild
from .plan import Plan


class CpuBackend(CpuBuild):
    """The build (``build.CpuBuild``) with the planner and the loaded kernels."""

    # -- planning ------------------------------------------------------------------------
    def resolve(self, requested, workload: Workload, target: Target, accuracy: str = "fast"):
        return planner.resolve(requested, workload, target, accuracy)

    def choose(self, workload: Workload, target: Target, threads: int | None = None,
               accuracy: str = "fast"):
        return planner.choose(workload, target, threads, accuracy)

    def candidates(self, workload: Workload, target: Target, accuracy: str = "fast"):
        return planner.candidates(workload, target, accuracy=accuracy)

    def explain(self, workload: Workload, target: Target, top: int = 5, accuracy: str = "fast",
                chosen=None) -> str:
        return planner.explain(workload, target, top, accuracy, chosen)

    def machine_model(self, target: Target):
        """The Machine the cost model prices plans for on ``target``."""
        return planner.model(target)

    def estimate(self, plan: Plan, workload: Workload, target: Target, machine) -> tuple:
        """The cost model's (seconds, why) for one plan on ``machine``."""
        return cost.estimate(plan, workload, target, machine)

    def peak_gflops(self, threads: int) -> float:
        """The measured float32 FMA peak of this machine on ``threads`` threads."""
        return peak.fma_peak_gflops(threads)

    def machine(self, target: Target, remeasure: bool = False) -> dict:
        """The machine model the planner prices plans with, and where it came from."""
        if remeasure:
            machine_model.remeasure(target.isa_row, measure.measure)
        return machine_model.describe(target, measure.measure)

    # -- loading -------------------------------------------------------------------------
    def kernel(self, workload: Workload, plan: Plan, target: Target, unbatched: bool = False,
               prefix: str | None = None) -> kernel.Kernel:
        if target.missing_features():
            raise ValueError(f"target {target.name!r} needs CPU features this machine lacks "
                             f"({', '.join(target.missing_features())}): its kernels cannot "
                             f"run here; compile for target 'cpu' (this machine's ISA), or "
                             f"build for {target.name!r} ahead of time with convgen.build")
        return kernel_for(self, kernel.Kernel, workload, plan, target, unbatched, prefix)


BACKEND = CpuBackend()
