"""The planner's cost model: predicted seconds for one plan of one workload.

Analytical, per thread: vector FMAs and load slots per register tile (from the
machine's throughput, ````target.machine````), lanes wasted on tails, the operand each loop
order streams and from which cache level, the padded copy, thread balance and fixed
overheads. Calibrated against measurements on the development machine; its job is to
rank plans, and ``explain`` shows its numbers next to each candidate.
"""
from __future__ import annotations

import math

from ..core.dtypes import itemsize
from ..core.spec import Workload
from ..target import Target
from ..target.machine import Machine
from .derived import Derived, derive
from .layout import Lowering
from .plan import GATHER_ALGORITHMS, WINOGRAD_ALGORITHMS, Plan, native_vector

_PARALLEL_OVERHEAD_S = 4e-6      # one OpenMP fork/join with warm (spinning) workers
_CALL_OVERHEAD_S = 2e-6
_GATHER_MACS_PER_S = 2.5e9       # per thread: the scalar gather kernel's rate (depthwise: less)


def estimate(plan: Plan, workload: Workload, target: Target, machine: Machine) -> tuple[float, str]:
    if plan.algorithm in GATHER_ALGORITHMS:
        seconds = workload.macs / (_GATHER_MACS_PER_S * plan.threads) + _CALL_OVERHEAD_S
        if plan.threads > 1:
            seconds += _PARALLEL_OVERHEAD_S
        return seconds, (f"scalar gather: {workload.macs} MACs at {_GATHER_MACS_PER_S:.0e}/s "
                         f"per thread")
    width = native_vector(target, workload.dtype) / plan.vector   # 2: half-width vectors
    facts = derive(workload, plan, target)
    if plan.algorithm in WINOGRAD_ALGORITHMS:
        return _winograd_cost(plan, workload, facts, machine, width)
    if plan.algorithm == "depthwise":
        return _depthwise_cost(plan, workload, facts, machine, width)
    low = facts.lowering
    tile_cost = _gemm_phase_cost if plan.algorithm == "implicit_gemm" else _simd_phase_cost
    compute, items_total, useful, issued = 0.0, 0, 0, 0
    for phase in low.phases:
        items, item_cycles, lanes_used, lanes_issued = tile_cost(plan, workload, facts, phase,
                                                                 machine, width)
        compute += math.ceil(items / plan.threads) * item_cycles
        items_total += items
        useful, issued = useful + lanes_used, issued + lanes_issued
    stream = _stream_cycles(plan, workload, facts, machine) / plan.threads
    # prefetching hides part of the streaming behind the FMAs
    cycles = max(compute, stream) + 0.5 * min(compute, stream)
    seconds = (cycles / machine.clock_hz + _setup_seconds(plan, workload, low, machine)
               + _CALL_OVERHEAD_S)
    if plan.threads > 1:
        seconds += _PARALLEL_OVERHEAD_S
    why = (f"{items_total} parallel items over {plan.threads} threads, "
           f"{useful / max(issued, 1):.0%} of vector lanes useful, "
           f"compute {compute / machine.clock_hz * 1e3:.3f} ms/thread, "
           f"streaming {stream / machine.clock_hz * 1e3:.3f} ms/thread")
    return seconds, why


def _winograd_cost(plan: Plan, workload: Workload, facts: Derived, machine: Machine,
                   width: float):
    """Per block: input transforms, XI small GEMMs (register tiles as direct_simd's), output
    transforms with their scalar interleaving stores."""
    spec, size = workload.spec, itemsize(workload.dtype)
    geo = facts.winograd
    points, nv = geo.alpha ** spec.ndim, plan.pixel_tile // plan.vector
    fma = plan.oc_tile * nv / (machine.fma_per_cycle * width)
    loads = (plan.oc_tile + nv * machine.vector_load_cost / width) / machine.loads_per_cycle
    gemm = points * (spec.cout_per_group // plan.oc_tile) * (
        spec.cin_per_group * max(fma, loads) + plan.oc_tile * nv + 20)
    vector_ops = 6 * geo.alpha * points / width   # adds per transformed tile, roughly
    transforms = nv * (spec.cin_per_group + spec.cout_per_group) * vector_ops / 2
    stores = spec.cout_per_group * plan.pixel_tile * geo.m ** spec.ndim
    scratch = geo.scratch * size
    spill = 1.0 if scratch <= machine.l2_bytes // 2 else 1.3   # V and M out of L2
    block_cycles = spec.groups * (gemm + transforms + stores) * spill
    blocks = (workload.input_shape[0] * math.prod(geo.dilation) * math.prod(geo.tiles[:-1])
              * geo.blocks)
    cycles = math.ceil(blocks / plan.threads) * block_cycles
    copy = workload.input_shape[0] * spec.in_channels * math.prod(geo.padded) * size * 2
    seconds = (cycles / machine.clock_hz
               + copy / (machine.l3_bytes_per_cycle * machine.clock_hz) / plan.threads
               + _CALL_OVERHEAD_S + (_PARALLEL_OVERHEAD_S if plan.threads > 1 else 0))
    return seconds, (f"F({geo.m},3): {blocks} blocks of {plan.pixel_tile} tiles over "
                     f"{plan.threads} threads, {geo.scratch * size // 1024} KiB scratch per thread")


