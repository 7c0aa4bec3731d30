"""CPU plans: the type, which algorithms apply, which plans are legal, and which the
planner considers.

A ``Plan`` says how one workload is computed: the algorithm (which template), the
register tile (output channels x output pixels held in accumulators), the vector width,
the order of the parallel outer loops and the thread count. ``planner.py`` ranks the
legal plans with the analytical cost model of ``cost.py`` (vector FMAs and loads per
register tile, lanes wasted on tails, bytes moved through the cache levels, thread
balance); ``explain`` shows the ranking.

Algorithms (each a template under ``templates/cpu/``):

- ``implicit_gemm``: output channels in vector lanes, a run of output pixels broadcast
  from the (padded) input; pre-packed weights; every op, every stride; transposed convs
  by stride-phase decomposition (``core/lowering.py``).
- ``direct_simd``: output pixels of a row in vector lanes, a block of output channels
  broadcast from pre-packed weights; where the row's input is contiguous (unit stride
  along the innermost axis). Small groups and 3-D depthwise layers run here.
- ``depthwise``: one input channel per group (depthwise, any channel multiplier), 1-D
  and 2-D forward convs: each thread pads one channel at a time into its own buffer (it
  stays in L1/L2) and computes that channel's outputs in register tiles of ``row_tile``
  output rows x ``pixel_tile`` pixels, every tap unrolled with its offset a constant.
- ``direct`` / ``transposed_gather``: the scalar gather kernels, exact reference paths
  that cover everything and that the planner ranks last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..core import lowering
from ..core.dtypes import itemsize
from ..core.planning import parse_fields
from ..core.spec import Workload
from ..target import Target
from . import winograd

SIMD_ALGORITHMS = ("implicit_gemm", "direct_simd", "depthwise")
WINOGRAD_ALGORITHMS = ("winograd2", "winograd4")    # F(2, 3) and F(4, 3) per axis
GATHER_ALGORITHMS = ("direct", "transposed_gather")
ALGORITHMS = SIMD_ALGORITHMS + WINOGRAD_ALGORITHMS + GATHER_ALGORITHMS
LOOP_ORDERS = ("oc_outer", "pixel_outer", "panel")
PANEL_ALGORITHMS = ("implicit_gemm", "direct_simd")   # the ones with a panel loop order
MAX_GATHER_OC_BLOCK = 16


@dataclass(frozen=True)
class Plan:
    algorithm: str
    oc_tile: int         # output channels per register tile
    pixel_tile: int      # output pixels per register tile (along the innermost axis)
    vector: int          # lanes per vector register (1: scalar code)
    loop_order: str      # "oc_outer": channel blocks outside pixel rows; "pixel_outer": inside;
                         # "panel": chunks of a row outside, each packed once into a panel
    threads: int
    row_tile: int = 1    # output rows per register tile (depthwise; every other algorithm: 1)
    chunk: int = 0       # output pixels per panel (loop_order "panel"; otherwise 0)
    prefetch: int = 0    # panel: 1 fetches the next chunk's inputs and outputs into L2
                         # while this one computes (cost._prefetch_fits says where it pays)

    _FIELDS = ("algorithm", "oc_tile", "pixel_tile", "vector", "loop_order", "threads")
    # printed only where they are not their default, so other plans read as before
    _OPTIONAL = ("row_tile", "chunk", "prefetch")

    def __str__(self) -> str:
        words = [f"{name}={getattr(self, name)}" for name in self._FIELDS]
        if self.row_tile != 1:
            words.insert(3, f"row_tile={self.row_tile}")
        if self.chunk:
            words.insert(-1, f"chunk={self.chunk}")
        if self.prefetch:
            words.insert(-1, f"prefetch={self.prefetch}")
        return " ".join(words)

    @classmethod
    def parse(cls, text: str) -> Plan:
        """Inverse of ``str(plan)``."""
        fields = parse_fields(text, cls._FIELDS, "a plan", cls._OPTIONAL)
        fields.setdefault("row_tile", "1")
        fields.setdefault("chunk", "0")
        fields.setdefault("prefetch", "0")
        try:
            numbers = {k: int(fields[k]) for k in ("oc_tile", "pixel_tile", "vector", "threads",
                                                   "row_tile", "chunk", "prefetch")}
        except ValueError as exc:
            raise ValueError(f"plan: malformed number in {text!r}") from exc
        return cls(fields["algorithm"], loop_order=fields["loop_order"], **numbers)


def registers(target: Target) -> int:
    """Vector registers the micro-kernel may fill (the ISA row's count)."""
    return target.isa_row.registers


# direct_simd leaves one register beyond its tile's needs to the compiler: gcc 12 spilled
# an accumulator on every step of a 4-channel x 3-vector AVX2 tile that filled all 16
# (pointwise_256_128 at 1 thread 0.89 ms, 0.60 without the spill).
DIRECT_SPARE_REGISTERS = 1


def direct_registers(oc_tile: int, vectors: int, chains: int = 1) -> int:
    """Vector registers a direct_simd tile holds: per accumulator set, oc_tile x vectors
    accumulators and its tap's input vectors (gcc loads every set's early); a broadcast
    weight, and the spare."""
    return chains * (oc_tile * vectors + vectors) + 1 + DIRECT_SPARE_REGISTERS


def direct_chains(oc_tile: int, vectors: int, regs: int) -> int:
    """Independent accumulator sets a direct_simd tile takes turns with over the taps, so
    that a small tile does not wait on its own FMA latency: toward 16 accumulators, at most
    4 sets (measured: depthwise rows of 7 vectors ran 1.7x faster split in two chains), and
    never more than ``regs`` hold (AVX2: 16 accumulators in 16 registers spilled, and so
    did 12 in 3 sets with their 6 input vectors)."""
    fmas = oc_tile * vectors
    chains = max(1, min(4, 16 // fmas))
    while chains > 1 and direct_registers(oc_tile, vectors, chains) > regs:
        chains -= 1
    return chains


def depthwise_accumulators(regs: int) -> int:
    """Accumulators a depthwise tile may hold: the rest of the registers carry the input
    vectors its rows share between taps. (gcc 12, AVX-512: a 3x3 tile of 8 rows x 3
    vectors, 24 of 32 registers, spills 51 vectors per tile step and ran 1.3x slower
    than 4 rows x 3; 21 never spilled.)"""
    return regs * 2 // 3


def native_vector(target: Target, dtype: str) -> int:
    return max(1, target.vector_bytes // itemsize(dtype))   # the portable target: scalars


def algorithms_for(workload: Workload, accuracy: str = "fast") -> tuple[str, ...]:
    spec = workload.spec
    found = ["implicit_gemm"]
    # a row's outputs must be contiguous (a strided forward row is split into phases)
    if spec.stride[-1] == 1 or not spec.transposed:
        found.append("direct_simd")
    if depthwise_applies(spec):
        found.append("depthwise")
    if accuracy != "strict" and winograd.applies(spec):
        found += WINOGRAD_ALGORITHMS
    found.append("transposed_gather" if spec.transposed else "direct")
    return tuple(found)


def depthwise_applies(spec) -> bool:
    """One input channel per group, forward, 1-D or 2-D (3-D depthwise runs on direct_simd)."""
    return spec.cin_per_group == 1 and not spec.transposed and spec.ndim <= 2


def oc_blocks(workload: Workload, plan: Plan) -> int:
    """Register tiles per group along the output channels (the last one may be partial)."""
    return -(-workload.spec.cout_per_group // plan.oc_tile)


def check_plan(plan: Plan, workload: Workload, target: Target, accuracy: str = "fast") -> None:
    """Refuse a plan that cannot compute this workload on this target, saying why."""
    spec = workload.spec
    if accuracy == "strict" and plan.algorithm in WINOGRAD_ALGORITHMS:
        raise ValueError(f"plan: {plan.algorithm} is not exact (Winograd rounds differently); "
                         f"accuracy='strict' allows only {algorithms_for(workload, 'strict')}")
    if plan.algorithm not in algorithms_for(workload):
        raise ValueError(f"plan: algorithm {plan.algorithm!r} does not apply to this {spec.op}; "
                         f"choose one of {algorithms_for(workload)}")
    if plan.loop_order not in LOOP_ORDERS:
        raise ValueError(f"plan: loop_order must be one of {LOOP_ORDERS}, got {plan.loop_order!r}")
    if plan.threads < 1:
        raise ValueError(f"plan: threads must be positive, got {plan.threads}")
    if min(plan.oc_tile, plan.pixel_tile, plan.vector, plan.row_tile) < 1:
        raise ValueError(f"plan: oc_tile, pixel_tile, vector and row_tile must be positive, "
                         f"got {plan}")
    if plan.algorithm != "depthwise" and plan.row_tile != 1:
        raise ValueError(f"plan: row_tile={plan.row_tile}: only depthwise tiles several "
                         f"output rows; {plan.algorithm} takes row_tile=1")
    _check_panel(plan)
    if plan.algorithm in GATHER_ALGORITHMS:
        _check_gather(plan, spec)
    else:
        _check_simd(plan, workload, target)


def _check_panel(plan: Plan) -> None:
    if plan.prefetch not in (0, 1):
        raise ValueError(f"plan: prefetch must be 0 or 1, got {plan.prefetch}")
    if plan.loop_order != "panel":
        for name in ("chunk", "prefetch"):
            if getattr(plan, name):
                raise ValueError(f"plan: {name}={getattr(plan, name)} applies to "
                                 f"loop_order='panel' only")
        return
    if plan.algorithm not in PANEL_ALGORITHMS:
        raise ValueError(f"plan: loop_order='panel' applies to {PANEL_ALGORITHMS}, not "
                         f"{plan.algorithm}")
    if plan.chunk < 1 or plan.chunk % plan.pixel_tile:
        raise ValueError(f"plan: a panel's chunk ({plan.chunk}) must be a positive multiple of "
                         f"pixel_tile ({plan.pixel_tile})")


def _check_gather(plan: Plan, spec) -> None:
    if plan.vector != 1 or plan.pixel_tile != 1:
        raise ValueError(f"plan: the scalar {plan.algorithm} kernel takes vector=1 pixel_tile=1")
    if plan.oc_tile > MAX_GATHER_OC_BLOCK or spec.cout_per_group % plan.oc_tile:
        raise ValueError(f"plan: oc_tile={plan.oc_tile} must divide the output channels per "
                         f"group ({spec.cout_per_group}) and be at most {MAX_GATHER_OC_BLOCK}")


def _check_simd(plan: Plan, workload: Workload, target: Target) -> None:
    native = native_vector(target, workload.dtype)
    if plan.vector not in (native, native // 2) or plan.vector < 1:
        raise ValueError(f"plan: vector must be {native} (or {native // 2}) lanes of "
                         f"{workload.dtype} on target {target.name}, got {plan.vector}")
    # as many registers for half-width vectors (ymm on AVX-512) as for full-width ones
    regs = registers(target)
    if plan.algorithm in WINOGRAD_ALGORITHMS and plan.loop_order != "pixel_outer":
        raise ValueError(f"plan: {plan.algorithm} runs blocks of tiles with every channel "
                         f"inside: loop_order must be 'pixel_outer'")
    if plan.algorithm == "implicit_gemm":
        if plan.oc_tile % plan.vector:
            raise ValueError(f"plan: implicit_gemm's oc_tile ({plan.oc_tile}) must be a "
                             f"multiple of vector ({plan.vector})")
        loads = plan.oc_tile // plan.vector
        accumulators = plan.pixel_tile * loads
    elif plan.algorithm == "depthwise":
        _check_depthwise(plan, workload)
        accumulators, loads = plan.row_tile * (plan.pixel_tile // plan.vector), 1
        if accumulators > depthwise_accumulators(regs):
            raise ValueError(f"plan: a depthwise tile of {plan.row_tile} rows x "
                             f"{plan.pixel_tile // plan.vector} vectors needs {accumulators} "
                             f"accumulators; at most {depthwise_accumulators(regs)} leave "
                             f"registers for the loads (more spill)")
    else:
        if plan.pixel_tile % plan.vector:
            raise ValueError(f"plan: {plan.algorithm}'s pixel_tile ({plan.pixel_tile}) must be a "
                             f"multiple of vector ({plan.vector})")
        if workload.spec.cout_per_group % plan.oc_tile:
            raise ValueError(f"plan: {plan.algorithm}'s oc_tile ({plan.oc_tile}) must divide the "
                             f"output channels per group ({workload.spec.cout_per_group})")
        loads = plan.pixel_tile // plan.vector
        if direct_registers(plan.oc_tile, loads) > regs:
            raise ValueError(f"plan: a {plan.oc_tile}x{plan.pixel_tile} {plan.algorithm} tile "
                             f"needs {direct_registers(plan.oc_tile, loads)} vector registers "
                             f"(one left to the compiler); the target has {regs}")
        return
    if accumulators + loads + 1 > regs:
        raise ValueError(f"plan: a {plan.oc_tile}x{plan.pixel_tile} tile needs "
                         f"{accumulators + loads + 1} vector registers; the target has {regs}")


def _check_depthwise(plan: Plan, workload: Workload) -> None:
    if plan.oc_tile != 1 or plan.loop_order != "oc_outer":
        raise ValueError("plan: depthwise computes one output channel at a time, each "
                         "channel's rows inside: it takes oc_tile=1 loop_order=oc_outer")
    if plan.pixel_tile % plan.vector:
        raise ValueError(f"plan: depthwise's pixel_tile ({plan.pixel_tile}) must be a "
                         f"multiple of vector ({plan.vector})")
    rows = math.prod(workload.out_spatial[:-1])
    if plan.row_tile > rows:
        raise ValueError(f"plan: row_tile={plan.row_tile} exceeds the {rows} output row(s)")


def enumerate_plans(workload: Workload, target: Target, threads: int, accuracy: str):
    """Every plan the planner considers (check_plan still refuses some of them)."""
    spec = workload.spec
    teams = sorted({1, threads})
    vl = native_vector(target, workload.dtype)
    regs = registers(target)
    for algorithm in algorithms_for(workload, accuracy):
        if algorithm in GATHER_ALGORITHMS:
            tiles = [(b, 1, 1) for b in range(1, MAX_GATHER_OC_BLOCK + 1)
                     if spec.cout_per_group % b == 0]
        elif algorithm == "implicit_gemm":
            # Two or more weight vectors per tile where the channels allow: a tile of one
            # vector broadcasts a pixel per FMA, and measured (AVX-512, two FMA units) it
            # loses 10-20% once its operands come from L2, where tiles of two to four
            # vectors keep 99% of the FMA rate. Except where a row's outputs are strided
            # (transposed, stride > 1): the scattered stores favour long runs of pixels
            # (measured on hifigan_up: 16 x 28 beat every 32-channel tile by 10%).
            wide = -(-spec.cout_per_group // vl)
            strided_rows = spec.transposed and spec.stride[-1] > 1
            narrowest = 1 if strided_rows else min(wide, 2)
            tiles = [(v * vl, r, vl) for v in range(narrowest, min(wide, 4) + 1)
                     for r in range(1, (regs - v - 1) // v + 1)]
        elif algorithm == "depthwise":
            yield from _depthwise_plans(workload, vl, regs, teams)
            continue
        else:
            tiles = [(o, nv * vl, vl) for o in range(1, min(spec.cout_per_group, 16) + 1)
                     if spec.cout_per_group % o == 0
                     for nv in range(1, 9) if direct_registers(o, nv) <= regs]
        orders = (("pixel_outer",) if algorithm in WINOGRAD_ALGORITHMS else
                  LOOP_ORDERS if algorithm in PANEL_ALGORITHMS and not _stages_rows(
                      algorithm, spec) else LOOP_ORDERS[:2])
        row = max(p.count for p in lowering.axis_phases(workload, spec.ndim - 1))
        for oc_tile, pixel_tile, vector in tiles:
            for order in orders:
                chunks = panel_chunks(pixel_tile, row) if order == "panel" else (0,)
                # the scalar target's prefetch is a no-op (templates' PREFETCH_SPAN)
                fetches = (0, 1) if order == "panel" and vector > 1 else (0,)
                for team in teams:
                    for chunk in chunks:
                        for prefetch in fetches:
                            yield Plan(algorithm, oc_tile, pixel_tile, vector, order, team,
                                       chunk=chunk, prefetch=prefetch)


def _stages_rows(algorithm: str, spec) -> bool:
    """implicit_gemm on a transposed conv with strided output rows stages its rows in the
    oc_outer and pixel_outer orders (cpu.derived.stage_layout), not in a panel, which stores
    straight into the strided rows: the planner does not offer the panel there (measured on
    a 64 -> 32 channel, stride-8 layer: 0.24 ms in a panel against 0.19 staged). A panel
    plan given explicitly still runs."""
    return algorithm == "implicit_gemm" and spec.transposed and spec.stride[-1] > 1


def panel_chunks(pixel_tile: int, row: int) -> tuple[int, ...]:
    """The chunk sizes worth trying for a row of ``row`` outputs: 1, 2, 4, 8 ... tiles, up
    to the whole row (rounded up to whole tiles)."""
    whole = -(-row // pixel_tile)
    found = {pixel_tile * min(whole, 1 << i) for i in range(8)}
    return tuple(sorted(found))


def _depthwise_plans(workload: Workload, vl: int, regs: int, teams):
    """Tiles of row_tile rows x nv vectors that leave registers for the shared input rows."""
    rows = math.prod(workload.out_spatial[:-1])
    for nv in range(1, 9):
        for row_tile in range(1, min(rows, 8) + 1):
            if row_tile * nv <= depthwise_accumulators(regs):
                for team in teams:
                    yield Plan("depthwise", 1, nv * vl, vl, "oc_outer", team, row_tile)


