"""Render: (workload, plan, target, prefix) -> C sources, through the Jinja2 templates.

Python decides; the templates only loop over the data built here (from ``cpu.derived``,
computed once). Every exported symbol starts with the kernel's prefix:
``<prefix>_run``, ``<prefix>_pack``, ``<prefix>_workspace_bytes`` and
``<prefix>_packed_weights_bytes``. A Winograd kernel comes with a second source, the exact
kernel it hands non-finite operands to (``<prefix>_exact_*``), so that a standalone build
behaves as the Python one.
"""
from __future__ import annotations

import math

from ..core import epilogue
from ..core.codegen import header_info, render_template
from ..core.dtypes import ctype, itemsize
from ..core.spec import AXIS_NAMES, Workload
from ..target import Target
from ..target.isa import masked_store
from . import winograd
from .canonical import planned
from .derived import RANGE_BYTES, Derived, derive, vector_inside, winograd_items
from .layout import Lowering
from .memory import LINE
from .plan import GATHER_ALGORITHMS, WINOGRAD_ALGORITHMS, Plan, direct_chains

TEMPLATES = {"direct": "cpu/direct.c.j2", "transposed_gather": "cpu/transposed_gather.c.j2",
             "implicit_gemm": "cpu/implicit_gemm.c.j2", "direct_simd": "cpu/direct_simd.c.j2",
             "depthwise": "cpu/depthwise.c.j2",
             "winograd2": "cpu/winograd.c.j2", "winograd4": "cpu/winograd.c.j2"}


def _common(workload: Workload, plan: Plan, target: Target, facts: Derived, prefix: str) -> dict:
    spec = workload.spec
    size = itemsize(workload.dtype)
    steps = workload.epilogue
    return {
        "info": {**header_info(workload, plan, target), "prefix": prefix},
        "prefix": prefix,
        # the fused epilogue (its C is in templates/cpu/_prelude.c.j2)
        "epilogue": [{"op": s.op, "args": [_c_number(a) for a in s.args]} for s in steps],
        "epilogue_text": epilogue.describe(steps),
        "residual": epilogue.has_residual(steps),
        "epilogue_uses_math": epilogue.uses_math(steps),
        # scalar code unless the algorithm's context says otherwise
        "vector": 1, "vector_bytes": size, "masked_store": None,
        "workspace_bytes": facts.workspace * size,
        "packed_bytes": facts.packed_weights * size,
        "ctype": ctype(workload.dtype),
        "batch": workload.input_shape[0],
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "groups": spec.groups,
        "cin_per_group": spec.cin_per_group,
        "cout_per_group": spec.cout_per_group,
        "kernel_taps": math.prod(spec.kernel_size),
        "weight_elems": math.prod(spec.weight_shape),
        "in_spatial": math.prod(workload.in_spatial),
        "out_spatial": math.prod(workload.out_spatial),
        "has_bias": spec.bias,
        "transposed": spec.transposed,
        "padding_mode": spec.padding_mode,
        "threads": plan.threads,
    }


