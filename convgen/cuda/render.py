"""Render: (workload, CudaPlan, target, prefix) -> CUDA C++ source, through templates/cuda/.

Python decides -- every size, tile, grid and phase table is computed here and baked into
the source as a constant; the templates only lay the data out. The same source compiles
with nvcc for a GPU and with the host compiler against the emulator (templates/cuda/emu).
"""
from __future__ import annotations

import itertools
import math

from ..core import lowering
from ..core.codegen import header_info, render_template
from ..core.dtypes import ctype, itemsize
from ..core.paths import templates_dir
from ..core.spec import AXIS_NAMES, Workload
from ..target import Target
from .cost import min_blocks_per_sm
from .plan import (
    CudaPlan,
    PlanError,
    depthwise_halo,
    depthwise_run,
    depthwise_smem_reals,
    depthwise_vector_rows,
    epilogue_pitches,
    launch_of,
    vector_reals,
)

TEMPLATES = {"direct": "cuda/direct.cu.j2", "depthwise": "cuda/depthwise.cu.j2",
             "implicit_gemm": "cuda/implicit_gemm.cu.j2",
             "phase_gemm": "cuda/implicit_gemm.cu.j2", "wgmma_gemm": "cuda/wgmma_gemm.cu.j2"}
EMULATOR_HEADER = "cuda/emu/cuda_emu.h"


def emulator_include_dir():
    return templates_dir() / "cuda" / "emu"


def entry_names(prefix: str) -> tuple[str, str]:
    """The exported host functions: the launcher and the status description."""
    return f"{prefix}_launch", f"{prefix}_error"


def _axes(workload: Workload) -> list[dict]:
    spec = workload.spec
    names = AXIS_NAMES[spec.ndim]
    axes = []
    for i, name in enumerate(names):
        axes.append({
            "name": name, "NAME": name.upper(), "in_size": workload.in_spatial[i],
            "out_size": workload.out_spatial[i], "kernel": spec.kernel_size[i],
            "stride": spec.stride[i], "dilation": spec.dilation[i], "pad": spec.pad_before[i],
            "pad_after": spec.pad_after[i],
            "in_stride": math.prod(workload.in_spatial[i + 1:]),
            "out_stride": math.prod(workload.out_spatial[i + 1:]),
            "k_stride": math.prod(spec.kernel_size[i + 1:]),
        })
    return axes


