"""The planner's cost model: predicted seconds for one plan of one workload.

Analytical, per thread: vector FMAs and load slots per register tile (from the
machine's throughput, ````target.machine````), lanes wasted on tails, the operand each loop
order streams and from which cache level, the padded copy, thread balance and fixed
overheads. Calibrated against measurements on the development machine; its job is to
rank plans, and ``explain`` shows its numbers next to each candidate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.dtypes import itemsize
from ..core.spec import Workload
from ..target import Target
from ..target.machine import Machine
from .canonical import planned
from .derived import Derived, derive, vector_inside
from .memory import LEVELS, LINE, level_of, read_cycles
from .plan import (
    GATHER_ALGORITHMS,
    WINOGRAD_ALGORITHMS,
    Plan,
    direct_chains,
    native_vector,
    registers,
)

_CALL_OVERHEAD_S = 2e-6   # the same for every plan of a call: it orders nothing


def estimate(plan: Plan, workload: Workload, target: Target, machine: Machine) -> tuple[float, str]:
    workload = planned(workload)
    if plan.algorithm in GATHER_ALGORITHMS:
        rate = (machine.transposed_gather_macs_per_s if plan.algorithm == "transposed_gather"
                else machine.gather_macs_per_s)
        seconds = workload.macs / (rate * plan.threads) + _CALL_OVERHEAD_S
        if plan.threads > 1:
            seconds += machine.parallel_overhead_s
        return seconds, f"scalar gather: {workload.macs} MACs at {rate:.2g}/s per thread"
    width = native_vector(target, workload.dtype) / plan.vector   # 2: half-width vectors
    facts = derive(workload, plan, target)
    if plan.algorithm in WINOGRAD_ALGORITHMS:
        return _winograd_cost(plan, workload, facts, machine, width,
                              _transform_rate(target, machine))
    if plan.algorithm == "depthwise":
        return _depthwise_cost(plan, workload, facts, machine, width)
    cycles, items, lanes, core, memory = _gemm_like_cost(plan, workload, facts, machine, width)
    seconds = ((cycles + _staging_cycles(plan, workload, facts, machine)) / machine.clock_hz
               + _setup_seconds(plan, workload, facts, machine) + _CALL_OVERHEAD_S)
    if plan.threads > 1:
        seconds += machine.parallel_overhead_s
    why = (f"{items} parallel items over {plan.threads} threads, {lanes:.0%} of vector lanes "
           f"useful, in-core {core / machine.clock_hz * 1e3:.3f} ms/thread, reading "
           f"{memory / machine.clock_hz * 1e3:.3f} ms/thread")
    return seconds, why


def _transform_rate(target: Target, machine: Machine) -> float:
    """Vector operations a cycle Winograd's transforms issue: the measured rate of adds and
    FMAs mixed where the transforms fit the registers (AVX-512's 32); 2 on AVX2's 16, where
    they spill and the rough count below is calibrated (the seventeenth session's counted
    transforms moved three AVX2 layers to plans 12-24% slower; at Zen 5's 2.7 capped to
    AVX2, c64_35 moved to F(4,3) and ran 1.10x implicit GEMM's time)."""
    if registers(target) >= 32:
        return machine.fp_ops_per_cycle
    return min(machine.fp_ops_per_cycle, 2.0)


def _winograd_cost(plan: Plan, workload: Workload, facts: Derived, machine: Machine,
                   width: float, transform_rate: float):
    """Per block: input transforms, XI small GEMMs (register tiles as direct_simd's), output
    transforms with their scalar interleaving stores, at ``transform_rate`` operations a
    cycle."""
    spec, size = workload.spec, itemsize(workload.dtype)
    geo = facts.winograd
    points, nv = geo.alpha ** spec.ndim, plan.pixel_tile // plan.vector
    # the products of one point and one channel tile: a register tile of OC_TILE x NV over
    # the group's input channels, reading that point's transformed inputs (V) and weights
    fmas = plan.oc_tile * nv
    # priced as direct_simd's tile (OC_TILE broadcasts x NV vectors): on AVX2 a 12 x 8 tile
    # (a broadcast per FMA) ran inception_3x3 in 1.09 ms, a 3 x 24 one in 0.95, which FMAs,
    # load slots and latency alone priced alike
    step = _step_cycles(fmas, plan.oc_tile + nv * machine.vector_load_cost / width,
                        plan.oc_tile, fmas, machine, width)
    core = spec.cin_per_group * step + fmas + 20
    v_point = spec.cin_per_group * plan.pixel_tile * size
    weights = points * spec.out_channels * spec.cin_per_group * size
    memory = read_cycles(v_point, level_of(v_point, machine), machine, tile=True)
    # the weights stay in L2 beside V and M while the three fill at most 3/4 of it
    resident = weights + geo.scratch * size <= machine.l2_bytes * 3 // 4
    weight_level = level_of(weights, machine) if resident else "l3"
    weight_reads = read_cycles(spec.cin_per_group * plan.oc_tile * size, weight_level, machine,
                               tile=True)
    # Every block reads all the transformed weights once. From L1/L2 that overlaps the
    # FMAs. Streamed from L3 (with the thread's scratch, more than 3/4 of the L2) it stalls
    # them in proportion to how much of the L3's rate the stream needs: conv1d_dilated
    # (256 x 256 channels, 1.5 MiB of weights; 16 x 16 tiles need 70% of it) measured
    # 6.7 ms with blocks of 16 tiles and 3.8 with 4 x 64 (20%), where overlapped reads
    # predicted the same for both; vgg_conv1_2's 4 x 64 (10%) runs as fast as from L2.
    if weight_level in ("l3", "dram"):
        item = _overlap(core, memory) + _l3_stall(weight_reads, max(core, memory))
    else:
        item = _overlap(core, memory + weight_reads)
    gemm = points * (spec.cout_per_group // plan.oc_tile) * item
    vector_ops = 6 * geo.alpha * points / width   # adds per transformed tile, roughly
    # adds and FMAs by constants, at the rate the core issues them mixed: about 2 a cycle
    # expected where the adds share the FMA units (Intel's cores, not measured yet); AMD's
    # Zen 5 has add pipes of its own (3.2 a cycle measured): there inception_3x3's
    # transforms took 0.15 ms of 0.67 on 1 thread, against 0.38 priced at 2 a cycle, and
    # its 16 x 16 Winograd ran 0.8x implicit GEMM
    transforms = (nv * (spec.cin_per_group + spec.cout_per_group) * vector_ops
                  / transform_rate)
    stores = spec.cout_per_group * plan.pixel_tile * geo.m ** spec.ndim
    scratch = geo.scratch * size
    # V and M are written and read back once per block: from L2 while they fit in it
    # (vgg_conv1_2's 4 x 64 tiles, 1.1 MiB of them in a 2 MiB L2, run fastest)
    spill = 1.0 if scratch <= machine.l2_bytes * 3 // 4 else 1.3
    block_cycles = spec.groups * (gemm + transforms + stores) * spill
    blocks = (workload.input_shape[0] * math.prod(geo.dilation) * math.prod(geo.tiles[:-1])
              * geo.blocks)
    cycles = math.ceil(blocks / plan.threads) * block_cycles
    copy = workload.input_shape[0] * spec.in_channels * math.prod(geo.padded) * size * 2
    seconds = (cycles / machine.clock_hz
               + copy / (machine.l3_bytes_per_cycle * machine.clock_hz) / plan.threads
               + _CALL_OVERHEAD_S + (machine.parallel_overhead_s if plan.threads > 1 else 0))
    return seconds, (f"F({geo.m},3): {blocks} blocks of {plan.pixel_tile} tiles over "
                     f"{plan.threads} threads, {geo.scratch * size // 1024} KiB scratch per thread")


def _depthwise_cost(plan: Plan, workload: Workload, facts: Derived, machine: Machine,
                    width: float):
    """Per input channel: pad it into the thread's plane (from wherever the input lives;
    not in place, cpu.derived.depthwise_in_place), then per output channel its register
    tiles; every tap step of a tile issues row_tile * NV FMAs, unless fewer chains than
    the FMA latency make it wait."""
    spec, size = workload.spec, itemsize(workload.dtype)
    low = facts.lowering
    phase = low.phases[0]
    inner = phase.axes[-1]
    rows = phase.outputs // max(inner.count, 1)
    vectors = -(-inner.count // plan.vector)
    nv = plan.pixel_tile // plan.vector

    # the plane's rows (in place: the input channel's) are read once per output channel;
    # a tile's rows share the input rows of their kernel rows (unit stride: row_tile + kh -
    # 1 of them). A band of tiles across the row reads those rows, and the band below all
    # but row_tile of them again: its taps find them in L1 wherever a band's rows fit
    # there, whatever the whole plane's size (each row comes into L1 once, in the stream
    # below). Priced at the plane's level, mbv1_dw_112's 50 KiB plane (112-pixel rows, L2)
    # ranked 7-row tiles first, for the input rows they share, and they ran 10-14% behind
    # 3-row ones on 1 and 2 threads (Intel Xeon, AVX-512).
    plane_bytes = (math.prod(workload.in_spatial) if facts.in_place else low.padded_spatial) * size
    kernel_rows = len(phase.axes[0].taps) if len(phase.axes) > 1 else 1
    row_bytes = (workload.in_spatial[-1] if facts.in_place else low.row_pitch) * size
    band_bytes = min(plane_bytes, (plan.row_tile + kernel_rows - 1) * row_bytes)
    bandwidth = _level_bandwidth(band_bytes, machine)

    folded, splits = _load_shape(workload, inner, low.padded[-1].before, plan.vector,
                                  facts.in_place)

    def tile(row_count: int, vecs: int) -> float:
        chains = row_count * vecs
        shared = 1.0
        if len(phase.axes) > 1 and phase.axes[0].in_step == 1:
            shared = (row_count + kernel_rows - 1) / (row_count * kernel_rows)
        fma = chains / (machine.fma_per_cycle * width)
        # The source loads each input vector once for every row that reads it
        # (render._shared_loads), but gcc folds the plain loads back into the FMAs, one per
        # FMA (mbv1_dw_112: 138-144 of 144 FMAs per tile read memory, in every tile
        # shape); only the masked loads at a channel's edges stay shared in registers
        # (effnet_dw_5x5, 28-wide rows: 42-52 of 320-350). Counting every load as shared
        # ranked 8-row tiles first on mbv1_dw_112, measured 12-20% slower than 3-5-row
        # ones. The rows do share the lines they bring into L1 (inputs).
        per_fma = folded + (1.0 - folded) * shared
        loads = (chains * per_fma * splits * machine.vector_load_cost / width + 1) / \
            machine.loads_per_cycle
        inputs = chains * shared * plan.vector * size / bandwidth
        return phase.taps * max(fma, loads, inputs, chains / chain_rate(chains, machine)) \
            + chains + 12

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
    copied = low.copy_input and not facts.in_place
    copy = (in_elems * (1.0 if low.row_split > 1 else 4 / plan.vector)
            + 10 * low.padded_spatial / low.row_pitch) if copied else 0
    per_channel = spec.cout_per_group * (plane + 40) + copy + 60
    compute = math.ceil(items / plan.threads) * per_channel
    stream_per_thread = stream / plan.threads
    cycles = max(compute, stream_per_thread) + 0.5 * min(compute, stream_per_thread)
    seconds = cycles / machine.clock_hz + _CALL_OVERHEAD_S
    if plan.threads > 1:
        seconds += machine.parallel_overhead_s
    why = (f"{items} channels over {plan.threads} threads, {plan.row_tile}x{nv} vector "
           f"chains per tile, compute {compute / machine.clock_hz * 1e3:.3f} ms/thread, "
           f"streaming {stream_per_thread / machine.clock_hz * 1e3:.3f} ms/thread")
    return seconds, why


def _load_shape(workload: Workload, inner, pad: int, vector: int,
                in_place: bool) -> tuple[float, float]:
    """A depthwise row's tap loads: the fraction gcc folds into the FMAs (every load that is
    not masked; in place, those reaching past the channel's row ends are) and the L1
    accesses per load (two where it crosses a cache line: a column offset that is not a
    whole vector, or rows that are not whole vectors apart). ``inner.offsets`` index the
    padded row: ``pad`` of them lie before the input's first column."""
    row_in, row_out = workload.in_spatial[-1], inner.count
    loads = [(v * vector * inner.in_step + offset - pad) for v in range(-(-row_out // vector))
             for offset in inner.offsets]
    plain = [start for start in loads if not in_place or vector_inside(start, vector, row_in)]
    if row_in % vector:
        splits = 2.0
    else:
        splits = 2.0 - sum(1 for start in loads if start % vector == 0) / len(loads)
    return len(plain) / len(loads), splits


def _level_bandwidth(working_set: int, machine: Machine) -> float:
    """Bytes per cycle from the cache level a working set of this size lives in."""
    if working_set <= machine.l1d_bytes // 2:
        return machine.l1_bytes_per_cycle
    if working_set <= machine.l2_bytes // 2:
        return machine.l2_bytes_per_cycle
    if working_set <= machine.l3_bytes // 2:
        return machine.l3_bytes_per_cycle
    return machine.dram_bytes_per_s / machine.clock_hz


def _gemm_like_cost(plan: Plan, workload: Workload, facts: Derived, machine: Machine,
                    width: float) -> tuple[float, int, float, float, float]:
    """implicit_gemm and direct_simd: (cycles of the busiest thread, parallel items, the
    share of vector lanes that compute outputs, in-core and reading cycles per thread)."""
    spec, size = workload.spec, itemsize(workload.dtype)
    low, batch = facts.lowering, workload.input_shape[0]
    inputs = batch * spec.in_channels * (low.padded_spatial if low.copy_input
                                         else math.prod(workload.in_spatial)) * size
    # A tile walks the input channels of its group: far apart for the prefetchers, unless
    # the padded copy keeps a row of every channel together.
    channel_bytes = (low.row_pitch if low.rows_outside_channels else
                     low.padded_spatial) * size
    reads = _Reads(inputs, facts.own_packed * size,
                   spec.cin_per_group >= 8 and channel_bytes > 2048)
    busiest, items_total, used, issued, core_total, memory_total = 0.0, 0, 0, 0, 0.0, 0.0
    for phase in low.phases:
        k_steps = spec.cin_per_group * phase.taps
        count = phase.axes[-1].count
        rows = batch * spec.groups * (phase.outputs // max(count, 1))
        if plan.loop_order == "panel":
            chunks = -(-count // plan.chunk)
            items, core, memory, pack = rows * chunks, 0.0, 0.0, 0.0
            item_of = {}     # a full chunk's and the row's last (tail) chunk's cycles
            for kind, width_px, share in (("full", min(plan.chunk, count), chunks - 1), (
                    "tail", count - (chunks - 1) * plan.chunk, 1)):
                if share:
                    c, m, p = _panel_chunk(plan, workload, facts, machine, width, k_steps,
                                           width_px, rows * chunks, reads, phase)
                    item_of[kind] = p + facts.oc_blocks * _overlap(c, m)
                    core, memory, pack = (core + share * c / chunks, memory + share * m / chunks,
                                          pack + share * p / chunks)
            core, memory = facts.oc_blocks * core, pack + facts.oc_blocks * memory
            busiest += _shared_busiest(items, chunks, plan.threads, item_of.get("full", 0.0),
                                       item_of["tail"])
        else:
            tiles = _row_tiles(plan, count)
            items = rows * facts.oc_blocks
            core = sum(n * _tile_core(plan, machine, width, k_steps, px,
                                      _vector_store(plan, workload, facts, width),
                                      facts, phase.taps)
                       for n, px in tiles)
            streamed, stalled = _row_memory(plan, workload, facts, machine, phase, k_steps,
                                            tiles, reads)
            memory = streamed + stalled
            busiest += math.ceil(items / plan.threads) * (_overlap(core, streamed) + stalled)
        core_total += items * core / plan.threads
        memory_total += items * memory / plan.threads
        items_total += items
        used += phase.outputs * spec.out_channels * batch
        issued += (rows * facts.oc_blocks * plan.oc_tile
                   * sum(n * px for n, px in _row_tiles(plan, count, padded=True)))
    # A thread's own copy, or the band of rows it padded itself, is in its own caches.
    if not facts.copy_stride and not facts.copy_by_rows:
        phase = low.phases[0]
        busiest += _first_touch(plan, reads, batch, spec.groups, facts.oc_blocks,
                                phase.outputs // max(phase.axes[-1].count, 1), machine)
    return busiest, items_total, used / max(issued, 1), core_total, memory_total


def _shared_busiest(items: int, per_row: int, threads: int, full: float, tail: float) -> float:
    """Cycles of the busiest thread of a panel order's loop: ``items`` chunks, ``per_row`` to
    a row, the last of each row a tail of ``tail`` cycles (the others ``full``), split as
    the kernel splits them (templates/cpu/_sharing.c.j2): thread t's range ends at item
    items * (t + 1) / threads, so the odd items go to the last threads, which hold the
    tails of a single row. Stealing from another's range evens out threads running at
    different speeds, which no model prices; at the same speed each finishes its own.
    A split into few items stays lopsided: pointwise_256_128 on 2 threads, one row of 784
    pixels in chunks of 768, gives one thread 768 pixels and the other 16 (it ran at 0.45
    ms against 0.25 for chunks of 14). Priced as OpenMP's static schedule splits them (the
    first threads one more item), as before the kernels shared by ranges, 17 chunks of 48
    pixels cost the busiest thread 9 full chunks where it does 8 and the tail: a plan that
    ran 0.89x the chosen one's time (Intel Xeon, 2 threads, head to head) was priced 7%
    dearer."""
    busiest = 0.0
    for thread in range(threads):
        start, end = items * thread // threads, items * (thread + 1) // threads
        tails = end // per_row - start // per_row    # items i with i % per_row == per_row - 1
        busiest = max(busiest, (end - start - tails) * full + tails * tail)
    return busiest


def _first_touch(plan: Plan, reads: _Reads, batch: int, groups: int, oc_blocks: int,
                 rows: int, machine: Machine) -> float:
    """Cycles a thread spends fetching its share of an input that fits its own L2 into it
    (the padded copy was written by every thread, the input itself by the caller): the whole
    input of the images and groups its items cover (oc_outer: a thread owns channel tiles
    over all their rows), its share of the rows otherwise, but never less than the one row
    (of the groups its tiles cover) where it has fewer pixel_outer items than a row has
    (pointwise_256_128 flattened to one row of 784 pixels, 16 channel tiles on 2 threads:
    each thread reads the whole input for its 8). ``rows``: output rows of an image.
    (alexnet_conv1, 2 channel tiles on 2 threads: pixel_outer 0.50 ms against 0.54 for
    oc_outer, both tiles alike.)"""
    if level_of(reads.inputs, machine) not in ("l1", "l2"):
        return 0.0       # the reads of every item already come from L3 or DRAM
    share = 1.0 / plan.threads
    if plan.loop_order == "oc_outer":     # every row of the images and groups it covers
        share = max(share, 1.0 / max(batch * groups, 1))   # a batch of 0: no input
    elif plan.loop_order == "pixel_outer":
        # a thread's items are a run of (row, group, channel tile), a row's groups together
        row_items, units = groups * oc_blocks, max(batch * rows, 1)
        own = -(-units * row_items // plan.threads)
        if own < row_items:
            share = max(share, min(1.0, -(-own // oc_blocks) / groups) / units)
    return reads.inputs * share / machine.l3_bytes_per_cycle


@dataclass(frozen=True)
class _Reads:
    inputs: int        # bytes of the (padded) input
    weights: int       # bytes of the packed weights
    scattered: bool    # a tile's walk over the input channels defeats the prefetchers


def chain_rate(chains: int, machine: Machine) -> float:
    """Full-width FMAs per cycle a tile of ``chains`` independent accumulators issues, its
    latency bound: the measured rate of that many chains (the best of it and fewer: one
    more accumulator never has to slow a tile), full past the table (as many chains as
    registers leave); unmeasured, ``chains`` over the latency. Latency x throughput chains
    are not enough: 8 chains of latency 4 on two FMA units issued 1.6 per cycle (Intel
    Xeon, AVX2 and AVX-512 alike), 10 issued 2. AVX2's 4 x 16 direct_simd tile (8
    accumulators) ran pointwise_256_128 in 0.38-0.41 ms where a 16 x 6 implicit_gemm tile
    (12) took 0.34, both predicted 0.32."""
    rates = machine.fma_chain_rates
    if not rates:
        return min(machine.fma_per_cycle, chains / machine.fma_latency)
    # the table's shape, scaled to the FMA rate (its own best is that rate, measured again)
    share = max(rates[:max(chains, 1)]) / max(rates)
    return machine.fma_per_cycle * share


def _overlap(core: float, memory: float) -> float:
    """Prefetched reads overlap the FMAs, nearly perfectly."""
    return max(core, memory) + 0.1 * min(core, memory)


def _l3_stall(reads: float, busy: float) -> float:
    """Cycles a stream from L3 (or DRAM) stalls the work it feeds beyond overlapping it:
    its read time in proportion to the share of the level's rate it needs (``reads`` over
    the ``busy`` cycles it is spread across). The prefetchers hide a stream needing a small
    share; one needing most of it waits on nearly every line."""
    return reads * min(1.0, reads / max(busy, 1.0))


def _broadcasts_weights(plan: Plan) -> bool:
    """direct_simd broadcasts its weights and loads the inputs as vectors; implicit_gemm
    the other way round. Broadcast operands arrive from L2 at the measured tile rate, whole
    vectors at the L2's read rate."""
    return plan.algorithm != "implicit_gemm"


def _vector_store(plan: Plan, workload: Workload, facts: Derived, width: float) -> bool:
    """Does implicit_gemm store its tiles transposed in registers (cpu/render.py)? Where a
    tile's outputs are consecutive: a row's, or a staged phase's (cpu.derived.stage_layout)."""
    unstrided = facts.lowering.phases[0].axes[-1].out_step == 1 or bool(facts.stage_pitch)
    return (plan.algorithm == "implicit_gemm" and width == 1 and workload.dtype == "float32"
            and plan.vector == 16 and unstrided)


def _row_tiles(plan: Plan, count: int, padded: bool = False) -> list[tuple[int, int]]:
    """(how many, outputs each) register tiles of a row of ``count`` outputs; ``padded``
    counts the lanes a tile computes whether or not they are stored."""
    if plan.algorithm == "implicit_gemm":
        full, tail = divmod(count, plan.pixel_tile)
        return [(full, plan.pixel_tile)] + ([(1, tail)] if tail else [])
    vectors = -(-count // plan.vector)
    nv = plan.pixel_tile // plan.vector
    full, tail = divmod(vectors, nv)
    last = tail * plan.vector if padded else count - full * nv * plan.vector
    return [(full, nv * plan.vector)] + ([(1, last)] if tail else [])


def _tile_core(plan: Plan, machine: Machine, width: float, k_steps: int, pixels: int,
               vector_store: bool, facts: Derived, taps: int) -> float:
    """In-core cycles of one register tile: per step of the reduction its FMAs, its load
    slots or its FMA latency (too few accumulator chains), whichever binds; then adding up
    the blocks of the blocked accumulation, the store, and a fixed cost. ``vector_store``:
    implicit_gemm's tile is stored transposed in registers (render's transpose_store);
    ``facts``: the target's vector registers and broadcasts; ``taps``: of the phase (a
    direct_simd tile's accumulator sets take turns over them: one tap, one set)."""
    if plan.algorithm == "implicit_gemm":
        vectors = plan.oc_tile // plan.vector
        fmas = accumulators = pixels * vectors
        loads = pixels + vectors * machine.vector_load_cost / width
        if vector_store:   # 16 x 16 blocks transposed in registers: 180 cycles a block,
            # measured on pointwise_256_128's 32 x 14 panel with its stores edited out
            stores = vectors * -(-pixels // 16) * 180.0
        else:                                  # one scalar store each
            stores = pixels * plan.oc_tile * 1.0
    else:
        vectors = -(-pixels // plan.vector)
        fmas = plan.oc_tile * vectors
        chains = direct_chains(plan.oc_tile, vectors, facts.registers)   # for small tiles
        accumulators = fmas * (chains if taps >= chains else 1)
        loads = plan.oc_tile + vectors * machine.vector_load_cost / width
        stores = fmas * 1.0
    broadcasts = pixels if plan.algorithm == "implicit_gemm" else plan.oc_tile
    # implicit_gemm's broadcast inputs, folded into AVX-512's FMAs, run at the FMA rate
    step = _step_cycles(fmas, loads, broadcasts, accumulators, machine, width,
                        dear_broadcasts=(_broadcasts_weights(plan)
                                         or not facts.embedded_broadcast))
    blocks = -(-k_steps // 256)
    return k_steps * step + (blocks - 1) * fmas * 3 + stores + 30


def _step_cycles(fmas: int, loads: float, broadcasts: int, accumulators: int,
                 machine: Machine, width: float, dear_broadcasts: bool = True) -> float:
    """Cycles of one reduction step of a register tile of ``fmas`` FMAs (a broadcast
    operand times a vector one): its FMAs, its load slots, its broadcast FMAs or the FMA
    latency of its ``accumulators`` chains, whichever binds. ``dear_broadcasts``: a
    broadcast per FMA slows the tile below its FMA rate (see below)."""
    broadcast_rate = machine.broadcast_fma_per_cycle or machine.fma_per_cycle
    step = max(fmas / (machine.fma_per_cycle * width), loads / machine.loads_per_cycle,
               min(broadcasts, fmas) / (broadcast_rate * width),
               fmas / chain_rate(accumulators, machine))
    if (dear_broadcasts and broadcasts >= fmas
            and machine.fma_per_cycle > 0.5 * machine.loads_per_cycle):
        # a broadcast per FMA on a core whose FMAs outrun half its load ports: measured
        # 10-20% below the FMA rate once the operands come from L2 (AVX-512, two FMA units,
        # three loads), where half as many broadcasts per FMA held 99%. A core of one FMA
        # per cycle has the ports to spare. Not where the broadcasts are inputs folded into
        # AVX-512's FMAs (implicit_gemm: the row's taps and channel tiles read them again
        # from L1). Intel Xeon, 2 and 1 threads, head to head: one weight vector x 16-30
        # pixels against 32 channels x 10-14: upconv_4x4 16 x 16 0.87x and 0.95x of 32 x
        # 10's time, deconv_outpad 16 x 28 0.95x and 1.00x, hifigan_up 16 x 30 0.99x and
        # 0.98x. Where the broadcasts are weights streaming past, the factor holds: direct_
        # simd's 16 x 16 ran pointwise_256_128 1.09x slower than its 8 x 48 (1 thread) and
        # than the chosen panel (2 threads); and on AVX2 (a broadcast an instruction of its
        # own) implicit_gemm's 8 x 13 ran hifigan_up 1.25x slower than 16 x 6.
        step *= 1.15
    return step


def _row_memory(plan: Plan, workload: Workload, facts: Derived, machine: Machine, phase,
                k_steps: int, tiles, reads: _Reads) -> float:
    """Reading cycles of one (row, channel tile) item of the oc_outer and pixel_outer orders:
    (streamed, stalled). Streamed reads overlap the FMAs; stalled ones do not: inputs a
    tile reads a line per input channel, far apart (no prefetcher follows), from L3 or
    DRAM, wait for each miss (conv1d_dilated, 256 channels of 16 KiB rows, 4 MiB: 9.4 ms
    measured at 2 threads against 4.7 in-core and 4.4 reading, overlapped: 5.2 predicted)."""
    spec, size = workload.spec, itemsize(workload.dtype)
    rows = workload.input_shape[0] * sum(p.outputs // max(p.axes[-1].count, 1)
                                         for p in facts.lowering.phases)
    # the input rows one output row reads: its share of the input, times the kernel rows
    row_inputs = reads.inputs / spec.groups / max(rows, 1) * max(
        1, math.prod(len(a.taps) for a in phase.axes[:-1]))
    tile_weights = k_steps * plan.oc_tile * size
    tiles_in_row = sum(n for n, _ in tiles)
    input_level = level_of(reads.inputs, machine)
    stalls = reads.scattered and input_level in ("l3", "dram")
    first = read_cycles(row_inputs, input_level, machine, reads.scattered)
    if plan.loop_order == "oc_outer":
        # a channel tile's weights stay while every row's inputs stream past, once per tile
        weights = tiles_in_row * read_cycles(tile_weights, level_of(tile_weights, machine),
                                             machine, tile=_broadcasts_weights(plan))
        return (weights, first) if stalls else (weights + first, 0.0)
    # pixel_outer: a row's inputs stay (where they fit) while every channel tile's weights
    # stream past, once per row
    row_level = level_of(row_inputs, machine)
    again = read_cycles(row_inputs, row_level, machine, reads.scattered)
    weights = tiles_in_row * read_cycles(tile_weights, level_of(reads.weights, machine), machine,
                                         tile=_broadcasts_weights(plan))
    inputs = (first + again * (facts.oc_blocks - 1)) / facts.oc_blocks
    if stalls and row_level in ("l3", "dram"):
        return weights, inputs
    if stalls:
        return weights + again * (facts.oc_blocks - 1) / facts.oc_blocks, first / facts.oc_blocks
    return weights + inputs, 0.0


def _panel_chunk(plan: Plan, workload: Workload, facts: Derived, machine: Machine,
                 width: float, k_steps: int, pixels: int, items: int, reads: _Reads, phase):
    """One chunk of the panel order: (in-core and reading cycles of one channel tile over
    it, cycles packing it). The packing reads the chunk's inputs from wherever the input
    lives and writes the panel; every channel tile then reads the panel from L1/L2 and
    its weights from wherever all the weights live."""
    size = itemsize(workload.dtype)
    tiles = _row_tiles(plan, pixels)
    panel = k_steps * plan.chunk * size
    lines = _chunk_lines(workload, phase, pixels)
    source = level_of(reads.inputs, machine)
    fetched = 0.0
    if plan.prefetch:
        # one prefetch a line of the next chunk's inputs and outputs, each about a cycle
        # (pointwise_256_128, its data in L2: 1.03x the time with them, 1,400 a chunk)
        out_lines = workload.spec.cout_per_group * (
            -(-pixels * phase.axes[-1].out_step * size // LINE) + 1)
        fetched = lines + out_lines
        if _prefetch_fits(panel, (lines + out_lines) * LINE, reads, machine):
            source = min(source, "l2", key=LEVELS.index)
    pack = (panel / machine.l2_bytes_per_cycle + fetched
            + read_cycles(min(reads.inputs / max(items, 1), lines * LINE),
                          source, machine, reads.scattered))
    store = _vector_store(plan, workload, facts, width)
    core = sum(n * _tile_core(plan, machine, width, k_steps, px, store, facts, phase.taps)
               for n, px in tiles)
    per_tile = (read_cycles(k_steps * plan.pixel_tile * size, level_of(panel, machine), machine,
                            tile=not _broadcasts_weights(plan))
                + read_cycles(k_steps * plan.oc_tile * size, level_of(reads.weights, machine),
                              machine, tile=_broadcasts_weights(plan)))
    return core, sum(n for n, _ in tiles) * per_tile, pack


def _prefetch_fits(panel: int, ahead: int, reads: _Reads, machine: Machine) -> bool:
    """Whether the next chunk's lines (``ahead`` bytes) arrive in L2 without evicting what
    every chunk reads there: the packed weights and this chunk's panel, with the next
    chunk's lines twice over (the current chunk's are still being read). Measured on
    the 260 MiB Intel Xeon (2 MiB L2), head to head: pointwise_s2 (0.5 MiB of weights, 160
    KiB a chunk ahead) 0.96-0.99x the time warm, 0.81-0.89x after another layer; conv1d_k7
    (1.8 MiB of weights) and conv1d_512_s2 (3 MiB) 1.01-1.03x on 2 threads, the prefetched
    lines evicting the weights."""
    return reads.weights + panel + 2 * ahead <= machine.l2_bytes // 2


def _chunk_lines(workload: Workload, phase, pixels: int) -> int:
    """Cache lines packing a chunk of ``pixels`` outputs of a row touches: every input channel
    of the group, the input rows of its kernel rows, along each the span the chunk's taps
    cover (a 1x1 stride-2 layer reads every other row: a share of the input is not its
    reads)."""
    inner = phase.axes[-1]
    offsets = inner.offsets or (0,)
    span = (pixels - 1) * inner.in_step + max(offsets) - min(offsets) + 1
    rows = math.prod(len(a.taps) for a in phase.axes[:-1])
    return workload.spec.cin_per_group * rows * (-(-span * itemsize(workload.dtype) // LINE) + 1)


def _staging_cycles(plan: Plan, workload: Workload, facts: Derived, machine: Machine) -> float:
    """Staged rows (cpu.derived.stage_layout): every output row of a channel tile copied
    once from the thread's staging buffer (L2) into the output, per thread."""
    if not facts.stage_pitch:
        return 0.0
    spec = workload.spec
    elements = (workload.input_shape[0] * spec.groups * facts.oc_blocks * plan.oc_tile
                * math.prod(workload.out_spatial))
    moved = 2 * elements * itemsize(workload.dtype)
    return moved / machine.l2_bytes_per_cycle / plan.threads


def _setup_seconds(plan: Plan, workload: Workload, facts: Derived, machine: Machine) -> float:
    """Copying the input into its padded layout (packed weights come ready), once per call:
    shared among the threads, or whole by each thread into a copy of its own."""
    low = facts.lowering
    if not low.copy_input:
        return 0.0
    size = itemsize(workload.dtype)
    moved = workload.input_shape[0] * workload.spec.in_channels * (
        low.padded_spatial + math.prod(workload.in_spatial)) * size
    sharing = 1 if facts.copy_stride else min(plan.threads, 2)
    per_cycle = _level_bandwidth(moved, machine) * sharing
    return moved / per_cycle / machine.clock_hz
