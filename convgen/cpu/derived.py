"""Facts derived from one (workload, plan, target), computed once and read by the cost
model, the renderer and the kernel: the lowering over the padded input, the Winograd
geometry, the exact plan a Winograd kernel hands non-finite operands to, and the sizes of
the buffers the kernel needs besides its operands.

The generated C exports the same sizes (``<prefix>_workspace_bytes``,
``<prefix>_packed_weights_bytes``); the test suite checks that both agree.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..core.dtypes import itemsize
from ..core.spec import Workload
from ..target import Target
from ..target.isa import masked_store
from . import winograd
from .layout import Lowering, line_pitch, lower
from .plan import GATHER_ALGORITHMS, WINOGRAD_ALGORITHMS, Plan, registers


@dataclass(frozen=True)
class Derived:
    lowering: Lowering | None            # SIMD algorithms: phases over the padded input
    winograd: winograd.Geometry | None   # Winograd algorithms
    oc_blocks: int                       # register tiles per group along the channels
    own_packed: int                      # elements of this kernel's own packed weights
    own_workspace: int                   # elements of its own scratch (the padded input ...)
    exact_plan: Plan | None = None       # Winograd: the exact kernel for non-finite operands
    exact: Derived | None = None       # ... and its facts
    panel: int = 0                       # loop_order "panel": elements of one thread's panel
    stage_pitch: int = 0                 # staged rows: elements from one channel's row to the
                                         # next in a thread's staging buffer (0: not staged)
    stage_segment: int = 0               # ... and from one column phase's outputs to the next
    thread_stride: int = 0               # elements from one thread's buffer to the next
                                         # (depthwise planes, Winograd scratch, panels,
                                         # staging buffers)
    copy_stride: int = 0                 # > 0: every thread pads the whole input into a
                                         # copy of its own, this many elements apart
    buffers_at: int = 0                  # where the per-thread buffers start in the workspace
    copy_by_rows: bool = False           # the shared copy split among the threads by padded
                                         # rows (as their outputs are), not by channels
    in_place: bool = False               # depthwise: tiles read the unpadded input, loads
                                         # past its edges masked (no plane)
    registers: int = 0                   # direct_simd, implicit_gemm: the vector registers
                                         # a tile may fill (the target's)
    embedded_broadcast: bool = False     # the target's FMAs broadcast from memory themselves
    ranges: int = 0                      # direct_simd, implicit_gemm, depthwise, Winograd
                                         # on several threads: the work-sharing slots (one
                                         # a parallel loop and thread, RANGE_BYTES each;
                                         # 0: one thread) ...
    ranges_at: int = 0                   # ... at this element of the workspace (then aligned
                                         # up to RANGE_BYTES)

    @property
    def packed_weights(self) -> int:
        """Elements of the packed-weights buffer: a Winograd kernel's also holds the exact
        kernel's packed weights and one flag (whether every weight is finite)."""
        if self.exact is None:
            return self.own_packed
        return self.own_packed + self.exact.packed_weights + 1

    @property
    def workspace(self) -> int:
        """Elements of scratch a call needs (the exact fallback reuses the same buffer)."""
        if self.exact is None:
            return self.own_workspace
        return max(self.own_workspace, self.exact.workspace)


def derive(workload: Workload, plan: Plan, target: Target) -> Derived:
    """The facts of one kernel (memoised: every stage asks)."""
    return _derive(workload, plan, target)


