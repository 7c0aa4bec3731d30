"""The CPU backend's build half: render, compile, symbols (``runtime.pipeline``'s needs).

Apart from the planner so that the machine model (``measure``, which the planner calls)
can build and time a generated kernel without an import cycle.
"""
from __future__ import annotations

from pathlib import Path

from ..core.codegen import templates_digest
from ..core.dtypes import itemsize
from ..core.spec import Workload
from ..target import Target
from . import compile as compiler
from . import kernel, render
from .canonical import planned
from .derived import derive
from .plan import Plan


class CpuBuild:
    """How a CPU kernel is rendered, compiled and named: what ``runtime.pipeline`` needs of
    a backend to build one, without the planner (the machine model times kernels too)."""

    name = "c"
    fuses_epilogues = True
    plan_type = Plan

    def toolchain_parts(self, target: Target) -> dict:
        parts = {"compiler": compiler.compiler_identity(), "flags": compiler.flags(target),
                 "templates": templates_digest("cpu")}
        native = compiler.native_expansion(target)
        return {**parts, "native": list(native)} if native else parts

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


BUILD = CpuBuild()
