"""The CUDA kernel: checks its operands, launches, and turns a non-zero status into
``CudaError``. The library (rendered, cached and loaded by ``runtime.pipeline``: nvcc for
"cuda", the host compiler and the emulator for "cuda-emu") exports ``<prefix>_launch`` and
``<prefix>_error``.

- target "cuda": operands are device arrays (``__cuda_array_interface__`` or DLPack), the
  output is allocated on the device when not given, and ``stream=`` picks the stream.
- target "cuda-emu": operands are host arrays (numpy, CPU tensors), exactly as for the CPU
  targets; the emulator runs the grid synchronously and reports any out-of-bounds access.
"""
from __future__ import annotations

import numpy as np

from ..runtime import loader
from ..runtime.arrays import as_array, check_dtype, check_out, check_shape, native_contiguous
from ..runtime.kernel import KernelBase
from .device import device_view, empty_like_input, is_device_array, same_stream, stream_handle
from .driver import CudaError
from .plan import launch_of
from .render import entry_names

loader.declare_type("cg_launch_fn", "typedef int (*cg_launch_fn)(void *x, void *w, void *bias, "
                    "void *y, void *stream);")
loader.declare_type("cg_error_fn", "typedef const char *(*cg_error_fn)(int status);")


def symbols(prefix: str) -> tuple[str, ...]:
    launch, error = entry_names(prefix)
    return (launch, error, f"{prefix}_workspace_bytes", f"{prefix}_packed_weights_bytes")


class EntryPoints:
    """The library's launcher and status description as Python callables over integer
    addresses (tests substitute their own)."""

    def __init__(self, library):
        launch, error = (library.symbols[name] for name in symbols(library.prefix)[:2])
        self._launch = loader.function(launch, "cg_launch_fn")
        self._error = loader.function(error, "cg_error_fn")

    def launch(self, x: int, w: int, bias: int, y: int, stream: int) -> int:
        ffi = loader.FFI
        return self._launch(ffi.cast("void *", x), ffi.cast("void *", w),
                            ffi.cast("void *", bias), ffi.cast("void *", y),
                            ffi.cast("void *", stream))

    def describe(self, status: int) -> str:
        text = self._error(status)
        ffi = loader.FFI
        return ffi.string(text).decode(errors="replace") if text != ffi.NULL else ""


