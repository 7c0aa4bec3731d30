"""The planner: its public signature, the candidate space and the explanation."""
from __future__ import annotations

import dataclasses

import pytest

import convgen
from convgen.api import choose_plan as plan
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.plan import Plan, algorithms_for, check_plan
from convgen.cpu.planner import candidates, explain

SPEC = ConvSpec.conv(2, 12, 24, 3, padding=1, groups=3)


def test_plan_takes_spec_shape_dtype_target():
    chosen = plan(SPEC, (2, 12, 17, 9), "float64", "cpu")
    assert isinstance(chosen, Plan)
    assert chosen == convgen.compile(SPEC, (2, 12, 17, 9), dtype="float64").plan
    # unbatched shapes plan as batch 1
    assert plan(SPEC, (12, 17, 9)) == plan(SPEC, (1, 12, 17, 9))


def test_candidates_are_legal_ranked_and_parse_back():
    workload, _ = workload_of(SPEC, (2, 12, 17, 9), "float32")
    ranked = candidates(workload, get_target("cpu"), threads=2)
    costs = [c.cost_s for c in ranked]
    assert costs == sorted(costs) and len(ranked) > 10
    gather = {c.plan.oc_tile for c in ranked if c.plan.algorithm == "direct"}
    assert gather == {1, 2, 4, 8}   # the divisors of 8 per group
    assert {c.plan.algorithm for c in ranked} == {"direct", "direct_simd", "implicit_gemm",
                                                  "winograd2", "winograd4"}
    for cand in ranked:
        check_plan(cand.plan, workload, get_target("cpu"))
        assert Plan.parse(str(cand.plan)) == cand.plan


def test_explain_shows_the_choice_first():
    workload, _ = workload_of(SPEC, (2, 12, 17, 9), "float32")
    text = explain(workload, get_target("cpu"), top=3)
    best = str(plan(workload))
    assert "candidate plans" in text
    starred = next(line for line in text.splitlines() if line.strip().startswith("*"))
    assert best in starred


def test_tiny_layers_stay_on_one_thread():
    # a fork/join costs more than this whole layer
    chosen = plan(ConvSpec.conv(1, 2, 2, 3), (1, 2, 8), threads=2)
    assert chosen.threads == 1


def test_simd_algorithms_win_where_they_should():
    dense = plan(ConvSpec.conv(2, 64, 64, 3, padding=1), (1, 64, 28, 28), threads=2)
    assert dense.algorithm.startswith("winograd") and dense.threads == 2
    exact = plan(ConvSpec.conv(2, 64, 64, 3, padding=1), (1, 64, 28, 28), threads=2,
                 accuracy="strict")
    assert exact.algorithm in ("implicit_gemm", "direct_simd")
    depthwise = plan(ConvSpec.conv(2, 32, 32, 3, padding=1, groups=32), (1, 32, 56, 56))
    assert depthwise.algorithm == "depthwise"   # no channels to fill vector lanes with
    strided_dw = plan(ConvSpec.conv(2, 32, 32, 3, stride=2, padding=1, groups=32), (1, 32, 56, 56))
    assert strided_dw.algorithm == "depthwise"
    dw3d = plan(ConvSpec.conv(3, 8, 8, 3, padding=1, groups=8), (1, 8, 6, 6, 6))
    assert dw3d.algorithm == "direct_simd"      # depthwise covers 1-D and 2-D
    strided = plan(ConvSpec.conv(2, 64, 64, 3, stride=2, padding=1), (1, 64, 28, 28))
    assert strided.algorithm == "implicit_gemm"
    hifigan = plan(ConvSpec.conv_transpose(1, 64, 32, 16, stride=8, padding=4), (1, 64, 32))
    assert hifigan.algorithm == "implicit_gemm"


def test_strict_accuracy_never_plans_winograd():
    spec = ConvSpec.conv(2, 64, 64, 3, padding=1)
    workload, _ = workload_of(spec, (1, 64, 56, 56), "float32")
    fast = candidates(workload, get_target("cpu"), threads=2)
    strict = candidates(workload, get_target("cpu"), threads=2, accuracy="strict")
    assert any(c.plan.algorithm.startswith("winograd") for c in fast)
    assert not any(c.plan.algorithm.startswith("winograd") for c in strict)
    assert not plan(spec, (1, 64, 56, 56), accuracy="strict").algorithm.startswith("winograd")
    kernel = convgen.compile(spec, (1, 64, 56, 56), accuracy="strict")
    assert not kernel.plan.algorithm.startswith("winograd")
    with pytest.raises(ValueError, match="strict"):
        convgen.compile(spec, (1, 64, 56, 56), plan="winograd4", accuracy="strict")
    with pytest.raises(ValueError, match="accuracy"):
        convgen.compile(spec, (1, 64, 56, 56), accuracy="exactish")


def test_winograd_transforms_are_exact_in_rationals():
    from convgen.cpu.winograd import TRANSFORMS, check
    for transform in TRANSFORMS.values():
        assert check(transform) < 1e-13


