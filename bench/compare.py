"""convgen vs torch on the public benchmark suite, side by side in one process.

    python bench/compare.py [--suite PATH] [--threads N] [--layers NAME,...] [--dtype float32]

Each layer runs through convgen (default plan) and torch (oneDNN) with the same thread
count, interleaved rep by rep so that machine noise hits both alike, with preallocated
outputs and warm threads; the table shows medians and the ratio torch/convgen (> 1 means
convgen is faster), then the geometric mean of the ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = ROOT.parent / "shared" / "bench" / "suite_public.json"


def load_suite(path: Path, names: set[str] | None) -> list[dict]:
    layers = json.loads(path.read_text())["layers"]
    return [layer for layer in layers if not names or layer["name"] in names]


def interleaved_medians(run_a, run_b, min_time: float, min_reps: int = 5) -> tuple[float, float]:
    run_a(), run_b()                      # warm-up: threads awake, pages touched
    a, b, start = [], [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(a) < min_reps:
        for runner, samples in ((run_a, a), (run_b, b)):
            t0 = time.perf_counter()
            runner()
            samples.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def bench_layer(layer: dict, dtype: str, min_time: float, torch) -> dict:
    import convgen
    from convgen.layers import spec_from_op

    rng = np.random.default_rng(0)
    args = dict(layer["args"])
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **args)
    t0 = time.perf_counter()
    kernel = convgen.compile(spec, tuple(layer["x"]), dtype=dtype)
    compile_s = time.perf_counter() - t0
    x = rng.standard_normal(layer["x"]).astype(dtype)
    w = rng.standard_normal(layer["w"]).astype(dtype)
    b = rng.standard_normal(spec.out_channels).astype(dtype)
    out = np.empty(kernel.output_shape, dtype)
    torch_call = _torch_call(torch, layer, x, w, b)
    ours, theirs = interleaved_medians(lambda: kernel(x, w, b, out=out), torch_call, min_time)
    reference = torch_call().numpy()
    kernel(x, w, b, out=out)
    err = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
    return {"name": layer["name"], "op": layer["op"], "gflop": kernel.flops / 1e9,
            "convgen_s": ours, "torch_s": theirs, "compile_s": compile_s, "rel_err": err,
            "plan": str(kernel.plan)}


def _torch_call(torch, layer, x, w, b):
    import torch.nn.functional as F
    args = dict(layer["args"])
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    mode = args.pop("padding_mode", "zeros")
    if mode != "zeros":   # as nn.ConvNd does it: an explicit pad, then the conv
        ndim = len(layer["w"]) - 2
        module = getattr(torch.nn, f"Conv{ndim}d")(
            layer["w"][1] * args.get("groups", 1), layer["w"][0], tuple(layer["w"][2:]),
            padding_mode=mode, dtype=wt.dtype, **args)
        with torch.no_grad():
            module.weight.copy_(wt)
            module.bias.copy_(bt)
        return lambda: module(xt).detach()
    op = getattr(F, layer["op"])
    with torch.no_grad():
        return lambda: op(xt, wt, bt, **args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per layer")
    args = parser.parse_args(argv)
    os.environ["CONVGEN_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    layers = load_suite(args.suite, set(filter(None, args.layers.split(","))))
    print(f"convgen vs torch {torch.__version__}: {len(layers)} layers, {args.dtype}, "
          f"{args.threads} threads, medians of interleaved runs\n")
    print(f"{'layer':<20}{'GFLOP':>8}{'convgen ms':>12}{'GFLOP/s':>9}{'torch ms':>10}"
          f"{'GFLOP/s':>9}{'torch/convgen':>15}{'rel err':>10}")
    ratios = []
    for layer in layers:
        r = bench_layer(layer, args.dtype, args.min_time, torch)
        ratio = r["torch_s"] / r["convgen_s"]
        ratios.append(ratio)
        print(f"{r['name']:<20}{r['gflop']:8.3f}{r['convgen_s'] * 1e3:12.3f}"
              f"{r['gflop'] / r['convgen_s']:9.1f}{r['torch_s'] * 1e3:10.3f}"
              f"{r['gflop'] / r['torch_s']:9.1f}{ratio:14.2f}x{r['rel_err']:10.1e}", flush=True)
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"\ngeometric mean torch/convgen: {geomean:.2f}x  "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
