"""The CUDA kernel: checks its operands, launches, and turns a non-zero status into
``CudaError``. The library (rendered, cached and loaded by ``runtime.pipeline``: nvcc for
"cuda", the host compiler and the emulator for "cuda-emu") exports ``<prefix>_launch`` and
``<prefix>_error``.

- target "cuda": operands are device arrays (``__cuda_array_interface__`` or DLPack), the
  output is allocated on the device when not given, and ``stream=`` picks the stream.
- Both targets take the input either C-contiguous (NCHW) or channels-last (torch's
  ``channels_last`` / ``channels_last_3d`` memory format: NHWC in memory), without a copy;
  the output then has the input's layout (``<prefix>_launch_channels_last``).
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
    return (launch, error, f"{prefix}_launch_channels_last", f"{prefix}_workspace_bytes",
            f"{prefix}_packed_weights_bytes")


def channels_last_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Byte strides of an (N, C, *spatial) array laid out channels-last (N, *spatial, C)."""
    c = shape[1]
    strides = [0] * len(shape)
    step = itemsize
    strides[1] = step
    step *= c
    for axis in range(len(shape) - 1, 1, -1):
        strides[axis] = step
        step *= shape[axis]
    strides[0] = step
    return tuple(strides)


def layout_of(shape: tuple[int, ...], strides: tuple[int, ...] | None, itemsize: int) -> str | None:
    """"nchw" (C-contiguous), "channels_last", or None for any other layout. Sizes of 1 do
    not constrain their stride; an array that is both is "nchw"."""
    if len(shape) < 3:
        return "nchw" if strides is None or _matches(shape, strides, _c_strides(shape, itemsize)) \
            else None
    if strides is None or _matches(shape, strides, _c_strides(shape, itemsize)):
        return "nchw"
    if _matches(shape, strides, channels_last_strides(shape, itemsize)):
        return "channels_last"
    return None


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _matches(shape, strides, expected) -> bool:
    return all(s == e for s, e, n in zip(strides, expected, shape) if n > 1)


