"""What every compiled kernel is, whatever its backend: the workload it computes, the plan
it was built with, its library, and the shapes and facts users ask of it."""
from __future__ import annotations

import numpy as np

from ..core.planning import check_accuracy
from ..core.spec import Workload
from ..target import Target
from . import cache, pipeline
from .memo import Memo
from .pipeline import Library

_KERNELS: Memo[KernelBase] = Memo("kernels")


def kernel_for(backend, kernel_class, workload: Workload, plan, target: Target,
               unbatched: bool = False, prefix: str | None = None) -> KernelBase:
    """The loaded kernel for (workload, plan, target): from memory, else through the
    pipeline (disk cache or compile). A second request returns the same object."""
    memo = (backend.name, workload, plan, target, unbatched, prefix)
    found = _KERNELS.get(memo)
    if found is not None:
        cache.STATS.memory_hits += 1
        return found
    return _KERNELS.get_or_build(memo, lambda: kernel_class(
        backend, workload, plan, target, unbatched,
        pipeline.library(backend, workload, plan, target, prefix)))


def forget_loaded() -> None:
    """Drop the in-process memos (tests: the next request goes to the disk cache)."""
    _KERNELS.clear()
    pipeline.forget_loaded()


class KernelBase:
    """A loaded kernel for one workload; subclasses add the call."""

    kind = "Kernel"

    def __init__(self, backend, workload: Workload, plan, target: Target, unbatched: bool,
                 library: Library):
        self.workload, self.plan, self.target, self.unbatched = workload, plan, target, unbatched
        self._backend, self._library = backend, library
        self.dtype = np.dtype(workload.dtype)
        drop = 1 if unbatched else 0
        self.input_shape = workload.input_shape[drop:]
        self.output_shape = workload.output_shape[drop:]

    spec = property(lambda self: self.workload.spec)
    key = property(lambda self: self._library.key)
    prefix = property(lambda self: self._library.prefix)
    flops = property(lambda self: self.workload.flops)

    @property
    def source(self) -> str:
        """The generated source (the main file; ``sources`` has every file)."""
        return self._library.source

    @property
    def sources(self) -> dict[str, str]:
        """Every generated file of this kernel, by name."""
        return dict(self._library.sources)

    def explain(self, top: int = 5, accuracy: str = "fast") -> str:
        """The planner's ranked candidate plans for this workload with their predicted cost
        (as ``convgen plan`` prints them); this kernel's plan is marked. ``accuracy`` is the
        ranking to show: a kernel does not know which one it was chosen from (the same plan
        serves both), so pass ``"strict"`` for a kernel compiled with it."""
        return self._backend.explain(self.workload, self.target, top=top,
                                     accuracy=check_accuracy(accuracy), chosen=self.plan)

    def __repr__(self) -> str:
        return (f"<convgen.{self.kind} {self.spec.op} input={self.input_shape} "
                f"output={self.output_shape} {self.workload.dtype} on {self.target.name} "
                f"[{self.plan}]>")
