"""The workload a CPU kernel is planned, priced and rendered for.

A 1x1 convolution with unit stride and no padding reads, for every output pixel, the input
pixel at the same place; NCHW keeps a channel's pixels together in the input and the output
alike, so as far as the kernel is concerned its spatial axes are one row. Planned as a 1-D
convolution over all H*W (D*H*W) pixels, its register tiles run along the whole map instead
of one short row: a 7x7 map's tiles hold 13 pixels instead of 7, and no tile is cut short
at a row's end (2 threads, this module's measurements: 512 -> 2048 channels at 7x7 0.362 ->
0.324 ms, 1024 -> 256 at 14x14 0.353 -> 0.330, 64 -> 256 at 56x56 0.395 -> 0.354).

The kernel's operands do not change: the same memory in the same order, which is why the
runtime still checks them against the layer's own shapes. The planner, the cost model and
the renderer each take the workload through ``planned`` at their entry (it is idempotent),
so a plan is always a plan for the workload it will be rendered for.
"""
from __future__ import annotations

import dataclasses
import math

from ..core.spec import Workload


def planned(workload: Workload) -> Workload:
    """``workload``, or the same computation over one merged spatial axis (see above)."""
    spec = workload.spec
    if spec.ndim == 1 or not _pointwise(spec):
        return workload
    one = (1,)
    merged = dataclasses.replace(spec, kernel_size=one, stride=one, pad_before=(0,),
                                 pad_after=(0,), dilation=one, output_padding=(0,),
                                 padding_mode="zeros")
    batch, channels = workload.input_shape[:2]
    return dataclasses.replace(workload, spec=merged,
                               input_shape=(batch, channels, math.prod(workload.in_spatial)))


def _pointwise(spec) -> bool:
    """Every output pixel reads exactly the input pixel at its own place."""
    return (all(k == 1 for k in spec.kernel_size) and all(s == 1 for s in spec.stride)
            and not any(spec.pad_before) and not any(spec.pad_after)
            and not any(spec.output_padding))
