"""The GEMM-like kernels' newer variants against torch: the panel loop order (chunks of a
row packed once, every channel tile over them), the 16 x 16 stores transposed in registers,
and the blocked accumulation that keeps long reductions within twice torch's float32 error.
Every case runs with poisoned outputs, in float32 and float64, at one and two threads."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

import convgen
from convgen.backends import get_target
from convgen.core.spec import workload_of
from convgen.cpu.derived import derive
from convgen.cpu.plan import Plan, native_vector
from convgen.cpu.planner import candidates
from helpers import (
    assert_matches,
    direct_tile,
    gemm_tile,
    poisoned_call,
    random,
    rel_l2,
    torch_reference,
)
from test_correctness import make_case, operands, seed_of, spec_of

TARGET = get_target("cpu")
# (case, algorithm, oc_tile, pixel_tile in vectors or pixels, chunk in tiles): rows that
# are and are not a whole number of chunks and tiles, strided and dilated rows, every
# padding mode, groups, 1-D to 3-D, transposed phases with their strided outputs, batch
# above and below the thread count, channel tiles with a partial last one
PANEL_CASES = [
    (make_case("3x3", "conv2d", cin=20, cout=40, spatial=(9, 23), kernel=3, padding=1,
               batch=3), "implicit_gemm", 32, 7, 2),
    (make_case("3x3_whole_row", "conv2d", cin=20, cout=40, spatial=(9, 23), kernel=3,
               padding=1), "direct_simd", 8, 1, 4),
    (make_case("strided", "conv2d", cin=16, cout=32, spatial=(15, 17), kernel=3, stride=2,
               padding=1, padding_mode="reflect"), "implicit_gemm", 32, 5, 1),
    (make_case("strided_ds", "conv2d", cin=16, cout=32, spatial=(15, 37), kernel=3, stride=2,
               padding=1, padding_mode="replicate"), "direct_simd", 8, 1, 1),
    (make_case("dilated_1d", "conv1d", cin=24, cout=16, spatial=(101,), kernel=5, dilation=3,
               padding=4, padding_mode="circular"), "direct_simd", 4, 2, 3),
    (make_case("pointwise", "conv2d", cin=300, cout=48, spatial=(7, 9), kernel=1),
     "implicit_gemm", 48, 9, 2),
    (make_case("grouped", "conv2d", cin=16, cout=32, spatial=(11, 13), kernel=3, padding=1,
               groups=2), "implicit_gemm", 16, 13, 1),
    (make_case("3d", "conv3d", cin=8, cout=16, spatial=(3, 5, 21), kernel=3, padding=1),
     "direct_simd", 16, 1, 1),
    (make_case("tconv1d", "conv_transpose1d", cin=24, cout=20, spatial=(41,), kernel=16,
               stride=8, padding=4), "implicit_gemm", 32, 11, 2),
    (make_case("tconv2d", "conv_transpose2d", cin=16, cout=40, spatial=(5, 7), kernel=4,
               stride=2, padding=1, output_padding=1), "implicit_gemm", 48, 5, 1),
    (make_case("one_pixel", "conv2d", cin=32, cout=32, spatial=(3, 3), kernel=3),
     "implicit_gemm", 32, 4, 1),
    (make_case("phases_without_taps", "conv_transpose1d", cin=8, cout=16, spatial=(10,),
               kernel=2, stride=3), "implicit_gemm", 16, 3, 2),
    # unpadded strided rows: gathered straight from the input, no copy (cpu/derived)
    (make_case("pointwise_s2", "conv2d", cin=24, cout=40, spatial=(13, 17), kernel=1,
               stride=2), "implicit_gemm", 32, 5, 2),
    (make_case("strided_unpadded", "conv2d", cin=16, cout=24, spatial=(11, 37), kernel=3,
               stride=(1, 3)), "direct_simd", 8, 1, 2),
]


def _plan(case, algorithm, oc_tile, width, chunk_tiles, dtype, threads, prefetch=0) -> Plan:
    vector = native_vector(TARGET, dtype)
    if algorithm == "implicit_gemm":
        # float64 has half the lanes, AVX2 half the registers: keep within them
        vectors, pixel_tile = gemm_tile(-(-oc_tile // vector), width, TARGET)
        oc_tile = vectors * vector
    else:
        oc_tile, width = direct_tile(oc_tile, width, TARGET)
        pixel_tile = width * vector
    return Plan(algorithm, oc_tile, pixel_tile, vector, "panel", threads,
                chunk=chunk_tiles * pixel_tile, prefetch=prefetch if vector > 1 else 0)


# prefetch: the next chunk's inputs and outputs fetched ahead (each chunk's last one
# fetches the next row's first; a row's last, nothing)
@pytest.mark.parametrize("threads, prefetch", [(1, 0), (2, 0), (2, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case, algorithm, oc_tile, width, chunk", PANEL_CASES,
                         ids=[c[0].name for c in PANEL_CASES])
def test_panel_order_matches_torch(case, algorithm, oc_tile, width, chunk, dtype, threads,
                                   prefetch):
    plan = _plan(case, algorithm, oc_tile, width, chunk, dtype, threads, prefetch)
    rng = np.random.default_rng(seed_of(f"{case.name}{dtype}{threads}{prefetch}"))
    x, w, b = operands(case, rng)
    x, w = x.astype(dtype), w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, plan=plan)
    assert kernel.plan.loop_order == "panel" and kernel.plan.chunk == plan.chunk
    assert ("PREFETCH_SPAN(next_x" in kernel.source) == bool(plan.prefetch)
    assert_matches(poisoned_call(kernel, x, w, b),
                   torch_reference(case.op, x, w, b, **case.kwargs), dtype)


# implicit_gemm's float32 stores transposed in registers: rows of 16 pixels and fewer, a
# partial last channel tile, strided (transposed: scalar stores) and unit-stride rows
@pytest.mark.parametrize("pixels, cout", [(16, 48), (28, 40), (9, 17), (3, 33)])
@pytest.mark.parametrize("order", ["oc_outer", "pixel_outer"])
def test_transposed_stores(pixels, cout, order):
    case = make_case("stores", "conv2d", cin=8, cout=cout, spatial=(5, 2 * pixels + 1),
                     kernel=3, padding=1, dtype="float32")
    vector = native_vector(TARGET, "float32")
    vectors, pixel_tile = gemm_tile(1 if pixels > 14 else 2, pixels, TARGET)
    plan = Plan("implicit_gemm", vectors * vector, pixel_tile, vector, order, 2)
    kernel = convgen.compile(spec_of(case), case.x_shape, "float32", plan=plan)
    if vector == 16:
        assert "transpose16(rows)" in kernel.source
    rng = np.random.default_rng(pixels * cout)
    x, w, b = (a.astype(np.float32) for a in operands(case, rng))
    assert_matches(poisoned_call(kernel, x, w, b),
                   torch_reference(case.op, x, w, b, **case.kwargs), "float32")


@pytest.mark.parametrize("channels", [512, 1024])
def test_long_reductions_stay_within_twice_torch_error(channels):
    """Blocked accumulation: a 3x3 layer with 512 or 1024 input channels (4608 and 9216
    terms per output) against float64, every exact algorithm that applies."""
    rng = np.random.default_rng(channels)
    x, w, b = random(rng, (1, channels, 7, 7)), random(rng, (32, channels, 3, 3)), random(rng, 32)
    exact = torch_reference("conv2d", x, w, b, padding=1)
    theirs = torch.nn.functional.conv2d(
        *(torch.from_numpy(a.astype(np.float32)) for a in (x, w, b)), padding=1).numpy()
    torch_error = rel_l2(theirs, exact)
    spec = convgen.ConvSpec.conv(2, channels, 32, 3, padding=1)
    for algorithm in ("implicit_gemm", "direct_simd", "direct"):
        kernel = convgen.compile(spec, x.shape, "float32", plan=algorithm, accuracy="strict")
        ours = kernel(*(a.astype(np.float32) for a in (x, w, b)))
        assert rel_l2(ours, exact) <= 2 * torch_error, (algorithm, rel_l2(ours, exact),
                                                         torch_error)


def test_the_planner_lists_panel_plans_for_gemm_like_layers():
    workload = convgen.compile(convgen.ConvSpec.conv(1, 64, 64, 7, padding=3),
                               (1, 64, 1024)).workload
    ranked = candidates(workload, TARGET, threads=2)
    assert any(c.plan.loop_order == "panel" for c in ranked)
    assert all(c.plan.chunk % c.plan.pixel_tile == 0 for c in ranked
               if c.plan.loop_order == "panel")


# Staged rows: implicit_gemm on a transposed conv with stride > 1 along its last axis stores
# each phase's tiles into a per-thread row buffer and copies finished rows out. Rows whose
# phases differ in taps and counts, phases without taps (bias only), outer phases (2-D,
# 3-D), groups, a partial last channel tile, output_padding, an output channel of a
# multiple of 4 KiB (the case it exists for), batch above and below the thread count.
STAGED_CASES = [
    make_case("1d_s8", "conv_transpose1d", cin=24, cout=20, spatial=(33,), kernel=16, stride=8,
              padding=4),
    make_case("1d_4k", "conv_transpose1d", cin=16, cout=40, spatial=(512,), kernel=4,
              stride=2, padding=1, batch=1),
    make_case("1d_gaps", "conv_transpose1d", cin=8, cout=16, spatial=(10,), kernel=2, stride=3,
              batch=3),
    make_case("2d", "conv_transpose2d", cin=16, cout=40, spatial=(5, 7), kernel=4, stride=2,
              padding=1, output_padding=1),
    make_case("2d_groups", "conv_transpose2d", cin=12, cout=18, spatial=(6, 5), kernel=3,
              stride=(1, 2), padding=1, groups=3),
    make_case("3d", "conv_transpose3d", cin=8, cout=24, spatial=(3, 4, 5), kernel=3, stride=2,
              padding=1, output_padding=1),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("order", ["oc_outer", "pixel_outer"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", STAGED_CASES, ids=[c.name for c in STAGED_CASES])
def test_staged_rows_match_torch(case, dtype, order, threads):
    vector = native_vector(TARGET, dtype)
    vectors, pixels = gemm_tile(
        2 if case.channels[1] // case.kwargs.get("groups", 1) > vector else 1, 7, TARGET)
    plan = Plan("implicit_gemm", vectors * vector, pixels, vector, order, threads)
    check_kernel(case, plan, dtype, "STAGE_PITCH", f"{order}{threads}")


# Staged rows hold each column phase's outputs together (cpu.derived.stage_layout), so on
# AVX-512 a float32 tile stores them transposed in registers as an unstrided row's: tiles
# of fewer than, exactly and more than 16 pixels, phases of different counts (71 outputs,
# stride 3), a partial last channel tile, 1-D and 2-D
@pytest.mark.parametrize("pixels", [5, 16, 20])
@pytest.mark.parametrize("case", [
    make_case("1d_s3", "conv_transpose1d", cin=12, cout=40, spatial=(23,), kernel=5, stride=3,
              padding=1, output_padding=2, dtype="float32"),
    make_case("2d_s2", "conv_transpose2d", cin=8, cout=20, spatial=(4, 21), kernel=4, stride=2,
              padding=1, dtype="float32"),
], ids=["1d_s3", "2d_s2"])
def test_staged_rows_store_tiles_transposed(case, pixels):
    vector = native_vector(TARGET, "float32")
    vectors, pixel_tile = gemm_tile(1 if pixels > 14 else 2, pixels, TARGET)
    plan = Plan("implicit_gemm", vectors * vector, pixel_tile, vector, "oc_outer", 2)
    kernel = check_kernel(case, plan, "float32", "STAGE_SEG", f"transposed{pixels}")
    if vector == 16:
        assert "transpose16(rows)" in kernel.source


def test_every_staged_row_is_one_segment_per_column_residue():
    """The copy out of a staged row reads column c from segment c % S at c // S
    (cpu.derived.stage_layout, which raises where that would not hold): 1-D to 3-D
    transposed convs over strides, kernels, paddings, dilations, output paddings and row
    widths, including rows narrower than the stride (phases without outputs)."""
    staged = 0
    for ndim, stride, kernel, padding, dilation, out_pad, width in itertools.product(
            (1, 2, 3), (2, 3, 4), (1, 2, 3, 5), (0, 1, 2), (1, 2), (0, 1), (1, 2, 7)):
        if out_pad >= max(stride, dilation) or padding > dilation * (kernel - 1):
            continue
        spec = convgen.ConvSpec.conv_transpose(ndim, 4, 8, kernel, stride=stride,
                                               padding=padding, dilation=dilation,
                                               output_padding=out_pad)
        shape = (1, 4) + (3,) * (ndim - 1) + (width,)
        try:
            workload = workload_of(spec, shape, "float32")[0]
        except ValueError:      # no output: not a layer
            continue
        facts = derive(workload, Plan("implicit_gemm", 16, 4, 16, "oc_outer", 2), TARGET)
        staged += bool(facts.stage_pitch)
        counts = [p.axes[-1].count for p in facts.lowering.phases]
        assert facts.stage_segment >= max(counts)
        assert facts.stage_pitch >= stride * facts.stage_segment
    assert staged > 500


def check_kernel(case, plan: Plan, dtype: str, marker: str, salt: str) -> convgen.Kernel:
    """Compile ``plan`` for ``case``, check that its source shows the variant (``marker``),
    and compare a poisoned call on fresh operands with torch; the kernel."""
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, plan=plan)
    assert marker in kernel.source
    rng = np.random.default_rng(seed_of(f"{case.name}{dtype}{salt}"))
    x, w, b = (a.astype(dtype) for a in operands(case, rng))
    assert_matches(poisoned_call(kernel, x, w, b),
                   torch_reference(case.op, x, w, b, **case.kwargs), dtype)
    return kernel


def test_only_strided_output_rows_are_staged():
    unit = convgen.compile(convgen.ConvSpec.conv_transpose(2, 16, 16, 3, stride=(2, 1)),
                           (1, 16, 8, 8), plan="implicit_gemm")
    forward = convgen.compile(convgen.ConvSpec.conv(1, 16, 16, 3, stride=2), (1, 16, 64),
                              plan="implicit_gemm")
    assert "STAGE_PITCH" not in unit.source and "STAGE_PITCH" not in forward.source


def test_strided_transposed_rows_are_not_offered_a_panel():
    """Staged rows (above) beat a panel that stores straight into strided rows, so the
    planner offers none there; unit-stride transposed rows keep it."""
    strided = convgen.compile(convgen.ConvSpec.conv_transpose(1, 64, 32, 16, stride=8,
                                                              padding=4), (1, 64, 256)).workload
    assert not any(c.plan.loop_order == "panel"
                   for c in candidates(strided, TARGET, threads=2)
                   if c.plan.algorithm == "implicit_gemm")
    unit = convgen.compile(convgen.ConvSpec.conv_transpose(1, 64, 64, 3, padding=1),
                           (1, 64, 256)).workload
    assert any(c.plan.loop_order == "panel" for c in candidates(unit, TARGET, threads=2))


# A small padded input is copied whole by every thread into a buffer of its own (the
# per-thread panels and staging rows come after those copies): every SIMD order, staged
# rows, 1-D to 3-D, padding modes, batch above the thread count.
PRIVATE_CASES = [
    (make_case("circular_1d", "conv1d", cin=16, cout=24, spatial=(97,), kernel=5, padding=2,
               padding_mode="circular"), "direct_simd", "oc_outer"),
    (make_case("reflect_2d", "conv2d", cin=8, cout=40, spatial=(9, 13), kernel=3, padding=1,
               padding_mode="reflect", batch=3), "implicit_gemm", "pixel_outer"),
    (make_case("panel_2d", "conv2d", cin=20, cout=40, spatial=(9, 23), kernel=3, padding=1),
     "implicit_gemm", "panel"),
    (make_case("staged_1d", "conv_transpose1d", cin=24, cout=20, spatial=(33,), kernel=16,
               stride=8, padding=4), "implicit_gemm", "oc_outer"),
    (make_case("3d", "conv3d", cin=8, cout=16, spatial=(3, 5, 21), kernel=3, padding=1),
     "direct_simd", "pixel_outer"),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case, algorithm, order", PRIVATE_CASES,
                         ids=[c[0].name for c in PRIVATE_CASES])
def test_private_padded_copies_match_torch(case, algorithm, order, dtype):
    vector = native_vector(TARGET, dtype)
    if algorithm == "implicit_gemm":
        plan = Plan(algorithm, vector, 7, vector, order, 2,
                    chunk=14 if order == "panel" else 0)
    else:
        plan = Plan(algorithm, 4, 2 * vector, vector, order, 2)
    check_kernel(case, plan, dtype, "a copy of its own", "private")


def test_only_small_inputs_get_a_copy_per_thread():
    """Up to 256 KiB padded, on more than one thread; the workspace holds a copy per thread."""
    from convgen.cpu.derived import derive
    vector = native_vector(TARGET, "float32")

    def kernel(channels, size, threads):
        return convgen.compile(convgen.ConvSpec.conv(2, channels, 16, 3, padding=1),
                               (1, channels, size, size),
                               plan=Plan("implicit_gemm", vector, 7, vector, "oc_outer", threads))

    small, large, one = kernel(16, 30, 2), kernel(64, 64, 2), kernel(16, 30, 1)
    assert "a copy of its own" in small.source
    assert "a copy of its own" not in large.source and "a copy of its own" not in one.source
    facts = derive(small.workload, small.plan, TARGET)
    assert facts.copy_stride >= 16 * 32 * 32 and facts.workspace >= 2 * facts.copy_stride


# implicit_gemm's oc_outer order prefetches the next channel tile's weights from the last
# tiles of each block: a few tiles per block and many, groups (no prefetch across a group's
# last block), several phases with different tap counts, the blocked accumulation (long
# reduction), 1-D to 3-D, staged rows, a partial last channel tile, batch above the threads.
PREFETCH_CASES = [
    make_case("few_tiles", "conv_transpose2d", cin=64, cout=80, spatial=(4, 4), kernel=4,
              stride=2, padding=1),
    make_case("many_tiles", "conv2d", cin=24, cout=72, spatial=(13, 29), kernel=3, padding=1,
              batch=3),
    make_case("groups", "conv2d", cin=32, cout=96, spatial=(9, 11), kernel=3, padding=1,
              groups=2),
    make_case("long_k", "conv1d", cin=600, cout=40, spatial=(19,), kernel=3, padding=1),
    make_case("phases", "conv_transpose1d", cin=24, cout=40, spatial=(33,), kernel=5, stride=3,
              padding=1),
    make_case("3d", "conv3d", cin=8, cout=40, spatial=(3, 5, 6), kernel=3, padding=1),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", PREFETCH_CASES, ids=[c.name for c in PREFETCH_CASES])
def test_weight_prefetch_matches_torch(case, dtype):
    vector = native_vector(TARGET, dtype)
    plan = Plan("implicit_gemm", vector, 5, vector, "oc_outer", 2)
    check_kernel(case, plan, dtype, "__builtin_prefetch", "prefetch")


@pytest.mark.parametrize("cin, taps, oc_tile, tiles_per_row, rows", [
    (512, 4, 32, 1, 8), (256, 1, 32, 2, 28), (512, 2, 32, 19, 1), (3, 9, 16, 1, 1),
    (600, 3, 16, 4, 1), (64, 16, 64, 1, 2)])
def test_prefetch_schedule_covers_the_next_block_once(cin, taps, oc_tile, tiles_per_row, rows):
    """The template's schedule (row function and prefetch_lines), replayed: the prefetching
    tiles fetch every line of the next block exactly once, never past its end, and are the
    block's last tiles, as few as the rate per input channel allows."""
    from convgen.cpu.render import _weight_prefetch
    workload = convgen.compile(convgen.ConvSpec.conv(1, cin, oc_tile, 1), (1, cin, 8),
                               plan="implicit_gemm").workload
    plan = Plan("implicit_gemm", oc_tile, 14, 16, "oc_outer", 2)
    runs = [{"first": 0, "end": 14 * tiles_per_row, "step": 14}]
    pf = _weight_prefetch(workload, plan, {"taps": [0] * taps, "rows": rows, "runs": runs})
    assert pf["pf_block_lines"] == -(-cin * taps * oc_tile * 4 // 64)
    per_tile, fetched = cin * pf["pf_per_ic"], []
    for row in range(rows):
        for i in range(tiles_per_row):
            t = row * pf["pf_tiles_per_row"] + i - pf["pf_first_tile"]
            left = 0 if t < 0 else pf["pf_block_lines"] - t * per_tile
            lines = max(0, min(left, per_tile))
            fetched += [t * per_tile + line for line in range(lines)]   # tile's ic loop
    whole = per_tile * tiles_per_row * rows >= pf["pf_block_lines"]
    assert sorted(fetched) == list(range(len(fetched)))
    assert len(fetched) == (pf["pf_block_lines"] if whole else per_tile * tiles_per_row * rows)
    assert pf["pf_first_tile"] == max(0, tiles_per_row * rows - -(-pf["pf_block_lines"]
                                                                   // per_tile))


def test_only_oc_outer_implicit_gemm_prefetches_weights():
    spec, shape = convgen.ConvSpec.conv(2, 32, 64, 3, padding=1), (1, 32, 12, 12)
    vector = native_vector(TARGET, "float32")
    for order in ("pixel_outer", "panel"):
        plan = Plan("implicit_gemm", vector, 6, vector, order, 2, chunk=12 if order == "panel"
                    else 0)
        assert "__builtin_prefetch" not in convgen.compile(spec, shape, plan=plan).source
    simd = Plan("direct_simd", 4, 2 * vector, vector, "oc_outer", 2)
    assert "__builtin_prefetch" not in convgen.compile(spec, shape, plan=simd).source


def test_a_panel_splits_strided_rows_only_where_the_input_is_copied_anyway():
    """Stored as column phases, a strided row is packed with whole copies, but splitting it
    means copying every row and phase of the input, read or not: only where the padding
    needs a copy anyway. Unpadded, the panel gathers the strided rows from the input."""
    from convgen.cpu.derived import derive
    vector = native_vector(TARGET, "float32")
    vectors, pixels = gemm_tile(2, 7, TARGET)
    plan = Plan("implicit_gemm", vectors * vector, pixels, vector, "panel", 2,
                chunk=2 * pixels)

    def lowering(**kwargs):
        kernel = convgen.compile(convgen.ConvSpec.conv(2, 32, 32, **kwargs), (1, 32, 20, 20),
                                 plan=plan)
        return derive(kernel.workload, kernel.plan, TARGET).lowering

    unpadded, padded = lowering(kernel_size=1, stride=2), lowering(kernel_size=3, stride=2,
                                                                    padding=1)
    assert not unpadded.copy_input and unpadded.row_split == 1
    assert padded.copy_input and padded.row_split == 2


def test_a_panel_chunk_reads_only_the_rows_its_taps_touch():
    """The cost model's packing reads: a 1x1 stride-2 layer touches every other input row,
    a span of 2 * pixels - 1 elements of each (and a line of misalignment)."""
    from convgen.cpu.cost import _chunk_lines
    from convgen.cpu.derived import derive
    vector = native_vector(TARGET, "float32")
    vectors, pixels = gemm_tile(2, 7, TARGET)
    plan = Plan("implicit_gemm", vectors * vector, pixels, vector, "panel", 2,
                chunk=2 * pixels)
    kernel = convgen.compile(convgen.ConvSpec.conv(2, 64, 32, 1, stride=2), (1, 64, 56, 56),
                             plan=plan)
    phase = derive(kernel.workload, plan, TARGET).lowering.phases[0]
    assert _chunk_lines(kernel.workload, phase, 14) == 64 * (-(-27 * 4 // 64) + 1)
    three = convgen.compile(convgen.ConvSpec.conv(2, 64, 32, 3, padding=1), (1, 64, 56, 56),
                            plan=plan)
    phase = derive(three.workload, plan, TARGET).lowering.phases[0]
    assert _chunk_lines(three.workload, phase, 14) == 64 * 3 * (-(-16 * 4 // 64) + 1)


# direct_simd's reduction loops unrolled 4 steps (render._reduction_unroll): channel and tap
# counts that leave every remainder (1 x 1 with 1, 2, 3 channels over a multiple of 4; 7 and
# 5 taps; 2 accumulator chains over an odd tap count), a blocked long reduction, groups,
# a transposed conv (unit stride: one phase); on AVX2 the tiles shrink to fit (direct_tile)
UNROLL_CASES = [
    (make_case("pointwise_rem1", "conv2d", cin=13, cout=24, spatial=(7, 37), kernel=1), 4, 3),
    (make_case("pointwise_rem2", "conv1d", cin=6, cout=16, spatial=(50,), kernel=1,
               batch=3), 8, 1),
    (make_case("taps7", "conv1d", cin=11, cout=24, spatial=(41,), kernel=7, padding=3), 4, 2),
    (make_case("chains", "conv2d", cin=3, cout=4, spatial=(6, 19), kernel=(1, 5),
               padding=(0, 2)), 2, 1),
    (make_case("blocked", "conv1d", cin=300, cout=8, spatial=(21,), kernel=3, padding=1), 4, 2),
    (make_case("groups", "conv2d", cin=12, cout=24, spatial=(5, 18), kernel=3, padding=1,
               groups=3), 8, 1),
    (make_case("phases", "conv_transpose1d", cin=9, cout=16, spatial=(17,), kernel=5,
               stride=1, padding=2), 4, 2),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case, oc_tile, vectors", UNROLL_CASES,
                         ids=[c[0].name for c in UNROLL_CASES])
def test_unrolled_reductions_match_torch(case, oc_tile, vectors, dtype, threads):
    vector = native_vector(TARGET, dtype)
    oc_tile, vectors = direct_tile(oc_tile, vectors, TARGET)
    plan = Plan("direct_simd", oc_tile, vectors * vector, vector, "oc_outer", threads)
    kernel = check_kernel(case, plan, dtype, "UNROLL_REDUCTION for", "unroll")
    assert ("GCC unroll 4" in kernel.source) == (vector > 1)


# implicit_gemm unrolls its tap loop whole up to 9 taps, 9 at a time beyond (a remainder
# of 2 with 11 taps), one tap per phase of a transposed conv, 27 taps of a 3-D kernel
TAP_UNROLL_CASES = [
    (make_case("taps9", "conv2d", cin=5, cout=20, spatial=(9, 13), kernel=3, padding=2,
               dilation=2), 9),
    (make_case("taps11", "conv1d", cin=3, cout=24, spatial=(40,), kernel=11, padding=5,
               stride=2), 9),
    (make_case("taps7", "conv2d", cin=4, cout=16, spatial=(6, 17), kernel=(1, 7),
               padding=(0, 3)), 7),
    (make_case("phases4", "conv_transpose2d", cin=6, cout=18, spatial=(5, 6), kernel=4,
               stride=2, padding=1), 4),
    (make_case("taps27", "conv3d", cin=3, cout=16, spatial=(4, 5, 6), kernel=3,
               padding=1), 9),
    (make_case("pointwise", "conv2d", cin=7, cout=16, spatial=(5, 9), kernel=1), 1),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case, unroll", TAP_UNROLL_CASES,
                         ids=[c[0].name for c in TAP_UNROLL_CASES])
def test_implicit_gemm_unrolled_taps_match_torch(case, unroll, dtype):
    vector = native_vector(TARGET, dtype)
    plan = Plan("implicit_gemm", vector, 5, vector, "oc_outer", 2)
    kernel = check_kernel(case, plan, dtype, "UNROLL_REDUCTION for", "taps")
    pragmas = re.findall(r"GCC unroll (\d+)", kernel.source)
    assert pragmas == ([str(unroll)] if vector > 1 and unroll > 1 else [])
