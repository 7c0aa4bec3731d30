"""Device arrays and streams: what the "cuda" target's kernels take, without a GPU library.

Any object exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba) or
DLPack (``__dlpack__`` / ``__dlpack_device__``) is read as a ``DeviceView``: the device
pointer, shape, dtype, strides and the producer's stream. Nothing is copied to the host.
Streams may be given as an int handle, a ``torch.cuda.Stream`` (``.cuda_stream``), a CuPy
stream (``.ptr``) or any object with ``__cuda_stream__``.

``DeviceArray`` is convgen's own minimal device array (allocated through the driver), used
for outputs and module weights when the caller's arrays come from no library convgen
knows; it exposes ``__cuda_array_interface__`` so every GPU library can read it.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import cffi
import numpy as np

from ..runtime.arrays import SUPPORTED

_FFI = cffi.FFI()
_FFI.cdef("""
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void *data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t *shape; int64_t *strides; uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
  DLTensor dl_tensor; void *manager_ctx; void (*deleter)(struct DLManagedTensor *);
} DLManagedTensor;
""")
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED = 1, 2, 3, 13
DL_FLOAT = 2
_DL_DEVICE_NAMES = {1: "the CPU", 2: "a CUDA device", 3: "pinned host memory", 4: "OpenCL",
                    7: "Vulkan", 8: "Metal", 10: "ROCm", 13: "CUDA managed memory"}
_CAPSULE_GET = ctypes.pythonapi.PyCapsule_GetPointer
_CAPSULE_GET.restype = ctypes.c_void_p
_CAPSULE_GET.argtypes = [ctypes.py_object, ctypes.c_char_p]


@dataclass(frozen=True)
class DeviceView:
    """One device array as a kernel sees it."""

    pointer: int
    shape: tuple[int, ...]
    dtype: np.dtype
    strides: tuple[int, ...] | None   # in bytes; None: C-contiguous
    readonly: bool
    device: int | None                # device ordinal, where the producer says
    stream: int | None                # the producer's stream to synchronise on (CAI v3)
    owner: object                     # keeps the memory (and a DLPack capsule) alive

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def c_contiguous(self) -> bool:
        if self.strides is None or math.prod(self.shape) <= 1:
            return True
        expected, step = [], self.dtype.itemsize
        for size in reversed(self.shape):
            expected.append(step)
            step *= size
        expected.reverse()
        return all(s == e for s, e, n in zip(self.strides, expected, self.shape) if n > 1)


def is_device_array(value) -> bool:
    if hasattr(value, "__cuda_array_interface__"):
        return True
    device = getattr(value, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        kind, _ = device()
    except Exception:
        return False
    return kind in (DL_CUDA, DL_CUDA_MANAGED)


def device_view(value, name: str, stream: int = 0) -> DeviceView:
    """``value`` as a DeviceView; TypeError naming ``name`` if it is not CUDA device memory."""
    if _is_torch_tensor(value):
        return _from_torch(value, name)
    if hasattr(value, "__cuda_array_interface__"):
        return _from_cai(value, name)
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        kind, _ = value.__dlpack_device__()
        if kind not in (DL_CUDA, DL_CUDA_MANAGED):
            where = _DL_DEVICE_NAMES.get(int(kind), f"DLPack device type {kind}")
            raise TypeError(f"{name} is in {where}; target 'cuda' takes CUDA device arrays "
                            f"(use target 'cuda-emu' or 'cpu' for host arrays)")
        # DLPack: the stream we will use, so that the producer orders its work before ours
        # (1 is the legacy default stream in DLPack's convention, as 0 is ambiguous)
        capsule = value.__dlpack__(stream=stream or 1)
        return _from_capsule(capsule, name, owner=(value, capsule))
    raise TypeError(f"{name} must be a CUDA device array (an object with "
                    f"__cuda_array_interface__ or DLPack, e.g. a CuPy array or a torch CUDA "
                    f"tensor), got {type(value).__name__}; target 'cuda-emu' takes numpy arrays")


_TORCH_DTYPES = {"torch.float32": np.dtype(np.float32), "torch.float64": np.dtype(np.float64)}


def _is_torch_tensor(value) -> bool:
    kind = type(value)
    return kind.__module__.split(".")[0] == "torch" and hasattr(kind, "data_ptr")


def _from_torch(value, name: str) -> DeviceView:
    """A torch tensor read through its own attributes rather than torch's
    __cuda_array_interface__, a dict built in Python for every tensor of every call (which
    also raises a RuntimeError of torch's own for a tensor that requires grad). The same
    fields, the same rules. On the H200 host a call took about 55 us either way: the rest
    of a call's host time lies elsewhere (bench/RESULTS.md)."""
    device = value.device
    if device.type != "cuda":
        raise TypeError(f"{name} is a torch tensor on {device.type}; target 'cuda' takes CUDA "
                        f"device arrays (use target 'cuda-emu' or 'cpu' for host arrays)")
    if value.requires_grad:
        raise TypeError(f"{name} requires grad; convgen's kernels compute no gradients: "
                        f"pass {name}.detach()")
    dtype = _TORCH_DTYPES.get(str(value.dtype))
    if dtype is None:
        raise TypeError(f"{name} must be float32 or float64, got dtype {value.dtype}")
    return DeviceView(int(value.data_ptr()), tuple(value.shape), dtype,
                      tuple(s * dtype.itemsize for s in value.stride()), False,
                      device.index, None, value)


def _dtype(typestr, name: str) -> np.dtype:
    try:
        dtype = np.dtype(typestr)
    except TypeError as exc:
        raise TypeError(f"{name} has an unreadable dtype {typestr!r}") from exc
    if dtype.kind == "f" and not dtype.isnative:
        raise TypeError(f"{name} must be in native byte order, got dtype {typestr!r}")
    if dtype not in SUPPORTED:
        raise TypeError(f"{name} must be float32 or float64, got dtype {dtype}")
    return dtype


def _from_cai(value, name: str) -> DeviceView:
    cai = value.__cuda_array_interface__
    try:
        pointer, readonly = cai["data"]
        shape = tuple(int(s) for s in cai["shape"])
        typestr = cai["typestr"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TypeError(f"{name}: malformed __cuda_array_interface__ ({exc})") from exc
    if cai.get("mask") is not None:
        raise TypeError(f"{name}: masked device arrays are not supported")
    strides = cai.get("strides")
    return DeviceView(int(pointer or 0), shape, _dtype(typestr, name),
                      None if strides is None else tuple(int(s) for s in strides),
                      bool(readonly), None, cai.get("stream"), value)


def parse_capsule(capsule) -> dict:
    """The fields of a DLPack ``dltensor`` capsule, read without consuming it."""
    address = _CAPSULE_GET(capsule, b"dltensor")
    managed = _FFI.cast("DLManagedTensor *", address)
    tensor = managed.dl_tensor
    ndim = tensor.ndim
    shape = tuple(int(tensor.shape[i]) for i in range(ndim))
    strides = None if tensor.strides == _FFI.NULL else \
        tuple(int(tensor.strides[i]) for i in range(ndim))
    return {"pointer": int(_FFI.cast("uintptr_t", tensor.data)) + int(tensor.byte_offset),
            "device_type": int(tensor.device.device_type),
            "device_id": int(tensor.device.device_id), "shape": shape, "strides": strides,
            "dtype": (int(tensor.dtype.code), int(tensor.dtype.bits), int(tensor.dtype.lanes))}


def _from_capsule(capsule, name: str, owner) -> DeviceView:
    fields = parse_capsule(capsule)
    code, bits, lanes = fields["dtype"]
    if code != DL_FLOAT or lanes != 1 or bits not in (32, 64):
        raise TypeError(f"{name} must be float32 or float64, got DLPack dtype code {code}, "
                        f"{bits} bits, {lanes} lanes")
    dtype = np.dtype(f"float{bits}")
    strides = fields["strides"]
    return DeviceView(fields["pointer"], fields["shape"], dtype,
                      None if strides is None else tuple(s * dtype.itemsize for s in strides),
                      False, fields["device_id"], None, owner)


def stream_handle(stream) -> int:
    """A CUDA stream argument as its handle (0: the legacy default stream)."""
    if stream is None:
        return 0
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        _, handle = protocol()
        return int(handle)
    for attribute in ("cuda_stream", "ptr", "handle"):
        handle = getattr(stream, attribute, None)
        if isinstance(handle, (int, np.integer)) and not isinstance(handle, bool):
            return int(handle)
    raise TypeError(f"stream must be None, an int handle, a torch.cuda.Stream, a CuPy stream or "
                    f"an object with __cuda_stream__, got {type(stream).__name__}")


def same_stream(a: int | None, b: int) -> bool:
    """DLPack/CAI call the legacy default stream 1; the runtime calls it 0."""
    def norm(s):
        return 0 if s in (0, 1, None) else s
    return norm(a) == norm(b)


# -- convgen's own device array ------------------------------------------------------------
class DeviceArray:
    """A C-contiguous float32/float64 array in CUDA device memory, owned by convgen."""

    def __init__(self, shape, dtype):
        from . import driver

        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._driver = driver.driver()
        self.pointer = self._driver.alloc(self.nbytes)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.pointer, False),
                "strides": None, "version": 3, "stream": None}

    @classmethod
    def from_host(cls, array) -> DeviceArray:
        host = np.ascontiguousarray(array)
        result = cls(host.shape, host.dtype)
        result._driver.copy_to_device(result.pointer, host)
        return result

    def copy_to_host(self) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        self._driver.copy_to_host(host, self.pointer)
        return host

    def __del__(self):
        pointer = getattr(self, "pointer", None)
        if pointer:
            try:
                self._driver.free(pointer)
            except Exception:
                pass
            self.pointer = None

    def __repr__(self) -> str:
        return f"<convgen.cuda.DeviceArray shape={self.shape} dtype={self.dtype}>"