def test_depthwise_applies_to_one_input_channel_per_group_only():
    def algorithms(spec, shape):
        return algorithms_for(workload_of(spec, shape, "float32")[0])
    assert "depthwise" in algorithms(ConvSpec.conv(2, 8, 16, 3, groups=8), (1, 8, 9, 9))
    assert "depthwise" in algorithms(ConvSpec.conv(1, 1, 4, 5), (2, 1, 30))   # multiplier 4
    assert "depthwise" not in algorithms(ConvSpec.conv(2, 8, 8, 3, groups=4), (1, 8, 9, 9))
    assert "depthwise" not in algorithms(ConvSpec.conv(3, 4, 4, 3, groups=4), (1, 4, 5, 5, 5))
    assert "depthwise" not in algorithms(ConvSpec.conv_transpose(2, 4, 4, 3, groups=4),
                                         (1, 4, 5, 5))


def test_depthwise_plans_print_their_row_tile_and_others_do_not():
    tiled = Plan("depthwise", 1, 32, 16, "oc_outer", 2, row_tile=3)
    assert "row_tile=3" in str(tiled) and Plan.parse(str(tiled)) == tiled
    plain = Plan("direct_simd", 2, 32, 16, "oc_outer", 2)
    assert "row_tile" not in str(plain) and Plan.parse(str(plain)) == plain
    with pytest.raises(ValueError, match="row_tile"):
        Plan.parse("algorithm=depthwise oc_tile=1 pixel_tile=16 vector=16 loop_order=oc_outer "
                   "threads=1 row_tile=x")
    with pytest.raises(ValueError, match="fields"):
        Plan.parse("algorithm=depthwise oc_tile=1 pixel_tile=16 vector=16 loop_order=oc_outer "
                   "threads=1 rows=2")


def test_a_panels_prefetch_prints_parses_and_applies_to_panels_only():
    fetching = Plan("implicit_gemm", 32, 14, 16, "panel", 2, chunk=28, prefetch=1)
    assert "chunk=28 prefetch=1 threads=2" in str(fetching)
    assert Plan.parse(str(fetching)) == fetching
    plain = Plan("implicit_gemm", 32, 14, 16, "panel", 2, chunk=28)
    assert "prefetch" not in str(plain) and Plan.parse(str(plain)) == plain
    workload, _ = workload_of(ConvSpec.conv(2, 16, 32, 1), (1, 16, 8, 8), "float32")
    target = get_target("x86-64-v4")
    check_plan(fetching, workload, target)
    with pytest.raises(ValueError, match="prefetch=1 applies to loop_order='panel' only"):
        check_plan(Plan("implicit_gemm", 32, 14, 16, "oc_outer", 2, prefetch=1), workload,
                   target)
    with pytest.raises(ValueError, match="prefetch must be 0 or 1, got 2"):
        check_plan(Plan("implicit_gemm", 32, 14, 16, "panel", 2, chunk=28, prefetch=2),
                   workload, target)
    # the planner offers both for every vector panel, none for the scalar target's
    panels = [c.plan for c in candidates(workload, target, threads=2)
              if c.plan.loop_order == "panel"]
    fetching = {dataclasses.replace(p, prefetch=0) for p in panels if p.prefetch}
    assert fetching and fetching == {p for p in panels if not p.prefetch}
    portable = [c.plan for c in candidates(workload, get_target("c"), threads=2)]
    assert any(p.loop_order == "panel" for p in portable)
    assert not any(p.prefetch for p in portable)


def test_depthwise_candidates_tile_rows_and_never_spill():
    workload, _ = workload_of(ConvSpec.conv(2, 32, 32, 3, padding=1, groups=32),
                              (1, 32, 56, 56), "float32")
    mine = [c.plan for c in candidates(workload, get_target("cpu"), threads=2)
            if c.plan.algorithm == "depthwise"]
    assert {p.row_tile for p in mine} == set(range(1, 9))
    regs = 32 if get_target("cpu").isa == "avx512" else 16
    assert all(p.row_tile * p.pixel_tile // p.vector <= regs * 3 // 4 for p in mine)


def test_pixel_outer_keeps_weights_that_fit_l2():
    """strided_3x3 of the suite: 590 KB of packed weights, walked once per output row in the
    same order. pixel_outer keeps a row's inputs and streams every channel tile's weights past
    them: the better order where the weights stay in L2 (2 MiB), the worse where they do not
    (512 KiB), the tile itself being the same."""
    import dataclasses

    from convgen.cpu.cost import estimate
    from convgen.target.machine import default_machine
    workload, _ = workload_of(ConvSpec.conv(2, 128, 128, 3, stride=2, padding=1),
                              (1, 128, 56, 56), "float32")
    target = get_target("cpu")
    rows_inside = Plan("implicit_gemm", 32, 14, 16, "pixel_outer", 2)
    tiles_inside = Plan("implicit_gemm", 32, 14, 16, "oc_outer", 2)
    for l2_bytes, pixel_outer_wins in ((2 << 20, True), (512 << 10, False)):
        machine = dataclasses.replace(default_machine(target.isa_row), l1d_bytes=48 << 10,
                                      l2_bytes=l2_bytes, l3_bytes=32 << 20)
        rows = estimate(rows_inside, workload, target, machine)[0]
        tiles = estimate(tiles_inside, workload, target, machine)[0]
        assert (rows < tiles) == pixel_outer_wins, (l2_bytes, rows, tiles)
