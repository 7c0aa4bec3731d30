"""``convgen bench``: time one layer's kernel."""
from __future__ import annotations

from .layer import add_layer_arguments, spec_of


def run(args) -> int:
    """Time one layer's kernel: weights packed once, output preallocated, median of runs."""
    import statistics
    import time

    import numpy as np

    from ..api import compile as compile_kernel
    t0 = time.perf_counter()
    kernel = compile_kernel(spec_of(args), args.input, dtype=args.dtype, target=args.target,
                            plan=args.plan, accuracy=args.accuracy)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.standard_normal(kernel.input_shape).astype(args.dtype)
    w = kernel.prepack(rng.standard_normal(kernel.spec.weight_shape).astype(args.dtype))
    b = (rng.standard_normal(kernel.spec.out_channels).astype(args.dtype)
         if kernel.spec.bias else None)
    out = np.empty(kernel.output_shape, args.dtype)
    kernel(x, w, b, out=out)   # warm: threads awake, pages touched
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < args.min_time or len(times) < 5:
        t = time.perf_counter()
        kernel(x, w, b, out=out)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(f"{kernel.spec.describe()}\ninput {kernel.input_shape} -> {kernel.output_shape}, "
          f"{args.dtype}\nplan: {kernel.plan}\ncompile (or cache load): {compile_s:.3f} s\n"
          f"median of {len(times)} calls: {median * 1e3:.3f} ms, "
          f"{kernel.flops / median / 1e9:.1f} GFLOP/s")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time a layer's kernel (median of calls, GFLOP/s)")
    add_layer_arguments(p)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of calls to time")
    p.set_defaults(run=run)
