"""The depthwise tile's shared loads (cpu/render._shared_loads): each input vector is loaded
once for every output row whose taps read it. The schedule's bookkeeping, and forced tiles
of several row counts (with a tail tile of fewer rows) over strides, dilations and padding
modes against torch, poisoned outputs, float32 and float64."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.cpu.plan import Plan, native_vector
from convgen.cpu.render import _shared_loads
from helpers import assert_matches, poisoned_call, torch_reference
from test_correctness import make_case, operands, seed_of, spec_of


@pytest.mark.parametrize("rows, row_in, taps", [
    (8, 100, [0, 1, 2, 100, 101, 102, 200, 201, 202]),      # 3x3, stride 1
    (3, 200, [0, 1, 2, 100, 101, 102, 200, 201, 202]),      # 3x3, stride 2
    (4, 50, [0, 2, 4, 100, 102, 104]),                      # 2 x 3 taps, dilation 2
    (1, 0, [0, 3, 6, 9]),                                   # 1-D
])
def test_every_product_reads_its_input_once(rows, row_in, taps):
    loads = _shared_loads(rows, row_in, taps)
    offsets = [load["offset"] for load in loads]
    assert offsets == sorted(set(offsets))
    products = [(u["row"], u["tap"]) for load in loads for u in load["uses"]]
    assert sorted(products) == [(r, t) for r in range(rows) for t in range(len(taps))]
    for load in loads:
        for use in load["uses"]:
            assert use["row"] * row_in + taps[use["tap"]] == load["offset"]


def test_stride_one_rows_share_their_inputs():
    """3x3 taps over 8 rows: 10 input rows x 3 column offsets, not 72 loads."""
    taps = [r * 100 + c for r in range(3) for c in range(3)]
    assert len(_shared_loads(8, 100, taps)) == 30


CASES = [
    make_case("k5_rows", "conv2d", cin=6, cout=6, spatial=(13, 29), kernel=5, padding=2,
              groups=6),
    make_case("k3_stride2", "conv2d", cin=4, cout=8, spatial=(15, 40), kernel=3, stride=2,
              padding=1, groups=4),
    make_case("k3_dil2_reflect", "conv2d", cin=5, cout=5, spatial=(11, 18), kernel=3,
              dilation=2, padding=2, groups=5, padding_mode="reflect"),
    make_case("k_mixed_circular", "conv2d", cin=3, cout=6, spatial=(10, 21), kernel=(3, 5),
              padding=(1, 2), groups=3, padding_mode="circular"),
    make_case("k7_1d", "conv1d", cin=4, cout=4, spatial=(77,), kernel=7, padding=3, groups=4),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("row_tile", [1, 3, 5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_shared_load_tiles_match_torch(case, row_tile, dtype):
    case = dataclasses.replace(case, dtype=dtype)
    vector = native_vector(get_target("cpu"), dtype)
    rows = int(np.prod(case.x_shape[2:-1])) if len(case.x_shape) > 3 else 1
    plan = Plan("depthwise", 1, 2 * vector, vector, "oc_outer", 2,
                row_tile=min(row_tile, rows))
    rng = np.random.default_rng(seed_of(f"depthwise {case.name} {row_tile} {dtype}"))
    x, w, b = operands(case, rng)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, plan=plan)
    assert kernel.plan == plan
    assert_matches(poisoned_call(kernel, x, w, b),
                   torch_reference(case.op, x, w, b, **case.kwargs), dtype)
