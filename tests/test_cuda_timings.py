"""The CUDA cost model weighed by GPU timings (convgen/cuda/timings.py, timings.json): the
shipped weights are what bench/fit_cuda_model.py makes of the timings recorded in
bench/gpu_results/, they rank the timed candidates better than the analytical model did,
the planner's choices move the way the measurements say, and an architecture without
timings (or a table that cannot be read) keeps the analytical model. No GPU needed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import workload_of
from convgen.cuda import CudaPlan, timings
from convgen.cuda.cost import DIRECT_TIMED_BELOW, analytical_seconds, cost_of, costs_of, terms_of
from convgen.target.cuda_arch import CUDA_ARCHS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "bench" / "gpu_results").iterdir())[-1]


@pytest.fixture(scope="module")
def fit_module():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import fit_cuda_model
    finally:
        sys.path.pop(0)
    return fit_cuda_model


@pytest.fixture(scope="module")
def recorded(fit_module):
    rows = fit_module.rows_of(sorted(RESULTS.glob("compare_*.json")))
    return rows, fit_module.fit(rows)


def workload(op, x, w, **args):
    spec = spec_from_op(op, w, True, x, **args)
    return workload_of(spec, x, "float32")[0]


def arch(name="sm_90a", tf32=True):
    return dataclasses.replace(CUDA_ARCHS[name], allow_tf32=tf32)


def test_the_shipped_weights_are_the_fit_of_the_recorded_timings(fit_module, recorded):
    rows, theta = recorded
    shipped = timings.table()[90]
    assert shipped["fit"]["rows"] == len(rows) == 480
    assert sorted(shipped["fit"]["sources"]) == sorted(
        str(p.relative_to(ROOT)) for p in RESULTS.glob("compare_*.json"))
    again = fit_module.fitted_record(theta, rows[0]["gpu"])
    for key, value in shipped["fitted"].items():
        if isinstance(value, dict):
            for kind, v in value.items():
                assert again[key][kind] == pytest.approx(v, rel=1e-4), (key, kind)
        elif isinstance(value, float):
            assert again[key] == pytest.approx(value, rel=1e-4), key


def test_the_fit_ranks_the_timed_candidates_better_than_the_analytical_model(fit_module,
                                                                             recorded):
    """Within what was timed per layer (60 layer runs, 8 candidates each): the analytical
    model's first choice was 26% slower than the best on average, 5.4x at worst (dilated_2
    with TF32, split 16 ways); the fitted model's within 10% on average, 1.6x at worst."""
    rows, theta = recorded
    fitted = fit_module.model(theta, fit_module.arrays(rows))
    analytic = np.array([analytical_seconds(r["terms"]) for r in rows])
    before = fit_module.summary(fit_module.regrets(rows, analytic).values())
    after = fit_module.summary(fit_module.regrets(rows, fitted).values())
    assert before["geomean"] > 1.2 and before["max"] > 5
    assert after["geomean"] < 1.08 and after["max"] < 1.6 and after["over_1.1"] < 15
    measured = np.array([r["measured_s"] for r in rows])
    assert np.median(np.abs(fitted - measured) / measured) < 0.2


def test_wgmma_is_chosen_where_it_was_timed_faster():
    """vgg_conv1_2 and the batch-32 64-channel 3x3: wgmma 0.037 and 0.067 ms against 0.063
    and 0.103 ms for the TF32 mma.sync GEMM the analytical model chose."""
    for x, w in (((1, 64, 224, 224), (64, 64, 3, 3)), ((32, 64, 56, 56), (64, 64, 3, 3))):
        load = workload("conv2d", x, w, padding=1)
        from convgen.cuda import candidates
        target = dataclasses.replace(get_target("cuda"), cuda=arch())
        allowed = [c for c in candidates(load, target) if c.plan.math == "tf32"]
        assert allowed[0].plan.algorithm == "wgmma_gemm", allowed[0]


def test_split_k_costs_what_it_was_timed_to_cost():
    """resnet 3x3 64 channels, batch 32, FP32 128x64x8: 0.24, 0.29, 0.40, 0.59 ms at 1, 2, 4
    and 8 splits. The analytical model priced them alike; the fitted one in order, and
    within 30% of each."""
    load = workload("conv2d", (32, 64, 56, 56), (64, 64, 3, 3), padding=1)
    measured = {1: 0.2375e-3, 2: 0.2941e-3, 4: 0.3954e-3, 8: 0.5948e-3}
    a = arch(tf32=False)
    fitted, analytic = {}, {}
    for split, seconds in measured.items():
        plan = CudaPlan("implicit_gemm", (128, 64, 8), (64, 32), 4, split, "fp32", 128)
        fitted[split] = cost_of(plan, load, a)[0]
        analytic[split] = analytical_seconds(terms_of(plan, load, a))
        assert fitted[split] == pytest.approx(seconds, rel=0.3), split
    assert fitted[1] < fitted[2] < fitted[4] < fitted[8]
    assert max(analytic.values()) < 1.1 * min(analytic.values())