def _direct(workload: Workload, plan: CudaPlan, axes: list[dict]) -> dict:
    _, oc_block = plan.tile
    spec = workload.spec
    return {"oc_block": oc_block,
            "items": workload.input_shape[0] * math.prod(workload.out_spatial)
            * (spec.out_channels // oc_block)}


def _depthwise(workload: Workload, plan: CudaPlan, axes: list[dict]) -> dict:
    halo = depthwise_halo(workload, plan.tile)
    for i, ax in enumerate(axes):
        ax["tile"] = plan.tile[i]
        ax["halo"] = halo[i]
        ax["tiles"] = -(-ax["out_size"] // plan.tile[i])
    rows = math.prod(halo[:-1])
    return {"tiles": math.prod(ax["tiles"] for ax in axes), "run": depthwise_run(plan.tile),
            "vec": vector_reals(itemsize(workload.dtype)),
            "vector_rows": depthwise_vector_rows(workload),
            "halo_row": depthwise_smem_reals(workload, plan.tile) // rows,
            "taps_in_registers": math.prod(workload.spec.kernel_size) <= 64}


def _phase_axis(phase: lowering.AxisPhase, ax: dict, x_pad: int) -> dict:
    """One axis of one phase as the main loop's constants: taps t < NT read input
    q * IS + C0 + t * DC and weight tap K0 + t * DK (the taps of a phase are evenly spaced)."""
    taps, offsets = phase.taps, phase.offsets
    steps = {b - a for a, b in itertools.pairwise(offsets)}
    ksteps = {b - a for a, b in itertools.pairwise(taps)}
    if len(steps) > 1 or len(ksteps) > 1:   # (r + pad - k * dil) % s == 0: a progression
        raise AssertionError(f"uneven taps {taps} in a phase")
    return {"name": ax["name"], "NAME": ax["NAME"], "count": phase.count,
            "start": phase.start, "out_step": phase.out_step, "in_step": phase.in_step,
            "ntaps": max(1, len(taps)), "c0": (offsets[0] if taps else 0) + x_pad,
            "dc": steps.pop() if steps else 0, "k0": taps[0] if taps else 0,
            "dk": ksteps.pop() if ksteps else 0}


def _phase_deltas(axes: list[dict], phase_axes: list[dict], cs: int, cp: int, bk: int,
                  cch: int) -> None:
    """DX / DW of each axis: what the input and weight offsets move by when that axis's tap
    counter advances (the channel chunk and every inner axis wrapping back to 0)."""
    inner_x = inner_w = (cch - 1) * bk
    for ax, pa in zip(reversed(axes), reversed(phase_axes)):
        step_x = pa["dc"] * ax["x_stride"] * cs
        step_w = pa["dk"] * ax["k_stride"] * cp
        pa["dx"], pa["dw"] = step_x - inner_x, step_w - inner_w
        inner_x, inner_w = pa["ntaps"] * step_x, pa["ntaps"] * step_w


def _gemm(workload: Workload, plan: CudaPlan, axes: list[dict]) -> dict:
    spec = workload.spec
    bm, bn, bk = plan.tile
    wm, wn = plan.warp
    real = itemsize(workload.dtype)
    vec = vector_reals(real)
    cp = -(-spec.cin_per_group // vec) * vec
    cs = spec.groups * cp
    cch = -(-cp // bk)
    kch = bk // vec
    padded = not spec.transposed and spec.padding_mode != "zeros"
    for ax in axes:
        extra = ax["pad"] + ax["pad_after"] if padded else 0
        ax["x_size"] = ax["in_size"] + extra
        ax["x_pad"] = ax["pad"] if padded else 0
    for i, ax in enumerate(axes):
        ax["x_stride"] = math.prod(a["x_size"] for a in axes[i + 1:])
    per_axis = [lowering.axis_phases(workload, i) for i in range(spec.ndim)]
    for ax, phases_ in zip(axes, per_axis):
        width = max(len(p.taps) for p in phases_)
        ax["mask_type"] = "unsigned" if width <= 32 else "unsigned long long"
    combos = [()]
    for phases_ in per_axis:
        combos = [c + (p,) for c in combos for p in phases_]
    phases = []
    batch = workload.input_shape[0]
    for combo in combos:
        phase_axes = [_phase_axis(p, ax, ax["x_pad"]) for p, ax in zip(combo, axes)]
        ntaps = math.prod(len(p.taps) for p in combo)
        _phase_deltas(axes, phase_axes, cs, cp, bk, cch)
        phases.append({"axes": phase_axes, "m": batch * math.prod(p.count for p in combo),
                       "ntaps": ntaps, "k_tiles": ntaps * cch})
    x_spatial = math.prod(ax["x_size"] for ax in axes)
    largest = max(batch * x_spatial * cs, math.prod(spec.weight_shape) * 2,
                  math.prod(workload.output_shape), math.prod(workload.input_shape),
                  spec.groups * spec.cout_per_group * math.prod(spec.kernel_size) * cp)
    ldc_n, ldc_m = epilogue_pitches(plan, real)
    return {
        "bm": bm, "bn": bn, "bk": bk, "wm": wm, "wn": wn, "warps_m": bm // wm,
        "stages": plan.stages, "split_k": plan.split_k, "math": plan.math, "phases": phases,
        "vec": vec, "cp": cp, "cs": cs, "cch": cch,
        "a_chunks": max(1, bm * kch // plan.threads), "b_chunks": max(1, bn * kch // plan.threads),
        "ldc_n": ldc_n, "ldc_m": ldc_m, "x_spatial": x_spatial,
        "index_type": "int" if largest < 2 ** 31 - 2 ** 20 else "long long",
        "cl_direct": not padded and cp == spec.cin_per_group,
        "w_direct": (not spec.transposed and math.prod(spec.kernel_size) == 1
                     and cp == spec.cin_per_group),
        "tma": False,
    }


def _wgmma(workload: Workload, plan: CudaPlan, axes: list[dict]) -> dict:
    """The sm_80 path's layout facts (the prologue is shared), Hopper's tile."""
    ctx = _gemm(workload, CudaPlan("implicit_gemm", plan.tile, (32, 32), 1, 1, "tf32", 128),
                axes)
    ctx.update(bm=plan.tile[0], bn=plan.tile[1], stages=plan.stages, tma=True,
               w_direct=False)
    return ctx


_SPECIFIC = {"direct": _direct, "depthwise": _depthwise, "implicit_gemm": _gemm,
             "phase_gemm": _gemm, "wgmma_gemm": _wgmma}


def context(workload: Workload, plan: CudaPlan, target: Target, prefix: str) -> dict:
    spec = workload.spec
    launch = launch_of(plan, workload)
    real = itemsize(workload.dtype)
    axes = _axes(workload)
    entry, error_entry = entry_names(prefix)
    ctx = {
        "info": {**header_info(workload, plan, target), "prefix": prefix},
        "prefix": prefix,
        "kernel_name": f"{prefix}_kernel",
        "entry": entry, "error_entry": error_entry,
        "ctype": ctype(workload.dtype),
        "batch": workload.input_shape[0],
        "in_channels": spec.in_channels, "out_channels": spec.out_channels,
        "groups": spec.groups,
        "cin_per_group": spec.cin_per_group, "cout_per_group": spec.cout_per_group,
        "kernel_taps": math.prod(spec.kernel_size),
        "in_spatial": math.prod(workload.in_spatial),
        "out_spatial": math.prod(workload.out_spatial),
        "has_bias": spec.bias, "transposed": spec.transposed,
        "padding_mode": spec.padding_mode,
        "axes": axes,
        "launch": launch,
        "min_blocks": min_blocks_per_sm(plan, workload, target.cuda),
        "bytes": {"x": real * math.prod(workload.input_shape),
                  "w": real * math.prod(spec.weight_shape),
                  "b": real * spec.out_channels if spec.bias else 0,
                  "y": real * math.prod(workload.output_shape)},
    }
    ctx.update(_SPECIFIC[plan.algorithm](workload, plan, axes))
    return ctx


def render(workload: Workload, plan: CudaPlan, target: Target,
           prefix: str) -> tuple[tuple[str, str], ...]:
    if plan.algorithm == "wgmma_gemm" and target.emulated:
        raise PlanError("plan: wgmma_gemm (TMA and wgmma, sm_90a) cannot be emulated; target "
                        "'cuda-emu' runs implicit_gemm, whose main loop is the same GEMM")
    text = render_template(TEMPLATES[plan.algorithm], context(workload, plan, target, prefix),
                           plan)
    return (("kernel.cu", text),)
