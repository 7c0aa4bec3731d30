"""The element types convgen generates code for: one table, read by every stage.

``dtype_name`` accepts what users type: "float32", numpy dtypes and scalar types, and
torch dtypes (``torch.float64``), without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str       # numpy's name
    itemsize: int   # bytes
    ctype: str      # the C (and CUDA) type


TABLE = {"float32": DType("float32", 4, "float"), "float64": DType("float64", 8, "double")}
DTYPES = tuple(TABLE)


def itemsize(name: str) -> int:
    return TABLE[name].itemsize


def ctype(name: str) -> str:
    return TABLE[name].ctype


def dtype_name(dtype) -> str:
    """The table's name for ``dtype``; TypeError naming the allowed ones otherwise."""
    if dtype is None:   # np.dtype(None) would quietly mean float64
        raise TypeError(f"dtype must be one of {DTYPES}, got None")
    if type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        name = str(dtype).removeprefix("torch.")   # torch.float64 -> "float64"
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError as exc:
            raise TypeError(f"dtype must be one of {DTYPES}, got {dtype!r}") from exc
    if name not in TABLE:
        raise TypeError(f"dtype must be one of {DTYPES}, got {name}")
    return name
