"""``convgen bench``: time one layer's kernel."""
from __future__ import annotations

import argparse
import math

from .layer import add_layer_arguments, spec_of


def run(args) -> int:
    """Time one layer's kernel: weights packed once (CPU), output preallocated, median of
    calls (a "cuda" call waits for the GPU before the clock stops)."""
    import statistics
    import time

    from ..api import compile as compile_kernel
    t0 = time.perf_counter()
    kernel = compile_kernel(spec_of(args), args.input, dtype=args.dtype, target=args.target,
                            plan=args.plan, accuracy=args.accuracy)
    compile_s = time.perf_counter() - t0
    x, w, b, out, wait = _operands(kernel, args.dtype)
    kernel(x, w, b, out=out)   # warm: threads awake, pages touched
    wait()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < args.min_time or len(times) < 5:
        t = time.perf_counter()
        kernel(x, w, b, out=out)
        wait()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(f"{kernel.spec.describe()}\ninput {kernel.input_shape} -> {kernel.output_shape}, "
          f"{args.dtype}, target {kernel.target.name}\nplan: {kernel.plan}\n"
          f"compile (or cache load): {compile_s:.3f} s\n"
          f"median of {len(times)} calls: {median * 1e3:.3f} ms, "
          f"{kernel.flops / median / 1e9:.3g} GFLOP/s")
    return 0


def _operands(kernel, dtype: str):
    """Random input, weight, bias and an output buffer where the kernel reads them, and
    what waits for a call to finish."""
    import numpy as np

    from .. import backends
    from ..runtime.arrays import output_array
    rng = np.random.default_rng(0)
    x = rng.standard_normal(kernel.input_shape).astype(dtype)
    w = rng.standard_normal(kernel.spec.weight_shape).astype(dtype)
    b = rng.standard_normal(kernel.spec.out_channels).astype(dtype) if kernel.spec.bias else None
    out = output_array(kernel.output_shape, np.dtype(dtype))   # as a call without out= gets it
    if hasattr(kernel, "prepack"):   # CPU kernels: pack once, as a model would
        w = kernel.prepack(w)
    device = "cuda" if kernel.target.name == "cuda" else "cpu"
    if device == "cuda":
        x, w, out = (backends.to_device(a, device) for a in (x, w, out))
        b = None if b is None else backends.to_device(b, device)
    return x, w, b, out, lambda: backends.synchronize(device)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time a layer's kernel (median of calls, GFLOP/s)")
    add_layer_arguments(p)
    p.add_argument("--min-time", type=_seconds, default=1.0,
                   help="seconds of calls to time (at least 5 calls are made)")
    p.set_defaults(run=run)
