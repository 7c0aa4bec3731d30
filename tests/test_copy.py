"""The padded-input copy shared by the threads: split by padded rows where the threads
split the output by rows (each pads the band it reads), by channels elsewhere. Which
split a plan gets, and that kernels with the row split compute what torch does (poisoned
outputs, float32 and float64, 2 and 3 threads, batches above and below the thread count,
3-D, strides, every padding mode, transposed phases, panels)."""
from __future__ import annotations

import dataclasses

import pytest

import convgen
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.derived import derive
from convgen.cpu.plan import Plan, native_vector
from convgen.cpu.planner import candidates
from helpers import assert_matches, direct_tile, poisoned_call
from test_correctness import make_case, operands_and_reference, spec_of

TARGET = get_target("cpu")


def _facts(spec, shape, plan_text, dtype="float32"):
    workload, _ = workload_of(spec, shape, dtype)
    return derive(workload, Plan.parse(plan_text), TARGET)


# 16 channels of 72 x 72: a padded copy above the size each thread would copy for itself
BIG_2D = (ConvSpec.conv(2, 16, 40, 3, padding=1), (1, 16, 72, 72))


@pytest.mark.parametrize("plan_text, by_rows", [
    ("algorithm=direct_simd oc_tile=8 pixel_tile=32 vector=16 loop_order=pixel_outer threads=2",
     True),
    ("algorithm=direct_simd oc_tile=8 pixel_tile=32 vector=16 loop_order=oc_outer threads=2",
     False),   # five channel tiles: each thread takes channel tiles, every row of them
    ("algorithm=implicit_gemm oc_tile=48 pixel_tile=8 vector=16 loop_order=oc_outer threads=2",
     True),    # one channel tile: the threads split its rows
    ("algorithm=direct_simd oc_tile=8 pixel_tile=32 vector=16 loop_order=pixel_outer threads=1",
     False),
])
def test_which_split_a_plan_gets(plan_text, by_rows):
    facts = _facts(*BIG_2D, plan_text)
    assert facts.lowering.copy_input and not facts.copy_stride
    assert facts.copy_by_rows is by_rows


def test_one_row_inputs_and_private_copies_keep_the_channel_split():
    one_row = _facts(ConvSpec.conv(1, 64, 64, 3, padding=1), (1, 64, 4096),
                     "algorithm=direct_simd oc_tile=8 pixel_tile=32 vector=16 "
                     "loop_order=pixel_outer threads=2")
    assert one_row.lowering.copy_input and not one_row.copy_by_rows
    small = _facts(ConvSpec.conv(2, 4, 8, 3, padding=1), (1, 4, 16, 16),
                   "algorithm=direct_simd oc_tile=8 pixel_tile=16 vector=16 "
                   "loop_order=pixel_outer threads=2")
    assert small.copy_stride and not small.copy_by_rows   # each thread pads its own copy


def test_the_kernel_pads_by_rows_where_the_plan_says_so():
    spec, shape = BIG_2D
    lanes = native_vector(TARGET, "float32")       # the host's: the kernels are built here
    oc_tile, vectors = direct_tile(8, 2, TARGET)
    by_rows = (f"algorithm=direct_simd oc_tile={oc_tile} pixel_tile={vectors * lanes} "
               f"vector={lanes} loop_order=pixel_outer threads=2")
    by_channels = by_rows.replace("pixel_outer", "oc_outer")
    assert "pad_rows(x, work, pr)" in convgen.compile(spec, shape, plan=Plan.parse(by_rows)).source
    assert "pad_rows" not in convgen.compile(spec, shape, plan=Plan.parse(by_channels)).source


CASES = [
    # 16 x 58 x 82 padded floats: past the private copy's 256 KiB at any row pitch
    make_case("same_3x3", "conv2d", cin=16, cout=12, spatial=(56, 80), kernel=3, batch=1,
              padding=1),
    make_case("batch_3_strided", "conv2d", cin=16, cout=20, spatial=(33, 70), kernel=3, batch=3,
              stride=2, padding=1),
    make_case("reflect_dilated", "conv2d", cin=16, cout=8, spatial=(45, 90), kernel=3, batch=1,
              padding=2, dilation=2, padding_mode="reflect"),
    make_case("circular_5x3", "conv2d", cin=16, cout=8, spatial=(36, 66), kernel=(5, 3), batch=2,
              padding=(2, 1), padding_mode="circular"),
    make_case("replicate_3d", "conv3d", cin=8, cout=12, spatial=(9, 30, 40), kernel=3, batch=1,
              padding=1, padding_mode="replicate"),
    make_case("transposed_phases", "conv_transpose2d", cin=16, cout=8, spatial=(48, 80),
              kernel=4, batch=1, stride=2, padding=1),
    make_case("transposed_outpad_3d", "conv_transpose3d", cin=8, cout=6, spatial=(6, 20, 24),
              kernel=3, batch=2, stride=2, padding=1, output_padding=1),
]


def _row_split_plans(case, dtype, threads) -> list[Plan]:
    """The best plan of each (algorithm, loop order) whose copy is split by rows."""
    workload, _ = workload_of(spec_of(case), case.x_shape, dtype)
    best: dict = {}
    for cand in candidates(workload, TARGET, threads=threads):
        plan = cand.plan
        facts = derive(workload, plan, TARGET)
        if facts.lowering is not None and facts.copy_by_rows:
            best.setdefault((plan.algorithm, plan.loop_order), plan)
    return list(best.values())


@pytest.mark.parametrize("dtype, threads", [("float32", 2), ("float64", 3)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernels_padding_by_rows_compute_as_torch_does(case, dtype, threads):
    case = dataclasses.replace(case, dtype=dtype)
    x, w, b, ref = operands_and_reference(case, f"copy {case.name} {dtype} {threads}")
    plans = _row_split_plans(case, dtype, threads)
    assert plans, "no plan splits this layer's copy by rows"
    for plan in plans:
        kernel = convgen.compile(spec_of(case), case.x_shape, dtype=dtype, plan=plan)
        assert "pad_rows(x, work, pr)" in kernel.source
        assert_matches(poisoned_call(kernel, x, w, b), ref, dtype)