def empty_like_input(x, shape, dtype, channels_last: bool = False):
    """A new device array of ``shape`` for an output: the input's own library's kind when
    it is PyTorch or CuPy (on the input's device), else a convgen DeviceArray;
    ``channels_last``: laid out with the channels innermost, as the input is."""
    module = type(x).__module__.split(".")[0]
    order = (0, *range(2, len(shape)), 1) if channels_last else tuple(range(len(shape)))
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    stored = tuple(shape[a] for a in order)
    if module == "torch":
        import torch
        y = torch.empty(stored, dtype=getattr(torch, np.dtype(dtype).name), device=x.device)
        return y.permute(*inverse) if channels_last else y
    if module == "cupy":
        import cupy
        with x.device:
            y = cupy.empty(stored, dtype=dtype)
        return y.transpose(inverse) if channels_last else y
    if channels_last:
        raise ValueError("out= is needed for a channels-last input that is neither a torch "
                         "tensor nor a CuPy array (convgen's DeviceArray is C-contiguous)")
    return DeviceArray(shape, dtype)


def to_device(value, like=None):
    """A host array copied to the device (for module weights): as the kind of ``like``."""
    host = np.ascontiguousarray(value)
    if like is not None:
        module = type(like).__module__.split(".")[0]
        if module == "torch":
            import torch
            return torch.from_numpy(host).to(like.device)
        if module == "cupy":
            import cupy
            with like.device:
                return cupy.asarray(host)
    return DeviceArray.from_host(host)