def _k_block(workload: Workload, plan: Plan, low) -> int:
    """Input channels per accumulation block: partial sums of about 256 products each are
    added up at the end (float32 error grows with the length of one chain of additions:
    blocks keep long reductions within about twice torch's error); 0: one block."""
    taps = max(p.taps for p in low.phases)
    block = max(1, 256 // max(taps, 1))
    return block if block < workload.spec.cin_per_group else 0


def _weights_in_registers(plan: Plan, facts: Derived, target: Target, vector_bytes: int) -> bool:
    """Does implicit_gemm pin a step's weight vectors in registers (an empty asm on them)?
    On 16 registers (AVX2, no embedded broadcast) a tile that fills them, 16 x 6's 12
    accumulators, 2 weight vectors and a broadcast, is laid out by gcc 12 with the weights
    folded into every FMA as a memory operand: 18 loads a step instead of 8 (AMD EPYC,
    Zen 3: hifigan_up 19.4 ms at one thread against 14.4 for the 16 x 5 tile gcc leaves
    alone). On 32 registers the weights stay in registers unasked. Only where the ISA has
    registers as wide as the vectors: a portable twin (an AVX2 or AVX-512 target's layout,
    no ISA flags) keeps its vectors in memory, and "+x" cannot hold them."""
    return (plan.algorithm == "implicit_gemm" and plan.vector > 1 and facts.registers <= 16
            and vector_bytes <= target.isa_row.vector_bytes)


def _reduction_unroll(plan: Plan, low: Lowering) -> int:
    """Steps of the reduction per iteration of a register tile's innermost loop, a hint to
    the compiler. A step's FMAs take their broadcasts and loads from their own ports, but
    the loop's counter, pointers and branch can take an FMA port's slot. Measured (C
    harness, Intel Xeon, two FMA units), no layer of the suites slower:

    - direct_simd, 4 steps (input channels, or taps where there are several): an 8 x 48
      tile (24 FMAs a step) went from 84% to 95% of one core's FMA peak
      (pointwise_256_128); conv1d_k7 and conv1d_512_s2 3.5% faster.
    - implicit_gemm, its taps whole up to 9 (each tap also loads its offset and moves
      its pointer): 3x3 layers 2-3.6% faster (dilated_2 at 99% of peak), inception_1x7
      5%; unrolled 4 channel steps instead, nothing changed. Longer kernels (27, 121
      taps) are unrolled 9 at a time: within 1%."""
    if plan.vector == 1:
        return 1
    if plan.algorithm == "direct_simd":
        return 4
    if plan.algorithm == "implicit_gemm":
        return max(1, min(9, max(p.taps for p in low.phases)))
    return 1


def _c_number(value):
    """A float as a C literal that round-trips (repr), or None."""
    return None if value is None else repr(float(value))


def _gather_context(workload: Workload, plan: Plan) -> dict:
    spec = workload.spec
    names = AXIS_NAMES[spec.ndim]
    axes = [
        {"name": name, "NAME": name.upper(), "in_size": workload.in_spatial[i],
         "out_size": workload.out_spatial[i], "kernel": spec.kernel_size[i],
         "stride": spec.stride[i], "dilation": spec.dilation[i], "pad": spec.pad_before[i]}
        for i, name in enumerate(names)
    ]
    extents = {"n": workload.input_shape[0], "oc_block": spec.out_channels // plan.oc_tile}
    extents.update(zip(names, workload.out_spatial))
    variables = {"n": "n", "oc_block": "ocb", "d": "od", "h": "oh", "w": "ow"}
    order = (("n", "oc_block", *names) if plan.loop_order == "oc_outer"
             else ("n", *names, "oc_block"))
    return {"axes": axes, "oc_block": plan.oc_tile, "parallel_loops": 2,
            "gather_k_block": max(1, 256 // math.prod(spec.kernel_size)),
            "loops": [{"var": variables[a], "extent": extents[a]} for a in order]}


def _simd_context(workload: Workload, plan: Plan, target: Target, facts: Derived) -> dict:
    spec = workload.spec
    low = facts.lowering
    names = AXIS_NAMES[spec.ndim]
    axes = _simd_axes(workload, low, names)
    phases, tiles = _phases(workload, plan, facts, axes)
    phases = _with_loops(workload, plan, facts, phases)
    vector_bytes = plan.vector * itemsize(workload.dtype)
    return {
        "vector": plan.vector,
        "vector_bytes": vector_bytes,
        "masked_store": masked_store(target.isa_row, target.cpu_features, vector_bytes),
        "oc_tile": plan.oc_tile,
        "oc_blocks": facts.oc_blocks,
        "padded_spatial": low.padded_spatial,
        "row_pitch": low.row_pitch,
        "rows_outside_channels": low.rows_outside_channels,
        "row_split": low.row_split, "phase_pitch": low.phase_pitch,
        "split_copy": _split_copy(low, axes[-1]),
        "channel_stride": _layout_stride(workload, low, "channel"),
        "batch_stride": spec.in_channels * low.padded_spatial,
        "pack_group": facts.own_packed // spec.groups,
        "copy_input": low.copy_input,
        "axes": axes,
        "inner": axes[-1],
        "outer_axes": axes[:-1],
        "in_step_row": low.phases[0].axes[-1].in_step,
        "out_step_row": low.phases[0].axes[-1].out_step,
        "phases": phases,
        "tiles": tiles,
        "loop_order": plan.loop_order,
        "chunk": plan.chunk, "pixel_tile": plan.pixel_tile, "prefetch_next": plan.prefetch,
        "stage_pitch": facts.stage_pitch, "stage_segment": facts.stage_segment,
        "thread_stride": facts.thread_stride,
        "copy_stride": facts.copy_stride, "buffers_at": facts.buffers_at,
        "copy_by_rows": facts.copy_by_rows,
        # several threads share each parallel loop's items through ranges they steal from
        "ranges": facts.ranges, "ranges_at": facts.ranges_at, "range_bytes": RANGE_BYTES,
        # staged rows: the parallel units are these groups (no panel then)
        "phase_groups": (_with_loops(workload, plan, facts, _phase_groups(low, phases))
                         if facts.stage_pitch
                         else _phase_groups(low, phases)),
        # implicit_gemm stores 16 x 16 blocks transposed in registers where a tile's outputs
        # are consecutive (a row's, or a staged phase's) and the ISA has 512-bit float
        # shuffles and masked stores
        "transpose_store": (plan.algorithm == "implicit_gemm" and vector_bytes == 64
                            and workload.dtype == "float32"
                            and (low.phases[0].axes[-1].out_step == 1 or bool(facts.stage_pitch))
                            and masked_store(target.isa_row, target.cpu_features, 64) == "avx512"),
        "k_block": _k_block(workload, plan, low),
        "weights_in_registers": _weights_in_registers(plan, facts, target, vector_bytes),
        "reduction_unroll": _reduction_unroll(plan, low),
        "weight_prefetch": any(ph["pf_block_lines"] for ph in phases),
        "line_bytes": LINE,   # what one prefetch instruction fetches
        # depthwise unrolls its taps with constant offsets: no table of them
        "tap_table": plan.algorithm != "depthwise",
        **(_depthwise_rows(workload, plan, low, axes, phases[0]["taps"])
           if plan.algorithm == "depthwise" else {}),
        # depthwise: the channels a thread takes at once, shared by ranges
        "channel_claim": claim(workload.input_shape[0] * spec.in_channels, plan.threads),
        "in_place": facts.in_place,
        **(_in_place(workload, plan, low, phases[0]["runs"], tiles) if facts.in_place
           else {"bands": [], "in_place_tiles": [], "row_step_in": 0}),
    }


def _split_copy(low: Lowering, inner: dict) -> list[dict]:
    """A row stored as column phases: for each phase, the indices i within it whose padded
    column i * row_split + phase is a plain copy of the input."""
    runs = []
    for phase in range(low.row_split if low.row_split > 1 else 0):
        first = -(-(inner["copy_begin"] - phase) // low.row_split)
        end = -(-(inner["copy_end"] - phase) // low.row_split)
        if end > first:
            runs.append({"phase": phase, "first": first, "end": end})
    return runs


def _depthwise_rows(workload: Workload, plan: Plan, low: Lowering, axes: list[dict],
                    taps: list[int]) -> dict:
    """How a channel's output rows split into tiles of ``row_tile`` rows, the distance
    between neighbouring rows in the padded input and in the output (1-D: one row), and
    each tile's loads (``_shared_loads``)."""
    rows = math.prod(workload.out_spatial[:-1])
    full, tail = divmod(rows, plan.row_tile)
    outer = low.phases[0].axes[:-1]
    row_in = outer[-1].in_step * axes[-2]["padded_stride"] if outer else 0
    row_out = outer[-1].out_step * axes[-2]["out_stride"] if outer else 0
    counts = [plan.row_tile] + ([tail] if tail else [])
    return {"row_tile": plan.row_tile, "full_rows": full * plan.row_tile, "tail_rows": tail,
            "row_in": row_in, "row_out": row_out,
            "tile_loads": {n: _shared_loads(n, row_in, taps) for n in counts}}


def _shared_loads(rows: int, row_in: int, taps: list[int]) -> list[dict]:
    """A depthwise tile of ``rows`` output rows as its distinct input offsets, in memory
    order, each with the (output row, tap) products that read it: one load feeds every
    row whose taps reach that input row (3x3 taps, 8 rows: 30 loads for 72 FMAs). Tap by
    tap, gcc reloaded most of them: 0.7-0.83 loads per FMA, nearly all of them split
    across two cache lines, which bound the 5x5 layers (effnet_dw_5x5's 7-row tiles 20%
    slower than 4-row ones, which left more registers to keep inputs in)."""
    uses: dict[int, list[dict]] = {}
    for row in range(rows):
        for tap, offset in enumerate(taps):
            uses.setdefault(row * row_in + offset, []).append({"row": row, "tap": tap})
    return [{"offset": offset, "uses": uses[offset]} for offset in sorted(uses)]


def _in_place(workload: Workload, plan: Plan, low: Lowering, runs: list[dict],
              tiles: list[dict]) -> dict:
    """A depthwise kernel reading the unpadded input (cpu.derived.depthwise_in_place): each
    channel's output rows in bands of row_tile rows, each band's row in column tiles; a
    tile whose inputs all lie inside the channel loads them as the padded kernel does, one
    at the edges masks the lanes outside the channel (a masked lane neither reads nor
    faults) and multiplies zeros for the vectors wholly outside it, as the padded kernel
    multiplies the padding. Bands, then runs of columns, that read alike share a tile
    function and a loop. (The loads are keyed by input row and column, not by a flat
    offset as _shared_loads keys them: the masks need both.)"""
    phase = low.phases[0]
    two_d = len(phase.axes) == 2
    geo = {"in_w": workload.in_spatial[-1], "in_h": workload.in_spatial[0] if two_d else 1,
           "step": phase.axes[0].in_step if two_d else 0, "vector": plan.vector,
           "size": itemsize(workload.dtype)}
    bw, bh = low.padded[-1].before, (low.padded[0].before if two_d else 0)
    # each tap's input (row, column) relative to the output's: what the padding shifted
    taps = [((combo[0][1] - bh) if two_d else 0, combo[-1][1] - bw) for combo in _tap_combos(phase)]
    rows = phase.axes[0].count if two_d else 1
    full, tail = divmod(rows, plan.row_tile)
    bands = [(r0, plan.row_tile) for r0 in range(0, full * plan.row_tile, plan.row_tile)]
    bands += [(full * plan.row_tile, tail)] if tail else []
    shapes = {t["name"]: t for t in tiles}
    variants: dict[tuple, dict] = {}
    groups: list[dict] = []
    for r0, count in bands:
        segments = []
        for run in runs:
            shape = shapes[run["tile"]]
            for q in range(run["first"], run["end"], run["step"]):
                name = _in_place_tile(variants, geo, taps, r0, count, q, shape)
                if segments and segments[-1]["tile"] == name and segments[-1]["end"] == q:
                    segments[-1]["end"] = q + run["step"]
                else:
                    segments.append({"tile": name, "first": q, "end": q + run["step"],
                                     "step": run["step"]})
        last = groups[-1] if groups else None
        if last and last["segments"] == segments and last["end"] == r0 and count == last["rows"]:
            last["end"] = r0 + count
        else:
            groups.append({"first": r0, "end": r0 + count, "rows": count,
                           "segments": segments})
    return {"bands": groups, "in_place_tiles": list(variants.values()),
            "row_step_in": geo["step"] * geo["in_w"]}


def _in_place_tile(variants: dict, geo: dict, taps: list[tuple[int, int]], r0: int,
                   count: int, q: int, shape: dict) -> str:
    """The tile function for ``count`` rows from output row r0, columns from q: its loads
    (each input vector once, with the products that read it), offsets in bytes from the
    input at (r0 * step, q); a mask where only some lanes lie inside the channel, 0 (no
    load, zeros) where none does."""
    vl, in_w, in_h, step = geo["vector"], geo["in_w"], geo["in_h"], geo["step"]
    uses: dict[tuple[int, int], list[dict]] = {}
    for row in range(count):
        for tap, (dy, dx) in enumerate(taps):
            uses.setdefault((row * step + dy, dx), []).append({"row": row, "tap": tap})
    loads = []
    for (rho, kappa) in sorted(uses):
        row_inside = 0 <= r0 * step + rho < in_h
        for v in range(shape["vectors"]):
            first = q + kappa + v * vl
            lanes = [row_inside and 0 <= first + lane < in_w for lane in range(vl)]
            # mask 0: a vector of zeros, still multiplied (an infinite weight times the
            # zero padding is NaN, as in torch)
            mask = (None if row_inside and vector_inside(first, vl, in_w)
                    else sum(1 << lane for lane, ok in enumerate(lanes) if ok))
            loads.append({"offset": (rho * in_w + kappa + v * vl) * geo["size"], "mask": mask,
                          "vector": v, "uses": uses[(rho, kappa)]})
    key = (count, shape["name"], tuple(
        (ld["offset"], ld["mask"], ld["vector"], tuple((u["row"], u["tap"]) for u in ld["uses"]))
        for ld in loads))
    if key not in variants:
        variants[key] = {"name": f"{count}x{shape['name']}_{len(variants)}", "rows": count,
                         "vectors": shape["vectors"], "last_lanes": shape["last_lanes"],
                         "loads": loads}
    return variants[key]["name"]


def _simd_axes(workload: Workload, low: Lowering, names) -> list[dict]:
    axes = []
    for i, name in enumerate(names):
        pad = low.padded[i]
        n_in = workload.in_spatial[i]
        axes.append({
            "name": name, "NAME": name.upper(), "in_size": n_in, "padded": pad.size,
            "before": pad.before, "extent": pad.mode_extent, "out_size": workload.out_spatial[i],
            "padded_stride": _layout_stride(workload, low, i),
            "out_stride": math.prod(workload.out_spatial[i + 1:]),
            "in_row_stride": math.prod(workload.in_spatial[i + 1:-1]) if i < len(names) - 1 else 1,
            # the stretch of a padded row that is a plain copy of the input row
            "copy_begin": min(pad.before, pad.mode_extent),
            "copy_end": min(pad.before + n_in, pad.mode_extent),
        })
    return axes


def _layout_stride(workload: Workload, low: Lowering, axis) -> int:
    """Element stride of a spatial axis (index) or of "channel" in the (padded) input.

    With many channels per group a copied input is laid out [n][rows][channel][row], so
    the rows a tile reads are together for every channel (a few pages, prefetcher-
    friendly); otherwise (and when read in place) channel-major, [n][channel][rows][row].
    """
    sizes = [p.size for p in low.padded[:-1]] + [low.row_pitch]
    if not low.rows_outside_channels:
        return math.prod(sizes) if axis == "channel" else math.prod(sizes[axis + 1:])
    channels = workload.spec.in_channels
    if axis == "channel":
        return low.row_pitch
    if axis == len(sizes) - 1:
        return 1
    return channels * math.prod(sizes[axis + 1:])


def _phases(workload: Workload, plan: Plan, facts: Derived, axes: list[dict]):
    spec, low = workload.spec, facts.lowering
    tiles: dict[str, dict] = {}
    phases, pack_offset = [], 0
    for index, phase in enumerate(low.phases):
        flat_offsets, weight_taps = [], []
        for combo in _tap_combos(phase):
            *outer, (_, inner_off) = combo
            rows = sum(off * axes[i]["padded_stride"] for i, (_, off) in enumerate(outer))
            flat_offsets.append(rows + low.row_offset(inner_off))
            weight_taps.append(_flat(tuple(k for k, _ in combo), spec.kernel_size))
        inner = phase.axes[-1]
        outer = [{"NAME": axes[i]["NAME"], "count": a.count, "start": a.start,
                  "out_step": a.out_step, "in_step": a.in_step}
                 for i, a in enumerate(phase.axes[:-1])]
        phases.append({
            "index": index, "taps": flat_offsets, "weight_taps": weight_taps,
            "counts": [a.count for a in phase.axes], "starts": [a.start for a in phase.axes],
            "out_steps": [a.out_step for a in phase.axes], "outer": outer,
            "inner_start": inner.start, "rows": phase.outputs // max(inner.count, 1),
            "pack_offset": pack_offset,
            **(_panel(plan, inner.count, flat_offsets, inner.in_step, tiles, facts.registers)
               if plan.chunk else
               {"runs": _runs(plan, inner.count, tiles, facts.registers)}),
        })
        phases[-1].update(_weight_prefetch(workload, plan, phases[-1]))
        pack_offset += facts.oc_blocks * spec.cin_per_group * len(flat_offsets) * plan.oc_tile
    return phases, list(tiles.values())


def _weight_prefetch(workload: Workload, plan: Plan, ph: dict) -> dict:
    """implicit_gemm's oc_outer order reads one channel tile's weights (a block) for every
    tile of every row, then moves to the next block; the first reads of each block would
    wait for L3 or DRAM while the FMAs idle (weights too big for L2 are evicted between
    calls: upconv_512_small, 8 MiB of weights, 1.09-1.13 ms with cold caches, 0.96-0.97
    with this).
    So the last tiles of a block prefetch the next block into L2, pf_per_ic lines per
    input channel each: just enough tiles to cover it, so the next block arrives while the
    current one is still being read from L2 and does not evict it early.

    Returns, for the phase: tiles per row, lines per input channel, the first tile (row *
    tiles per row + tile in row) that prefetches, and the block's lines (0: no prefetch)."""
    ntaps = len(ph["taps"])
    if (plan.algorithm != "implicit_gemm" or plan.loop_order != "oc_outer"
            or plan.vector == 1 or not ntaps):
        return {"pf_block_lines": 0}
    cin = workload.spec.cin_per_group
    per_row = sum((run["end"] - run["first"]) // run["step"] for run in ph["runs"])
    block_lines = -(-cin * ntaps * plan.oc_tile * itemsize(workload.dtype) // LINE)
    tiles = per_row * ph["rows"]
    per_ic = min(-(-block_lines // (cin * tiles)), -(-block_lines // cin))
    window = -(-block_lines // (cin * per_ic))
    return {"pf_block_lines": block_lines, "pf_per_ic": per_ic, "pf_tiles_per_row": per_row,
            "pf_first_tile": max(0, tiles - window)}


def _with_loops(workload: Workload, plan: Plan, facts: Derived, units: list[dict]) -> list[dict]:
    """Each parallel unit (a phase, or a group of phases where rows are staged) with the
    extents of its two parallel loops, as C expressions (outer, inner): the kernel calls its
    row function for every (a, b), item a * inner + b of the work shared; and how many
    items a thread takes at once where the threads share them by ranges (claim)."""
    shared = workload.input_shape[0] * workload.spec.groups   # images x groups

    def loops(unit: dict) -> tuple[str, str, int]:
        if plan.chunk:          # a: image, group and row; b: chunk
            return f"BATCH * GROUPS * {unit['rows']}", str(unit["chunks"]), unit["chunks"]
        if plan.loop_order == "oc_outer":   # a: image, group and channel tile; b: row
            return "BATCH * GROUPS * OC_BLOCKS", str(unit["rows"]), facts.oc_blocks
        return f"BATCH * {unit['rows']}", "GROUPS * OC_BLOCKS", facts.oc_blocks

    def with_loops(unit: dict) -> dict:
        outer, inner, per_row = loops(unit)
        items = shared * unit["rows"] * per_row
        return {**unit, "loops": (outer, inner), "claim": claim(items, plan.threads)}
    return [with_loops(unit) for unit in units]


def claim(items: int, threads: int) -> int:
    """How many of a loop's ``items`` a thread takes at once where the threads share them
    by ranges (see CLAIMS_PER_THREAD)."""
    per_thread = items // threads
    return max(1, per_thread // CLAIMS_PER_THREAD, min(4, per_thread // 8))


# A thread takes its items in runs of 1/CLAIMS_PER_THREAD of its range, and of at least 4
# where its range has 32 or more: a take is an atomic compare-and-swap, which waits for the
# thread's pending stores (a row's outputs) to drain. Taken one at a time, grouped_32's
# 3,584 items of 0.1 us ran 11-17% slower than schedule(static) on 2 threads, deconv3d's
# 512 rows of 2 us 8%; in runs of 4, deconv3d ran as fast (C harness). A steal moves at
# most one run.
CLAIMS_PER_THREAD = 32


def _phase_groups(low: Lowering, phases: list[dict]) -> list[dict]:
    """The phases that fill the same output rows (they differ only along the last axis):
    a staged kernel computes a row of every phase of a group, then copies it out."""
    groups: dict[tuple, list[dict]] = {}
    for phase, ph in zip(low.phases, phases):
        groups.setdefault(phase.axes[:-1], []).append(ph)
    return [{"index": i, "phases": members, "first": members[0]["index"],
             "first_start": members[0]["inner_start"], "rows": members[0]["rows"]}
            for i, members in enumerate(groups.values())]


def _panel(plan: Plan, count: int, taps: list[int], in_step: int, tiles: dict,
           regs: int) -> dict:
    """A row of ``count`` outputs in chunks of plan.chunk: the full chunks' tiles, the last
    chunk's, where each tap's inputs sit in a tile's run of the panel (PIXEL_TILE inputs
    per input channel and tap), and the input spans a chunk's panel reads (below)."""
    chunks = -(-count // plan.chunk)
    tail = count - (chunks - 1) * plan.chunk
    return {"chunks": chunks, "tail": tail,
            "chunk_runs": _runs(plan, plan.chunk, tiles, regs) if chunks > 1 else [],
            "tail_runs": _runs(plan, tail, tiles, regs),
            "panel_taps": [t * plan.pixel_tile for t in range(len(taps))],
            "panel_cstride": len(taps) * plan.pixel_tile,
            "panel_spans": _panel_spans(taps, (plan.chunk - 1) * in_step + 1)}


def _panel_spans(taps: list[int], width: int) -> list[tuple[int, int]]:
    """The runs of one input channel that a chunk's panel copies, as (first tap's offset,
    last tap's offset) pairs: taps whose runs of ``width`` inputs overlap or touch are one
    span (a 3x3 kernel's three taps of a row). The kernel prefetches the next chunk's spans
    while it computes this one's: a span of a chunk of n pixels ends (n - 1) * IN_STEP_ROW
    past its last tap, so a short last chunk's spans stay inside the input."""
    spans: list[list[int]] = []
    for tap in sorted(set(taps)):
        if spans and tap <= spans[-1][1] + width:
            spans[-1][1] = tap
        else:
            spans.append([tap, tap])
    return [(first, last) for first, last in spans]


def _tap_combos(phase):
    combos = [()]
    for a in phase.axes:
        combos = [c + ((k, off),) for c in combos for k, off in zip(a.taps, a.offsets)]
    return combos


def _flat(index: tuple[int, ...], sizes: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, sizes):
        flat = flat * n + i
    return flat


def _runs(plan: Plan, count: int, tiles: dict, regs: int) -> list[dict]:
    """How one row of ``count`` outputs splits into register tiles: full ones, then a tail
    (``regs``: the vector registers a tile may fill)."""
    runs = []
    if plan.algorithm == "implicit_gemm":
        full, tail = divmod(count, plan.pixel_tile)
        pieces = [(plan.pixel_tile, full), (tail, 1 if tail else 0)]
        for pixels, times in pieces:
            if times:
                tiles.setdefault(str(pixels), {"name": str(pixels), "pixels": pixels})
        step = plan.pixel_tile
    else:
        vectors = -(-count // plan.vector)
        last = count - (vectors - 1) * plan.vector
        nv = plan.pixel_tile // plan.vector
        full, tail = divmod(vectors, nv)
        if tail == 0 and last != plan.vector:   # the partial vector ends the last full tile
            full, tail = full - 1, nv
        pieces = [((nv, plan.vector), full), ((tail, last), 1 if tail else 0)]
        for (vecs, lanes), times in pieces:
            if times:
                name = f"{vecs}v{lanes}"
                chains = direct_chains(plan.oc_tile, vecs, regs)
                tiles.setdefault(name, {"name": name, "vectors": vecs, "last_lanes": lanes,
                                        "chains": chains})
        step = plan.pixel_tile
    first = 0
    for size, times in pieces:
        if times:
            name = str(size) if plan.algorithm == "implicit_gemm" else f"{size[0]}v{size[1]}"
            runs.append({"first": first, "end": first + times * step, "step": step, "tile": name})
            first += times * step
    return runs


def _winograd_context(workload: Workload, plan: Plan, facts: Derived, prefix: str) -> dict:
    spec = workload.spec
    geo = facts.winograd
    transform = winograd.TRANSFORMS[geo.m]
    axes = [{"name": name, "NAME": name.upper(), "in_size": workload.in_spatial[i],
             "out_size": workload.out_spatial[i], "padded": geo.padded[i],
             "before": geo.before[i], "extent": geo.mode_extent[i], "dilation": geo.dilation[i],
             # padded columns that are a plain copy of the input row
             "copy_begin": min(geo.before[i], geo.mode_extent[i]),
             "copy_end": min(geo.before[i] + workload.in_spatial[i], geo.mode_extent[i])}
            for i, name in enumerate(AXIS_NAMES[spec.ndim])]
    return {
        "ndim": spec.ndim, "m": geo.m, "alpha": geo.alpha, "xi": geo.alpha ** spec.ndim,
        "vector": plan.vector, "vector_bytes": plan.vector * itemsize(workload.dtype),
        "oc_tile": plan.oc_tile, "block": geo.block, "blocks": geo.blocks,
        "tile_rows": math.prod(geo.tiles[:-1]), "padded_rows": math.prod(geo.padded[:-1]),
        "phase_pitch": geo.phase_pitch, "scratch": facts.thread_stride,
        "v_point": geo.v_point, "m_point": geo.m_point, "row_chunks": geo.row_chunks,
        "phases": geo.phases,
        "split": _split_network(geo.phases) if plan.vector > 1 else None,
        "axes": axes, "inner": axes[-1], "outer": axes[0] if spec.ndim == 2 else None,
        "bt": _fractions(transform.bt), "g": _fractions(transform.g),
        "at": _fractions(transform.at),
        "exact_prefix": exact_prefix(prefix), "own_packed": facts.own_packed,
        "exact_packed": facts.exact.packed_weights,
        # several threads share the blocks through ranges they steal from
        "ranges": facts.ranges, "ranges_at": facts.ranges_at, "range_bytes": RANGE_BYTES,
        "claim": claim(winograd_items(workload, geo), plan.threads),
        "out_ahead": OUTPUT_PREFETCH_AHEAD, "line_bytes": LINE,
    }


# Winograd's output transform writes a block's TILES * M_OUT columns into every output
# channel's rows in turn: runs of 0.25-1 KiB, each starting on a miss. The rows of channel
# oc + 4 are prefetched (to be written) before channel oc's transform: tts_encoder (1-D, 256
# channels, 1 thread, head to head) 0.86x the time with blocks of 32 tiles, 0.87-0.92x with
# 64, where the gap between the two (1.09x) was all in those writes; 8 ahead ran alike.
OUTPUT_PREFETCH_AHEAD = 4


def _split_network(phases: int):
    """Even/odd shuffles that take ``phases`` consecutive vectors s0.. to one vector per
    column phase (phase q holds columns q, q + phases, ...); None unless a power of two."""
    if phases & (phases - 1):
        return None
    steps, counter = [], iter(range(10**6))

    def split(names: list[str]) -> list[str]:
        if len(names) == 1:
            return names
        evens, odds = [], []
        for a, b in zip(names[0::2], names[1::2]):
            for mask, out in (("EVEN", evens), ("ODD", odds)):
                name = f"t{next(counter)}"
                steps.append({"out": name, "a": a, "b": b, "mask": mask})
                out.append(name)
        # phase 2q comes from the even lanes, 2q + 1 from the odd ones
        return [v for pair in zip(split(evens), split(odds)) for v in pair]

    outputs = split([f"s{i}" for i in range(phases)])
    return {"steps": steps, "outputs": outputs}


def _fractions(matrix) -> list[list[tuple[int, int, int]]]:
    """Each row's non-zero entries as (numerator, denominator, column)."""
    return [[(v.numerator, v.denominator, j) for j, v in enumerate(row) if v != 0]
            for row in matrix]


def exact_prefix(prefix: str) -> str:
    """The symbol prefix of a Winograd kernel's exact fallback."""
    return f"{prefix}_exact"


def context(workload: Workload, plan: Plan, target: Target, prefix: str) -> dict:
    facts = derive(workload, plan, target)
    ctx = _common(workload, plan, target, facts, prefix)
    if plan.algorithm in GATHER_ALGORITHMS:
        ctx.update(_gather_context(workload, plan))
    elif plan.algorithm in WINOGRAD_ALGORITHMS:
        ctx.update(_winograd_context(workload, plan, facts, prefix))
    else:
        ctx.update(_simd_context(workload, plan, target, facts))
    return ctx


def render(workload: Workload, plan: Plan, target: Target,
           prefix: str) -> tuple[tuple[str, str], ...]:
    """The kernel's sources: ("kernel.c", text), and ("exact.c", text) for Winograd."""
    workload = planned(workload)
    main = render_template(TEMPLATES[plan.algorithm], context(workload, plan, target, prefix),
                           plan)
    if plan.algorithm not in WINOGRAD_ALGORITHMS:
        return (("kernel.c", main),)
    exact = derive(workload, plan, target).exact_plan
    fallback = render_template(TEMPLATES[exact.algorithm],
                               context(workload, exact, target, exact_prefix(prefix)), exact)
    return (("kernel.c", main), ("exact.c", fallback))
