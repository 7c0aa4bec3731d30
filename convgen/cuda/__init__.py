"""The CUDA backend: targets "cuda" (nvcc, a GPU) and "cuda-emu" (the same kernels on the CPU).

One pipeline, one module per stage, as for the CPU:

    Workload -> CudaPlan (plan.py; ranked by cost.py in planner.py)
             -> CUDA C++ (render.py, templates/cuda/; cost.py reads calibration.json, what
                the compiled GEMM tiles are: calibrate.py measures them with sass.py)
             -> shared library (compile.py: nvcc, or the host compiler + templates/cuda/emu)
             -> cache and load (runtime.pipeline) -> CudaKernel (kernel.py; device.py, driver.py)

``BACKEND`` is what the registry (``convgen.backends``) hands the front ends.
"""
from __future__ import annotations

from pathlib import Path

from ..core.codegen import templates_digest
from ..core.spec import Workload
from ..runtime.kernel import kernel_for
from ..target import Target
from . import compile as compiler
from . import kernel, planner, render
from .device import DeviceArray, DeviceView, device_view, stream_handle
from .driver import CudaError
from .kernel import CudaKernel
from .plan import CudaPlan, PlanError
from .planner import candidates, check_plan, choose, explain, resolve
from .target import TARGET_NAMES, cuda_target

__all__ = [
    "BACKEND",
    "TARGET_NAMES",
    "CudaError",
    "CudaKernel",
    "CudaPlan",
    "DeviceArray",
    "DeviceView",
    "PlanError",
    "candidates",
    "check_plan",
    "choose",
    "cuda_target",
    "device_view",
    "explain",
    "resolve",
    "stream_handle",
]


class CudaBackend:
    name = "cuda"
    fuses_epilogues = False
    plan_type = CudaPlan

    def toolchain_parts(self, target: Target) -> dict:
        return {"compiler": compiler.compiler_identity(target), "flags": compiler.flags(target),
                "templates": templates_digest("cuda")}

    def render(self, workload: Workload, plan: CudaPlan, target: Target, prefix: str):
        return render.render(workload, plan, target, prefix)

    def build(self, paths: list[Path], library_path: Path, target: Target) -> None:
        compiler.compile_library(paths, library_path, target)

    def symbols(self, prefix: str) -> tuple[str, ...]:
        return kernel.symbols(prefix)

    # -- planning ------------------------------------------------------------------------
    def resolve(self, requested, workload: Workload, target: Target, accuracy: str = "fast"):
        return planner.resolve(requested, workload, target)

    def choose(self, workload: Workload, target: Target, threads: int | None = None,
               accuracy: str = "fast"):
        return planner.choose(workload, target)

    def candidates(self, workload: Workload, target: Target, accuracy: str = "fast"):
        return planner.candidates(workload, target)

    def explain(self, workload: Workload, target: Target, top: int = 5, accuracy: str = "fast",
                chosen=None) -> str:
        return planner.explain(workload, target, top, accuracy, chosen)

    # -- loading -------------------------------------------------------------------------
    def kernel(self, workload: Workload, plan: CudaPlan, target: Target, unbatched: bool = False,
               prefix: str | None = None) -> CudaKernel:
        return kernel_for(self, CudaKernel, workload, plan, target, unbatched, prefix)


BACKEND = CudaBackend()
