"""bench/ab_kernels.py: variants of one layer's kernel (plans, hand-edited C) timed head to
head in one process, their outputs compared with the first's."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import convgen
from convgen.backends import get_target
from convgen.core.layers import spec_from_op
from convgen.cpu.plan import Plan, native_vector
from helpers import gemm_tile

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"name": "tiny", "op": "conv2d", "x": [1, 8, 10, 12], "w": [16, 8, 3, 3],
         "args": {"padding": 1}}


def test_plans_and_an_edited_source_are_timed_in_one_process(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"layers": [LAYER]}))
    spec = spec_from_op(LAYER["op"], LAYER["w"], True, LAYER["x"], **LAYER["args"])
    target = get_target("cpu")
    vector = native_vector(target, "float32")
    vectors, pixels = gemm_tile(1, 6, target)
    plan = str(Plan("implicit_gemm", vectors * vector, pixels, vector, "oc_outer", 2))
    source = convgen.compile(spec, tuple(LAYER["x"]), plan=plan).source
    # an edit that leaves the output unwritten: a run that computes nothing
    broken = source.replace("_run(const real", "_run_unused(const real", 1)
    prefix = source.split("size_t ", 1)[1].split("_workspace_bytes", 1)[0]
    broken += (f"\nint {prefix}_run(const real *x, const real *wp, const real *bias, real *y, "
               f"real *work) {{ (void)x; (void)wp; (void)bias; (void)y; (void)work; return 0; }}\n")
    edited = tmp_path / "edited.c"
    edited.write_text(broken)
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ab_kernels.py"), "tiny", "--suite", str(suite),
         "--seconds", "0.2", "--plan", plan, "--source", str(edited), "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows][1:] == [plan, str(edited)]
    assert [r["output"] for r in rows] == ["same", "same", "unwritten"]
    assert all(r["calls"] >= 9 and r["median_s"] > 0 for r in rows)
    assert "calls alternated in one process; CPU:" in done.stdout


def test_a_winograd_plan_and_another_layer_between_the_calls(tmp_path):
    """A Winograd kernel is two files (its exact fallback's too): both are built. With
    --between, another layer's kernel runs before every timed call and the table says so."""
    other = {"name": "other", "op": "conv1d", "x": [1, 32, 256], "w": [32, 32, 3],
             "args": {"padding": 1}}
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"layers": [LAYER, other]}))
    vector = native_vector(get_target("cpu"), "float32")
    plan = str(Plan("winograd2", 8, 2 * vector, vector, "pixel_outer", 2))
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ab_kernels.py"), "tiny", "--suite", str(suite),
         "--seconds", "0.2", "--plan", plan, "--between", "other", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert rows[1]["variant"] == plan
    # Winograd rounds differently from the default plan: close, every element written
    assert rows[1]["output"] == "same" or float(rows[1]["output"]) < 1e-3
    assert all(r["calls"] >= 9 for r in rows)
    assert "calls alternated in one process, each after other's kernel; CPU:" in done.stdout


def _ab_kernels():
    spec = importlib.util.spec_from_file_location("ab_kernels", ROOT / "bench" / "ab_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_input_rewrites_the_input_from_the_calling_thread_before_each_call():
    """--fresh-input: the input as numpy or a network's previous layer leaves it (written
    by the caller, in its core's caches only), restored to the same values every time."""
    ab = _ab_kernels()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    prepare = ab._preparation(None, x)
    assert ab._preparation(None, None) is None
    x[...] = -1.0                      # a kernel, or an earlier call, leaving it changed
    prepare()
    assert np.array_equal(x, np.arange(24, dtype=np.float32).reshape(2, 3, 4))


def test_fresh_input_is_timed_and_said(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"layers": [LAYER]}))
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ab_kernels.py"), "tiny", "--suite", str(suite),
         "--seconds", "0.2", "--plan", "auto", "--fresh-input", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r["output"] for r in rows] == ["same"] and rows[0]["calls"] >= 9
    assert "the input rewritten by the calling thread before each; CPU:" in done.stdout


def test_variants_share_one_output_and_workspace_while_timed():
    """Each variant's own buffers sat differently against what the layer run between the
    calls left in the caches: copies of one kernel read up to 1.08x apart. Timed, they all
    write one output and use one workspace (the largest any needs)."""
    ab = _ab_kernels()
    variants = []
    for size in (10, 30, 20):
        variant = ab.Variant.__new__(ab.Variant)
        variant.out, variant.work = np.full((2, 3), np.nan, np.float32), np.zeros(size)
        variant.args = ("x", "packed", "bias", None, None)
        variants.append(variant)
    own = [v.out for v in variants]
    ab._share_buffers(variants)
    assert len({v.out.ctypes.data for v in variants}) == 1
    assert len({v.work.ctypes.data for v in variants}) == 1 and variants[0].work.size == 30
    assert all(v.out is not mine for v, mine in zip(variants, own))
    assert all(v.args[:3] == ("x", "packed", "bias") for v in variants)
    assert {v.args[3].value for v in variants} == {variants[0].out.ctypes.data}
    assert {v.args[4].value for v in variants} == {variants[0].work.ctypes.data}
