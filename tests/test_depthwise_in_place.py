"""Depthwise kernels reading a zero-padded input where it lies (cpu.derived.depthwise_in_place,
cpu.render._in_place): which plans do, and that they compute what torch does where every
edge is exercised -- inputs smaller than the kernel, one output pixel, padding wider than a
vector, asymmetric 'same' padding, dilation, outer strides, no padding but a row that ends
inside a vector, 1-D, channel multipliers, row tiles of 1-4 rows with a tail, tiles of one
and two vectors, float32 and float64, AVX-512 and AVX2 masks, poisoned outputs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.derived import RANGE_BYTES, derive
from convgen.cpu.plan import Plan, native_vector
from convgen.target.host import cpu_features as host_cpu_features
from helpers import assert_matches, poisoned_call, torch_reference
from test_correctness import make_case, operands, seed_of, spec_of


def _plan(target, dtype, nv=1, row_tile=1, threads=1):
    vector = native_vector(target, dtype)
    return Plan("depthwise", 1, nv * vector, vector, "oc_outer", threads, row_tile=row_tile)


def _facts(spec, shape, target="cpu", dtype="float32"):
    target = get_target(target)
    workload, _ = workload_of(spec, shape, dtype)
    return derive(workload, _plan(target, dtype), target)


# masked loads: AVX-512, or AVX2 (the native target of an AVX2 host, and x86-64-v3)
_NO_MASKS = pytest.mark.skipif("avx2" not in set(host_cpu_features()), reason="no AVX2")


@pytest.mark.parametrize("spec, shape, target, in_place", [
    (ConvSpec.conv(2, 8, 8, 3, padding=1, groups=8), (1, 8, 12, 40), "cpu", True),
    (ConvSpec.conv(2, 8, 8, 3, padding=0, groups=8), (1, 8, 12, 37), "cpu", True),  # overrun
    (ConvSpec.conv(1, 8, 8, 5, padding=2, groups=8), (1, 8, 40), "cpu", True),
    (ConvSpec.conv(2, 8, 8, 3, stride=(2, 1), padding=1, groups=8), (1, 8, 12, 40), "cpu", True),
    (ConvSpec.conv(2, 8, 8, 3, padding=1, groups=8, padding_mode="reflect"), (1, 8, 12, 40),
     "cpu", False),                                  # the padding is data: padded per channel
    (ConvSpec.conv(2, 8, 8, 3, stride=2, padding=1, groups=8), (1, 8, 12, 40), "cpu", False),
    (ConvSpec.conv(2, 8, 8, 3, padding=1, groups=8), (1, 8, 12, 40), "c", False),   # no masks
    # a 31 x 31 kernel: a tile function per edge band and column would unroll too much
    (ConvSpec.conv(2, 8, 8, 31, padding=15, groups=8), (1, 8, 56, 56), "cpu", False),
        pytest.param(ConvSpec.conv(2, 8, 8, 3, padding=1, groups=8), (1, 8, 12, 40), "x86-64-v3",
                 True, marks=_NO_MASKS),
])
def test_which_depthwise_plans_read_in_place(spec, shape, target, in_place):
    facts = _facts(spec, shape, target)
    assert facts.in_place is in_place
    if in_place:
        assert facts.own_workspace == 0       # no per-thread planes


CASES = [
    make_case("smaller_than_kernel", "conv2d", cin=3, cout=3, spatial=(2, 3), kernel=5,
              padding=2, groups=3, batch=2),
    make_case("one_pixel", "conv2d", cin=4, cout=4, spatial=(1, 1), kernel=3, padding=1,
              groups=4, batch=1),
    make_case("wide_padding", "conv2d", cin=4, cout=4, spatial=(6, 9), kernel=3, padding=(2, 19),
              groups=4, batch=1),
    make_case("same_even_kernel", "conv2d", cin=4, cout=4, spatial=(9, 35), kernel=4,
              padding="same", groups=4, batch=1),
    make_case("dilated", "conv2d", cin=3, cout=3, spatial=(12, 21), kernel=3, padding=3,
              dilation=3, groups=3, batch=1),
    make_case("outer_stride", "conv2d", cin=5, cout=10, spatial=(19, 23), kernel=3,
              stride=(2, 1), padding=1, groups=5, batch=3),
    make_case("unpadded_overrun", "conv2d", cin=4, cout=4, spatial=(7, 37), kernel=3, groups=4,
              batch=1),
    make_case("rows_1d", "conv1d", cin=6, cout=6, spatial=(50,), kernel=7, padding=3, groups=6,
              batch=2),
    make_case("tiny_1d", "conv1d", cin=4, cout=8, spatial=(3,), kernel=5, padding=4, groups=4,
              batch=1),
]


# AVX-512 over tiles of one vector and one row, two vectors and three rows, one vector and
# four rows; AVX2 (its own masked loads, 8 float32 or 4 float64 lanes) over the middle one
_TILES = [(nv, rows, "cpu") for nv, rows in ((1, 1), (2, 3), (1, 4))] + [(2, 3, "x86-64-v3")]


@pytest.mark.parametrize("nv, row_tile, target",
                         [pytest.param(*t, marks=_NO_MASKS) for t in _TILES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_in_place_kernels_match_torch(case, nv, row_tile, dtype, target):
    case = dataclasses.replace(case, dtype=dtype)
    resolved = get_target(target)
    workload, _ = workload_of(spec_of(case), case.x_shape, dtype)
    out_rows = int(np.prod(workload.output_shape[2:-1]))
    plan = _plan(resolved, dtype, nv, min(row_tile, out_rows), threads=2)
    rng = np.random.default_rng(seed_of(f"in place {case.name} {nv} {row_tile} {dtype} {target}"))
    x, w, b = operands(case, rng)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, target=target, plan=plan)
    assert "VLOAD_MASK(" in kernel.source, "not read in place"
    # no padded plane: the workspace holds only the 2 threads' work-sharing slots
    slots = -(-3 * RANGE_BYTES // np.dtype(dtype).itemsize)
    assert "take_items(" in kernel.source and kernel.workspace_elements == slots
    assert_matches(poisoned_call(kernel, x, w, b),
                   torch_reference(case.op, x, w, b, **case.kwargs), dtype)
