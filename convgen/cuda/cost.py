"""The CUDA planner's cost model: predicted seconds for one plan on one architecture.

Analytical: compute on the busiest SM at the rate the inner loop can issue (FMA or tensor
pipes, shared-memory loads, every other instruction of the loop), discounted for latency the
resident warps cannot hide; DRAM and L2 traffic; launches. For the GEMM the loop's
instruction count and the registers come from the compiled kernel: ``calibration.json``
holds what ptxas and the SASS say of every tile the planner enumerates (calibration.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.spec import Workload
from ..target.cuda_arch import CudaArch
from . import calibration, timings
from .plan import (
    CudaPlan,
    Launch,
    depthwise_halo,
    gemm_phases,
    launch_of,
    real_bytes,
    vector_reals,
)

GEMM_REGISTERS = 128                # the GEMM kernels' register budget (__launch_bounds__)
REGISTER_LIMIT = 224                # plans estimated to need more are not listed (ptxas: 255)
_LAUNCH_S = 2.5e-6                  # a kernel launch as seen by back-to-back GPU timing, seconds
_DRAM_BYTES_PER_S = {75: 0.3e12, 80: 1.6e12, 86: 0.9e12, 87: 0.2e12, 89: 1.0e12, 90: 3.0e12,
                     100: 7.0e12, 120: 1.5e12}
_CLOCK_HZ = 1.6e9
_WGMMA_TF32_PER_CLOCK = 1024        # dense TF32 multiply-adds per clock per SM by wgmma (H100)


def _fma_per_clock(arch: CudaArch, math_: str) -> float:
    """Multiply-adds per clock per SM at peak, for the instructions the kernels use."""
    if math_ == "tf32":   # mma.sync (WMMA); Hopper's full rate needs wgmma, which we do not use
        return {80: 512, 86: 256, 87: 256, 89: 256, 90: 640, 100: 640}.get(arch.number, 0)
    if math_ == "fp64":
        return {80: 32, 90: 64, 100: 64}.get(arch.number, 2)
    return 64 if arch.number in (75, 80) else 128


def registers(plan: CudaPlan, workload: Workload) -> int:
    if plan.algorithm == "wgmma_gemm":   # 384 threads, one block: 168 (setmaxnreg moves them)
        return 168
    if plan.is_gemm:
        measured = calibration.lookup(plan.math, plan.tile, plan.warp)
        if measured:   # what ptxas gave this tile (held to 128 where it fits them)
            return measured["registers"]
    return _registers(plan, workload)


def fits_gemm_budget(plan: CudaPlan, workload: Workload) -> bool:
    """Does the GEMM tile compile into GEMM_REGISTERS without spilling?"""
    measured = calibration.lookup(plan.math, plan.tile, plan.warp)
    if measured:   # measured on a 2-d layer: a 3-d one keeps a third tap mask per copied row
        extra = max(0, workload.spec.ndim - 2) * (8 + plan.tile[0] * plan.tile[2] // 4
                                                  // plan.threads)
        return measured["fits_budget"] and measured["registers"] + extra <= GEMM_REGISTERS
    return _registers(plan, workload) <= GEMM_REGISTERS


def _registers(plan: CudaPlan, workload: Workload) -> int:
    """Registers per thread, estimated on the high side (ptxas is held to the occupancy
    derived from this; an estimate too low would make it spill). The GEMM's numbers were
    read from ptxas on the compiled main loop (tests/test_cuda_nvcc.py keeps them honest):
    its address state is about 56 registers whatever the tile."""
    if plan.is_gemm:
        wide = 2 if plan.math == "fp64" else 1
        if plan.math == "tf32":   # m16n8k8 accumulators; A and B fragments, double-buffered
            fm, fn = plan.warp[0] // 16, plan.warp[1] // 8
            need = 4 * fm * fn + 2 * (4 * fm + 2 * fn)
        else:                     # TM x TN accumulators, TM x 16 bytes of A, 16 bytes of B,
            tm, tn = plan.warp[0] // 8, plan.warp[1] // 4   # more in flight as BK grows
            need = wide * (tm * tn + 4 * tm + 4) + plan.tile[2]
        extra = max(0, workload.spec.ndim - 2) * 16   # a third tap mask per copied row
        return min(255, 56 + need + extra)
    wide = 2 if plan.math == "fp64" else 1
    ndim = workload.spec.ndim
    if plan.algorithm == "direct":   # both layouts are compiled: the channels-last one
        # keeps about 16 registers of index state per axis (ptxas, sm_80, nvcc 13: a 3-d
        # layer spilled at 64 with 8 per axis)
        return min(255, 40 + 16 * ndim + wide * 2 * plan.tile[1])
    return 40 + 12 * ndim + 16 * (wide - 1)    # depthwise


def _occupancy(plan: CudaPlan, launch: Launch, arch: CudaArch, workload: Workload) -> int:
    """Blocks resident per SM: by threads, by shared memory and by registers (estimated)."""
    needed = registers(plan, workload)
    by_threads = arch.max_threads_per_sm // plan.threads
    smem = launch.dynamic_smem + launch.static_smem
    by_smem = arch.smem_per_sm // (smem + 1024) if smem else 32
    by_registers = arch.registers_per_sm // (min(255, needed) * plan.threads)
    return max(1, min(by_threads, by_smem, by_registers, 32))


def _overlapped(*clocks: float) -> float:
    """Clocks of work on separate pipes that overlap, imperfectly."""
    return max(clocks) + 0.25 * (sum(clocks) - max(clocks))


def min_blocks_per_sm(plan: CudaPlan, workload: Workload, arch: CudaArch) -> int:
    """The occupancy the cost model assumes, as ``__launch_bounds__``'s second argument: ptxas
    then keeps each thread within 65536 / (threads x blocks) registers (never below 64)."""
    if plan.algorithm == "wgmma_gemm":
        return 1
    if plan.is_gemm:   # 128 registers where the tile fits them, else as many as it needs
        budget = GEMM_REGISTERS if fits_gemm_budget(plan, workload) else 255
        return max(1, arch.registers_per_sm // (plan.threads * budget))
    per_sm = _occupancy(plan, launch_of(plan, workload), arch, workload)
    budget = max(64, arch.registers_per_sm // (plan.threads * per_sm) // 8 * 8)
    return max(1, arch.registers_per_sm // (plan.threads * min(255, budget)))


def loop_instructions(plan: CudaPlan, real: int) -> tuple[float, float, float]:
    """Per warp and k-tile of the main loop: (multiply-adds, multiply instructions, all
    instructions). The total is read from the compiled loop (calibration.json), scaled to one
    k-tile; tiles it lacks are estimated the way the measured ones come out: the multiplies,
    the fragment loads, about 3 instructions per 16-byte copy and 40 of bookkeeping."""
    bm, bn, bk = plan.tile
    wm, wn = plan.warp
    vec = vector_reals(real)
    if plan.math == "tf32":
        multiplies = (wm // 16) * (wn // 8) * (bk // 8)       # mma.m16n8k8: 1024 FMA each
        macs = multiplies * 1024
        loads = (bk // 8) * (wm // 16 + wn // 16)             # ldmatrix.x4
    else:
        multiplies = (wm // 8) * (wn // 4) * bk               # FFMA / DFMA: 32 lanes each
        macs = multiplies * 32
        loads = (bk // vec) * (wm // 8 + wn // 4)             # 16-byte LDS
    measured = calibration.lookup(plan.math, plan.tile, plan.warp)
    if measured and measured.get("loop") and measured.get("multiplies"):
        total = measured["loop"] * multiplies / measured["multiplies"]
    else:
        chunks = max(1, (bm + bn) * (bk // vec) // plan.threads)
        total = multiplies + loads + 3 * chunks + 40
    return macs, multiplies, total


def _gemm_rate(plan: CudaPlan, arch: CudaArch, real: int) -> float:
    """Multiply-adds per clock per SM the GEMM's main loop can sustain: per warp and k-tile,
    the clocks of the SM's resources it takes -- the FMA or tensor pipe, the issue slots of
    every instruction of the loop (4 schedulers, one instruction per clock each), shared
    memory (128 bytes per clock: ldmatrix.x4 and the SIMT tiles' 16-byte loads, which 8 or 4
    distinct rows of a warp share)."""
    macs, _, total = loop_instructions(plan, real)
    _, _, bk = plan.tile
    pipe = macs / _fma_per_clock(arch, plan.math)
    issue = total / 4
    if plan.math == "tf32":
        smem = (bk // 8) * (plan.warp[0] // 16 + plan.warp[1] // 16) * 512 / 128
    else:
        smem = (bk // vector_reals(real)) * (plan.warp[0] // 8 + plan.warp[1] // 4)
    return macs / _overlapped(pipe, issue, smem)


@dataclass(frozen=True)
class Terms:
    """What the analytical model derives for one plan, before it is turned into seconds:
    compute on the busiest SM, the bytes that must cross DRAM and L2, the split-K chain,
    the launches. bench/fit_cuda_model.py fits measured GPU times to these."""

    kind: str              # "wgmma", "mma" (TF32 mma.sync), "fp32" (SIMT GEMM), "direct",
                           # "depthwise"
    compute_s: float       # the busiest SM's work at the rate its loop can issue
    unique_bytes: float    # every operand read once and the output written once
    l2_bytes: float        # what the blocks read through L2
    dram_bytes_per_s: float
    split_k: int
    output_bytes: float
    launches: int
    why: str

    @property
    def memory_s(self) -> float:
        return max(self.unique_bytes / self.dram_bytes_per_s,
                   self.l2_bytes / (3 * self.dram_bytes_per_s))


def cost_of(plan: CudaPlan, workload: Workload, arch: CudaArch) -> tuple[float, str]:
    """Predicted seconds on ``arch``, and the reasoning in a line. Where GPU timings of this
    architecture were measured (timings.json, fitted by bench/fit_cuda_model.py), the terms
    are weighed as they fitted; elsewhere, analytically: the longest of compute, DRAM and L2
    traffic (the split-K partial sums counted as traffic), plus the launches. One plan
    alone: a direct kernel on a dense layer is priced against the layer's GEMMs only among
    them (costs_of, as the planner prices)."""
    return costs_of([plan], workload, arch)[0]


# The direct kernel was timed on grouped and depthwise layers only (a few channels per
# group): on denser layers the fitted weights have nothing to say about it
DIRECT_TIMED_BELOW = 16


def costs_of(plans: list[CudaPlan], workload: Workload,
             arch: CudaArch) -> list[tuple[float, str]]:
    """cost_of for each of ``plans`` (of one workload). Where measured weights apply, a
    direct kernel on a layer of DIRECT_TIMED_BELOW or more channels per group keeps the
    analytical model's judgement against the SIMT GEMM: its analytical seconds scaled as the
    fitted model scales the GEMM the fitted model ranks first."""
    terms = [terms_of(plan, workload, arch) for plan in plans]
    fitted = timings.for_arch(arch)
    if fitted is None:
        return [(analytical_seconds(t), t.why) for t in terms]
    note = f"; weighed as timed on {fitted.gpu}"
    priced = [(fitted.seconds(t), t.why + note) for t in terms]
    gemms = [(seconds, t) for (seconds, _), t in zip(priced, terms) if t.kind == "fp32"]
    if workload.spec.cin_per_group < DIRECT_TIMED_BELOW or not gemms:
        return priced
    seconds, best = min(gemms, key=lambda g: g[0])
    scale = seconds / analytical_seconds(best)
    return [(analytical_seconds(t) * scale, t.why + f"; analytical x {scale:.2f}, as the "
             f"SIMT GEMM (the direct kernel was never timed at this size)")
            if t.kind == "direct" else p for p, t in zip(priced, terms)]


def analytical_seconds(t: Terms) -> float:
    """The terms as seconds without measurements: the longest of compute, DRAM and L2
    traffic (split-K's partial sums counted as traffic), plus the launches."""
    split_bytes = 2 * t.split_k * t.output_bytes if t.split_k > 1 else 0.0
    memory_s = max((t.unique_bytes + split_bytes) / t.dram_bytes_per_s,
                   t.l2_bytes / (3 * t.dram_bytes_per_s))
    return max(t.compute_s, memory_s) + t.launches * _LAUNCH_S


def terms_of(plan: CudaPlan, workload: Workload, arch: CudaArch) -> Terms:
    """The analytical terms: compute on the busiest SM (at the rate the inner loop can issue,
    discounted for latency the resident warps cannot hide), DRAM and L2 traffic, launches."""
    launch = launch_of(plan, workload)
    real = real_bytes(workload)
    spec = workload.spec
    blocks = math.prod(launch.grid)
    per_sm = _occupancy(plan, launch, arch, workload)
    busiest = -(-blocks // arch.sm_count)            # blocks on the busiest SM
    resident = min(per_sm, busiest)
    warps = resident * plan.threads // 32
    unique_bytes = real * (math.prod(workload.input_shape) + math.prod(spec.weight_shape)
                           + math.prod(workload.output_shape))
    l2_bytes = 0.0
    if plan.algorithm == "wgmma_gemm":
        bm, bn, bk = plan.tile
        m = workload.input_shape[0] * math.prod(workload.out_spatial)
        k = -(-spec.cin_per_group // bk) * bk * math.prod(spec.kernel_size)
        block_macs = bm * bn * k
        rate = _WGMMA_TF32_PER_CLOCK * 0.75     # TMA-fed, warp-specialised: most of the peak
        hiding = 1.0
        l2_bytes = real * -(-m // bm) * -(-spec.out_channels // bn) * (bm + bn) * k
        kind, what = "wgmma", f"wgmma, {rate:.0f} FMA/clk/SM"
    elif plan.is_gemm:
        bm, bn, bk = plan.tile
        phases = gemm_phases(workload)
        tiles_n = -(-spec.cout_per_group // bn)
        # the work of the largest phase's blocks, every tile computed whole;
        # k-tiles hold BK channels of one tap: channels per group padded to 16 bytes, then
        # to BK, per tap (a layer of 4 channels per group runs 8x the MMAs with BK=32)
        cp = -(-spec.cin_per_group // vector_reals(real)) * vector_reals(real)
        per_tap = -(-cp // bk)
        k_tiles = [p.k // spec.cin_per_group * per_tap for p in phases]
        k_split = max(-(-t // plan.split_k) for t in k_tiles) * bk
        block_macs = bm * bn * k_split
        rate = _gemm_rate(plan, arch, real) * {1: 0.6, 2: 0.85, 3: 0.95, 4: 1.0}[plan.stages]
        hiding = 0.3 + 0.7 * min(1.0, warps / 4)     # register tiles give ILP: 4 warps suffice
        l2_bytes = real * sum(-(-p.m // bm) * tiles_n * (bm + bn) * t * bk
                              for p, t in zip(phases, k_tiles)) * spec.groups
        kind = "mma" if plan.math == "tf32" else "fp32"
        what = f"{len(phases)} phase(s), {rate:.0f} FMA/clk/SM"
    elif plan.algorithm == "depthwise":
        tile = math.prod(plan.tile)
        block_macs = tile * spec.cout_per_group * math.prod(spec.kernel_size)
        rate = _fma_per_clock(arch, plan.math) * 0.25   # a shared load and index work per tap
        hiding = 0.2 + 0.8 * min(1.0, warps / 16)
        halo = math.prod(depthwise_halo(workload, plan.tile))
        l2_bytes = real * blocks * halo
        kind, what = "depthwise", f"halo {halo} for a tile of {tile}"
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
        kind, what = "direct", f"{oc_block} channel(s) per thread"
    compute_s = busiest * block_macs / (rate * hiding * _CLOCK_HZ)
    dram = _DRAM_BYTES_PER_S.get(arch.number, 1.0e12)
    memory_s = max(unique_bytes / dram, l2_bytes / (3 * dram))
    why = (f"{blocks} blocks of {plan.threads} threads, {resident}/SM resident on the busiest "
           f"of {arch.sm_count} SMs ({busiest} blocks), {what}; compute {compute_s * 1e6:.1f} "
           f"us, memory {memory_s * 1e6:.1f} us")
    return Terms(kind, compute_s, unique_bytes, l2_bytes, dram, plan.split_k,
                 real * math.prod(workload.output_shape), 2 if launch.zero_output else 1, why)
