"""Compile and call: a workload and plan become a loaded, callable Kernel.

``_library`` runs the back half of the pipeline: render -> cache lookup -> compile ->
publish -> load. Loaded kernels are kept in memory, keyed by the frozen values that
determine them, so a second request costs one dict lookup.
"""
from __future__ import annotations

import dataclasses
import hashlib
import numpy as np

from . import __version__, cache
from .arrays import as_array, check_dtype, check_out, check_shape, native_contiguous
from . import loader
from .compiler import compile_shared, compiler_identity, flags
from .plan import Plan
from .render import kernel_name, render, templates_digest
from .spec import Workload
from .target import Target

_LOADED: dict[tuple, "_Library"] = {}


@dataclasses.dataclass(frozen=True)
class _Library:
    key: str
    source: str
    function: object


def key_parts(workload: Workload, plan: Plan, target: Target, source: str) -> dict:
    """Everything that changes the binary; its hash is the cache key."""
    return {
        "convgen": __version__,
        "spec": dataclasses.asdict(workload.spec),
        "input_shape": workload.input_shape,
        "dtype": workload.dtype,
        "plan": str(plan),
        "target": dataclasses.asdict(target),
        "compiler": compiler_identity(),
        "flags": flags(target),
        "templates": templates_digest(),
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
    }


def _library(workload: Workload, plan: Plan, target: Target) -> _Library:
    memo_key = (workload, plan, target)
    found = _LOADED.get(memo_key)
    if found is not None:
        cache.STATS.memory_hits += 1
        return found
    source = render(workload, plan, target)
    parts = key_parts(workload, plan, target, source)
    key = cache.key_of(parts)
    library = cache.get_or_build(key, source, lambda src, lib: compile_shared(src, lib, target),
                                 parts)
    name = kernel_name(workload, plan)
    loader.declare(f"void {name}(const void *x, const void *w, const void *bias, void *y);", name)
    (function,) = loader.load(library, (name,))
    loaded = _Library(key, source, function)
    _LOADED[memo_key] = loaded
    return loaded


class Kernel:
    """A compiled kernel for one workload: ``y = kernel(x, weight, bias, out=None)``."""

    def __init__(self, workload: Workload, plan: Plan, target: Target, unbatched: bool = False):
        self.workload, self.plan, self.target, self.unbatched = workload, plan, target, unbatched
        self._library = _library(workload, plan, target)
        self.dtype = np.dtype(workload.dtype)
        drop = 1 if unbatched else 0
        self.input_shape = workload.input_shape[drop:]
        self.output_shape = workload.output_shape[drop:]

    spec = property(lambda self: self.workload.spec)
    source = property(lambda self: self._library.source)
    key = property(lambda self: self._library.key)
    flops = property(lambda self: self.workload.flops)

    def __repr__(self) -> str:
        return (f"<convgen.Kernel {self.spec.op} input={self.input_shape} "
                f"output={self.output_shape} {self.workload.dtype} [{self.plan}]>")

    def __call__(self, x, weight, bias=None, out=None) -> np.ndarray:
        spec = self.spec
        x = as_array(x, "input")
        check_dtype(x, "input", self.dtype, "the kernel's dtype")
        check_shape(x, "input", self.input_shape, "the shape the kernel was compiled for")
        weight = as_array(weight, "weight")
        check_dtype(weight, "weight", self.dtype, "the input's dtype")
        check_shape(weight, "weight", spec.weight_shape, f"{spec.op}'s weight layout")
        if spec.bias:
            if bias is None:
                raise ValueError("bias is required: this kernel was compiled with bias=True")
            bias = as_array(bias, "bias")
            check_dtype(bias, "bias", self.dtype, "the input's dtype")
            check_shape(bias, "bias", (spec.out_channels,), "one value per output channel")
            bias = native_contiguous(bias)
        elif bias is not None:
            raise ValueError("bias must be None: this kernel was compiled with bias=False")
        x, weight = native_contiguous(x), native_contiguous(weight)
        if out is None:
            out = np.empty(self.output_shape, dtype=self.dtype)
        else:
            check_out(out, self.output_shape, self.dtype, (x, weight, bias))
        ffi = loader.FFI
        self._library.function(ffi.from_buffer(x), ffi.from_buffer(weight),
                               ffi.NULL if bias is None else ffi.from_buffer(bias),
                               ffi.from_buffer(out, require_writable=True))
        return out
