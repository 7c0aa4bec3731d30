"""Array arguments: what the public functions accept, checked before any native code runs.

What a kernel is handed is always float32/float64, C-contiguous, aligned and in native byte
order, whatever the caller passed: other layouts are copied (inputs) or refused (``out=``).
Unaligned data matters: the C code may assume its ``float``/``double`` pointers are aligned
(vector loads, and UBSan calls a misaligned access undefined behaviour).
"""
from __future__ import annotations

import math

import numpy as np

SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


def as_array(value, name: str) -> np.ndarray:
    """numpy view of ``value`` (ndarray, CPU torch tensor, nested lists ...), float32 or
    float64 only."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):   # a torch tensor, maybe requiring grad
        device = getattr(value, "device", None)
        if device is not None and getattr(device, "type", "cpu") != "cpu":
            raise TypeError(f"{name} is a tensor on {device}; the 'cpu' target takes host arrays")
        try:
            value = value.detach().numpy()
        except (TypeError, RuntimeError) as exc:   # bfloat16, sparse layouts: numpy lacks them
            raise TypeError(f"{name} must be a float32 or float64 tensor numpy can read, got "
                            f"dtype {value.dtype}, layout {getattr(value, 'layout', '?')}: "
                            f"{exc}") from exc
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from exc
    if array.dtype.kind == "f" and not array.dtype.isnative:   # big-endian data: swap once here
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in SUPPORTED:
        raise TypeError(f"{name} must be float32 or float64, got dtype {array.dtype}")
    return array


# The buffers a kernel keeps (packed weights, its scratch workspace) start on a cache line:
# numpy aligns large arrays to 16 bytes only, and a 64-byte vector load at 16 bytes past a
# line reads two lines (conv3d_128_256's packed weights: 15.0 ms misaligned, 12.5 ms
# aligned). Made once, not per call: finding an array's address costs a microsecond.
ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), its data starting at a multiple of ALIGNMENT bytes."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = math.prod(shape)
    spare = ALIGNMENT // dtype.itemsize
    raw = np.empty(count + spare, dtype=dtype)
    skip = (-raw.ctypes.data % ALIGNMENT) // dtype.itemsize
    return raw[skip:skip + count].reshape(shape)


# A kernel's own output starts on a cache line where it is large enough that the address
# lookup aligning it (about 2 us) is lost in the call: every vector store into a numpy
# array 16 bytes past a line writes two lines (conv3d_133, a 4 MiB output: 2.78 ms into
# np.empty's array, 2.66 into an aligned one). Below this, np.empty's 0.3 us stays.
ALIGNED_OUTPUT_BYTES = 1 << 20


def output_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new output for a kernel call without ``out=``: cache-line aligned when it is
    ALIGNED_OUTPUT_BYTES or more."""
    if math.prod(shape) * dtype.itemsize >= ALIGNED_OUTPUT_BYTES:
        return aligned_empty(shape, dtype)
    return np.empty(shape, dtype=dtype)


def ready(value, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Is ``value`` already what a kernel reads (an ndarray of this dtype, native byte order,
    shape, C-contiguous and aligned)? The per-call fast path: the full checks below cost
    microseconds, as much as a small layer's kernel."""
    if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
        return False
    flags = value.flags
    return flags.c_contiguous and flags.aligned


def native_contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, aligned, native byte order: the only layout the kernels read.

    Copies only if needed. (``np.ascontiguousarray`` alone would pass a contiguous but
    misaligned view through unchanged.)
    """
    flags = array.flags
    if flags.c_contiguous and flags.aligned and array.dtype.isnative:
        return array   # the common case, without np.require's few microseconds
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.require(array, requirements=("C_CONTIGUOUS", "ALIGNED"))


def check_dtype(array: np.ndarray, name: str, dtype: np.dtype, reference: str) -> None:
    if array.dtype != dtype:
        raise TypeError(f"{name} has dtype {array.dtype} but {reference} is {dtype}; "
                        f"convert one so that they match")


def check_shape(array: np.ndarray, name: str, shape: tuple[int, ...], why: str) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({why}), got {tuple(array.shape)}")


def check_out(out, shape: tuple[int, ...], dtype: np.dtype, inputs: tuple[np.ndarray, ...]):
    if ready(out, dtype, shape) and out.flags.writeable:
        _check_no_overlap(out, inputs)
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    check_dtype(out, "out", dtype, "the kernel's dtype")
    check_shape(out, "out", shape, "the kernel's output shape")
    missing = [rule for rule, holds in (("C-contiguous", out.flags.c_contiguous),
                                        ("writeable", out.flags.writeable),
                                        ("aligned", out.flags.aligned),
                                        ("in native byte order", out.dtype.isnative)) if not holds]
    if missing:
        raise ValueError(f"out must be a writeable, aligned, C-contiguous array in native byte "
                         f"order; this one is not {' and not '.join(missing)}")
    _check_no_overlap(out, inputs)


def _check_no_overlap(out: np.ndarray, inputs: tuple[np.ndarray, ...]) -> None:
    for array, name in zip(inputs, ("input", "weight", "bias")):
        # may_share_memory compares address ranges: it may refuse interleaved views that
        # never touch, but never lets the kernel write over what it is still reading.
        if array is not None and np.may_share_memory(out, array):
            raise ValueError(f"out must not overlap the input, weight or bias (it overlaps "
                             f"the {name})")
