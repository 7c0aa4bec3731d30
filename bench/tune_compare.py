"""Tuned vs untuned convgen vs torch on the public suite, with the tuning time spent.

    python bench/tune_compare.py [--threads N] [--trials 24] [--seconds 60] [--layers A,B]
                                 [--db PATH] [--retune] [--min-time S]

For each layer: ``convgen.tune`` with the given budget into a tuning database (a fresh
one in a temporary directory unless ``--db`` names one; a layer that already has a
decision there is not tuned again unless ``--retune``), then the planner's default plan,
the tuned plan and torch are timed in one fresh process, interleaved rep by rep so machine
noise hits all three alike, with weights packed once, preallocated outputs, warm threads
and medians (as ``bench/compare.py`` times them). The table gives both convgen times,
torch's, the tuned plan's speedup over the default, the tuning time and trials, and the
tuned plan where it differs from the default; then geometric means and the CPU model.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")   # as compare.py: the anchors at their best

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors
from compare import DEFAULT_SUITE, geomean, interleaved_medians, load_suite


def spec_of(layer: dict):
    from convgen.core.layers import spec_from_op
    return spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])


def time_layer(layer: dict, tuned_plan: str, min_time: float) -> dict:
    """Default plan, tuned plan and torch, interleaved (runs in a child process)."""
    import convgen
    spec = spec_of(layer)
    shape, dtype = tuple(layer["x"]), "float32"
    default = convgen.compile(spec, shape, dtype=dtype, plan=_default_plan(spec, shape))
    tuned = convgen.compile(spec, shape, dtype=dtype, plan=tuned_plan)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer["x"]).astype(dtype)
    w = rng.standard_normal(layer["w"]).astype(dtype)
    b = rng.standard_normal(spec.out_channels).astype(dtype)
    outs = [np.empty(default.output_shape, dtype) for _ in range(2)]
    packs = [default.prepack(w), tuned.prepack(w)]
    runners = [lambda: default(x, packs[0], b, out=outs[0]),
               lambda: tuned(x, packs[1], b, out=outs[1]), anchors.torch_call(layer, x, w, b)]
    times = interleaved_medians(runners, min_time)
    reference = runners[2]()
    errors = []
    for run, out in zip(runners[:2], outs):
        run()
        errors.append(float(np.linalg.norm(out - reference) / np.linalg.norm(reference)))
    return {"default_s": times[0], "tuned_s": times[1], "torch_s": times[2],
            "default_plan": str(default.plan), "tuned_plan": str(tuned.plan),
            "rel_err": max(errors), "gflop": default.flops / 1e9}


def _default_plan(spec, shape):
    from convgen.api import choose_plan
    return choose_plan(spec, shape, "float32")


def tune_layer(layer: dict, args, db: str) -> dict:
    """Tune one layer (unless the database has its decision); the plan, time and trials."""
    import convgen
    from convgen.core.spec import workload_of
    from convgen.tuning import TuningDB
    from convgen.tuning import records as rec
    spec = spec_of(layer)
    workload = workload_of(spec, tuple(layer["x"]), "float32")[0]
    key = rec.workload_key(workload)
    if not args.retune:
        found = [r for r in TuningDB(db).records() if r["kind"] == "decision"
                 and r["workload"]["key"] == key and r["target"] == "cpu"]
        plan = TuningDB(db).best(workload, "cpu")
        if found and plan is not None:
            return {"plan": str(plan), "tuning_s": found[-1]["elapsed_s"],
                    "trials": found[-1]["trials"], "reused": True}
    start = time.perf_counter()
    result = convgen.tune(spec, tuple(layer["x"]), trials=args.trials, seconds=args.seconds,
                          db=db, name=layer["name"], progress=True, min_time=args.tune_min_time)
    return {"plan": str(result.best), "tuning_s": time.perf_counter() - start,
            "trials": len(result.trials), "reused": False, "failed":
            sum(not t.ok for t in result.trials), "confirmed": result.confirmed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--layers", default="")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--db", default=None, help="tuning database (default: a fresh one)")
    parser.add_argument("--retune", action="store_true")
    parser.add_argument("--min-time", type=float, default=0.6, help="seconds per layer timed")
    parser.add_argument("--tune-min-time", type=float, default=0.1,
                        help="seconds of timed calls per candidate while tuning")
    parser.add_argument("--time-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["CONVGEN_NUM_THREADS"] = str(args.threads)
    layers = load_suite(args.suite, set(filter(None, args.layers.split(","))))
    if args.time_child:
        anchors.setup_torch(args.threads)
        layer = layers[0]
        print(json.dumps(time_layer(layer, args.time_child, args.min_time)))
        return 0
    scratch = tempfile.TemporaryDirectory(prefix="convgen-tune-bench-")
    db = args.db or str(Path(scratch.name) / "tuning.jsonl")
    from convgen.target import host
    print(f"convgen tuned vs untuned vs torch {anchors.torch_version()}: {len(layers)} layers, "
          f"float32, {args.threads} threads; CPU {host.cpu_name()} "
          f"({host.usable_cores()} usable cores, {platform.machine()}); tuning budget "
          f"{args.trials} trials / {args.seconds:g} s per layer; database {db}", flush=True)
    rows = []
    for layer in layers:
        tuned = tune_layer(layer, args, db)
        timed = time_in_child(args, layer["name"], tuned["plan"])
        rows.append({"name": layer["name"], **tuned, **timed})
    print_table(rows)
    return 0


def time_in_child(args, name: str, plan: str) -> dict:
    command = [sys.executable, __file__, "--time-child", plan, "--layers", name,
               "--suite", str(args.suite), "--threads", str(args.threads),
               "--min-time", str(args.min_time)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"timing {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    print(f"\n{'layer':<20}{'GFLOP':>7}{'default ms':>11}{'tuned ms':>10}{'torch ms':>10}"
          f"{'tuned/def':>10}{'torch/tuned':>12}{'tune s':>8}{'trials':>7}  tuned plan")
    for r in rows:
        same = r["tuned_plan"] == r["default_plan"]
        print(f"{r['name']:<20}{r['gflop']:7.3f}{r['default_s'] * 1e3:11.3f}"
              f"{r['tuned_s'] * 1e3:10.3f}{r['torch_s'] * 1e3:10.3f}"
              f"{r['default_s'] / r['tuned_s']:9.2f}x{r['torch_s'] / r['tuned_s']:11.2f}x"
              f"{r['tuning_s']:8.0f}{r['trials']:7d}  "
              f"{'= default' if same else r['tuned_plan']}", flush=True)
    speed = [r["default_s"] / r["tuned_s"] for r in rows]
    changed = [s for r, s in zip(rows, speed) if r["tuned_plan"] != r["default_plan"]]
    print(f"\ngeometric mean default/tuned: {geomean(speed):.3f}x over {len(rows)} layers "
          f"(min {min(speed):.2f}x, max {max(speed):.2f}x); {len(changed)} layers got another "
          f"plan" + (f", geomean {geomean(changed):.3f}x on those" if changed else ""))
    vs_default = geomean([r["torch_s"] / r["default_s"] for r in rows])
    vs_tuned = geomean([r["torch_s"] / r["tuned_s"] for r in rows])
    print(f"geometric mean torch/default: {vs_default:.2f}x, torch/tuned: {vs_tuned:.2f}x")
    print(f"tuning time: {sum(r['tuning_s'] for r in rows):.0f} s in all, "
          f"{sum(r['trials'] for r in rows)} trials; max rel err "
          f"{max(r['rel_err'] for r in rows):.1e}")


if __name__ == "__main__":
    sys.exit(main())
