"""One layer's time against the FMA probe run right after each call: does a slow call come
with a slow core?

    python bench/probe_pairs.py LAYER [--threads N] [--seconds S]

Calls the layer's default plan (prepacked, preallocated output) back to back for S seconds,
each call followed by a millisecond of the FMA peak benchmark (convgen.cpu.peak's probe), and
prints the median call by tenth of the probes' readings, lowest first. On a machine of its
own every tenth shows the same time. On a shared VM a neighbour on the same physical core
slows the kernel far more than the FMA-only probe: on the 105 MiB-L3 Xeon class
inception_1x7 (2 threads) took 0.69-0.71 ms in the top half of the probe readings and
0.82-0.87 in the bottom three tenths, with the probe only 2-10% lower there
(bench/RESULTS.md, 0.4.13).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

SUITE = Path(__file__).resolve().parent / "suite_public.json"


def pairs(kernel, operands, probe, seconds: float) -> list[tuple[float, float]]:
    """(seconds of one call, the probe's GFLOP/s right after it), for ``seconds``."""
    out = []
    kernel(*operands[:3], out=operands[3])
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        kernel(*operands[:3], out=operands[3])
        out.append((time.perf_counter() - t0, probe()))
    return out


def by_tenth(rounds: list[tuple[float, float]]) -> list[tuple[float, float, float, int]]:
    """(lowest probe, highest probe, median call seconds, calls) per tenth of the probes."""
    ranked = sorted(rounds, key=lambda r: r[1])
    tenths = []
    for i in range(10):
        part = ranked[len(ranked) * i // 10: len(ranked) * (i + 1) // 10]
        if part:
            tenths.append((part[0][1], part[-1][1], statistics.median(t for t, _ in part),
                           len(part)))
    return tenths


def main() -> None:
    import convgen
    from convgen.core.layers import spec_from_op
    from convgen.cpu.peak import fma_peak_probe
    from convgen.runtime.arrays import output_array

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layer")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    os.environ["CONVGEN_NUM_THREADS"] = str(args.threads)   # the plan's thread count
    layer = next(entry for entry in json.loads(SUITE.read_text())["layers"]
                 if entry["name"] == args.layer)
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    kernel = convgen.compile(spec, tuple(layer["x"]))
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(layer[k]).astype(np.float32) for k in ("x", "w"))
    b = rng.standard_normal(spec.out_channels).astype(np.float32)
    operands = (x, kernel.prepack(w), b, output_array(kernel.output_shape, np.dtype(np.float32)))
    rounds = pairs(kernel, operands, fma_peak_probe(args.threads), args.seconds)
    print(f"{args.layer}, {args.threads} threads, {kernel.plan}: {len(rounds)} calls")
    for low, high, seconds, count in by_tenth(rounds):
        print(f"probe {low:6.0f}-{high:6.0f} GFLOP/s: median call {seconds * 1e3:8.3f} ms, "
              f"{kernel.flops / seconds / 1e9:6.1f} GFLOP/s ({count} calls)")


if __name__ == "__main__":
    main()
