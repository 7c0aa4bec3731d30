"""Array arguments: what the public functions accept, checked before any native code runs."""
from __future__ import annotations

import numpy as np

SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


def as_array(value, name: str) -> np.ndarray:
    """numpy view of ``value`` (ndarray, CPU torch tensor, nested lists ...), float32/float64 only."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):   # a torch tensor, maybe requiring grad
        device = getattr(value, "device", None)
        if device is not None and getattr(device, "type", "cpu") != "cpu":
            raise TypeError(f"{name} is a tensor on {device}; the 'cpu' target takes host arrays")
        try:
            value = value.detach().numpy()
        except (TypeError, RuntimeError) as exc:   # bfloat16 and other dtypes numpy lacks
            raise TypeError(f"{name} must be float32 or float64, got dtype {value.dtype}") from exc
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from exc
    if array.dtype.kind == "f" and not array.dtype.isnative:   # big-endian data: swap once here
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in SUPPORTED:
        raise TypeError(f"{name} must be float32 or float64, got dtype {array.dtype}")
    return array


def native_contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, native byte order: the only layout the kernels read. Copies only if needed."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


def check_dtype(array: np.ndarray, name: str, dtype: np.dtype, reference: str) -> None:
    if array.dtype != dtype:
        raise TypeError(f"{name} has dtype {array.dtype} but {reference} is {dtype}; "
                        f"convert one so that they match")


def check_shape(array: np.ndarray, name: str, shape: tuple[int, ...], why: str) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({why}), got {tuple(array.shape)}")


def check_out(out, shape: tuple[int, ...], dtype: np.dtype, inputs: tuple[np.ndarray, ...]):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    check_dtype(out, "out", dtype, "the kernel's dtype")
    check_shape(out, "out", shape, "the kernel's output shape")
    if not out.flags.c_contiguous or not out.flags.writeable or not out.dtype.isnative:
        raise ValueError("out must be a writeable, C-contiguous array in native byte order")
    for array in inputs:
        if array is not None and np.may_share_memory(out, array):
            raise ValueError("out must not overlap the input, weight or bias")