@functools.lru_cache(maxsize=4096)
def _derive(workload: Workload, plan: Plan, target: Target) -> Derived:
    spec = workload.spec
    blocks = -(-spec.cout_per_group // plan.oc_tile)
    if plan.algorithm in GATHER_ALGORITHMS:
        return Derived(None, None, blocks, math.prod(spec.weight_shape), 0)
    if plan.algorithm in WINOGRAD_ALGORITHMS:
        geo = winograd_geometry(workload, plan)
        points = geo.alpha ** spec.ndim
        padded = (workload.input_shape[0] * math.prod(geo.padded[:-1]) * spec.in_channels
                  * geo.channel_stride)
        exact_plan = exact_plan_for(plan)
        size = itemsize(workload.dtype)
        stride = _thread_stride(geo.scratch, size)
        buffers_end = padded + plan.threads * stride
        ranges = plan.threads if plan.threads > 1 and winograd_items(workload, geo) < 2 ** 31 else 0
        return Derived(None, geo, blocks, points * spec.out_channels * spec.cin_per_group,
                       buffers_end + _range_slots(ranges, size),
                       exact_plan, _derive(workload, exact_plan, target), thread_stride=stride,
                       ranges=ranges, ranges_at=buffers_end)
    low = lowering_for(workload, plan)
    per_group = sum(blocks * spec.cin_per_group * p.taps * plan.oc_tile for p in low.phases)
    if plan.algorithm == "depthwise":
        size = itemsize(workload.dtype)
        # the channels shared by ranges the threads steal from
        channels = workload.input_shape[0] * spec.in_channels
        ranges = plan.threads if plan.threads > 1 and channels < 2 ** 31 else 0
        slots = _range_slots(ranges, size)
        if depthwise_in_place(workload, plan, target, low):
            return Derived(low, None, blocks, spec.groups * per_group, slots, in_place=True,
                           ranges=ranges)
        # each thread pads one channel at a time
        stride = _thread_stride(low.padded_spatial, size)
        planes = plan.threads * stride if low.copy_input else 0
        return Derived(low, None, blocks, spec.groups * per_group, planes + slots,
                       thread_stride=stride, ranges=ranges, ranges_at=planes)
    size = itemsize(workload.dtype)
    padded = (workload.input_shape[0] * spec.in_channels * low.padded_spatial
              if low.copy_input else 0)
    copy_stride = (_thread_stride(padded, size)
                   if plan.threads > 1 and 0 < padded * size <= PRIVATE_COPY_BYTES else 0)
    copies = plan.threads * copy_stride if copy_stride else padded
    by_rows = bool(padded) and not copy_stride and _rows_partitioned(workload, plan, low, blocks)
    # a panel: one chunk's inputs for every (input channel, tap) of a group, per thread
    panel = (max(spec.cin_per_group * p.taps for p in low.phases) * plan.chunk
             if plan.loop_order == "panel" else 0)
    segment, pitch = stage_layout(workload, plan, low)
    per_thread = panel or plan.oc_tile * pitch
    stride = _thread_stride(per_thread, size) if per_thread else 0
    buffers_end = copies + plan.threads * stride
    ranges = len(low.phases) * plan.threads if _shares_by_ranges(workload, plan, low, blocks) else 0
    return Derived(low, None, blocks, spec.groups * per_group,
                   buffers_end + _range_slots(ranges, size),
                   panel=panel, stage_pitch=pitch, stage_segment=segment, thread_stride=stride,
                   copy_stride=copy_stride, buffers_at=copies, copy_by_rows=by_rows,
                   registers=registers(target), ranges=ranges, ranges_at=buffers_end,
                   embedded_broadcast=target.isa_row.embedded_broadcast)


def _range_slots(ranges: int, size: int) -> int:
    """Elements of the workspace the work-sharing slots take: one more slot than ``ranges``,
    so that the first can be aligned up to RANGE_BYTES (none without ranges)."""
    return -(-(ranges + 1) * RANGE_BYTES // size) if ranges else 0


def winograd_items(workload: Workload, geo: winograd.Geometry) -> int:
    """The items of a Winograd kernel's parallel loop: blocks of tiles, for every image,
    dilation sub-grid and tile row."""
    return (workload.input_shape[0] * math.prod(geo.dilation) * math.prod(geo.tiles[:-1])
            * geo.blocks)


def _shares_by_ranges(workload: Workload, plan: Plan, low: Lowering, blocks: int) -> bool:
    """Do the threads share a parallel loop's items through ranges they steal from
    (templates/cpu/_simd.c.j2)? On several threads, wherever a loop's items (images x
    groups x channel tiles x rows, or chunks) are sure to fit the 32-bit halves of a range
    word; beyond, schedule(static)."""
    if plan.threads < 2:
        return False
    most = max(p.outputs for p in low.phases)   # rows x chunks <= a phase's outputs
    return workload.input_shape[0] * workload.spec.groups * blocks * most < 2 ** 31


# One work-sharing slot (templates/cpu/_simd.c.j2, cg_range): a thread's range of a parallel
# loop's items, packed into one 64-bit word, alone on a pair of cache lines, which Intel's
# L2 prefetcher fetches together (one more slot is reserved to align the first). 64 and 128
# bytes measured alike; what cost was taking items one at a time (render.CLAIMS_PER_THREAD).
RANGE_BYTES = 128


def depthwise_in_place(workload: Workload, plan: Plan, target: Target, low: Lowering) -> bool:
    """Does a depthwise kernel read its zero-padded input where it lies, instead of padding
    each channel into a plane first? Where the ISA masks loads (AVX-512, AVX2: a masked-off
    lane neither reads nor faults) and a row's outputs read consecutive inputs. The copy
    was a third of mbv1_dw_112's time (0.065-0.073 ms, 0.045 without it; C harness)."""
    vector_bytes = plan.vector * itemsize(workload.dtype)
    return (low.copy_input and workload.spec.padding_mode == "zeros" and low.row_split == 1
            and masked_store(target.isa_row, target.cpu_features, vector_bytes) is not None
            and _in_place_products(workload, plan, low) <= MAX_UNROLLED_PRODUCTS)


# Every edge band and column has a tile function of its own, each unrolling every product
# of its tile: with large kernels they multiply (a 31 x 31 kernel padded by 15 on a 56 x 56
# map: 24 edge variants of 8 rows x 2 vectors x 961 taps, 167,000 lines of C). Past this
# many unrolled products (about what the padded kernel's own tiles unroll for that layer)
# the channel is padded into a plane instead.
MAX_UNROLLED_PRODUCTS = 60_000


def vector_inside(first: int, vector: int, width: int) -> bool:
    """Does an in-place depthwise load of ``vector`` lanes from column ``first`` lie wholly
    inside a row of ``width`` columns? Then it is a plain load; otherwise masked (render),
    which the compiler keeps in a register instead of folding it into the FMAs (cost)."""
    return first >= 0 and first + vector <= width


def _in_place_products(workload: Workload, plan: Plan, low: Lowering) -> int:
    """About how many products the in-place kernel's tile functions unroll: (edge bands at
    the top and bottom + the interior and a tail band) x (edge column tiles at the left and
    right + the middle and a tail tile) variants, each of row_tile x vectors x taps."""
    spec = workload.spec
    rows_edge, cols_edge = 0, 0
    if spec.ndim == 2:
        reach = spec.dilation[0] * (spec.kernel_size[0] - 1)
        top = -(-low.padded[0].before // spec.stride[0])
        bottom = -(-max(0, low.padded[0].size - workload.in_spatial[0] - low.padded[0].before)
                   // spec.stride[0]) + -(-reach // spec.stride[0])
        rows_edge = -(-top // plan.row_tile) + -(-bottom // plan.row_tile)
    reach_w = spec.dilation[-1] * (spec.kernel_size[-1] - 1)
    cols_edge = (-(-low.padded[-1].before // plan.pixel_tile)
                 + -(-(reach_w + plan.vector) // plan.pixel_tile))
    variants = (rows_edge + 2) * (cols_edge + 2)
    return variants * plan.row_tile * (plan.pixel_tile // plan.vector) * math.prod(spec.kernel_size)


def _rows_partitioned(workload: Workload, plan: Plan, low: Lowering, blocks: int) -> bool:
    """Do the threads split the output by rows (of the batch), so that each reads a band of
    the padded rows? Then each pads its own band: split by channels, a thread would read
    the channels the others padded from their caches (deconv_dense, 2 threads: 0.110 ms
    with the copy split by channels, 0.092 by rows; C harness). Splits by channel tile or
    group (oc_outer over several) and one-row inputs keep the channel split."""
    if plan.threads < 2:
        return False
    groups = workload.spec.groups
    rows_outer = (plan.loop_order == "pixel_outer"
                  or (plan.loop_order == "oc_outer" and groups * blocks == 1)
                  or (plan.loop_order == "panel" and groups == 1))
    padded_rows = workload.input_shape[0] * (low.padded_spatial // low.row_pitch)
    return rows_outer and padded_rows >= 2 * plan.threads


# A padded input up to this size is copied whole by every thread into a buffer of its own.
# Shared, each thread pads its share of the channels and then reads the others' from the
# other cores' caches, line by line: circular_1d (133 KiB padded) ran 0.078 ms on 2 threads
# that way, no faster than on 1, and 0.035 ms with a copy per thread (C harness). Every
# x86-64 L2 of the last decade holds 256 KiB; bigger copies would not stay in it.
PRIVATE_COPY_BYTES = 256 << 10


def stage_layout(workload: Workload, plan: Plan, low: Lowering) -> tuple[int, int]:
    """Staged rows: where a row's outputs are strided (the column phases of a transposed
    conv with stride S > 1 along its last axis), implicit_gemm stores every phase's tiles
    into a per-thread buffer holding one output row of the channel tile, and copies the
    finished row out whole, interleaving the phases. Stored straight into the output, a
    tile's strided single-float stores hit one L1 set per pixel when a channel of the
    output is a multiple of 4 KiB (hifigan_up: 8 KiB; 32 channels, 12 ways): 4.3 ms
    against 3.7 ms with the channels a few lines apart (2 threads).

    In the buffer a channel's row holds S segments, one per column phase (the phase whose
    outputs start at column r < S fills segment r), so a tile stores consecutive pixels:
    transposed in registers where the ISA allows, as the unstrided rows are. Interleaved
    in the buffer instead, each tile's single-float stores touched 7 lines a channel, and
    hifigan_up ran 4-6% slower (1 and 2 threads, C harness). Channels' rows are an odd
    number of cache lines apart.

    Returns (elements from one segment to the next, from one channel's row to the next),
    or (0, 0) where rows are not staged."""
    if (plan.algorithm != "implicit_gemm" or plan.loop_order == "panel"
            or all(p.axes[-1].out_step == 1 for p in low.phases)):
        return 0, 0
    step = low.phases[0].axes[-1].out_step
    width = workload.out_spatial[-1]
    for phase in low.phases:   # what the copy out relies on: phase r fills columns r + q * S
        inner = phase.axes[-1]
        if inner.out_step != step or not 0 <= inner.start < step or (
                inner.count != -(-(width - inner.start) // step)):
            raise RuntimeError(f"convgen internal error: column phase {inner} of a staged "
                               f"row of {width} outputs is not one residue modulo {step}")
    line = 64 // itemsize(workload.dtype)
    segment = -(-max(p.axes[-1].count for p in low.phases) // line) * line
    return segment, line_pitch(step * segment, workload.dtype)


def exact_plan_for(plan: Plan) -> Plan:
    """The exact kernel a Winograd kernel hands NaN/Inf operands to: direct_simd with the
    same register tile (legal wherever the Winograd plan is: same channel tile, a whole
    number of vectors, the same register count), so no planner is needed to find it."""
    return Plan("direct_simd", plan.oc_tile, plan.pixel_tile, plan.vector, plan.loop_order,
                plan.threads)


def winograd_geometry(workload: Workload, plan: Plan) -> winograd.Geometry:
    line = 64 // itemsize(workload.dtype)
    return winograd.geometry(workload, int(plan.algorithm[-1]), plan.pixel_tile, line,
                             plan.vector)


def lowering_for(workload: Workload, plan: Plan) -> Lowering:
    """The lowering a plan's kernel computes (direct_simd reads whole vectors past a row's
    end, and stores a strided row as its column phases; a panel copies whole runs of a
    row, so strided rows are stored as their column phases there too -- where the input is
    copied for its padding anyway: otherwise the panel gathers the strided rows straight
    from the input, as its packing copies every input a tile reads in any case. A copy
    just to split the rows copies every row and phase, read or not: pointwise_s2, a 1x1
    stride-2 layer reading a quarter of its input, 0.85 ms with it, 0.74 without.)"""
    if plan.loop_order == "panel":
        unsplit = lower(workload, 1)
        return lower(workload, 1, split_rows=True) if unsplit.copy_input else unsplit
    if plan.algorithm in ("direct_simd", "depthwise"):
        return lower(workload, plan.vector, split_rows=True)
    return lower(workload, 1)


PAGE_BYTES = 4096


def _thread_stride(elements: int, size: int) -> int:
    """Elements from one thread's private buffer (a depthwise plane, Winograd scratch, a
    panel) to the next: whole pages and one page between them, so no page holds two threads' data.
    (Depthwise planes packed back to back ran 1.3-1.4x slower on 2 threads, some row tiles
    up to 1.5x: a core's prefetcher running past its plane fetched the lines the other core
    was writing.)"""
    page = PAGE_BYTES // size
    return -(-elements // page) * page + page
