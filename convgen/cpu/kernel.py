"""The CPU kernel: checks its operands, packs weights, and calls the generated C.

The library exports ``<prefix>_run``, ``<prefix>_pack`` and the sizes of the buffers it
needs (``<prefix>_workspace_bytes``, ``<prefix>_packed_weights_bytes``), read once when
the kernel loads. Scratch memory is one growing buffer per Python thread and dtype,
reused across calls so that calls never page-fault fresh memory.
"""
from __future__ import annotations

import threading

import numpy as np

from ..runtime import loader
from ..runtime.arrays import (
    aligned_empty,
    as_array,
    check_dtype,
    check_out,
    check_shape,
    native_contiguous,
    output_array,
    ready,
)
from ..runtime.kernel import KernelBase

loader.declare_type("cg_run_fn", "typedef int (*cg_run_fn)(const void *x, const void *wp, "
                    "const void *bias, void *y, void *work);")
loader.declare_type("cg_pack_fn", "typedef void (*cg_pack_fn)(const void *w, void *wp);")
loader.declare_type("cg_size_fn", "typedef size_t (*cg_size_fn)(void);")


def symbols(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}_run", f"{prefix}_pack", f"{prefix}_workspace_bytes",
            f"{prefix}_packed_weights_bytes")


class PackedWeights:
    """Weights packed once into the order one kernel reads them (``Kernel.prepack``).

    Pass it in place of the weight array to skip the per-call packing. It holds a copy:
    changing the original array afterwards does not change it.
    """

    def __init__(self, kernel_key: str, packed: np.ndarray):
        self.kernel_key, self.packed = kernel_key, packed
        self.pointer = loader.FFI.from_buffer(packed)   # read-only: made once, not per call

    def __getstate__(self) -> dict:    # the C pointer is this process's: not pickled
        return {"kernel_key": self.kernel_key, "packed": self.packed}

    def __setstate__(self, state: dict) -> None:   # back on a cache line, read-only
        packed = aligned_empty(state["packed"].shape, state["packed"].dtype)
        packed[...] = state["packed"]
        packed.setflags(write=False)
        self.__init__(state["kernel_key"], packed)

    def __repr__(self) -> str:
        return (f"<convgen.PackedWeights {self.packed.size} elements for kernel "
                f"{self.kernel_key[:12]}>")


_SCRATCH = threading.local()   # per Python thread: one growing buffer per dtype


def _scratch(elements: int, dtype: np.dtype):
    """Scratch memory reused across calls, so calls never page-fault fresh memory: the
    buffer and its C pointer."""
    buffers = getattr(_SCRATCH, "by_dtype", None)
    if buffers is None:
        buffers = _SCRATCH.by_dtype = {}
    found = buffers.get(dtype.char)
    if found is None or found[0].size < elements:
        buf = aligned_empty(max(elements, 1), dtype)
        found = buffers[dtype.char] = (buf, loader.FFI.from_buffer(buf, require_writable=True))
    return found


class Kernel(KernelBase):
    """A compiled kernel for one workload: ``y = kernel(x, weight, bias, out=None)``."""

    def __init__(self, backend, workload, plan, target, unbatched, library):
        super().__init__(backend, workload, plan, target, unbatched, library)
        run, pack, workspace, packed = (library.symbols[name] for name in symbols(library.prefix))
        self._run_c = loader.function(run, "cg_run_fn")
        self._pack_c = loader.function(pack, "cg_pack_fn")
        itemsize = self.dtype.itemsize
        self.workspace_elements = int(loader.function(workspace, "cg_size_fn")()) // itemsize
        self.packed_elements = int(loader.function(packed, "cg_size_fn")()) // itemsize

    def prepack(self, weight) -> PackedWeights:
        """Pack ``weight`` once for repeated calls: ``kernel(x, kernel.prepack(w), b)``."""
        weight = self._checked_weight(weight)
        packed = aligned_empty(self.packed_elements, self.dtype)
        ffi = loader.FFI
        self._pack_c(ffi.from_buffer(weight), ffi.from_buffer(packed, require_writable=True))
        packed.setflags(write=False)
        return PackedWeights(self.key, packed)

    def _checked_input(self, x) -> np.ndarray:
        if ready(x, self.dtype, self.input_shape):
            return x
        x = as_array(x, "input")
        check_dtype(x, "input", self.dtype, "the kernel's dtype")
        check_shape(x, "input", self.input_shape, "the shape the kernel was compiled for")
        return native_contiguous(x)

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
        if ready(bias, self.dtype, (spec.out_channels,)):
            return bias
        bias = as_array(bias, "bias")
        check_dtype(bias, "bias", self.dtype, "the input's dtype")
        check_shape(bias, "bias", (spec.out_channels,), "one value per output channel")
        return native_contiguous(bias)

    def __call__(self, x, weight, bias=None, out=None) -> np.ndarray:
        x = self._checked_input(x)
        packed = isinstance(weight, PackedWeights)
        if packed and weight.kernel_key != self.key:
            raise ValueError("weight: these PackedWeights were packed by another kernel; "
                             "pack them with this kernel's prepack()")
        if not packed:
            weight = self._checked_weight(weight)
        bias = self._checked_bias(bias)
        if out is None:
            out = output_array(self.output_shape, self.dtype)
        else:
            check_out(out, self.output_shape, self.dtype,
                      (x, bias) if packed else (x, weight, bias))
        self._run(x, weight, bias, out)
        return out

    def _run(self, x, weight, bias, out) -> None:
        """Call the C kernel (packing ``weight`` into scratch first unless it is packed)."""
        ffi = loader.FFI
        packed = isinstance(weight, PackedWeights)
        workspace = self.workspace_elements
        _, work = _scratch(workspace + (0 if packed else self.packed_elements), self.dtype)
        if packed:
            weights = weight.pointer
        else:
            weights = ffi.cast("char *", work) + workspace * self.dtype.itemsize
            self._pack_c(ffi.from_buffer(weight), weights)
        self._run_c(ffi.from_buffer(x), weights,
                    ffi.NULL if bias is None else ffi.from_buffer(bias),
                    ffi.from_buffer(out, require_writable=True), work)
