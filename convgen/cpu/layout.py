"""The CPU kernels' view of the lowering: phases over a padded input, and its layout.

The SIMD templates read a padded copy of the input (or the input itself where no padding
is needed), so the phases of ``core.lowering`` are shifted into padded coordinates here:
tap offsets become indices into the padded row, never negative. How that padded input is
laid out (row pitch, channel order, column phases for strided rows) is decided here too.
Computed once per (workload, plan) as part of ``cpu.derived`` and passed down.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from ..core import lowering
from ..core.dtypes import itemsize
from ..core.lowering import AxisPhase, Phase
from ..core.spec import Workload

__all__ = ["AxisPhase", "Lowering", "PaddedAxis", "Phase", "lower"]


@dataclass(frozen=True)
class PaddedAxis:
    """The padded input along one axis: ``size`` elements, input index ``i`` at ``i + before``.
    Positions in ``[0, mode_extent)`` follow the padding mode; any beyond are zero."""
    size: int
    before: int
    mode_extent: int


@dataclass(frozen=True)
class Lowering:
    phases: tuple[Phase, ...]  # tap offsets index the padded input
    padded: tuple[PaddedAxis, ...]
    copy_input: bool           # False: the padded input is the input itself
    row_pitch: int             # elements from one padded row to the next (>= its size)
    rows_outside_channels: bool   # copied as [n][rows][channel][row], not [n][channel][rows][row]
    row_split: int = 1         # > 1: each padded row stored as row_split column phases
    phase_pitch: int = 0       # elements per column phase (when row_split > 1)

    def row_offset(self, column: int) -> int:
        """Where padded column ``column`` of a row is stored, from the row's start."""
        if self.row_split == 1:
            return column
        return (column % self.row_split) * self.phase_pitch + column // self.row_split

    @property
    def padded_spatial(self) -> int:
        """Elements of one channel of the padded input, rows at their pitch."""
        return math.prod(a.size for a in self.padded[:-1]) * self.row_pitch


@functools.lru_cache(maxsize=1024)
def lower(workload: Workload, row_overrun: int = 1, split_rows: bool = False) -> Lowering:
    """Phases in padded coordinates and the padded geometry; ``row_overrun`` rounds the
    innermost axis's reads up to a multiple of it (templates that compute whole vectors
    read, and discard, past the end).

    ``split_rows`` stores each padded row of a forward conv with stride s along its last
    axis as s column phases (column w at phase w % s, index w // s), so that the inputs
    of consecutive outputs of a row are consecutive in memory.
    """
    spec = workload.spec
    per_axis, padded = [], []
    for ax in range(spec.ndim):
        overrun = row_overrun if ax == spec.ndim - 1 else 1
        shifted, pad = _padded_axis(workload, ax, overrun)
        per_axis.append(shifted)
        padded.append(pad)
    split = spec.stride[-1] if split_rows and not spec.transposed else 1
    if split > 1:
        # in phase coordinates each output of a row steps one element
        per_axis[-1] = tuple(dataclasses.replace(p, in_step=1) for p in per_axis[-1])
    combos = [()]
    for shifted in per_axis:
        combos = [c + (p,) for c in combos for p in shifted]
    copy = split > 1 or any(p.size != n for p, n in zip(padded, workload.in_spatial))
    phase_pitch = line_pitch(-(-padded[-1].size // split), workload.dtype) if split > 1 else 0
    pitch = (split * phase_pitch if split > 1 else
             line_pitch(padded[-1].size, workload.dtype) if copy else padded[-1].size)
    # Many input channels per group: a tile reads the same rows of every channel, so keep
    # those rows together. Few (depthwise, small groups): a tile walks one channel's rows,
    # so keep each channel's rows together instead.
    rows_outside = copy and spec.cin_per_group >= 8
    return Lowering(tuple(Phase(c) for c in combos), tuple(padded), copy, pitch, rows_outside,
                    split, phase_pitch)


def _padded_axis(workload: Workload, ax: int, overrun: int):
    """One axis's non-empty phases shifted by the padding in front, and the padded axis."""
    spec = workload.spec
    found = [p for p in lowering.axis_phases(workload, ax) if p.count]
    if spec.transposed:
        before = max([0] + [-o for p in found for o in p.offsets])
        extent = before + workload.in_spatial[ax]
    else:
        before = spec.pad_before[ax]
        extent = before + workload.in_spatial[ax] + spec.pad_after[ax]
    shifted = tuple(dataclasses.replace(p, offsets=tuple(o + before for o in p.offsets))
                    for p in found)
    size = max([extent] + [_reads_end(p, overrun) for p in shifted if p.taps])
    return shifted, PaddedAxis(size, before, extent)


def line_pitch(row: int, dtype: str) -> int:
    """Rows start on a cache line, an odd number of lines apart: the same row of many
    channels then spreads over the L1 sets instead of aliasing (a 4 KiB multiple apart,
    256 channels would share a handful of sets and miss on every access). Used for the
    padded input's rows and for staged output rows (cpu.derived)."""
    line = 64 // itemsize(dtype)
    lines = -(-row // line)
    return (lines + 1 - lines % 2) * line


def _reads_end(phase: AxisPhase, overrun: int) -> int:
    """One past the last padded-input element a phase reads (count rounded up to overrun)."""
    last_q = -(-phase.count // overrun) * overrun - 1
    return last_q * phase.in_step + max(phase.offsets, default=0) + 1
