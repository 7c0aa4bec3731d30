"""The CUDA driver API through cffi: device facts, device memory, stream synchronisation.

Used for what convgen itself asks of a GPU outside a kernel launch: which architecture the
present device has (the "cuda" target), allocating outputs and weights when the caller's
arrays come from no GPU library convgen knows, copying to and from them, and waiting on a
producer's stream. No GPU library is needed: libcuda is opened at first use, and a machine
without it (or without a device) simply has no GPU -- ``available()`` is False and
``device_properties()`` is None.

Every call's status is checked: a failure raises ``CudaError`` naming the call, the
driver's error name and its description.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import cffi

_FFI = cffi.FFI()
_FFI.cdef("""
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUdeviceptr;
CUresult cuInit(unsigned int flags);
CUresult cuDriverGetVersion(int *version);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetName(char *name, int len, CUdevice device);
CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice device);
CUresult cuGetErrorName(CUresult error, const char **name);
CUresult cuGetErrorString(CUresult error, const char **text);
CUresult cuCtxGetCurrent(CUcontext *context);
CUresult cuCtxSetCurrent(CUcontext context);
CUresult cuCtxGetDevice(CUdevice *device);
CUresult cuDevicePrimaryCtxRetain(CUcontext *context, CUdevice device);
CUresult cuMemAlloc_v2(CUdeviceptr *pointer, size_t bytes);
CUresult cuMemFree_v2(CUdeviceptr pointer);
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes);
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes);
CUresult cuStreamSynchronize(CUstream stream);
CUresult cuCtxSynchronize(void);
CUresult cuPointerGetAttribute(void *data, int attribute, CUdeviceptr pointer);
""")

# cuda.h's enumerators, for the few attributes read here
_ATTR = {"sm_count": 16, "max_threads_per_sm": 39, "cc_major": 75, "cc_minor": 76,
         "smem_per_sm": 81, "smem_per_block_optin": 97}
POINTER_MEMORY_TYPE, POINTER_DEVICE_ORDINAL = 2, 9
MEMORY_TYPE_HOST, MEMORY_TYPE_DEVICE, MEMORY_TYPE_UNIFIED = 1, 2, 4
CUDA_ERROR_INVALID_VALUE = 1
_LOCK = threading.Lock()


class CudaError(RuntimeError):
    """A CUDA call failed: ``operation`` is what convgen was doing, ``code``/``name`` the status."""

    def __init__(self, operation: str, code: int, name: str, description: str):
        super().__init__(operation, code, name, description)
        self.operation, self.code, self.name, self.description = operation, code, name, description

    def __str__(self) -> str:
        return f"{self.operation} failed: {self.name} ({self.code}): {self.description}"


@dataclass(frozen=True)
class DeviceProperties:
    ordinal: int
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    smem_per_block_optin: int
    smem_per_sm: int
    max_threads_per_sm: int


class Driver:
    """libcuda, opened once; each method checks its calls' status."""

    def __init__(self, lib):
        self.lib = lib
        self.check(lib.cuInit(0), "cuInit")

    def error_text(self, status: int) -> tuple[str, str]:
        name, text = _FFI.new("const char **"), _FFI.new("const char **")
        if self.lib.cuGetErrorName(status, name) != 0 or name[0] == _FFI.NULL:
            return f"CUDA_ERROR_{status}", "unknown CUDA driver error"
        self.lib.cuGetErrorString(status, text)
        description = _FFI.string(text[0]).decode() if text[0] != _FFI.NULL else ""
        return _FFI.string(name[0]).decode(), description

    def check(self, status: int, operation: str) -> None:
        if status != 0:
            name, description = self.error_text(status)
            raise CudaError(operation, int(status), name, description)

    def device_count(self) -> int:
        count = _FFI.new("int *")
        self.check(self.lib.cuDeviceGetCount(count), "cuDeviceGetCount")
        return count[0]

    def properties(self, ordinal: int = 0) -> DeviceProperties:
        device = _FFI.new("CUdevice *")
        self.check(self.lib.cuDeviceGet(device, ordinal), f"cuDeviceGet({ordinal})")
        name = _FFI.new("char[256]")
        self.check(self.lib.cuDeviceGetName(name, 256, device[0]), "cuDeviceGetName")
        values = {}
        for key, attribute in _ATTR.items():
            value = _FFI.new("int *")
            self.check(self.lib.cuDeviceGetAttribute(value, attribute, device[0]),
                       f"cuDeviceGetAttribute({key})")
            values[key] = value[0]
        return DeviceProperties(ordinal, _FFI.string(name).decode(),
                                (values["cc_major"], values["cc_minor"]), values["sm_count"],
                                values["smem_per_block_optin"], values["smem_per_sm"],
                                values["max_threads_per_sm"])

    def ensure_context(self, ordinal: int = 0) -> None:
        """Make the device's primary context current (the one the CUDA runtime, PyTorch and
        CuPy use) if this thread has none."""
        current = _FFI.new("CUcontext *")
        self.check(self.lib.cuCtxGetCurrent(current), "cuCtxGetCurrent")
        if current[0] != _FFI.NULL:
            return
        device = _FFI.new("CUdevice *")
        self.check(self.lib.cuDeviceGet(device, ordinal), f"cuDeviceGet({ordinal})")
        context = _FFI.new("CUcontext *")
        self.check(self.lib.cuDevicePrimaryCtxRetain(context, device[0]),
                   "cuDevicePrimaryCtxRetain")
        self.check(self.lib.cuCtxSetCurrent(context[0]), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        self.ensure_context()
        pointer = _FFI.new("CUdeviceptr *")
        self.check(self.lib.cuMemAlloc_v2(pointer, max(int(nbytes), 1)),
                   f"cuMemAlloc({nbytes} bytes)")
        return int(pointer[0])

    def free(self, pointer: int) -> None:
        self.check(self.lib.cuMemFree_v2(pointer), "cuMemFree")

    def copy_to_device(self, pointer: int, host) -> None:
        """Copy a C-contiguous numpy array to device memory (synchronously)."""
        self.ensure_context()
        if host.nbytes:
            self.check(self.lib.cuMemcpyHtoD_v2(pointer, _FFI.from_buffer(host), host.nbytes),
                       f"cuMemcpyHtoD({host.nbytes} bytes)")

    def copy_to_host(self, host, pointer: int) -> None:
        self.ensure_context()
        if host.nbytes:
            self.check(self.lib.cuMemcpyDtoH_v2(_FFI.from_buffer(host, require_writable=True),
                                                pointer, host.nbytes),
                       f"cuMemcpyDtoH({host.nbytes} bytes)")

    def stream_synchronize(self, stream: int) -> None:
        self.check(self.lib.cuStreamSynchronize(_FFI.cast("CUstream", stream)),
                   "cuStreamSynchronize")

    def synchronize(self) -> None:
        self.ensure_context()
        self.check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")

    def pointer_device(self, pointer: int) -> tuple[int, int]:
        """(memory type, device ordinal) of a pointer; memory type 0 for memory CUDA does
        not know."""
        kind = _FFI.new("unsigned int *")
        status = self.lib.cuPointerGetAttribute(kind, POINTER_MEMORY_TYPE, pointer)
        if status == CUDA_ERROR_INVALID_VALUE:   # plain host memory, never registered
            return 0, -1
        self.check(status, "cuPointerGetAttribute(MEMORY_TYPE)")
        ordinal = _FFI.new("int *")
        self.check(self.lib.cuPointerGetAttribute(ordinal, POINTER_DEVICE_ORDINAL, pointer),
                   "cuPointerGetAttribute(DEVICE_ORDINAL)")
        return int(kind[0]), int(ordinal[0])


@functools.cache
def _open() -> Driver | None:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = _FFI.dlopen(name)
        except OSError:
            continue
        try:
            return Driver(lib)
        except CudaError:   # a driver without a usable device (CUDA_ERROR_NO_DEVICE ...)
            return None
    return None


def driver() -> Driver:
    """The driver, or a CudaError saying why there is none."""
    with _LOCK:
        found = _open()
    if found is None:
        raise CudaError("opening the CUDA driver (libcuda)", 100, "CUDA_ERROR_NO_DEVICE",
                        "no NVIDIA GPU and driver on this machine; the 'cuda-emu' target "
                        "runs the same kernels on the CPU")
    return found


def available() -> bool:
    """True when libcuda opens and reports at least one device."""
    try:
        return driver().device_count() > 0
    except CudaError:
        return False


def device_properties(ordinal: int = 0) -> DeviceProperties | None:
    """Facts about a device; None on a machine without a GPU."""
    if not available():
        return None
    return driver().properties(ordinal)
