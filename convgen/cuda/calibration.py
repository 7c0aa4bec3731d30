"""The GEMM main loop as compiled: registers and instructions per k-tile, from ptxas and the
SASS, for every (arithmetic, block tile, warp tile, BK) the planner enumerates.

The cost model needs two numbers it cannot derive honestly by hand: how many registers a
tile takes (occupancy) and how many instructions besides the multiplies its main loop
issues per k-tile (the issue rate). Both are read from the compiled kernel here, once, for
a reference layer (a 3x3 convolution with 64 channels in and out), and kept in
``calibration.json`` beside this module; ``cost.py`` looks plans up in it. The counts are
static: every instruction inside the loop's body once, including the branch that advances
the tap (taken once per tap), so they bound what one iteration issues from above.

    python -m convgen.cuda.calibration [--arch sm_90] [--jobs 2]   # rewrite the table

(needs nvcc and cuobjdump; tests/test_cuda_nvcc.py recompiles a sample and checks that the
table still describes the templates.)
"""
from __future__ import annotations

import argparse
import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TABLE = Path(__file__).with_name("calibration.json")
REFERENCE = {"op": "conv2d", "x": (8, 64, 56, 56), "w": (64, 64, 3, 3), "padding": 1}
BUDGET = 128     # the register budget tried first (cost.GEMM_REGISTERS)


def key(math_: str, tile: tuple[int, ...], warp: tuple[int, ...]) -> str:
    return f"{math_} {'x'.join(map(str, tile))} {'x'.join(map(str, warp))}"


@functools.cache
def table() -> dict:
    """The shipped measurements: key -> {registers, fits_budget, loop, multiplies, ...}."""
    try:
        return json.loads(TABLE.read_text())["plans"]
    except (OSError, ValueError, KeyError):   # absent or unreadable: the estimates serve
        return {}


def lookup(math_: str, tile: tuple[int, ...], warp: tuple[int, ...]) -> dict | None:
    return table().get(key(math_, tile, warp))


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
    from ..backends import get_target
    from . import sass
    from .render import render

    dtype = "float64" if plan.math == "fp64" else "float32"
    workload = reference_workload(dtype)
    source = render(workload, plan, get_target("cuda"), "cg_cal")[0][1]
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
    import os
    import threading
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
