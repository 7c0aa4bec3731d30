"""Lowering: every op of the family as phases of a forward correlation.

For each *phase*, each output pixel ``o = start + q * out_step`` (per axis) is a dot
product of weight taps with input elements at ``q * in_step + offset(tap)``, where the
offset is an index into the input itself (negative or past the end: padding).

- A forward conv has one phase: ``in_step`` is the stride and tap ``k`` reads
  ``k * dilation - pad_before``.
- A transposed conv splits each axis into ``stride`` phases (stride-phase decomposition):
  output ``o = q * s + r`` only receives taps ``k`` with ``(r + pad - k * dil) % s == 0``,
  from input ``q + (r + pad - k * dil) / s``. No multiplication by an inserted zero.

This is the one copy of the decomposition: the CPU backend lays a padded input out around
it (``cpu/layout.py``), the CUDA backend turns each phase into an implicit GEMM.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .spec import Workload


@dataclass(frozen=True)
class AxisPhase:
    start: int                 # first output index of the phase
    out_step: int              # output index distance between consecutive q
    count: int                 # outputs of the phase along the axis (0: an empty phase)
    in_step: int               # input distance between consecutive q
    taps: tuple[int, ...]      # kernel indices along the axis that feed this phase
    offsets: tuple[int, ...]   # input index of each tap at q = 0 (may lie in the padding)


@dataclass(frozen=True)
class Phase:
    axes: tuple[AxisPhase, ...]

    @property
    def taps(self) -> int:
        return math.prod(len(a.taps) for a in self.axes)

    @property
    def outputs(self) -> int:
        return math.prod(a.count for a in self.axes)


def axis_phases(workload: Workload, ax: int) -> tuple[AxisPhase, ...]:
    """The phases of one spatial axis: one for a forward conv, ``stride`` for a transposed
    one (those past the output's end have ``count == 0``)."""
    spec = workload.spec
    k, dil, s = spec.kernel_size[ax], spec.dilation[ax], spec.stride[ax]
    n_out = workload.out_spatial[ax]
    if not spec.transposed:
        pad = spec.pad_before[ax]
        return (AxisPhase(0, 1, n_out, s, tuple(range(k)),
                          tuple(t * dil - pad for t in range(k))),)
    pad = spec.pad_before[ax]
    found = []
    for r in range(s):
        taps = tuple(t for t in range(k) if (r + pad - t * dil) % s == 0)
        found.append(AxisPhase(r, s, max(0, -(-(n_out - r) // s)), 1, taps,
                               tuple((r + pad - t * dil) // s for t in taps)))
    return tuple(found)


@functools.lru_cache(maxsize=1024)
def phases(workload: Workload) -> tuple[Phase, ...]:
    """Every combination of the axes' non-empty phases, outer axes first."""
    combos = [()]
    for ax in range(workload.spec.ndim):
        combos = [c + (p,) for c in combos for p in axis_phases(workload, ax) if p.count]
    return tuple(Phase(c) for c in combos)