class EntryPoints:
    """The library's launcher and status description as Python callables over integer
    addresses (tests substitute their own)."""

    def __init__(self, library):
        launch, error, launch_cl = (library.symbols[name] for name in symbols(library.prefix)[:3])
        self._launch = loader.function(launch, "cg_launch_fn")
        self._launch_cl = loader.function(launch_cl, "cg_launch_fn")
        self._error = loader.function(error, "cg_error_fn")

    def launch(self, x: int, w: int, bias: int, y: int, stream: int,
               channels_last: bool = False) -> int:
        ffi = loader.FFI
        entry = self._launch_cl if channels_last else self._launch
        return entry(ffi.cast("void *", x), ffi.cast("void *", w), ffi.cast("void *", bias),
                     ffi.cast("void *", y), ffi.cast("void *", stream))

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
        # the operands of the last call that passed every check: a call with the same
        # pointers, shapes, strides, dtypes, devices and stream skips the checks (an H200's
        # host took ~55 us a call against torch's 15-40; with stand-in tensors on a 2-core
        # VM the checks were 9 of a call's 25 us of Python)
        self._validated: tuple | None = None

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

    def _run(self, x: int, w: int, bias: int, y: int, stream: int,
             channels_last: bool = False) -> None:
        if 0 in self.workload.output_shape:   # batch 0: nothing to launch
            return
        status = (self._entry.launch(x, w, bias, y, stream, True) if channels_last
                  else self._entry.launch(x, w, bias, y, stream))
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
        layout = self._host_layout(x)
        if layout != "channels_last":
            x = native_contiguous(x)
        weight = native_contiguous(weight)
        if out is None:
            out = self._empty_host(layout)
        elif layout == "channels_last":
            self._check_out_layout(out, "out", out.strides)
        else:
            check_out(out, self.output_shape, self.dtype, (x, weight, bias))
        self._run(x.ctypes.data, weight.ctypes.data, 0 if bias is None else bias.ctypes.data,
                  out.ctypes.data, 0, layout == "channels_last")
        return out

    def _batched_shape(self, shape):
        return shape if not self.unbatched else (1, *shape)

    def _host_layout(self, x: np.ndarray) -> str:
        """A native, aligned channels-last input is read in place; anything else is made
        C-contiguous (NCHW)."""
        if x.flags.c_contiguous or not (x.flags.aligned and x.dtype.isnative):
            return "nchw"
        shape = self._batched_shape(x.shape)
        strides = x.strides if not self.unbatched else (0, *x.strides)
        return "channels_last" if layout_of(shape, strides, x.itemsize) == "channels_last" \
            else "nchw"

    def _empty_host(self, layout: str) -> np.ndarray:
        if layout != "channels_last":
            return np.empty(self.output_shape, dtype=self.dtype)
        shape = self._batched_shape(self.output_shape)
        order = (0, *range(2, len(shape)), 1)
        out = np.empty([shape[a] for a in order], dtype=self.dtype)
        out = out.transpose(np.argsort(order))
        return out[0] if self.unbatched else out

    def _check_out_layout(self, out, name: str, strides) -> None:
        shape = self._batched_shape(tuple(out.shape))
        strides = strides if not self.unbatched else (0, *strides)
        if tuple(out.shape) != tuple(self.output_shape):
            raise ValueError(f"{name} must have shape {self.output_shape} (the kernel's output "
                             f"shape), got {tuple(out.shape)}")
        if layout_of(shape, strides, self.dtype.itemsize) != "channels_last":
            raise ValueError(f"{name} must be channels-last like the input (strides "
                             f"{channels_last_strides(shape, self.dtype.itemsize)}), got "
                             f"strides {tuple(strides)}")
        if isinstance(out, np.ndarray) and not (out.flags.writeable and out.flags.aligned):
            raise ValueError(f"{name} must be writeable and aligned")

    # -- device arrays ------------------------------------------------------------------------
    def _check_views(self, views: dict, channels_last: bool) -> None:
        """Every rule an operand must meet before the launch: dtype, shape, layout,
        alignment, a writeable output, one device, no overlap with the output."""
        spec = self.spec
        expected = {"input": (self.input_shape, "the shape the kernel was compiled for"),
                    "weight": (spec.weight_shape, f"{spec.op}'s weight layout"),
                    "bias": ((spec.out_channels,), "one value per output channel"),
                    "out": (self.output_shape, "the kernel's output shape")}
        for name, view in views.items():
            _check_view(view, name, self.dtype, *expected[name],
                        channels_last=channels_last and name in ("input", "out"),
                        unbatched=self.unbatched)
        if views["out"].readonly:
            raise ValueError("out must be writeable; this device array is read-only")
        _check_devices(views)
        _check_no_overlap(views)

    def _call_device(self, x, weight, bias, out, stream: int):
        self._check_bias_presence(bias)
        views = {"input": device_view(x, "input", stream),
                 "weight": device_view(weight, "weight", stream)}
        if bias is not None:
            views["bias"] = device_view(bias, "bias", stream)
        layout = layout_of(self._batched_shape(tuple(views["input"].shape)),
                           _batched_strides(views["input"].strides, self.unbatched),
                           self.dtype.itemsize)
        channels_last = layout == "channels_last"
        if out is None:
            out = empty_like_input(x, self.output_shape, self.dtype,
                                   channels_last=channels_last)
        views["out"] = device_view(out, "out", stream)
        signature = (stream, channels_last, *(_signature(v) for v in views.values()))
        if signature != self._validated:
            self._check_views(views, channels_last)
            self._validated = signature
        for view in views.values():   # CAI v3: order the producer's work before ours
            if view.stream is not None and not same_stream(view.stream, stream):
                from .driver import driver
                driver().stream_synchronize(view.stream)
        self._run(views["input"].pointer, views["weight"].pointer,
                  views["bias"].pointer if "bias" in views else 0, views["out"].pointer,
                  stream, channels_last)
        return out


def _signature(view) -> tuple:
    """What the checks of a call depend on, for one operand."""
    return (view.pointer, view.shape, view.strides, view.dtype.str, view.readonly,
            view.device)


def _status_name(status: int) -> str:
    names = {1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation",
             9: "cudaErrorInvalidConfiguration", 35: "cudaErrorInsufficientDriver",
             98: "cudaErrorInvalidDeviceFunction", 100: "cudaErrorNoDevice",
             209: "cudaErrorNoKernelImageForDevice", 700: "cudaErrorIllegalAddress",
             701: "cudaErrorLaunchOutOfResources", 719: "cudaErrorLaunchFailure"}
    return names.get(int(status), f"cudaError {status}")


def _batched_strides(strides, unbatched: bool):
    if strides is None:
        return None
    return (0, *strides) if unbatched else tuple(strides)


def _check_view(view, name: str, dtype: np.dtype, shape, why: str, channels_last: bool = False,
                unbatched: bool = False) -> None:
    if view.dtype != dtype:
        raise TypeError(f"{name} has dtype {view.dtype} but the kernel's dtype is {dtype}; "
                        f"convert one so that they match")
    if tuple(view.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({why}), got {view.shape}")
    if channels_last:
        full = (1, *view.shape) if unbatched else tuple(view.shape)
        if layout_of(full, _batched_strides(view.strides, unbatched),
                     dtype.itemsize) != "channels_last":
            raise ValueError(f"{name} must be channels-last like the input (the kernel "
                             f"writes the output in the input's layout); got strides "
                             f"{view.strides}")
    elif not view.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous or, for the input and out, "
                         f"channels-last (torch.channels_last) on the device (strides "
                         f"{view.strides}); make a contiguous copy first (e.g. .contiguous() "
                         f"/ cupy.ascontiguousarray)")
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
