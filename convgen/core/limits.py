"""Sizes a kernel can be generated for: refused here, before any C is rendered or compiled.

The generated kernels index with ``ptrdiff_t`` (64-bit), so index arithmetic on a tensor
of up to ``2**62`` elements cannot overflow (the largest offset is the element count, and
the products that form it stay below it). A tensor that does not fit in the address space
could never be allocated, so a kernel for it is refused as well, with the reason, instead
of compiling code that indexes past what any pointer can reach.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .spec import Workload

# Element offsets are ptrdiff_t: 2**62 leaves headroom below 2**63 for sums of offsets.
# On a 32-bit Python (a 32-bit ptrdiff_t), sys.maxsize is the bound instead.
MAX_ELEMENTS = min(2 ** 62, sys.maxsize)
# What one user-space array can span: 128 TiB on x86-64 and AArch64 with 4-level page
# tables (the common configuration); a 32-bit process gets at most its whole space.
ADDRESS_SPACE_BYTES = 2 ** 47 if sys.maxsize > 2 ** 32 else 2 ** 31


def check_workload_limits(workload: Workload) -> None:
    """Refuse (ValueError naming the tensor and the limit) a workload too large to index or hold."""
    itemsize = np.dtype(workload.dtype).itemsize
    for name, shape in (("input", workload.input_shape), ("weight", workload.spec.weight_shape),
                        ("output", workload.output_shape)):
        elements = math.prod(shape)
        if elements > MAX_ELEMENTS:
            raise ValueError(f"{name} of shape {shape} has {elements} elements, more than a "
                             f"convgen kernel can index (at most {MAX_ELEMENTS}, 64-bit offsets)")
        if elements * itemsize > ADDRESS_SPACE_BYTES:
            raise ValueError(f"{name} of shape {shape} would take {elements * itemsize} bytes "
                             f"({workload.dtype}), more than a process's address space can hold "
                             f"({ADDRESS_SPACE_BYTES} bytes)")