class CudaKernel(KernelBase):
    """A compiled CUDA kernel for one workload:
    ``y = kernel(x, weight, bias, out=None, stream=None)``."""

    kind = "CudaKernel"

    def __init__(self, backend, workload, plan, target, unbatched, library, entry=None):
        super().__init__(backend, workload, plan, target, unbatched, library)
        self._entry = entry if entry is not None else EntryPoints(library)
        self.launch = launch_of(plan, workload)

    def __call__(self, x, weight, bias=None, out=None, stream=None):
        if self.target.emulated:
            if stream is not None:
                stream_handle(stream)   # validated; the emulator runs synchronously
            return self._call_host(x, weight, bias, out)
        return self._call_device(x, weight, bias, out, stream_handle(stream))

    def _check_bias_presence(self, bias) -> None:
        if self.spec.bias and bias is None:
            raise ValueError("bias is required: this kernel was compiled with bias=True")
        if not self.spec.bias and bias is not None:
            raise ValueError("bias must be None: this kernel was compiled with bias=False")

    def _run(self, x: int, w: int, bias: int, y: int, stream: int) -> None:
        if 0 in self.workload.output_shape:   # batch 0: nothing to launch
            return
        status = self._entry.launch(x, w, bias, y, stream)
        if status != 0:
            raise CudaError(f"running {self.spec.op} kernel {self.plan.algorithm} on "
                            f"{self.target.name}", int(status), _status_name(status),
                            self._entry.describe(status))

    # -- host arrays: the emulator --------------------------------------------------------
    def _call_host(self, x, weight, bias, out) -> np.ndarray:
        spec = self.spec
        for value, name in ((x, "input"), (weight, "weight"), (bias, "bias"), (out, "out")):
            if value is not None and is_device_array(value):
                raise TypeError(f"{name} is a device array; target 'cuda-emu' runs on the CPU "
                                f"and takes host arrays (numpy)")
        x = as_array(x, "input")
        check_dtype(x, "input", self.dtype, "the kernel's dtype")
        check_shape(x, "input", self.input_shape, "the shape the kernel was compiled for")
        weight = as_array(weight, "weight")
        check_dtype(weight, "weight", self.dtype, "the input's dtype")
        check_shape(weight, "weight", spec.weight_shape, f"{spec.op}'s weight layout")
        self._check_bias_presence(bias)
        if bias is not None:
            bias = as_array(bias, "bias")
            check_dtype(bias, "bias", self.dtype, "the input's dtype")
            check_shape(bias, "bias", (spec.out_channels,), "one value per output channel")
            bias = native_contiguous(bias)
        x, weight = native_contiguous(x), native_contiguous(weight)
        if out is None:
            out = np.empty(self.output_shape, dtype=self.dtype)
        else:
            check_out(out, self.output_shape, self.dtype, (x, weight, bias))
        self._run(x.ctypes.data, weight.ctypes.data, 0 if bias is None else bias.ctypes.data,
                  out.ctypes.data, 0)
        return out

    # -- device arrays ------------------------------------------------------------------------
    def _call_device(self, x, weight, bias, out, stream: int):
        spec = self.spec
        self._check_bias_presence(bias)
        views = {"input": device_view(x, "input", stream),
                 "weight": device_view(weight, "weight", stream)}
        expected = {"input": (self.input_shape, "the shape the kernel was compiled for"),
                    "weight": (spec.weight_shape, f"{spec.op}'s weight layout"),
                    "bias": ((spec.out_channels,), "one value per output channel"),
                    "out": (self.output_shape, "the kernel's output shape")}
        if bias is not None:
            views["bias"] = device_view(bias, "bias", stream)
        if out is None:
            out = empty_like_input(x, self.output_shape, self.dtype)
        views["out"] = device_view(out, "out", stream)
        for name, view in views.items():
            _check_view(view, name, self.dtype, *expected[name])
        if views["out"].readonly:
            raise ValueError("out must be writeable; this device array is read-only")
        _check_devices(views)
        _check_no_overlap(views)
        for view in views.values():   # CAI v3: order the producer's work before ours
            if view.stream is not None and not same_stream(view.stream, stream):
                from .driver import driver
                driver().stream_synchronize(view.stream)
        self._run(views["input"].pointer, views["weight"].pointer,
                  views["bias"].pointer if "bias" in views else 0, views["out"].pointer,
                  stream)
        return out


def _status_name(status: int) -> str:
    names = {1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation",
             9: "cudaErrorInvalidConfiguration", 35: "cudaErrorInsufficientDriver",
             98: "cudaErrorInvalidDeviceFunction", 100: "cudaErrorNoDevice",
             209: "cudaErrorNoKernelImageForDevice", 700: "cudaErrorIllegalAddress",
             701: "cudaErrorLaunchOutOfResources", 719: "cudaErrorLaunchFailure"}
    return names.get(int(status), f"cudaError {status}")


def _check_view(view, name: str, dtype: np.dtype, shape, why: str) -> None:
    if view.dtype != dtype:
        raise TypeError(f"{name} has dtype {view.dtype} but the kernel's dtype is {dtype}; "
                        f"convert one so that they match")
    if tuple(view.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({why}), got {view.shape}")
    if not view.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous on the device (strides {view.strides}); "
                         f"make a contiguous copy first (e.g. .contiguous() / "
                         f"cupy.ascontiguousarray)")
    if view.nbytes and view.pointer % dtype.itemsize:
        raise ValueError(f"{name} is not aligned to its {dtype.itemsize}-byte elements")


def _check_devices(views: dict) -> None:
    ordinals = {name: v.device for name, v in views.items() if v.device is not None}
    if len(set(ordinals.values())) > 1:
        raise ValueError(f"the operands are on different devices: {ordinals}")


def _check_no_overlap(views: dict) -> None:
    out = views["out"]
    for name, view in views.items():
        if name == "out" or not view.nbytes or not out.nbytes:
            continue
        if view.pointer < out.pointer + out.nbytes and out.pointer < view.pointer + view.nbytes:
            raise ValueError(f"out must not overlap the input, weight or bias (it overlaps "
                             f"the {name})")
