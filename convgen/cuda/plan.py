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
                   blocks that take turns adding into each output tile (serial split-K).
                   ``math=tf32`` runs the products on tensor cores through mma.sync
                   m16n8k8 (inputs rounded to TF32: 10 mantissa bits).
``wgmma_gemm``     Hopper only (sm_90a): the implicit GEMM with TMA loads (im2col for the
                   input, tiled for the weights), a producer warpgroup and two consumer
                   warpgroups running wgmma on an mbarrier ring; tile = (128, BN, 32),
                   warp = (64, BN) (a consumer's part), threads = 384, TF32. 2-d forward
                   convolutions, one group, input channels a multiple of 32. The emulator
                   cannot run it: its results are proven on a Hopper GPU only.
``phase_gemm``     the same kernel for transposed convolutions, by stride-phase
                   decomposition: the outputs of one phase (o mod stride) take a fixed
                   subset of the kernel taps, so each phase is a dense implicit GEMM that
                   never multiplies by the zeros a scatter would insert.

This module holds the type, which plans apply and are legal on an architecture, and the
plans the planner considers; ``planner.py`` ranks them with the analytical model of
``cost.py`` (SM count, shared memory, occupancy, waves, roofline). ``str(plan)`` is stable
and complete, and parses back.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..core import lowering
from ..core.dtypes import itemsize
from ..core.planning import parse_fields
from ..core.spec import Workload
from ..target.cuda_arch import CudaArch

ALGORITHMS = ("direct", "depthwise", "implicit_gemm", "phase_gemm", "wgmma_gemm")
MATHS = ("fp32", "fp64", "tf32")
GEMM_ALGORITHMS = ("implicit_gemm", "phase_gemm")
STATIC_SMEM_LIMIT = 48 * 1024       # __shared__ arrays (the depthwise halo)
MAX_THREADS = 1024
MAX_GRID_X, MAX_GRID_YZ = 2 ** 31 - 1, 65535
MAX_ACCUMULATORS = 64               # per thread in the SIMT GEMM: more spills registers


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
    def parse(cls, text: str) -> CudaPlan:
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
class Phase:
    """One phase combination of a transposed convolution (or the one 'phase' of a forward one)."""

    m: int      # GEMM rows: batch x output pixels of the phase
    k: int      # GEMM depth: input channels per group x taps of the phase


@functools.lru_cache(maxsize=1024)
def gemm_phases(workload: Workload) -> tuple[Phase, ...]:
    """One implicit GEMM per phase combination of the shared lowering (``core.lowering``),
    empty phases included: the grid has a slice for every one, and empty slices exit."""
    spec = workload.spec
    batch = workload.input_shape[0]
    per_axis = [lowering.axis_phases(workload, ax) for ax in range(spec.ndim)]
    phases = [()]
    for axis in per_axis:
        phases = [c + (p,) for c in phases for p in axis]
    return tuple(Phase(batch * math.prod(p.count for p in combo),
                       spec.cin_per_group * math.prod(len(p.taps) for p in combo))
                 for combo in phases)


@dataclass(frozen=True)
class Launch:
    """What a plan launches: grid, block, shared memory; derived, never chosen separately."""

    grid: tuple[int, int, int]
    threads: int
    dynamic_smem: int       # bytes (the GEMM pipeline buffers)
    static_smem: int        # bytes (__shared__ arrays)
    zero_output: bool       # the output is zeroed before the launch (no kernel needs it now:
                            # split-K's splits take turns at each tile, see implicit_gemm)


def real_bytes(workload: Workload) -> int:
    return itemsize(workload.dtype)


def vector_reals(real_bytes: int) -> int:
    """Reals per 16-byte copy: the GEMM loaders move 16 bytes per cp.async."""
    return 16 // real_bytes


def epilogue_pitches(plan: CudaPlan, real_bytes: int) -> tuple[int, int]:
    """Row pitches (reals) of the epilogue tile, [BN][LDC_N] for NCHW outputs and [BM][LDC_M]
    for NHWC: chosen so the warps' writes of their fragments hit distinct banks."""
    bm, bn, _ = plan.tile
    return (bm + 4 if plan.math == "tf32" else bm + 8), bn + 4


def gemm_smem_bytes(plan: CudaPlan, real_bytes: int) -> int:
    """STAGES slabs of [BM + BN][BK + one 16-byte pad] reals, or the epilogue tile."""
    bm, bn, bk = plan.tile
    stage = (bm + bn) * (bk + vector_reals(real_bytes))
    ldc_n, ldc_m = epilogue_pitches(plan, real_bytes)
    return max(plan.stages * stage, bn * ldc_n, bm * ldc_m) * real_bytes


def depthwise_halo(workload: Workload, tile: tuple[int, ...]) -> tuple[int, ...]:
    spec = workload.spec
    return tuple((t - 1) * s + (k - 1) * d + 1
                 for t, s, k, d in zip(tile, spec.stride, spec.kernel_size, spec.dilation))


def depthwise_run(tile: tuple[int, ...]) -> int:
    """Outputs per thread along the innermost axis: 4, 2 or 1, dividing the tile's width."""
    return next(r for r in (4, 2, 1) if tile[-1] % r == 0)


def depthwise_vector_rows(workload: Workload) -> bool:
    """Can the halo's rows load as 16-byte vectors (zero padding, rows of whole vectors)?"""
    return (workload.spec.padding_mode == "zeros"
            and workload.in_spatial[-1] % vector_reals(real_bytes(workload)) == 0)


def depthwise_smem_reals(workload: Workload, tile: tuple[int, ...]) -> int:
    """The staged halo: its rows, each padded for the vector loads' alignment shift."""
    halo = depthwise_halo(workload, tile)
    row = halo[-1]
    if depthwise_vector_rows(workload):
        vec = vector_reals(real_bytes(workload))
        row = -(-(row + vec - 1) // vec) * vec
    return math.prod(halo[:-1]) * row


def launch_of(plan: CudaPlan, workload: Workload) -> Launch:
    spec, batch = workload.spec, workload.input_shape[0]
    real = real_bytes(workload)
    if plan.algorithm == "direct":
        pixels, oc_block = plan.tile
        items = batch * math.prod(workload.out_spatial) * (spec.out_channels // oc_block)
        return Launch((max(1, -(-items // pixels)), 1, 1), plan.threads, 0, 0, False)
    if plan.algorithm == "depthwise":
        tiles = math.prod(-(-o // t) for o, t in zip(workload.out_spatial, plan.tile))
        return Launch((max(1, batch * spec.in_channels * tiles), 1, 1), plan.threads, 0,
                      depthwise_smem_reals(workload, plan.tile) * real, False)
    if plan.algorithm == "wgmma_gemm":
        bm, bn, bk = plan.tile
        m = batch * math.prod(workload.out_spatial)
        smem = plan.stages * (bm + bn) * bk * 4 + 1024 + 16 * plan.stages
        return Launch((max(1, -(-m // bm)), -(-spec.out_channels // bn), 1), plan.threads,
                      smem, 0, False)
    bm, bn, _ = plan.tile
    phases = gemm_phases(workload)
    m_max = max(p.m for p in phases)
    grid = (max(1, -(-m_max // bm)), -(-spec.cout_per_group // bn),
            spec.groups * len(phases) * plan.split_k)
    return Launch(grid, plan.threads, gemm_smem_bytes(plan, real), 0, False)


# -- which plans apply --------------------------------------------------------------------------
def algorithms_for(workload: Workload) -> tuple[str, ...]:
    spec = workload.spec
    if spec.transposed:
        return ("direct", "phase_gemm")
    if spec.cin_per_group == 1:
        return ("direct", "depthwise", "implicit_gemm")
    if spec.ndim == 2:
        return ("direct", "implicit_gemm", "wgmma_gemm")
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
    {"direct": _check_direct, "depthwise": _check_depthwise, "wgmma_gemm": _check_wgmma}.get(
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


WGMMA_N = (64, 128, 256)


def wgmma_applies(workload: Workload, arch: CudaArch) -> str | None:
    """None if the sm_90a kernel can compute this workload here, else why not."""
    spec = workload.spec
    if arch.name != "sm_90a":
        return f"it needs sm_90a (wgmma, TMA), not {arch.name}"
    if spec.transposed or spec.ndim != 2 or spec.groups != 1:
        return "it takes 2-d forward convolutions of one group"
    if workload.dtype != "float32" or spec.cin_per_group % 32:
        return "it takes float32 inputs with a multiple of 32 input channels"
    if math.prod(workload.input_shape) >= 2 ** 31:
        return "it indexes the input in 32 bits"
    return None


def _check_wgmma(plan: CudaPlan, workload: Workload, arch: CudaArch) -> None:
    why = wgmma_applies(workload, arch)
    if why:
        raise PlanError(f"plan: wgmma_gemm does not apply: {why}")
    if len(plan.tile) != 3 or plan.tile[0] != 128 or plan.tile[2] != 32 \
            or plan.tile[1] not in WGMMA_N or plan.warp != (64, plan.tile[1]):
        raise PlanError(f"plan: wgmma_gemm takes tile=128xBNx32 and warp=64xBN with BN in "
                        f"{WGMMA_N}, got tile={plan.tile} warp={plan.warp or '-'}")
    if plan.threads != 384 or plan.split_k != 1 or not 2 <= plan.stages <= 6:
        raise PlanError(f"plan: wgmma_gemm runs 384 threads (a producer and two consumer "
                        f"warpgroups), split_k=1, stages 2 to 6; got threads={plan.threads} "
                        f"split_k={plan.split_k} stages={plan.stages}")
    if plan.math != "tf32":
        raise PlanError("plan: wgmma_gemm computes in TF32 (math=tf32)")


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
            raise PlanError(f"plan: math=tf32 (mma.sync m16n8k8, B fragments by pairs) needs "
                            f"the warp tile in multiples of 16 and BK a multiple of 8, got "
                            f"warp={plan.warp} BK={bk}")
    elif wm % 8 or wn % 4 or (wm // 8) * (wn // 4) > MAX_ACCUMULATORS:
        raise PlanError(f"plan: a SIMT warp tile is 8x4 threads of (WM/8)x(WN/4) outputs: WM "
                        f"a multiple of 8, WN of 4, at most {MAX_ACCUMULATORS} per thread; "
                        f"got warp={plan.warp}")
    threads = plan.threads
    chunks_per_row = bk // vector_reals(real_bytes(workload))
    for rows, what in ((bm, "BM"), (bn, "BN")):
        if bk % vector_reals(real_bytes(workload)) or threads % chunks_per_row or (
                rows * chunks_per_row > threads and rows * chunks_per_row % threads) or (
                threads % rows and rows % threads):
            raise PlanError(f"plan: the 16-byte slab loaders and the epilogue need BK ({bk}) a "
                            f"multiple of 16 bytes, threads ({threads}) and {what} ({rows}) "
                            f"to divide one another, and {what}*BK/16 bytes divisible by "
                            f"the threads where it exceeds them")
    longest = max(len(p.taps) for ax in range(workload.spec.ndim)
                  for p in lowering.axis_phases(workload, ax))
    if longest > 64:
        raise PlanError(f"plan: {plan.algorithm} keeps a 64-bit tap mask per axis; this layer "
                        f"has {longest} taps along one axis: use algorithm=direct")
    if max(p.m for p in gemm_phases(workload)) >= 2 ** 31 - max(plan.tile):
        raise PlanError(f"plan: {plan.algorithm} indexes output pixels in 32 bits; this "
                        f"workload has too many: split the batch")
    if not 1 <= plan.stages <= 4:
        raise PlanError(f"plan: stages must be 1 (no pipelining) to 4, got {plan.stages}")
    if plan.stages > 1 and not arch.async_copy:
        raise PlanError(f"plan: stages > 1 pipeline through cp.async, which {arch.name} lacks")
    if plan.split_k < 1:
        raise PlanError(f"plan: split_k must be positive, got {plan.split_k}")


# -- the plans the planner considers -----------------------------------------------------------
_GEMM_TILES = ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128), (64, 32),
               (32, 64), (32, 32))
_SIMT_WARPS = ((32, 32), (64, 32), (32, 64), (32, 16), (16, 32), (16, 16))
_TF32_WARPS = ((32, 32), (64, 32), (32, 64), (16, 32), (32, 16), (16, 16))


def enumerate_plans(workload: Workload, arch: CudaArch):
    """Every plan the planner considers (check_plan still refuses some of them)."""
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
                for threads in (64, 128, 256):   # a thread per run of outputs, or more
                    if threads <= 2 * math.prod(tile) // depthwise_run(tile):
                        yield CudaPlan("depthwise", tile, (), 1, 1, simt, threads)
        elif algorithm == "wgmma_gemm":
            if "tf32" in maths and wgmma_applies(workload, arch) is None:
                for bn in WGMMA_N[:2]:
                    for stages in (3, 4):
                        yield CudaPlan("wgmma_gemm", (128, bn, 32), (64, bn), stages, 1,
                                       "tf32", 384)
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
                    if math_ == "tf32" and not _busy_enough(wm, wn, bk, workload,
                                                            (bm + bn) * bk // 4 // threads):
                        continue
                    k_tiles = -(-k_max // bk)
                    for stages in stages_options:
                        if stages > 1 and k_tiles < 2:
                            continue
                        for split in _splits(k_tiles):
                            yield CudaPlan(algorithm, (bm, bn, bk), (wm, wn), stages, split,
                                           math_, threads)


def _busy_enough(wm: int, wn: int, bk: int, workload: Workload, copies: int) -> bool:
    """A TF32 tile worth its k-tile's cost: at least 32 mma.m16n8k8 per warp (16 where the
    channels per group are too few to fill a deeper k-tile) against the fixed part
    (barrier, waits, the tap odometer), and at most one 16-byte copy per thread for every 4
    of them (each copy costs about 3 instructions: its offset, address and predicate). This
    keeps the main loop near 4 other instructions per HMMA in SASS."""
    hmma = (wm // 16) * (wn // 8) * (bk // 8)
    cp = -(-workload.spec.cin_per_group // vector_reals(real_bytes(workload))) * 4
    deep = hmma >= 32 or (cp <= bk // 2 and hmma >= 16 and bk == 8)
    return deep and copies * 4 <= hmma


def _splits(k_tiles: int):
    yield 1
    for split in (2, 4, 8, 16):
        if k_tiles >= 4 * split:   # each split keeps a few K tiles to pipeline
            yield split


