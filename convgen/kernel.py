"""Compile and call: a workload and plan become a loaded, callable Kernel.

``_library`` runs the back half of the pipeline: render -> cache lookup -> compile ->
publish -> load. Loaded kernels are kept in memory, keyed by the frozen values that
determine them, so a second request costs one dict lookup.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading

import numpy as np

from . import __version__, cache
from .arrays import as_array, check_dtype, check_out, check_shape, native_contiguous
from . import loader
from .compiler import compile_shared, compiler_identity, flags
from .plan import WINOGRAD_ALGORITHMS, Plan, buffers, choose
from .render import kernel_name, render, templates_digest
from .spec import Workload
from .target import Target

_LOADED: dict[tuple, "_Library"] = {}


@dataclasses.dataclass(frozen=True)
class _Library:
    key: str
    source: str
    run: object    # run(x, packed_weights, bias, y, workspace)
    pack: object   # pack(weight, packed_weights)


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
    loader.declare(f"int {name}(const void *x, const void *wp, const void *bias, void *y, "
                   f"void *work);", name)
    loader.declare(f"void {name}_pack(const void *w, void *wp);", f"{name}_pack")
    run, pack = loader.load(library, (name, f"{name}_pack"))
    loaded = _Library(key, source, run, pack)
    _LOADED[memo_key] = loaded
    return loaded


class PackedWeights:
    """Weights packed once into the order one kernel reads them (``Kernel.prepack``).

    Pass it in place of the weight array to skip the per-call packing. It holds copies:
    changing the original array afterwards does not change it. ``weight`` keeps the
    unpacked copy where the kernel may have to hand the call to an exact kernel (Winograd
    meeting a NaN or an infinity).
    """

    def __init__(self, kernel_key: str, packed: np.ndarray, weight: np.ndarray | None = None,
                 finite: bool = True):
        self.kernel_key, self.packed, self.weight, self.finite = kernel_key, packed, weight, finite

    def __repr__(self) -> str:
        return f"<convgen.PackedWeights {self.packed.size} elements for kernel {self.kernel_key[:12]}>"


_SCRATCH = threading.local()   # per Python thread: one growing buffer shared by all kernels


def _scratch(elements: int, dtype: np.dtype) -> np.ndarray:
    """Scratch memory reused across calls, so calls never page-fault fresh memory."""
    buffers = getattr(_SCRATCH, "by_dtype", None)
    if buffers is None:
        buffers = _SCRATCH.by_dtype = {}
    buf = buffers.get(dtype.char)
    if buf is None or buf.size < elements:
        buf = buffers[dtype.char] = np.empty(max(elements, 1), dtype=dtype)
    return buf


class Kernel:
    """A compiled kernel for one workload: ``y = kernel(x, weight, bias, out=None)``."""

    def __init__(self, workload: Workload, plan: Plan, target: Target, unbatched: bool = False):
        self.workload, self.plan, self.target, self.unbatched = workload, plan, target, unbatched
        self._library = _library(workload, plan, target)
        self._buffers = buffers(workload, plan)
        self._exact: Kernel | None = None
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

    def prepack(self, weight) -> PackedWeights:
        """Pack ``weight`` once for repeated calls: ``kernel(x, kernel.prepack(w), b)``."""
        weight = self._checked_weight(weight)
        packed = np.empty(self._buffers.packed_weights, dtype=self.dtype)
        ffi = loader.FFI
        self._library.pack(ffi.from_buffer(weight), ffi.from_buffer(packed, require_writable=True))
        packed.setflags(write=False)
        if not self._inexact:
            return PackedWeights(self.key, packed)
        kept = np.array(weight, copy=True)
        kept.setflags(write=False)
        return PackedWeights(self.key, packed, kept, bool(np.isfinite(kept).all()))

    @property
    def _inexact(self) -> bool:
        """Winograd: non-finite values would spread over whole tiles, unlike torch's."""
        return self.plan.algorithm in WINOGRAD_ALGORITHMS

    def _exact_kernel(self) -> "Kernel":
        """The exact kernel a Winograd kernel hands NaN/Inf operands to (built on first use)."""
        if self._exact is None:
            exact_plan = choose(self.workload, self.target, self.plan.threads, accuracy="strict")
            self._exact = Kernel(self.workload, exact_plan, self.target, self.unbatched)
        return self._exact

    def _checked_weight(self, weight) -> np.ndarray:
        weight = as_array(weight, "weight")
        check_dtype(weight, "weight", self.dtype, "the input's dtype")
        check_shape(weight, "weight", self.spec.weight_shape, f"{self.spec.op}'s weight layout")
        return native_contiguous(weight)

    def _checked_bias(self, bias):
        spec = self.spec
        if not spec.bias:
            if bias is not None:
                raise ValueError("bias must be None: this kernel was compiled with bias=False")
            return None
        if bias is None:
            raise ValueError("bias is required: this kernel was compiled with bias=True")
        bias = as_array(bias, "bias")
        check_dtype(bias, "bias", self.dtype, "the input's dtype")
        check_shape(bias, "bias", (spec.out_channels,), "one value per output channel")
        return native_contiguous(bias)

    def __call__(self, x, weight, bias=None, out=None) -> np.ndarray:
        x = as_array(x, "input")
        check_dtype(x, "input", self.dtype, "the kernel's dtype")
        check_shape(x, "input", self.input_shape, "the shape the kernel was compiled for")
        packed = isinstance(weight, PackedWeights)
        if packed and weight.kernel_key != self.key:
            raise ValueError("weight: these PackedWeights were packed by another kernel; "
                             "pack them with this kernel's prepack()")
        if not packed:
            weight = self._checked_weight(weight)
        bias = self._checked_bias(bias)
        x = native_contiguous(x)
        if out is None:
            out = np.empty(self.output_shape, dtype=self.dtype)
        else:
            check_out(out, self.output_shape, self.dtype, (x, bias) if packed else (x, weight, bias))
        if self._inexact:
            raw = weight.weight if packed else weight
            finite = weight.finite if packed else bool(np.isfinite(weight).all())
            if not finite or self._run(x, weight, bias, out):
                return self._exact_kernel()(x, raw, bias, out=out)
            return out
        self._run(x, weight, bias, out)
        return out

    def _run(self, x, weight, bias, out) -> int:
        """Call the C kernel (packing ``weight`` into scratch first unless it is packed)."""
        ffi = loader.FFI
        sizes = self._buffers
        packed = isinstance(weight, PackedWeights)
        scratch = _scratch(sizes.workspace + (0 if packed else sizes.packed_weights), self.dtype)
        work = ffi.from_buffer(scratch, require_writable=True)
        if packed:
            weights = ffi.from_buffer(weight.packed)
        else:
            weights = ffi.cast("void *", ffi.cast("char *", work) + sizes.workspace * self.dtype.itemsize)
            self._library.pack(ffi.from_buffer(weight), weights)
        return self._library.run(ffi.from_buffer(x), weights,
                                 ffi.NULL if bias is None else ffi.from_buffer(bias),
                                 ffi.from_buffer(out, require_writable=True), work)
