"""Tuning's optional parts: a Dask LocalCluster fan-out, the --report plots, the cost
model's fit, model files, and the CUDA emulator target."""
from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

import convgen
from convgen.backends import backend_for, get_target
from convgen.core.spec import workload_of
from convgen.cpu.cost import estimate
from convgen.runtime import machine as machine_model
from convgen.runtime.threads import default_threads
from convgen.target.machine import default_machine
from convgen.tuning import TuningDB, tune_many
from convgen.tuning import db as tuning_db
from convgen.tuning.models import load_layers

LAYERS = [("conv_a", convgen.ConvSpec.conv(2, 8, 16, 3, padding=1), (1, 8, 12, 12), "float32"),
          ("conv_b", convgen.ConvSpec.conv(1, 8, 8, 5, padding=2), (1, 8, 40), "float32")]


def test_a_dask_local_cluster_of_two_processes_tunes_two_layers(tmp_path):
    pytest.importorskip("distributed")
    path = tmp_path / "db.jsonl"
    results = tune_many(LAYERS, trials=3, db=path, workers=2, min_time=0.01, progress=False)
    assert [r.name for r in results] == ["conv_a", "conv_b"]
    for result in results:
        assert len(result.trials) == 3 and all(t.ok for t in result.trials)
        assert result.confirmed
    records = TuningDB(path).records()
    assert sorted(r["name"] for r in records if r["kind"] == "decision") == ["conv_a", "conv_b"]
    assert sum(r["kind"] == "trial" for r in records) == 6
    for name, spec, shape, dtype in LAYERS:
        workload = workload_of(spec, shape, dtype)[0]
        best = next(r for r in results if r.name == name).best
        assert TuningDB(path).best(workload, "cpu") == best


def test_report_writes_non_empty_pngs_and_an_index(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from convgen.cli import main
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"layers": [
        {"name": "first", "op": "conv2d", "x": [1, 8, 12, 12], "w": [16, 8, 3, 3],
         "args": {"padding": 1}},
        {"name": "second", "op": "conv1d", "x": [1, 8, 40], "w": [8, 8, 5],
         "args": {"padding": 2}, "bias": False}]}))
    report = tmp_path / "report"
    assert main(["tune", str(model), "--trials", "3", "--db", str(tmp_path / "db.jsonl"),
                 "--report", str(report), "--min-time", "0.01", "--quiet"]) == 0
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["best-so-far.png", "first-trials.png", "model.png", "roofline.png",
                    "second-trials.png"]
    for png in report.glob("*.png"):
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    index = (report / "index.md").read_text()
    assert "first" in index and "second" in index and "![roofline](roofline.png)" in index
    assert "<img" in (report / "index.html").read_text()
    out = capsys.readouterr().out
    assert "first: 3 trials" in out and "second: 3 trials" in out


def test_model_files_are_read_and_bad_ones_refused(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([{"name": "x", "op": "conv_transpose2d", "x": [1, 4, 6, 6],
                                  "w": [4, 2, 3, 3], "args": {"stride": 2}}]))
    ((name, spec, shape, dtype),) = load_layers(suite)
    assert (name, spec.transposed, shape, dtype) == ("x", True, (1, 4, 6, 6), "float32")
    suite.write_text(json.dumps([{"name": "y", "op": "conv2d", "x": [1, 4, 6, 6],
                                  "w": [4, 4, 3, 3], "args": {"stride": 0}}]))
    with pytest.raises(ValueError, match="layer 0 \\(y\\): stride"):
        load_layers(suite)
    (tmp_path / "m.onnx").write_bytes(b"\0")
    with pytest.raises(ValueError, match="ONNX"):
        load_layers(tmp_path / "m.onnx")


def _synthetic_db(path, truth, count_per_layer=12):
    """Trials whose 'measured' times are the cost model's under another machine."""
    target = get_target("cpu")
    backend = backend_for(target)
    rng = random.Random(0)
    database = TuningDB(path)
    shapes = [(convgen.ConvSpec.conv(2, 32, 64, 3, padding=1), (1, 32, 28, 28)),
              (convgen.ConvSpec.conv(2, 64, 64, 1), (1, 64, 28, 28)),
              (convgen.ConvSpec.conv(1, 64, 64, 7, padding=3), (1, 64, 256))]
    for spec, shape in shapes:
        workload = workload_of(spec, shape, "float32")[0]
        plans = [c.plan for c in backend.candidates(workload, target)]
        for plan in rng.sample(plans, count_per_layer):
            seconds = estimate(plan, workload, target, truth)[0] * math.exp(rng.gauss(0, 0.03))
            record = tuning_db.header("trial", workload, target, backend, "fast",
                                      default_threads(), "synthetic")
            record.update(plan=str(plan), status="ok", time={
                "median_s": seconds, "min_s": seconds, "q25_s": seconds, "q75_s": seconds,
                "mean_s": seconds, "stdev_s": 0.0, "runs": 5})
            database.append(record)
    return database


def test_the_fit_changes_the_model_and_reports_the_error_before_and_after(
        tmp_path, private_cache, capsys):
    from convgen.cli import main
    from convgen.tuning import fit
    isa = get_target("cpu").isa_row
    default = default_machine(isa)
    truth = dataclasses.replace(default, clock_hz=default.clock_hz * 0.6,
                                fma_per_cycle=default.fma_per_cycle * 2,
                                l2_bytes_per_cycle=default.l2_bytes_per_cycle / 2)
    database = _synthetic_db(tmp_path / "db.jsonl", truth)
    dry = fit.fit(database.path, save=False)
    cpu = get_target("cpu")
    assert dry.saved_to is None and machine_model.current(cpu) == default
    assert dry.after.mean_abs_log < dry.before.mean_abs_log * 0.6
    assert dry.after.spearman >= dry.before.spearman - 0.02
    assert main(["tune", "fit", "--db", str(database.path)]) == 0
    out = capsys.readouterr().out
    assert "before:" in out and "after:" in out and "Spearman" in out
    fitted = machine_model.current(cpu)
    assert fitted != default   # the planner prices plans with the fitted constants now
    assert fit.errors(fit.samples_from(database, get_target("cpu")), get_target("cpu"),
                      fitted).mean_abs_log == pytest.approx(dry.after.mean_abs_log)
    assert main(["tune", "fit", "--clear"]) == 0
    assert machine_model.current(cpu) == default


def test_the_fit_needs_measurements(tmp_path, private_cache):
    from convgen.tuning import fit
    with pytest.raises(ValueError, match="at least"):
        fit.fit(tmp_path / "empty.jsonl")


@pytest.mark.slow
def test_cuda_emulator_targets_tune_in_principle(tmp_path):
    from convgen.tuning import tune
    result = tune(convgen.ConvSpec.conv(2, 4, 4, 3, padding=1), (1, 4, 6, 6), target="cuda-emu",
                  trials=2, db=tmp_path / "db.jsonl", min_time=0.01, progress=False)
    assert len(result.trials) == 2 and all(t.ok for t in result.trials), result.trials
    assert result.confirmed
