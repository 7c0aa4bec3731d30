"""Render: (workload, CudaPlan, target, prefix) -> CUDA C++ source, through templates/cuda/.

Python decides -- every size, tile, grid and phase table is computed here and baked into
the source as a constant; the templates only lay the data out. The same source compiles
with nvcc for a GPU and with the host compiler against the emulator (templates/cuda/emu).
"""
from __future__ import annotations

import math

from ..core import lowering
from ..core.codegen import header_info, render_template
from ..core.dtypes import ctype, itemsize
from ..core.paths import templates_dir
from ..core.spec import AXIS_NAMES, Workload
from ..target import Target
from .cost import min_blocks_per_sm
from .plan import SMEM_PAD, CudaPlan, depthwise_halo, gemm_phases, launch_of

TEMPLATES = {"direct": "cuda/direct.cu.j2", "depthwise": "cuda/depthwise.cu.j2",
             "implicit_gemm": "cuda/implicit_gemm.cu.j2",
             "phase_gemm": "cuda/implicit_gemm.cu.j2"}
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
        ax["halo_stride"] = math.prod(halo[i + 1:])
    return {"tile_pixels": math.prod(plan.tile), "halo_pixels": math.prod(halo),
            "tiles": math.prod(ax["tiles"] for ax in axes)}


def _gemm(workload: Workload, plan: CudaPlan, axes: list[dict]) -> dict:
    spec = workload.spec
    bm, bn, bk = plan.tile
    wm, wn = plan.warp
    threads = plan.threads
    if spec.transposed:
        for i, ax in enumerate(axes):
            phases = lowering.axis_phases(workload, i)
            width = max([1] + [len(p.taps) for p in phases])
            ax["phase_count"] = len(phases)
            ax["max_taps"] = width
            ax["phase_extents"] = [p.count for p in phases]
            ax["phase_ntaps"] = [len(p.taps) for p in phases]
            ax["phase_taps"] = [v for p in phases for v in p.taps + (0,) * (width - len(p.taps))]
            ax["phase_offsets"] = [v for p in phases
                                   for v in p.offsets + (0,) * (width - len(p.offsets))]
    a_kstep = max(1, threads // bm)
    return {
        "bm": bm, "bn": bn, "bk": bk, "wm": wm, "wn": wn, "warps_m": bm // wm,
        "tm": wm // 8, "tn": wn // 4,
        "stages": plan.stages, "split_k": plan.split_k, "math": plan.math,
        "phases": len(gemm_phases(workload)),
        "a_ld": bm + SMEM_PAD, "b_ld": bn + SMEM_PAD, "c_ld": bm + SMEM_PAD,
        "a_mq": max(1, bm // threads), "a_kstep": a_kstep, "a_krows": bk // a_kstep,
        "b_nstep": threads // bk, "b_nrows": bn * bk // threads,
    }


_SPECIFIC = {"direct": _direct, "depthwise": _depthwise, "implicit_gemm": _gemm,
             "phase_gemm": _gemm}


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
        "uses_pipeline": plan.is_gemm and plan.stages > 1,
        "uses_wmma": plan.math == "tf32",
        "bytes": {"x": real * math.prod(workload.input_shape),
                  "w": real * math.prod(spec.weight_shape),
                  "b": real * spec.out_channels if spec.bias else 0,
                  "y": real * math.prod(workload.output_shape)},
    }
    ctx.update(_SPECIFIC[plan.algorithm](workload, plan, axes))
    return ctx


def render(workload: Workload, plan: CudaPlan, target: Target,
           prefix: str) -> tuple[tuple[str, str], ...]:
    text = render_template(TEMPLATES[plan.algorithm], context(workload, plan, target, prefix),
                           plan)
    return (("kernel.cu", text),)
