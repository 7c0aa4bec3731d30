"""The GEMM main loop as compiled: registers and instructions per k-tile, from ptxas and the
SASS, for every (arithmetic, block tile, warp tile, BK) the planner enumerates.

The cost model needs two numbers it cannot derive honestly by hand: how many registers a
tile takes (occupancy) and how many instructions besides the multiplies its main loop
issues per k-tile (the issue rate). Both are read from the compiled kernel here, once, for
a reference layer (a 3x3 convolution with 64 channels in and out), and kept in
``calibration.json`` beside this module; ``cost.py`` looks plans up in it. The counts are
static: every instruction inside the loop's body once, including the branch that advances
the tap (taken once per tap), so they bound what one iteration issues from above.

    python -m convgen.cuda.calibrate [--arch sm_90] [--jobs 2] [--keep]   # rewrite the table

(needs nvcc and cuobjdump; tests/test_cuda_nvcc.py recompiles a sample and checks that the
table still describes the templates.)
"""
from __future__ import annotations

import functools
import json
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
