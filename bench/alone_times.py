"""One library alone on the suite's layers, back-to-back calls: prints one JSON object
{layer: median seconds} (convgen's also {"<layer> peak": the FMA peak measured between its
calls, GFLOP/s}).

    python bench/alone_times.py onnxruntime|convgen SUITE THREADS MIN_TIME [LAYER,...]

Run by compare.py in a child process per library. onnxruntime must run alone: its thread
pool spins between runs, and in the same process as libgomp's (torch's and convgen's)
workers the two pools fight over the cores and distort both sides' timings. convgen runs
alone the same way so that the onnxruntime ratio compares like with like: both libraries
called back to back on operands that stay in the caches between calls, where the
interleaved convgen/torch timing of compare.py has each library find the other's data in
the caches.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors


def onnxruntime_runner(layer: dict, x, w, b, threads: int):
    return anchors.onnxruntime_call(layer, x, w, b, threads, None)


def convgen_runner(layer: dict, x, w, b, threads: int):
    """The default plan, weights packed once, a preallocated output (as compare.py times
    it interleaved); the thread count comes from CONVGEN_NUM_THREADS, set by compare.py."""
    import convgen
    from convgen.core.layers import spec_from_op

    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    kernel = convgen.compile(spec, tuple(layer["x"]), dtype="float32")
    packed, out = kernel.prepack(w), np.empty(kernel.output_shape, np.float32)
    return lambda: kernel(x, packed, b, out=out)


RUNNERS = {"onnxruntime": onnxruntime_runner, "convgen": convgen_runner}


def peak_probe(threads: int):
    from convgen.cpu.peak import fma_peak_probe
    return fma_peak_probe(threads)


def main() -> None:
    library, suite = sys.argv[1], Path(sys.argv[2])
    threads, min_time = int(sys.argv[3]), float(sys.argv[4])
    names = set(filter(None, (sys.argv[5] if len(sys.argv) > 5 else "").split(",")))
    results = {}
    for layer in json.loads(suite.read_text())["layers"]:
        if names and layer["name"] not in names:
            continue
        rng = np.random.default_rng(0)   # the same operands as compare.py draws
        x = rng.standard_normal(layer["x"]).astype(np.float32)
        w = rng.standard_normal(layer["w"]).astype(np.float32)
        out_channels = layer["w"][1] * layer["args"].get("groups", 1) \
            if layer["op"].startswith("conv_transpose") else layer["w"][0]
        b = rng.standard_normal(out_channels).astype(np.float32)
        run = RUNNERS[library](layer, x, w, b, threads)
        run()
        # convgen's share of the peak is against the peak measured between its calls (a
        # short FMA run: registers only, the caches keep the layer's data); onnxruntime's
        # thread pool would fight libgomp's, and its table column has no share of the peak
        probe = peak_probe(threads) if library == "convgen" else None
        times, peaks, start = [], [], time.perf_counter()
        while time.perf_counter() - start < min_time or len(times) < 7:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
            if probe:
                peaks.append(probe())
        results[layer["name"]] = statistics.median(times)
        if peaks:
            results[f"{layer['name']} peak"] = statistics.median(peaks)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
