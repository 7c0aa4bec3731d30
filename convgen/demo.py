"""``make demo``: compile sample layers of all six ops, check each against the numpy
reference, and time it. Run as ``python -m convgen.demo``."""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from .api import compile as compile_kernel
from .backends import backend_for, get_target
from .core.layers import spec_from_op
from .core.reference import convolve
from .runtime import cache

# (name, op, input shape, weight shape, args): one or more layers of every op.
SAMPLE_LAYERS = [
    ("resnet_3x3", "conv2d", (1, 32, 56, 56), (32, 32, 3, 3), {"padding": 1}),
    ("depthwise_s2", "conv2d", (1, 32, 56, 56), (32, 1, 3, 3),
     {"stride": 2, "padding": 1, "groups": 32}),
    ("reflect_same_5x5", "conv2d", (1, 16, 48, 48), (16, 16, 5, 5),
     {"padding": "same", "padding_mode": "reflect"}),
    ("dilated_circular_1d", "conv1d", (2, 32, 1024), (32, 32, 5),
     {"padding": 4, "dilation": 2, "padding_mode": "circular"}),
    ("video_3x3x3", "conv3d", (1, 8, 8, 32, 32), (16, 8, 3, 3, 3), {"padding": 1}),
    ("hifigan_up", "conv_transpose1d", (1, 64, 256), (64, 32, 16), {"stride": 8, "padding": 4}),
    ("upconv_4x4", "conv_transpose2d", (1, 64, 16, 16), (64, 32, 4, 4),
     {"stride": 2, "padding": 1}),
    ("deconv3d", "conv_transpose3d", (1, 16, 8, 16, 16), (16, 8, 3, 3, 3),
     {"stride": 2, "padding": 1, "output_padding": 1}),
]


def median_seconds(run, min_time: float = 0.2, max_reps: int = 200) -> float:
    run()  # warm: threads started, pages touched
    samples, start = [], time.perf_counter()
    while len(samples) < max_reps and (time.perf_counter() - start < min_time or len(samples) < 5):
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def run_layer(name, op, x_shape, w_shape, args, rng) -> dict:
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    t0 = time.perf_counter()
    kernel = compile_kernel(spec, x_shape, dtype="float32")
    compile_s = time.perf_counter() - t0
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(spec.out_channels).astype(np.float32)
    out = np.full(kernel.output_shape, np.nan, np.float32)   # poisoned: unwritten shows as NaN
    kernel(x, w, b, out=out)
    ref = convolve(kernel.workload, x, w, b)
    rel_err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    seconds = median_seconds(lambda: kernel(x, w, b, out=out))
    return {"name": name, "kernel": kernel, "compile_s": compile_s, "rel_err": rel_err,
            "max_err": float(np.nanmax(np.abs(out - ref))), "nan": bool(np.isnan(out).any()),
            "seconds": seconds}


def main() -> int:
    rng = np.random.default_rng(2026)
    print(f"convgen demo: {len(SAMPLE_LAYERS)} sample layers, float32, "
          f"checked against a float64 numpy reference (cache: {cache.cache_root()})\n")
    # the planner's machine model first, so that its micro-benchmarks (measured on first
    # use on a machine) are neither in a layer's compile time nor in the count below
    t0 = time.perf_counter()
    target = get_target("cpu")
    model = backend_for(target).machine_model(target)
    print(f"machine model: {time.perf_counter() - t0:.2f} s ({model.clock_hz / 1e9:.2f} GHz, "
          f"{model.fma_per_cycle:.2f} FMAs per cycle; `convgen machine` shows it)\n")
    compiled, loaded = cache.STATS.compiles, cache.STATS.disk_hits
    failures = 0
    for name, op, x_shape, w_shape, args in SAMPLE_LAYERS:
        r = run_layer(name, op, x_shape, w_shape, args, rng)
        k = r["kernel"]
        ok = not r["nan"] and r["rel_err"] <= 1e-5
        failures += not ok
        print(f"{name:<20} {op}{tuple(x_shape)} -> {k.output_shape}  {args}")
        print(f"  plan:    {k.plan}")
        print(f"  compile: {r['compile_s'] * 1e3:7.1f} ms   run: {r['seconds'] * 1e3:8.3f} ms "
              f"({k.flops / r['seconds'] / 1e9:6.1f} GFLOP/s)   max|err| {r['max_err']:.2e}  "
              f"rel L2 {r['rel_err']:.2e}  {'OK' if ok else 'MISMATCH'}")
    stats = cache.STATS
    print(f"\n{stats.compiles - compiled} compiled, {stats.disk_hits - loaded} loaded from the "
          f"disk cache; "
          f"{'all match' if not failures else f'{failures} MISMATCHED'} the reference.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
