"""onnxruntime alone on the suite's layers: prints one JSON object {layer: median seconds}.

Run by compare.py in a child process: onnxruntime's thread pool spins between runs, and in
the same process as libgomp's (torch's and convgen's) workers the two pools fight over the
cores and distort both sides' timings.

    python bench/ort_times.py SUITE THREADS MIN_TIME [LAYER,...]
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


def main() -> None:
    suite, threads, min_time = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    names = set(filter(None, (sys.argv[4] if len(sys.argv) > 4 else "").split(",")))
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
        run = anchors.onnxruntime_call(layer, x, w, b, threads, None)
        run()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < min_time or len(times) < 7:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        results[layer["name"]] = statistics.median(times)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
