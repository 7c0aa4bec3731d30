"""Winograd minimal filtering F(m, 3): the transform matrices, as exact rationals.

A ``(m + 2)``-point transform computes ``m`` outputs of a 3-tap correlation with
``m + 2`` multiplications instead of ``3 m`` (per axis; the 2-D F(m x m, 3 x 3) nests
it). ``y = A^T [(G g) * (B^T d)]`` for an input tile ``d`` of ``m + 2`` values and the
3 weights ``g``. The matrices are the standard Toom-Cook ones (Lavin & Gray 2016) for
the interpolation points 0, -1, 1, (-2, 2, -1/2, 1/2,) infinity; ``check`` proves each
against a direct correlation when the module is tested.

Float32 error grows with m (bigger constants): measured and documented in the README,
and the planner never uses these under ``accuracy="strict"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as Q

import numpy as np


@dataclass(frozen=True)
class Transform:
    m: int
    bt: tuple[tuple[Q, ...], ...]   # (m+2) x (m+2): input tile -> transformed
    g: tuple[tuple[Q, ...], ...]    # (m+2) x 3: weights -> transformed
    at: tuple[tuple[Q, ...], ...]   # m x (m+2): products -> outputs

    @property
    def alpha(self) -> int:
        return self.m + 2


def _q(rows) -> tuple[tuple[Q, ...], ...]:
    return tuple(tuple(Q(v) for v in row) for row in rows)


TRANSFORMS = {
    2: Transform(2,
                 _q([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
                 _q([[1, 0, 0], ["1/2", "1/2", "1/2"], ["1/2", "-1/2", "1/2"], [0, 0, 1]]),
                 _q([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: Transform(4,
                 _q([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
                 _q([["1/4", 0, 0], ["-1/6", "-1/6", "-1/6"], ["-1/6", "1/6", "-1/6"],
                     ["1/24", "1/12", "1/6"], ["1/24", "-1/12", "1/6"], [0, 0, 1]]),
                 _q([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                     [0, 1, -1, 8, -8, 1]])),
}


def check(t: Transform) -> float:
    """Largest deviation of the transform from a direct 3-tap correlation (float64)."""
    rng = np.random.default_rng(t.m)
    d, g = rng.standard_normal(t.alpha), rng.standard_normal(3)
    bt, gm, at = (np.array(x, dtype=float) for x in (t.bt, t.g, t.at))
    y = at @ ((gm @ g) * (bt @ d))
    direct = np.array([d[i:i + 3] @ g for i in range(t.m)])
    return float(np.abs(y - direct).max())


@dataclass(frozen=True)
class Geometry:
    """How a Winograd kernel tiles one workload (all sizes in elements).

    A dilation d along an axis splits it into d interleaved sub-grids: output
    ``r + d*o`` only reads padded inputs ``r + d*j``, so each sub-grid is an undilated
    3-tap correlation and gets Winograd tiles of its own.
    """
    m: int                      # outputs per tile along each axis
    dilation: tuple[int, ...]   # sub-grids per axis
    tiles: tuple[int, ...]      # tiles per axis and sub-grid (outer first; the largest)
    block: int                  # tiles of the last axis per block (one register-tile row)
    blocks: int                 # blocks along the last axis, per sub-grid
    padded: tuple[int, ...]     # padded input extent per axis
    before: tuple[int, ...]     # padding in front per axis
    mode_extent: tuple[int, ...]
    phase_pitch: int            # elements per column phase of one padded row
    v_point: int                # per thread scratch: one transformed point of every input
    m_point: int                # channel, and of every output channel (each a line longer
                                # than the data, so the points do not alias in L1)
    row_chunks: int             # VL * phases columns each: the padded row as the split reads it
    scratch: int                # per thread: transformed inputs, products, one output row

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def phases(self) -> int:
        """Column phases of a padded row: a column's sub-grid and its place in a tile."""
        return self.m * self.dilation[-1]

    @property
    def channel_stride(self) -> int:
        return self.phases * self.phase_pitch


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def applies(spec) -> bool:
    """F(m, 3) here: forward, 1-D or 2-D, 3 taps per axis, unit stride (any dilation)."""
    return (not spec.transposed and spec.ndim in (1, 2) and set(spec.kernel_size) == {3}
            and set(spec.stride) == {1})


def geometry(workload, m: int, block: int, line: int, vector: int) -> Geometry:
    spec = workload.spec
    dil = spec.dilation
    # the largest sub-grid (r = 0) has ceil(out / d) outputs
    tiles = tuple(_ceil_div(_ceil_div(n, d), m) for n, d in zip(workload.out_spatial, dil))
    blocks = -(-tiles[-1] // block)
    covered = list(tiles[:-1]) + [blocks * block]
    padded = tuple(max(d * (t * m + 2), b + n + a) for t, d, b, n, a in
                   zip(covered, dil, spec.pad_before, workload.in_spatial, spec.pad_after))
    extent = tuple(b + n + a for b, n, a in
                   zip(spec.pad_before, workload.in_spatial, spec.pad_after))
    phases = m * dil[-1]
    columns = -(-padded[-1] // phases)                 # per phase
    lines = -(-columns // line)
    pitch = (lines + 1 - lines % 2) * line             # odd number of cache lines: no aliasing
    alpha2 = (m + 2) ** spec.ndim
    v_point, m_point = spec.cin_per_group * block + line, spec.cout_per_group * block + line
    row_chunks = -(-padded[-1] // (phases * vector))   # a padded row, split a chunk at a time
    scratch = max(alpha2 * (v_point + m_point) + m * block * m, row_chunks * phases * vector)
    return Geometry(m, tuple(dil), tiles, block, blocks, padded, tuple(spec.pad_before), extent,
                    pitch, v_point, m_point, row_chunks, scratch)
