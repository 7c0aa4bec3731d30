"""The CPU backend: C for x86-64 (AVX2, AVX-512) or portable C, compiled with the system C
compiler.

    Workload -> Plan (plan.py; ranked by cost.py in planner.py; facts in derived.py)
             -> C sources (render.py, templates/cpu/) -> shared library (compile.py)
             -> cache and load (runtime.pipeline) -> Kernel (kernel.py)

``BACKEND`` is what the registry (``convgen.backends``) hands the front ends.
"""
from __future__ import annotations

from pathlib import Path

from ..core.codegen import templates_digest
from ..core.dtypes import itemsize
from ..core.spec import Workload
from ..runtime import machine as machine_model
from ..runtime.kernel import kernel_for
from ..target import Target
from . import compile as compiler
from . import cost, kernel, measure, peak, planner, render
from .canonical import planned
from .derived import derive
from .plan import Plan


class CpuBackend:
    name = "c"
    fuses_epilogues = True
    plan_type = Plan

    def toolchain_parts(self, target: Target) -> dict:
        return {"compiler": compiler.compiler_identity(), "flags": compiler.flags(target),
                "templates": templates_digest("cpu")}

    def render(self, workload: Workload, plan: Plan, target: Target, prefix: str):
        return render.render(workload, plan, target, prefix)

    def build(self, paths: list[Path], library_path: Path, target: Target) -> None:
        compiler.compile_shared(paths, library_path, target)

    def symbols(self, prefix: str) -> tuple[str, ...]:
        return kernel.symbols(prefix)

    def workspace_bytes(self, workload: Workload, plan: Plan, target: Target) -> int:
        """The scratch a kernel for ``target`` needs (what its ``_workspace_bytes`` returns),
        without compiling it: the AOT build packs on a portable twin where the build
        machine cannot run the target's code, and the twin's needs may differ (no masked
        loads: depthwise pads into per-thread planes)."""
        return derive(planned(workload), plan, target).workspace * itemsize(workload.dtype)

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
