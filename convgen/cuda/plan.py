"""CUDA plans and the CUDA planner.

A ``CudaPlan`` says how one workload runs on a GPU: the algorithm (which template), the
block tile, the warp tile, the pipeline depth, the split of the reduction across blocks,
the arithmetic (float32, float64 or TF32 tensor cores) and the block size. What the tile
means depends on the algorithm:

``direct``         tile = (P, C): P output pixels per block, one thread each, every thread
                   accumulating C output channels. Covers every op and argument.
``depthwise``      tile = the output tile of one channel per block, one entry per spatial
                   axis; the input window it needs (the halo) is staged in shared memory.
                   Forward convolutions with one input channel per group.
``implicit_gemm``  tile = (BM, BN, BK): a block computes BM output pixels x BN output
                   channels, looping over the reduction (input channels x kernel taps) BK at
                   a time through shared memory; warp = (WM, WN), each warp's part of the
                   block tile. ``stages`` >= 2 pipelines the loads with cp.async (double
                   buffering and deeper); ``split_k`` > 1 splits the reduction across
                   blocks that add into a zeroed output. ``math=tf32`` runs the products on
                   tensor cores through WMMA (inputs rounded to TF32: 10 mantissa bits).
``phase_gemm``     the same kernel for transposed convolutions, by stride-phase
                   decomposition: the outputs of one phase (o mod stride) take a fixed
                   subset of the kernel taps, so each phase is a dense implicit GEMM that
                   never multiplies by the zeros a scatter would insert.

The planner lists the legal plans for a workload on a target's architecture and ranks
them by an analytical model (SM count, shared memory, occupancy, waves, roofline);
``explain`` shows the ranking. ``str(plan)`` is stable and complete, and parses back.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..plan import parse_fields
from ..spec import Workload
from ..target import CudaArch, Target

ALGORITHMS = ("direct", "depthwise", "implicit_gemm", "phase_gemm")
MATHS = ("fp32", "fp64", "tf32")
GEMM_ALGORITHMS = ("implicit_gemm", "phase_gemm")
STATIC_SMEM_LIMIT = 48 * 1024       # __shared__ arrays (the depthwise halo)
MAX_THREADS = 1024
MAX_GRID_X, MAX_GRID_YZ = 2 ** 31 - 1, 65535
SMEM_PAD = 4                        # reals of padding per shared-memory row (alignment, banks)
MAX_ACCUMULATORS = 64               # per thread in the SIMT GEMM: more spills registers
REGISTER_LIMIT = 224                # plans estimated to need more are not listed (ptxas: 255)
_LAUNCH_S = 2.5e-6                  # a kernel launch as seen by back-to-back GPU timing, seconds
_DRAM_BYTES_PER_S = {75: 0.3e12, 80: 1.6e12, 86: 0.9e12, 87: 0.2e12, 89: 1.0e12, 90: 3.0e12,
                     100: 7.0e12, 120: 1.5e12}
_CLOCK_HZ = 1.6e9


class PlanError(ValueError):
    """A plan that cannot compute this workload on this architecture; the message says why."""


@dataclass(frozen=True)
class CudaPlan:
    algorithm: str
    tile: tuple[int, ...]
    warp: tuple[int, ...] = ()      # implicit_gemm / phase_gemm only
    stages: int = 1
    split_k: int = 1
    math: str = "fp32"
    threads: int = 128

    def __str__(self) -> str:
        warp = "x".join(map(str, self.warp)) or "-"
        return (f"algorithm={self.algorithm} tile={'x'.join(map(str, self.tile))} warp={warp} "
                f"stages={self.stages} split_k={self.split_k} math={self.math} "
                f"threads={self.threads}")

    @classmethod
    def parse(cls, text: str) -> "CudaPlan":
        """Inverse of ``str(plan)``."""
        fields = parse_fields(text, ("algorithm", "tile", "warp", "stages", "split_k", "math",
                                     "threads"), "a CUDA plan")
        try:
            tile = tuple(int(v) for v in fields["tile"].split("x"))
            warp = () if fields["warp"] == "-" else tuple(int(v) for v in fields["warp"].split("x"))
            return cls(fields["algorithm"], tile, warp, int(fields["stages"]),
                       int(fields["split_k"]), fields["math"], int(fields["threads"]))
        except ValueError as exc:
            raise ValueError(f"plan: malformed number in {text!r}") from exc

    @property
    def is_gemm(self) -> bool:
        return self.algorithm in GEMM_ALGORITHMS


# -- the geometry of a workload as the kernels see it ------------------------------------------
@dataclass(frozen=True)
class AxisPhases:
    """One spatial axis of a transposed convolution split by output phase (o mod stride).

    Output o = phase + j * stride takes the taps k with (phase + pad - k * dilation)
    divisible by stride, from input i = j + offset (offset = (phase + pad - k * dil) / stride).
    """

    extents: tuple[int, ...]                  # j extent per phase
    taps: tuple[tuple[int, ...], ...]         # kernel index k per phase, per tap
    offsets: tuple[tuple[int, ...], ...]      # input offset per phase, per tap

    @property
    def count(self) -> int:
        return len(self.extents)

    @property
    def max_taps(self) -> int:
        return max(len(t) for t in self.taps)


def axis_phases(out_size: int, stride: int, pad: int, kernel: int, dilation: int) -> AxisPhases:
    extents, taps, offsets = [], [], []
    for phase in range(stride):
        extents.append(max(0, -(-(out_size - phase) // stride)))
        ks = tuple(k for k in range(kernel) if (phase + pad - k * dilation) % stride == 0)
        taps.append(ks)
        offsets.append(tuple((phase + pad - k * dilation) // stride for k in ks))
    return AxisPhases(tuple(extents), tuple(taps), tuple(offsets))


@dataclass(frozen=True)
class Phase:
    """One phase combination of a transposed convolution (or the one 'phase' of a forward one)."""

    m: int      # GEMM rows: batch x output pixels of the phase
    k: int      # GEMM depth: input channels per group x taps of the phase


@functools.lru_cache(maxsize=1024)
def gemm_phases(workload: Workload) -> tuple[Phase, ...]:
    spec = workload.spec
    batch = workload.input_shape[0]
    if not spec.transposed:
        return (Phase(batch * math.prod(workload.out_spatial),
                      spec.cin_per_group * math.prod(spec.kernel_size)),)
    per_axis = [axis_phases(workload.out_spatial[i], spec.stride[i], spec.pad_before[i],
                            spec.kernel_size[i], spec.dilation[i]) for i in range(spec.ndim)]
    phases = []
    for combo in _product([range(a.count) for a in per_axis]):
        m = batch * math.prod(a.extents[p] for a, p in zip(per_axis, combo))
        k = spec.cin_per_group * math.prod(len(a.taps[p]) for a, p in zip(per_axis, combo))
        phases.append(Phase(m, k))
    return tuple(phases)


def _product(ranges):
    combos = [()]
    for r in ranges:
        combos = [c + (v,) for c in combos for v in r]
    return combos


@dataclass(frozen=True)
class Launch:
    """What a plan launches: grid, block, shared memory; derived, never chosen separately."""

    grid: tuple[int, int, int]
    threads: int
    dynamic_smem: int       # bytes (the GEMM pipeline buffers)
    static_smem: int        # bytes (__shared__ arrays)
    zero_output: bool       # split-K: the output is zeroed, then every split adds its part


def _real_bytes(workload: Workload) -> int:
    return 8 if workload.dtype == "float64" else 4


def gemm_smem_bytes(plan: CudaPlan, real_bytes: int) -> int:
    bm, bn, bk = plan.tile
    stage = bk * (bm + SMEM_PAD) + bk * (bn + SMEM_PAD)
    epilogue = bn * (bm + SMEM_PAD) if plan.math == "tf32" else 0
    return max(plan.stages * stage, epilogue) * real_bytes


def depthwise_halo(workload: Workload, tile: tuple[int, ...]) -> tuple[int, ...]:
    spec = workload.spec
    return tuple((t - 1) * s + (k - 1) * d + 1
                 for t, s, k, d in zip(tile, spec.stride, spec.kernel_size, spec.dilation))


def launch_of(plan: CudaPlan, workload: Workload) -> Launch:
    spec, batch = workload.spec, workload.input_shape[0]
    real = _real_bytes(workload)
    if plan.algorithm == "direct":
        pixels, oc_block = plan.tile
        items = batch * math.prod(workload.out_spatial) * (spec.out_channels // oc_block)
        return Launch((max(1, -(-items // pixels)), 1, 1), plan.threads, 0, 0, False)
    if plan.algorithm == "depthwise":
        tiles = math.prod(-(-o // t) for o, t in zip(workload.out_spatial, plan.tile))
        halo = math.prod(depthwise_halo(workload, plan.tile))
        return Launch((max(1, batch * spec.in_channels * tiles), 1, 1), plan.threads, 0,
                      halo * real, False)
    bm, bn, _ = plan.tile
    phases = gemm_phases(workload)
    m_max = max(p.m for p in phases)
    grid = (max(1, -(-m_max // bm)), -(-spec.cout_per_group // bn),
            spec.groups * len(phases) * plan.split_k)
    return Launch(grid, plan.threads, gemm_smem_bytes(plan, real), 0, plan.split_k > 1)


# -- which plans apply --------------------------------------------------------------------------
def algorithms_for(workload: Workload) -> tuple[str, ...]:
    spec = workload.spec
    if spec.transposed:
        return ("direct", "phase_gemm")
    if spec.cin_per_group == 1:
        return ("direct", "depthwise", "implicit_gemm")
    return ("direct", "implicit_gemm")


def maths_for(workload: Workload, arch: CudaArch) -> tuple[str, ...]:
    if workload.dtype == "float64":
        return ("fp64",)
    return ("fp32", "tf32") if arch.tensor_cores_tf32 else ("fp32",)


def check_plan(plan: CudaPlan, workload: Workload, arch: CudaArch) -> None:
    """Refuse (PlanError) a plan that cannot compute this workload on this architecture."""
    spec = workload.spec
    if not isinstance(plan, CudaPlan):
        raise PlanError(f"plan: expected a CudaPlan for a CUDA target, got {type(plan).__name__}")
    if plan.algorithm not in algorithms_for(workload):
        raise PlanError(f"plan: algorithm {plan.algorithm!r} does not apply to {spec.op} on "
                        f"the CUDA targets; choose one of {algorithms_for(workload)}")
    if plan.math not in maths_for(workload, arch):
        raise PlanError(f"plan: math={plan.math!r} does not apply to {workload.dtype} on "
                        f"{arch.name}; choose one of {maths_for(workload, arch)}")
    if plan.threads < 32 or plan.threads > MAX_THREADS or plan.threads % 32:
        raise PlanError(f"plan: threads must be a multiple of 32 in 32..{MAX_THREADS}, "
                        f"got {plan.threads}")
    if any(t < 1 for t in plan.tile):
        raise PlanError(f"plan: tile sizes must be positive, got {plan.tile}")
    {"direct": _check_direct, "depthwise": _check_depthwise}.get(
        plan.algorithm, _check_gemm)(plan, workload, arch)
    launch = launch_of(plan, workload)
    gx, gy, gz = launch.grid
    if gx > MAX_GRID_X or gy > MAX_GRID_YZ or gz > MAX_GRID_YZ:
        raise PlanError(f"plan: the grid {launch.grid} exceeds CUDA's limits "
                        f"({MAX_GRID_X}, {MAX_GRID_YZ}, {MAX_GRID_YZ}); choose larger tiles "
                        f"or a smaller split_k")
    if launch.dynamic_smem > arch.smem_per_block:
        raise PlanError(f"plan: {launch.dynamic_smem} bytes of shared memory exceed "
                        f"{arch.name}'s {arch.smem_per_block} per block; choose smaller tiles "
                        f"or fewer stages")
    if launch.static_smem > STATIC_SMEM_LIMIT:
        raise PlanError(f"plan: the halo takes {launch.static_smem} bytes of static shared "
                        f"memory, more than {STATIC_SMEM_LIMIT}; choose a smaller tile")


def _fixed(plan: CudaPlan, what: str) -> None:
    if plan.warp or plan.stages != 1 or plan.split_k != 1:
        raise PlanError(f"plan: {plan.algorithm} takes warp=- stages=1 split_k=1 ({what}), "
                        f"got warp={plan.warp or '-'} stages={plan.stages} "
                        f"split_k={plan.split_k}")
    if plan.math == "tf32":
        raise PlanError(f"plan: {plan.algorithm} has no tensor-core path; math=tf32 applies "
                        f"to {GEMM_ALGORITHMS}")


def _check_direct(plan: CudaPlan, workload: Workload, arch: CudaArch) -> None:
    _fixed(plan, "one output pixel per thread")
    if len(plan.tile) != 2:
        raise PlanError(f"plan: direct takes tile=PIXELSxCHANNELS, got {plan.tile}")
    pixels, oc_block = plan.tile
    if pixels != plan.threads:
        raise PlanError(f"plan: direct runs one thread per output pixel: threads must equal "
                        f"the tile's {pixels} pixels, got threads={plan.threads}")
    if workload.spec.cout_per_group % oc_block or oc_block > 16:
        raise PlanError(f"plan: direct's {oc_block} channels per thread must divide the output "
                        f"channels per group ({workload.spec.cout_per_group}) and be at most 16")


def _check_depthwise(plan: CudaPlan, workload: Workload, arch: CudaArch) -> None:
    _fixed(plan, "one channel's output tile per block")
    if len(plan.tile) != workload.spec.ndim:
        raise PlanError(f"plan: depthwise takes one tile size per spatial axis "
                        f"({workload.spec.ndim}), got {plan.tile}")


def _check_gemm(plan: CudaPlan, workload: Workload, arch: CudaArch) -> None:
    if len(plan.tile) != 3 or len(plan.warp) != 2:
        raise PlanError(f"plan: {plan.algorithm} takes tile=BMxBNxBK and warp=WMxWN, "
                        f"got tile={plan.tile} warp={plan.warp or '-'}")
    bm, bn, bk = plan.tile
    wm, wn = plan.warp
    if bm % wm or bn % wn:
        raise PlanError(f"plan: the warp tile {plan.warp} must divide the block tile "
                        f"{plan.tile[:2]}")
    expected = 32 * (bm // wm) * (bn // wn)
    if plan.threads != expected:
        raise PlanError(f"plan: a {bm}x{bn} block of {wm}x{wn} warps has {expected} threads, "
                        f"got threads={plan.threads}")
    if plan.math == "tf32":
        if wm % 16 or wn % 16 or bk % 8:
            raise PlanError(f"plan: math=tf32 (16x16x8 WMMA) needs the warp tile in multiples "
                            f"of 16 and BK a multiple of 8, got warp={plan.warp} BK={bk}")
    elif wm % 8 or wn % 4 or (wm // 8) * (wn // 4) > MAX_ACCUMULATORS:
        raise PlanError(f"plan: a SIMT warp tile is 8x4 threads of (WM/8)x(WN/4) outputs: WM "
                        f"a multiple of 8, WN of 4, at most {MAX_ACCUMULATORS} per thread; "
                        f"got warp={plan.warp}")
    threads = plan.threads
    if not (threads % bm == 0 or bm % threads == 0) or bk % max(1, threads // bm):
        raise PlanError(f"plan: the input-tile loader needs threads ({threads}) and BM ({bm}) "
                        f"to divide one another, and BK ({bk}) divisible by threads/BM")
    if threads % bk or (bn * bk) % threads:
        raise PlanError(f"plan: the weight-tile loader needs BK ({bk}) to divide threads "
                        f"({threads}) and threads to divide BN*BK ({bn * bk})")
    if not 1 <= plan.stages <= 4:
        raise PlanError(f"plan: stages must be 1 (no pipelining) to 4, got {plan.stages}")
    if plan.stages > 1 and not arch.async_copy:
        raise PlanError(f"plan: stages > 1 pipeline through cp.async, which {arch.name} lacks")
    if plan.split_k < 1:
        raise PlanError(f"plan: split_k must be positive, got {plan.split_k}")


# -- candidates and the cost model ------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    plan: CudaPlan
    cost_s: float
    why: str


_GEMM_TILES = ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128), (64, 32),
               (32, 64), (32, 32))
_SIMT_WARPS = ((32, 32), (64, 32), (32, 64), (32, 16), (16, 32), (16, 16))
_TF32_WARPS = ((32, 32), (64, 32), (32, 64), (16, 32), (32, 16), (16, 16))


def candidates(workload: Workload, target: Target) -> list[Candidate]:
    """Every plan the planner considers for the workload, cheapest first."""
    arch = target.cuda
    found = []
    for plan in _enumerate(workload, arch):
        try:
            check_plan(plan, workload, arch)
        except PlanError:
            continue
        if _registers(plan, workload) > REGISTER_LIMIT:   # would spill: never listed
            continue
        cost, why = cost_of(plan, workload, arch)
        found.append(Candidate(plan, cost, why))
    found.sort(key=lambda c: (c.cost_s, str(c.plan)))
    return found


def _enumerate(workload: Workload, arch: CudaArch):
    spec = workload.spec
    maths = maths_for(workload, arch)
    simt = maths[0]
    for algorithm in algorithms_for(workload):
        if algorithm == "direct":
            for pixels in (64, 128, 256):
                for oc_block in (1, 2, 4, 8, 16):
                    if spec.cout_per_group % oc_block == 0:
                        yield CudaPlan("direct", (pixels, oc_block), (), 1, 1, simt, pixels)
        elif algorithm == "depthwise":
            for tile in _depthwise_tiles(spec.ndim):
                for threads in (64, 128, 256):
                    if threads <= 2 * math.prod(tile):
                        yield CudaPlan("depthwise", tile, (), 1, 1, simt, threads)
        else:
            yield from _gemm_plans(workload, arch, algorithm, maths)


def _depthwise_tiles(ndim: int):
    if ndim == 1:
        return ((128,), (256,), (512,))
    if ndim == 2:
        return ((8, 32), (16, 16), (16, 32), (32, 32), (4, 64))
    return ((2, 8, 16), (4, 8, 8), (1, 16, 16), (4, 8, 16))


def _gemm_plans(workload: Workload, arch: CudaArch, algorithm: str, maths: tuple[str, ...]):
    k_max = max(p.k for p in gemm_phases(workload))
    stages_options = (1, 2, 3, 4) if arch.async_copy else (1,)
    for math_ in maths:
        warps = _TF32_WARPS if math_ == "tf32" else _SIMT_WARPS
        for bm, bn in _GEMM_TILES:
            for wm, wn in warps:
                if bm % wm or bn % wn:
                    continue
                threads = 32 * (bm // wm) * (bn // wn)
                if not 64 <= threads <= 256:
                    continue
                for bk in (8, 16, 32):
                    k_tiles = -(-k_max // bk)
                    for stages in stages_options:
                        if stages > 1 and k_tiles < 2:
                            continue
                        for split in _splits(k_tiles):
                            yield CudaPlan(algorithm, (bm, bn, bk), (wm, wn), stages, split,
                                           math_, threads)


def _splits(k_tiles: int):
    yield 1
    for split in (2, 4, 8, 16):
        if k_tiles >= 4 * split:   # each split keeps a few K tiles to pipeline
            yield split


def _fma_per_clock(arch: CudaArch, math_: str) -> float:
    """Multiply-adds per clock per SM at peak, for the instructions the kernels use."""
    if math_ == "tf32":   # mma.sync (WMMA); Hopper's full rate needs wgmma, which we do not use
        return {80: 512, 86: 256, 87: 256, 89: 256, 90: 640, 100: 640}.get(arch.number, 0)
    if math_ == "fp64":
        return {80: 32, 90: 64, 100: 64}.get(arch.number, 2)
    return 64 if arch.number in (75, 80) else 128


def _registers(plan: CudaPlan, workload: Workload) -> int:
    """Registers per thread, estimated on the high side (ptxas is held to the occupancy
    derived from this; an estimate too low would make it spill)."""
    if plan.is_gemm:
        if plan.math == "tf32":   # per lane: 8 floats per 16x16 accumulator, 4 per fragment
            fm, fn = plan.warp[0] // 16, plan.warp[1] // 16
            need = 8 * fm * fn + 4 * (fm + fn)
        else:
            tm, tn = plan.warp[0] // 8, plan.warp[1] // 4
            need = (2 if plan.math == "fp64" else 1) * (tm * tn + 2 * (tm + tn))
        ndim = workload.spec.ndim
        # the loader's per-thread pixel records (an offset and a coordinate per axis each)
        # and, for stride phases, each axis's phase facts
        loader = 8 * max(1, plan.tile[0] // plan.threads) * (ndim + 1)
        phases = 8 * ndim if workload.spec.transposed else 0
        return min(255, 88 + need + loader + phases)
    wide = 2 if plan.math == "fp64" else 1
    ndim = workload.spec.ndim
    if plan.algorithm == "direct":
        return min(255, 40 + 8 * ndim + wide * 2 * plan.tile[1])
    return 40 + 12 * ndim + 16 * (wide - 1)    # depthwise


def _occupancy(plan: CudaPlan, launch: Launch, arch: CudaArch, workload: Workload) -> int:
    """Blocks resident per SM: by threads, by shared memory and by registers (estimated)."""
    registers = _registers(plan, workload)
    by_threads = arch.max_threads_per_sm // plan.threads
    smem = launch.dynamic_smem + launch.static_smem
    by_smem = arch.smem_per_sm // (smem + 1024) if smem else 32
    by_registers = arch.registers_per_sm // (min(255, registers) * plan.threads)
    return max(1, min(by_threads, by_smem, by_registers, 32))


def _overlapped(*clocks: float) -> float:
    """Clocks of work on separate pipes that overlap, imperfectly."""
    return max(clocks) + 0.25 * (sum(clocks) - max(clocks))


def min_blocks_per_sm(plan: CudaPlan, workload: Workload, arch: CudaArch) -> int:
    """The occupancy the cost model assumes, as ``__launch_bounds__``'s second argument: ptxas
    then keeps each thread within 65536 / (threads x blocks) registers (never below 64)."""
    per_sm = _occupancy(plan, launch_of(plan, workload), arch, workload)
    budget = max(64, arch.registers_per_sm // (plan.threads * per_sm) // 8 * 8)
    return max(1, arch.registers_per_sm // (plan.threads * min(255, budget)))


def _gemm_rate(plan: CudaPlan, arch: CudaArch) -> float:
    """Multiply-adds per clock per SM the GEMM's inner loop can sustain: per warp and step of
    the reduction, the clocks of the SM's pipes it occupies -- FMA or tensor cores, shared
    memory loads (one warp-wide 32-bit load per clock), integer work of the tile loaders
    (about 12 instructions per element, two warp-instructions per clock)."""
    bm, bn, bk = plan.tile
    loader = 12 * (bm + bn) * bk / plan.threads / 2 / bk       # per step of k
    if plan.math == "tf32":
        fm, fn = plan.warp[0] // 16, plan.warp[1] // 16
        fmas = fm * fn * 16 * 16 * 8                            # per step of 8
        tensor = fmas / _fma_per_clock(arch, "tf32")
        loads = (fm + fn) * 4                                   # 4 loads per fragment
        converts = (fm + fn) * 4 / 2 + loader * 8
        return fmas / _overlapped(tensor, loads, converts)
    tm, tn = plan.warp[0] // 8, plan.warp[1] // 4
    wide = 2 if plan.math == "fp64" else 1
    fmas = 32 * tm * tn
    fma = fmas / _fma_per_clock(arch, plan.math)
    # vector loads of runs of up to 16 bytes; lanes of a run share them (broadcast), so the
    # bytes moved per warp are 8 lanes' rows and 4 lanes' columns, at 128 bytes per clock
    vector = 4 // wide
    instructions = -(-tm // vector) + -(-tn // vector)
    loads = max(instructions, (32 * tm + 16 * tn) * wide / 128)
    return fmas / _overlapped(fma, loads, loader)


def cost_of(plan: CudaPlan, workload: Workload, arch: CudaArch) -> tuple[float, str]:
    """Predicted seconds on ``arch``: the longest of compute on the busiest SM (at the rate
    the inner loop can issue, discounted for latency the resident warps cannot hide), DRAM
    traffic and L2 traffic, plus the launches."""
    launch = launch_of(plan, workload)
    real = _real_bytes(workload)
    spec = workload.spec
    blocks = math.prod(launch.grid)
    per_sm = _occupancy(plan, launch, arch, workload)
    busiest = -(-blocks // arch.sm_count)            # blocks on the busiest SM
    resident = min(per_sm, busiest)
    warps = resident * plan.threads // 32
    unique_bytes = real * (math.prod(workload.input_shape) + math.prod(spec.weight_shape)
                           + math.prod(workload.output_shape))
    l2_bytes = 0.0
    if plan.is_gemm:
        bm, bn, bk = plan.tile
        phases = gemm_phases(workload)
        tiles_n = -(-spec.cout_per_group // bn)
        # the work of the largest phase's blocks, every tile computed whole
        k_split = max(-(-(-(-p.k // bk)) // plan.split_k) for p in phases) * bk
        block_macs = bm * bn * k_split
        rate = _gemm_rate(plan, arch) * {1: 0.6, 2: 0.85, 3: 0.95, 4: 1.0}[plan.stages]
        hiding = 0.3 + 0.7 * min(1.0, warps / 4)     # register tiles give ILP: 4 warps suffice
        l2_bytes = real * sum(-(-p.m // bm) * tiles_n * (bm + bn) * -(-p.k // bk) * bk
                              for p in phases) * spec.groups
        if plan.split_k > 1:
            unique_bytes += 2 * plan.split_k * real * math.prod(workload.output_shape)
        what = f"{len(phases)} phase(s), {rate:.0f} FMA/clk/SM"
    elif plan.algorithm == "depthwise":
        tile = math.prod(plan.tile)
        block_macs = tile * spec.cout_per_group * math.prod(spec.kernel_size)
        rate = _fma_per_clock(arch, plan.math) * 0.25   # a shared load and index work per tap
        hiding = 0.2 + 0.8 * min(1.0, warps / 16)
        halo = math.prod(depthwise_halo(workload, plan.tile))
        l2_bytes = real * blocks * halo
        what = f"halo {halo} for a tile of {tile}"
    else:
        pixels, oc_block = plan.tile
        block_macs = pixels * oc_block * spec.cin_per_group * math.prod(spec.kernel_size)
        # per tap: the input's index mapping and bounds checks (~10 integer instructions),
        # one input load and oc_block weight loads, for oc_block multiply-adds
        rate = _fma_per_clock(arch, plan.math) * oc_block / (oc_block + 12)
        if spec.transposed:   # the gather visits every tap and skips those off the stride
            rate /= math.prod(spec.stride)
        hiding = 0.2 + 0.8 * min(1.0, warps / 16)
        l2_bytes = real * workload.macs / oc_block / 8
        what = f"{oc_block} channel(s) per thread"
    compute_s = busiest * block_macs / (rate * hiding * _CLOCK_HZ)
    dram = _DRAM_BYTES_PER_S.get(arch.number, 1.0e12)
    memory_s = max(unique_bytes / dram, l2_bytes / (3 * dram))
    launches = 2 if launch.zero_output else 1
    why = (f"{blocks} blocks of {plan.threads} threads, {resident}/SM resident on the busiest "
           f"of {arch.sm_count} SMs ({busiest} blocks), {what}; compute {compute_s * 1e6:.1f} "
           f"us, memory {memory_s * 1e6:.1f} us")
    return max(compute_s, memory_s) + launches * _LAUNCH_S, why


# -- the planner's choice ---------------------------------------------------------------------
def default_math(workload: Workload, arch: CudaArch) -> str:
    if workload.dtype == "float64":
        return "fp64"
    return "tf32" if arch.allow_tf32 and arch.tensor_cores_tf32 else "fp32"


def allowed_maths(workload: Workload, arch: CudaArch) -> tuple[str, ...]:
    """What "auto" may use: the dtype's own arithmetic, and TF32 too where allowed."""
    wanted = default_math(workload, arch)
    return ("tf32", "fp32") if wanted == "tf32" else (wanted,)