def test_an_architecture_without_timings_keeps_the_analytical_model():
    load = workload("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    a = arch("sm_80")
    assert timings.for_arch(a) is None and timings.for_arch(arch("sm_90")) is not None
    for plan in (CudaPlan("implicit_gemm", (64, 64, 16), (32, 32), 3, 2, "tf32", 128),
                 CudaPlan("direct", (128, 4), (), 1, 1, "fp32", 128)):
        assert cost_of(plan, load, a)[0] == analytical_seconds(terms_of(plan, load, a))


@pytest.mark.parametrize("content", [None, "{not json", '{"archs": {"90": {}}}'])
def test_a_missing_or_unreadable_table_keeps_the_analytical_model(tmp_path, monkeypatch,
                                                                  content):
    table = tmp_path / "timings.json"
    if content is not None:
        table.write_text(content)
    monkeypatch.setattr(timings, "TABLE", table)
    timings.table.cache_clear()
    try:
        load = workload("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
        plan = CudaPlan("implicit_gemm", (64, 64, 16), (32, 32), 3, 2, "tf32", 128)
        if content == '{"archs": {"90": {}}}':
            with pytest.raises(KeyError):   # a record without weights is a broken table
                timings.for_arch(arch())
        else:
            assert timings.for_arch(arch()) is None
            assert cost_of(plan, load, arch())[0] == analytical_seconds(
                terms_of(plan, load, arch()))
    finally:
        timings.table.cache_clear()


def test_the_direct_kernel_keeps_its_analytical_standing_on_dense_layers():
    """Timed only on grouped and depthwise layers, the direct kernel is priced on a dense
    layer at its analytical ratio to the SIMT GEMM the fitted model ranks first."""
    load = workload("conv2d", (32, 256, 14, 14), (256, 256, 3, 3), padding=1)
    assert load.spec.cin_per_group >= DIRECT_TIMED_BELOW
    a = arch(tf32=False)
    gemms = [CudaPlan("implicit_gemm", (64, 128, 16), (64, 32), 4, 1, "fp32", 128),
             CudaPlan("implicit_gemm", (128, 64, 32), (32, 64), 4, 1, "fp32", 128)]
    direct = CudaPlan("direct", (128, 16), (), 1, 1, "fp32", 128)
    priced = costs_of(gemms + [direct], load, a)
    best = min(range(2), key=lambda i: priced[i][0])
    ratio = priced[2][0] / priced[best][0]
    analytic = [analytical_seconds(terms_of(p, load, a)) for p in gemms + [direct]]
    assert ratio == pytest.approx(analytic[2] / analytic[best], rel=1e-9)
    assert "never timed" in priced[2][1]
    grouped = workload("conv2d", (1, 128, 56, 56), (128, 4, 3, 3), padding=1, groups=32)
    plan = CudaPlan("direct", (128, 4), (), 1, 1, "fp32", 128)
    assert costs_of([plan], grouped, a)[0][0] == cost_of(plan, grouped, a)[0]


def test_the_planner_rarely_splits_k_where_chains_were_timed_slow():
    """dilated_2 (512 channels, 28x28, batch 1) with TF32: every timed candidate split K 16
    ways and took 0.27 ms (cuDNN 0.05); the fitted planner splits at most 2 ways there."""
    load = workload("conv2d", (1, 512, 28, 28), (512, 512, 3, 3), padding=2, dilation=2)
    chosen = convgen.api.choose_plan(load, target=dataclasses.replace(
        get_target("cuda"), cuda=arch()))
    assert chosen.split_k <= 2, chosen


def test_the_fitted_form_is_what_timings_documents():
    t = timings.for_arch(arch())
    load = workload("conv2d", (2, 32, 28, 28), (64, 32, 3, 3), padding=1)
    plan = CudaPlan("implicit_gemm", (64, 64, 16), (32, 32), 3, 4, "fp32", 128)
    terms = terms_of(plan, load, arch())
    c, m = terms.compute_s * t.compute_scale["fp32"], terms.memory_s * t.memory_scale
    expected = (t.gemm_fixed_s + max(c, m) + t.overlap * min(c, m)
                + 3 * (t.split_k_s["fp32"] + t.split_k_s_per_byte * terms.output_bytes))
    assert t.seconds(terms) == pytest.approx(expected)
    assert json.loads(timings.TABLE.read_text())["archs"]["90"]["fitted"]["gpu"] == \
        "NVIDIA H200"
    assert math.isfinite(expected)


def test_the_fit_script_refits_from_results_anywhere(fit_module, tmp_path, monkeypatch,
                                                       capsys):
    """As the GPU check runs it on a lent machine: this run's results (outside the
    checkout) with the recorded ones, written to the table."""
    import shutil
    for path in RESULTS.glob("compare_*.json"):
        shutil.copy(path, tmp_path / path.name)
    table = tmp_path / "timings.json"
    monkeypatch.setattr(timings, "TABLE", table)
    relative = [str(p.relative_to(ROOT)) for p in sorted(RESULTS.glob("compare_*.json"))]
    monkeypatch.chdir(ROOT)
    assert fit_module.main([*relative, *map(str, sorted(tmp_path.glob("compare_*.json"))),
                            "--write"]) == 0
    record = json.loads(table.read_text())["archs"]["90"]
    assert record["fit"]["rows"] == 960
    assert record["fit"]["sources"][:4] == relative
    assert all(s.startswith(str(tmp_path)) for s in record["fit"]["sources"][4:])
    assert "regret within the measured candidates, fitted" in capsys.readouterr().out


def test_the_fit_and_the_planner_price_alike(fit_module, recorded):
    """fit_cuda_model evaluates the fitted form vectorised (numpy) and the planner one plan
    at a time (timings.Fitted.seconds): the same formula written twice, so they must agree
    on every timed candidate."""
    rows, theta = recorded
    fitted = timings.Fitted.from_dict(fit_module.fitted_record(theta, "test"))
    vectorised = fit_module.model(theta, fit_module.arrays(rows))
    one_by_one = np.array([fitted.seconds(r["terms"]) for r in rows])
    assert np.allclose(vectorised, one_by_one, rtol=1e-12)
