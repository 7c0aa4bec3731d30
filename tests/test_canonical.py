"""Pointwise layers planned as one row (cpu/canonical.py): which workloads merge their
spatial axes, that every algorithm computes them exactly as torch does (poisoned outputs,
float32 and float64, one and two threads), and that users still see the layer's own
shapes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.canonical import planned
from convgen.cpu.planner import candidates
from helpers import assert_matches, poisoned_call
from test_correctness import make_case, operands_and_reference, spec_of

TARGET = get_target("cpu")

MERGED = [
    (ConvSpec.conv(2, 8, 12, 1), (2, 8, 7, 9)),
    (ConvSpec.conv(2, 8, 12, 1, dilation=3), (1, 8, 5, 4)),          # dilation moves no tap
    (ConvSpec.conv(3, 8, 12, 1, groups=4), (1, 8, 3, 4, 5)),
    (ConvSpec.conv(2, 8, 8, 1, padding_mode="reflect"), (1, 8, 6, 6)),  # nothing to pad
    (ConvSpec.conv_transpose(2, 8, 12, 1), (3, 8, 4, 6)),
]
KEPT = [
    (ConvSpec.conv(1, 8, 12, 1), (2, 8, 30)),                        # one row already
    (ConvSpec.conv(2, 8, 12, 1, stride=2), (1, 8, 7, 9)),
    (ConvSpec.conv(2, 8, 12, 1, padding=1), (1, 8, 7, 9)),
    (ConvSpec.conv(2, 8, 12, (1, 3)), (1, 8, 7, 9)),
    (ConvSpec.conv(2, 8, 12, 3, padding=1), (1, 8, 7, 9)),
    (ConvSpec.conv_transpose(2, 8, 12, 1, stride=2), (1, 8, 4, 6)),
]


@pytest.mark.parametrize("spec, shape", MERGED)
def test_pointwise_layers_are_planned_as_one_row(spec, shape):
    workload, _ = workload_of(spec, shape, "float32")
    merged = planned(workload)
    assert merged.spec.ndim == 1 and merged.spec.kernel_size == (1,)
    assert merged.input_shape == (shape[0], shape[1], int(np.prod(shape[2:])))
    assert merged.output_shape[:2] == workload.output_shape[:2]
    assert np.prod(merged.output_shape) == np.prod(workload.output_shape)
    assert merged.flops == workload.flops
    assert (merged.spec.groups, merged.spec.bias, merged.spec.transposed) == \
        (spec.groups, spec.bias, spec.transposed)
    assert planned(merged) is merged


@pytest.mark.parametrize("spec, shape", KEPT)
def test_other_layers_keep_their_axes(spec, shape):
    workload, _ = workload_of(spec, shape, "float32")
    assert planned(workload) is workload


CASES = [
    make_case("map_7x7", "conv2d", cin=40, cout=70, spatial=(7, 7), kernel=1, batch=3),
    make_case("map_3d", "conv3d", cin=16, cout=24, spatial=(2, 3, 5), kernel=1),
    make_case("grouped", "conv2d", cin=24, cout=36, spatial=(5, 11), kernel=1, groups=3),
    make_case("depthwise", "conv2d", cin=24, cout=48, spatial=(6, 5), kernel=1, groups=24),
    make_case("dilated_reflect", "conv2d", cin=16, cout=16, spatial=(4, 9), kernel=1,
              dilation=2, padding_mode="reflect"),
    make_case("transposed", "conv_transpose2d", cin=20, cout=30, spatial=(5, 6), kernel=1,
              groups=2),
    make_case("one_pixel", "conv2d", cin=33, cout=17, spatial=(1, 1), kernel=1, batch=1),
    make_case("batch_0", "conv2d", cin=8, cout=16, spatial=(3, 3), kernel=1, batch=0),
]


def _best_per_algorithm(case, dtype, threads) -> dict:
    """The planner's best plan of each algorithm that applies (candidates come cheapest first)."""
    workload, _ = workload_of(spec_of(case), case.x_shape, dtype)
    best: dict = {}
    for cand in candidates(workload, TARGET, threads=threads):
        best.setdefault(cand.plan.algorithm, cand.plan)
    return best


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_algorithm_computes_a_merged_layer_as_torch_does(case, dtype, threads):
    case = dataclasses.replace(case, dtype=dtype)
    x, w, b, ref = operands_and_reference(case, f"canonical {case.name} {dtype} {threads}")
    plans = _best_per_algorithm(case, dtype, threads)
    assert plans, "no plan for a pointwise layer"
    for plan in plans.values():
        kernel = convgen.compile(spec_of(case), case.x_shape, dtype=dtype, plan=plan)
        assert kernel.output_shape == ref.shape
        assert_matches(poisoned_call(kernel, x, w, b), ref, dtype)


def test_tiles_run_across_the_rows_of_a_small_map():
    """A 5x5 map: implicit GEMM tiles of more than 5 pixels exist only across rows (AVX2's
    16 registers hold tiles of up to 6 pixels of two vectors, AVX-512's 32 up to 14)."""
    workload, _ = workload_of(ConvSpec.conv(2, 512, 2048, 1), (1, 512, 5, 5), "float32")
    widths = {c.plan.pixel_tile for c in candidates(workload, TARGET, threads=2)
              if c.plan.algorithm == "implicit_gemm"}
    assert max(widths) > 5


def test_users_see_the_layers_own_shapes():
    spec = ConvSpec.conv(2, 8, 12, 1)
    kernel = convgen.compile(spec, (2, 8, 7, 9))
    assert kernel.output_shape == (2, 12, 7, 9)
    with pytest.raises(ValueError):
        kernel(np.ones((2, 8, 63), np.float32), np.ones((12, 8, 1, 1), np.float32))
    text = kernel.explain()
    assert "planned as one row of 63 pixels" in text
    assert "input (2, 8, 7, 9)" in text
