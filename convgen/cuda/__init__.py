"""The CUDA backend: targets "cuda" (nvcc, a GPU) and "cuda-emu" (the same kernels on the CPU).

One pipeline, one module per stage, as for the CPU:

    Workload -> CudaPlan (plan.py) -> CUDA C++ (render.py, templates/cuda/)
             -> shared library (compile.py: nvcc, or the host compiler + templates/cuda/emu)
             -> cache (convgen.cache) -> CudaKernel (kernel.py; device.py, driver.py)

``convgen.compile`` and ``convgen.plan.plan`` call ``compile_cuda`` and ``plan_cuda`` for
targets whose ``lang`` is "cuda".
"""
from __future__ import annotations

import threading

from ..spec import Workload
from ..target import Target
from .device import DeviceArray, DeviceView, device_view, stream_handle
from .driver import CudaError
from .kernel import CudaKernel
from .plan import CudaPlan, PlanError, candidates, check_plan, choose, explain, resolve

__all__ = ["compile_cuda", "plan_cuda", "CudaKernel", "CudaPlan", "CudaError", "PlanError",
           "DeviceArray", "DeviceView", "device_view", "stream_handle", "candidates",
           "check_plan", "explain"]

_KERNELS: dict[tuple, CudaKernel] = {}
_LOCK = threading.Lock()


def plan_cuda(workload: Workload, target: Target, plan="auto") -> CudaPlan:
    """The plan for ``workload`` on a CUDA target: the planner's choice, or ``plan`` checked."""
    return resolve(plan, workload, target)


def compile_cuda(workload: Workload, unbatched: bool, target: Target, plan="auto") -> CudaKernel:
    """A loaded CUDA kernel for ``workload`` (compiled and cached on first use)."""
    chosen = resolve(plan, workload, target)
    memo = (workload, unbatched, target, chosen)
    with _LOCK:
        kernel = _KERNELS.get(memo)
    if kernel is None:
        kernel = CudaKernel(workload, chosen, target, unbatched)
        with _LOCK:
            kernel = _KERNELS.setdefault(memo, kernel)
    return kernel