@functools.lru_cache(maxsize=4096)
def choose(workload: Workload, target: Target) -> CudaPlan:
    """The cheapest candidate of the allowed arithmetic (TF32 only where allowed)."""
    allowed = allowed_maths(workload, target.cuda)
    for cand in candidates(workload, target):
        if cand.plan.math in allowed:
            return cand.plan
    raise PlanError(f"no CUDA plan fits {workload.spec.describe()} on {target.cuda.name}")


def resolve(requested, workload: Workload, target: Target) -> CudaPlan:
    """``plan=`` of convgen.compile for a CUDA target: "auto", an algorithm name (optionally
    with ``+tf32``, e.g. "implicit_gemm+tf32"), a plan string or a CudaPlan."""
    arch = target.cuda
    if isinstance(requested, CudaPlan):
        chosen = requested
    elif requested == "auto":
        return choose(workload, target)
    elif isinstance(requested, str) and requested.split("+")[0] in ALGORITHMS:
        algorithm, _, math_ = requested.partition("+")
        math_ = math_ or default_math(workload, arch)
        if algorithm not in algorithms_for(workload):
            raise PlanError(f"plan: algorithm {algorithm!r} does not apply to "
                            f"{workload.spec.op} on the CUDA targets; choose one of "
                            f"{algorithms_for(workload)}")
        if algorithm in ("direct", "depthwise") and math_ == "tf32":
            math_ = "fp32"
        if math_ not in maths_for(workload, arch):
            raise PlanError(f"plan: math={math_!r} does not apply to {workload.dtype} on "
                            f"{arch.name}; choose one of {maths_for(workload, arch)}")
        ranked = [c.plan for c in candidates(workload, target)
                  if c.plan.algorithm == algorithm and c.plan.math == math_]
        if not ranked:
            raise PlanError(f"plan: no {algorithm} plan with math={math_} fits this workload "
                            f"on {arch.name}")
        chosen = ranked[0]
    elif isinstance(requested, str) and "=" in requested:
        chosen = CudaPlan.parse(requested)
    else:
        raise PlanError(f"plan must be 'auto', a CUDA algorithm name {ALGORITHMS} (with "
                        f"'+tf32' for tensor cores), a CUDA plan string or a CudaPlan for "
                        f"target {target.name!r}, got {requested!r}")
    check_plan(chosen, workload, arch)
    return chosen


def explain(workload: Workload, target: Target, top: int = 5) -> str:
    ranked = candidates(workload, target)
    best = choose(workload, target)
    lines = [f"{workload.spec.describe()}",
             f"input {workload.input_shape} -> output {workload.output_shape}, "
             f"{workload.dtype}, target {target.description}",
             f"{len(ranked)} candidate plans; the default math is "
             f"{default_math(workload, target.cuda)}; the best {min(top, len(ranked))}:"]
    for cand in ranked[:top]:
        mark = "*" if cand.plan == best else " "
        lines.append(f"  {mark} {cand.cost_s * 1e3:9.4f} ms  {cand.plan}")
        lines.append(f"                  {cand.why}")
    if best not in [c.plan for c in ranked[:top]]:
        chosen = next(c for c in ranked if c.plan == best)
        lines.append(f"  * {chosen.cost_s * 1e3:9.4f} ms  {chosen.plan}   (best with the "
                     f"default math)")
    return "\n".join(lines)
