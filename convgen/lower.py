"""Lowering: a workload as phases of a forward correlation over a padded input.

Every op of the family becomes the same computation: for each *phase*, each output pixel
``o = start + q * out_step`` (per axis) is a dot product of weight taps with padded-input
elements at ``q * in_step + offset(tap)``.

- A forward conv has one phase: ``in_step`` is the stride, ``offset = k * dilation``
  (the input is padded by ``pad_before`` in front, by its padding mode).
- A transposed conv splits each axis into ``stride`` phases (stride-phase decomposition):
  output ``o = q * s + r`` only receives taps ``k`` with ``(r + pad - k * dil) % s == 0``,
  from input ``q + (r + pad - k * dil) / s``. No multiplication by an inserted zero.

The SIMD templates loop over this data; the planner reads its sizes. Computed once per
(workload, plan) and passed down, never re-derived.
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
    count: int                 # outputs of the phase along the axis
    in_step: int               # padded-input distance between consecutive q
    taps: tuple[int, ...]      # kernel indices along the axis that feed this phase
    offsets: tuple[int, ...]   # padded-input offset of each tap


@dataclass(frozen=True)
class Phase:
    axes: tuple[AxisPhase, ...]

    @property
    def taps(self) -> int:
        return math.prod(len(a.taps) for a in self.axes)

    @property
    def outputs(self) -> int:
        return math.prod(a.count for a in self.axes)


@dataclass(frozen=True)
class PaddedAxis:
    """The padded input along one axis: ``size`` elements, input index ``i`` at ``i + before``.
    Positions in ``[0, mode_extent)`` follow the padding mode; any beyond are zero."""
    size: int
    before: int
    mode_extent: int


@dataclass(frozen=True)
class Lowering:
    phases: tuple[Phase, ...]
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


def lower(workload: Workload, row_overrun: int = 1, split_rows: bool = False) -> Lowering:
    """Phases and padded geometry; ``row_overrun`` rounds the innermost axis's reads up to
    a multiple of it (templates that compute whole vectors read, and discard, past the end).

    ``split_rows`` stores each padded row of a forward conv with stride s along its last
    axis as s column phases (column w at phase w % s, index w // s), so that the inputs
    of consecutive outputs of a row are consecutive in memory.
    """
    return _lower(workload, row_overrun, split_rows)


@functools.lru_cache(maxsize=1024)
def _lower(workload: Workload, row_overrun: int, split_rows: bool) -> Lowering:
    spec = workload.spec
    per_axis, padded = [], []
    for ax in range(spec.ndim):
        inner = ax == spec.ndim - 1
        overrun = row_overrun if inner else 1
        if spec.transposed:
            phases, pad = _transposed_axis(workload, ax, overrun)
        else:
            phases, pad = _forward_axis(workload, ax, overrun)
        per_axis.append(phases)
        padded.append(pad)
    combos = [()]
    for phases in per_axis:
        combos = [c + (p,) for c in combos for p in phases]
    split = workload.spec.stride[-1] if split_rows and not workload.spec.transposed else 1
    if split > 1:
        # in phase coordinates each output of a row steps one element
        per_axis[-1] = tuple(AxisPhase(p.start, p.out_step, p.count, 1, p.taps, p.offsets)
                             for p in per_axis[-1])
        combos = [c[:-1] + (per_axis[-1][0],) for c in combos]
    copy = split > 1 or any(p.size != n for p, n in zip(padded, workload.in_spatial))
    phase_pitch = _row_pitch(-(-padded[-1].size // split), workload.dtype) if split > 1 else 0
    pitch = (split * phase_pitch if split > 1 else
             _row_pitch(padded[-1].size, workload.dtype) if copy else padded[-1].size)
    # Many input channels per group: a tile reads the same rows of every channel, so keep
    # those rows together. Few (depthwise, small groups): a tile walks one channel's rows,
    # so keep each channel's rows together instead.
    rows_outside = copy and workload.spec.cin_per_group >= 8
    return Lowering(tuple(Phase(c) for c in combos), tuple(padded), copy, pitch, rows_outside,
                    split, phase_pitch)


def _row_pitch(row: int, dtype: str) -> int:
    """Rows start on a cache line, an odd number of lines apart: the same row of many
    channels then spreads over the L1 sets instead of aliasing (a 4 KiB multiple apart,
    256 channels would share a handful of sets and miss on every access)."""
    line = 64 // (4 if dtype == "float32" else 8)
    lines = -(-row // line)
    return (lines + 1 - lines % 2) * line


def _reads_end(phase: AxisPhase, overrun: int) -> int:
    """One past the last padded-input element a phase reads (count rounded up to overrun)."""
    last_q = -(-phase.count // overrun) * overrun - 1
    return last_q * phase.in_step + max(phase.offsets, default=0) + 1


def _forward_axis(workload: Workload, ax: int, overrun: int):
    spec = workload.spec
    k, dil, stride = spec.kernel_size[ax], spec.dilation[ax], spec.stride[ax]
    before, after = spec.pad_before[ax], spec.pad_after[ax]
    n_in, n_out = workload.in_spatial[ax], workload.out_spatial[ax]
    phase = AxisPhase(0, 1, n_out, stride, tuple(range(k)), tuple(t * dil for t in range(k)))
    extent = before + n_in + after
    return (phase,), PaddedAxis(max(extent, _reads_end(phase, overrun)), before, extent)


def _transposed_axis(workload: Workload, ax: int, overrun: int):
    spec = workload.spec
    k, dil, s = spec.kernel_size[ax], spec.dilation[ax], spec.stride[ax]
    pad = spec.pad_before[ax]
    n_in, n_out = workload.in_spatial[ax], workload.out_spatial[ax]
    raw = []   # (start, count, taps, unshifted input offsets)
    for r in range(min(s, n_out)):
        taps = tuple(t for t in range(k) if (r + pad - t * dil) % s == 0)
        raw.append((r, -(-(n_out - r) // s), taps, tuple((r + pad - t * dil) // s for t in taps)))
    before = max([0] + [-o for *_, offs in raw for o in offs])
    phases = tuple(AxisPhase(r, s, count, 1, taps, tuple(o + before for o in offs))
                   for r, count, taps, offs in raw)
    extent = before + n_in
    size = max([extent] + [_reads_end(p, overrun) for p in phases if p.taps])
    return phases, PaddedAxis(size, before, extent)
