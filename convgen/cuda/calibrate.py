"""Rewrite calibration.json: compile every GEMM tile the planner enumerates for the reference
layer and record what ptxas and the SASS say of it (calibration.py reads the table).

    python -m convgen.cuda.calibrate [--arch sm_90] [--jobs 2] [--keep]

Needs nvcc and cuobjdump. ``--keep`` measures only the tiles the table lacks.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from . import sass
from .calibration import BUDGET, REFERENCE, TABLE, key, table
from .render import render
from .target import cuda_target


def reference_workload(dtype: str):
    from ..core.layers import spec_from_op
    from ..core.spec import workload_of

    spec = spec_from_op(REFERENCE["op"], REFERENCE["w"], True, REFERENCE["x"],
                        padding=REFERENCE["padding"])
    return workload_of(spec, REFERENCE["x"], dtype)[0]


def with_min_blocks(source: str, blocks: int) -> str:
    return re.sub(r"#define MIN_BLOCKS\s+\d+", f"#define MIN_BLOCKS     {blocks}", source)


def measure(plan, arch: str) -> dict:
    """Compile ``plan`` for the reference layer: held to BUDGET registers first, with as
    many as it wants if that spills. The NCHW instantiation's numbers."""
    dtype = "float64" if plan.math == "fp64" else "float32"
    workload = reference_workload(dtype)
    source = render(workload, plan, cuda_target("cuda"), "cg_cal")[0][1]
    result = {}
    for blocks in (max(1, 65536 // (plan.threads * BUDGET)), 1):
        compiled = sass.compile_cubin(with_min_blocks(source, blocks), arch)
        (kernel,) = [r for r in compiled.resources if r.entry and "ILb0E" in r.function]
        spills = kernel.spill_stores + kernel.spill_loads + kernel.stack_bytes
        functions = sass.parse_sass(compiled.sass)
        (body,) = [ins for name, ins in functions.items() if "ILb0E" in name]
        loop = sass.main_loop(body)
        result = {"registers": kernel.registers, "fits_budget": blocks > 1 and not spills,
                  "spills": spills, "min_blocks": blocks,
                  "loop": loop.instructions if loop else None,   # None: no loop multiplies
                  "multiplies": loop.multiplies if loop else None,
                  "ldgsts": loop.count("LDGSTS") if loop else None}
        if not spills:
            break
    return result


def enumerate_configs():
    from .plan import _GEMM_TILES, _SIMT_WARPS, _TF32_WARPS, CudaPlan

    for math_, warps in (("tf32", _TF32_WARPS), ("fp32", _SIMT_WARPS), ("fp64", _SIMT_WARPS)):
        for bm, bn in _GEMM_TILES:
            for wm, wn in warps:
                if bm % wm or bn % wn:
                    continue
                threads = 32 * (bm // wm) * (bn // wn)
                if 64 <= threads <= 256:
                    for bk in (8, 16, 32):
                        yield CudaPlan("implicit_gemm", (bm, bn, bk), (wm, wn), 3, 1, math_,
                                       threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="measure the GEMM main loop per plan family")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", action="store_true",
                        help="keep the table's entries, measure only the missing ones")
    args = parser.parse_args(argv)
    os.environ["CONVGEN_CUDA_ARCH"] = args.arch
    plans = dict(table()) if args.keep else {}
    configs = [p for p in enumerate_configs() if key(p.math, p.tile, p.warp) not in plans]
    lock = threading.Lock()

    def save():   # written aside and renamed: a reader never sees half a table
        part = TABLE.with_suffix(".json.part")
        part.write_text(json.dumps({"arch": args.arch, "reference": REFERENCE,
                                    "plans": plans}, indent=0, sort_keys=True) + "\n")
        part.replace(TABLE)

    def one(plan):
        result = measure(plan, args.arch)
        with lock:   # the table grows as it goes: an interrupted run keeps what it measured
            plans[key(plan.math, plan.tile, plan.warp)] = result
            save()
        print(key(plan.math, plan.tile, plan.warp), result, flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, configs))
    save()
    print(f"wrote {len(plans)} plans to {TABLE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