def _depthwise_cost(plan: Plan, workload: Workload, facts: Derived, machine: Machine,
                    width: float):
    """Per input channel: pad it into the thread's plane (from wherever the input lives),
    then per output channel its register tiles; every tap step of a tile issues
    row_tile * NV FMAs, unless fewer chains than the FMA latency make it wait."""
    spec, size = workload.spec, itemsize(workload.dtype)
    low = facts.lowering
    phase = low.phases[0]
    inner = phase.axes[-1]
    rows = phase.outputs // max(inner.count, 1)
    vectors = -(-inner.count // plan.vector)
    nv = plan.pixel_tile // plan.vector

    # the plane's rows are read once per output channel, from L1 if it fits; a tile's rows
    # share the input rows of their kernel rows (unit stride: row_tile + kh - 1 of them)
    plane_bytes = low.padded_spatial * size
    bandwidth = _level_bandwidth(plane_bytes, machine)
    kernel_rows = len(phase.axes[0].taps) if len(phase.axes) > 1 else 1

    def tile(row_count: int, vecs: int) -> float:
        chains = row_count * vecs
        shared = 1.0
        if len(phase.axes) > 1 and phase.axes[0].in_step == 1:
            shared = (row_count + kernel_rows - 1) / (row_count * kernel_rows)
        fma = chains / (machine.fma_per_cycle * width)
        loads = (chains * machine.vector_load_cost / width + 1) / machine.loads_per_cycle
        inputs = chains * shared * plan.vector * size / bandwidth
        return phase.taps * max(fma, loads, inputs, machine.fma_latency) + chains + 12

    full_cols, tail_cols = divmod(vectors, nv)
    full_rows, tail_rows = divmod(rows, plan.row_tile)

    def row_block(row_count: int) -> float:
        return full_cols * tile(row_count, nv) + (tile(row_count, tail_cols) if tail_cols else 0)

    plane = full_rows * row_block(plan.row_tile) + (row_block(tail_rows) if tail_rows else 0)
    in_plane = math.prod(workload.in_spatial) * size
    out_plane = math.prod(workload.out_spatial) * size
    items = workload.input_shape[0] * spec.in_channels
    moved = items * (in_plane + spec.cout_per_group * out_plane)
    stream = moved / _level_bandwidth(moved, machine)        # input in, output out
    # the copy: vector moves along a row, an element at a time into column phases
    in_elems = math.prod(workload.in_spatial)
    copy = (in_elems * (1.0 if low.row_split > 1 else 4 / plan.vector)
            + 10 * low.padded_spatial / low.row_pitch) if low.copy_input else 0
    per_channel = spec.cout_per_group * (plane + 40) + copy + 60
    compute = math.ceil(items / plan.threads) * per_channel
    stream_per_thread = stream / plan.threads
    cycles = max(compute, stream_per_thread) + 0.5 * min(compute, stream_per_thread)
    seconds = cycles / machine.clock_hz + _CALL_OVERHEAD_S
    if plan.threads > 1:
        seconds += _PARALLEL_OVERHEAD_S
    why = (f"{items} channels over {plan.threads} threads, {plan.row_tile}x{nv} vector "
           f"chains per tile, compute {compute / machine.clock_hz * 1e3:.3f} ms/thread, "
           f"streaming {stream_per_thread / machine.clock_hz * 1e3:.3f} ms/thread")
    return seconds, why


def _level_bandwidth(working_set: int, machine: Machine) -> float:
    """Bytes per cycle from the cache level a working set of this size lives in."""
    if working_set <= machine.l1d_bytes // 2:
        return machine.l1_bytes_per_cycle
    if working_set <= machine.l2_bytes // 2:
        return machine.l2_bytes_per_cycle
    if working_set <= machine.l3_bytes // 2:
        return machine.l3_bytes_per_cycle
    return machine.dram_bytes_per_s / machine.clock_hz


def _stream_cycles(plan: Plan, workload: Workload, facts: Derived, machine: Machine) -> float:
    """Cycles spent streaming the operand that the loop order does not keep in cache.

    oc_outer keeps a channel tile's weights and walks the whole input once per tile;
    pixel_outer keeps a row's input window and walks all the weights once per row.
    """
    spec, size = workload.spec, itemsize(workload.dtype)
    batch, low = workload.input_shape[0], facts.lowering
    inputs = batch * spec.in_channels * (low.padded_spatial if low.copy_input
                                         else math.prod(workload.in_spatial)) * size
    weights = facts.own_packed * size
    if plan.loop_order == "oc_outer":
        traffic, working_set = inputs * facts.oc_blocks, inputs
    else:
        rows = sum(p.outputs // max(p.axes[-1].count, 1) for p in low.phases) * batch
        traffic, working_set = weights * rows, weights
    if working_set <= machine.l2_bytes // 2:
        return (inputs + weights) / machine.l2_bytes_per_cycle
    if plan.loop_order == "pixel_outer" and working_set <= machine.l2_bytes * 3 // 4:
        # every row walks the same weights in the same order: the L2 keeps them
        return traffic / machine.l2_bytes_per_cycle
    return traffic / _level_bandwidth(working_set, machine)


def _gemm_phase_cost(plan: Plan, workload: Workload, facts: Derived, phase, machine: Machine,
                     width: float):
    """implicit_gemm: per K step, V weight vectors loaded, R pixels broadcast, R*V FMAs."""
    spec, size = workload.spec, itemsize(workload.dtype)
    v, r = plan.oc_tile // plan.vector, plan.pixel_tile
    k_steps = spec.cin_per_group * phase.taps
    block = plan.oc_tile * k_steps * size      # the weights one tile walks through
    bandwidth = _level_bandwidth(block, machine)

    def tile(pixels: int) -> float:
        fma = pixels * v / (machine.fma_per_cycle * width)
        loads = (pixels + v * machine.vector_load_cost / width) / machine.loads_per_cycle
        weights = v * plan.vector * size / bandwidth
        store = pixels * plan.oc_tile * 0.5
        return k_steps * max(fma, loads, weights) + store + 20

    inner = phase.axes[-1]
    full, tail = divmod(inner.count, r)
    row_cycles = full * tile(r) + (tile(tail) if tail else 0)
    rows = phase.outputs // max(inner.count, 1)
    items = workload.input_shape[0] * spec.groups * facts.oc_blocks * rows
    used = phase.outputs * spec.out_channels * workload.input_shape[0]
    issued = items * inner.count * plan.oc_tile
    return items, row_cycles, used, issued


def _simd_phase_cost(plan: Plan, workload: Workload, facts: Derived, phase, machine: Machine,
                     width: float):
    """direct_simd: per K step, NV input vectors loaded, OCB weights broadcast, OCB*NV FMAs."""
    spec, size = workload.spec, itemsize(workload.dtype)
    ocb, nv = plan.oc_tile, plan.pixel_tile // plan.vector
    k_steps = spec.cin_per_group * phase.taps
    inner = phase.axes[-1]
    rows_in_window = math.prod(len(a.taps) for a in phase.axes[:-1])
    window = spec.cin_per_group * rows_in_window * (plan.pixel_tile + len(inner.taps)) * size
    # The next work item reuses this window from cache if it reads the same rows: the next
    # row of the same channels (oc_outer), or the same rows for the next channel tile
    # (pixel_outer), unless that tile belongs to another group and reads other channels.
    reuse = window if plan.loop_order == "oc_outer" or spec.groups == 1 else window * spec.groups
    bandwidth = _level_bandwidth(reuse, machine)

    def tile(vectors: int) -> float:
        fma = ocb * vectors / (machine.fma_per_cycle * width)
        loads = (ocb + vectors * machine.vector_load_cost / width) / machine.loads_per_cycle
        inputs = vectors * plan.vector * size / bandwidth
        return k_steps * max(fma, loads, inputs) + ocb * vectors + 20

    vectors = -(-inner.count // plan.vector)
    full, tail = divmod(vectors, nv)
    row_cycles = full * tile(nv) + (tile(tail) if tail else 0)
    if plan.loop_order == "pixel_outer" and spec.groups > 1:
        # the next item is another group's channels: its window comes from L2, not L1, and
        # such short reads wait on latency (measured: depthwise rows ran 2x slower so)
        row_cycles += 4 * window / machine.l2_bytes_per_cycle
    rows = phase.outputs // max(inner.count, 1)
    items = workload.input_shape[0] * spec.groups * facts.oc_blocks * rows
    used = phase.outputs * spec.out_channels * workload.input_shape[0]
    issued = items * vectors * plan.vector * plan.oc_tile
    return items, row_cycles, used, issued


def _setup_seconds(plan: Plan, workload: Workload, low: Lowering, machine: Machine) -> float:
    """Copying the input into its padded layout (packed weights come ready), once per call."""
    if not low.copy_input:
        return 0.0
    size = itemsize(workload.dtype)
    moved = workload.input_shape[0] * workload.spec.in_channels * (
        low.padded_spatial + math.prod(workload.in_spatial)) * size
    per_cycle = _level_bandwidth(moved, machine) * min(plan.threads, 2)
    return moved / per_cycle / machine.clock_hz
