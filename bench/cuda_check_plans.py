"""Every candidate plan of a suite, checked on the GPU at the layer's real shape.

    python bench/cuda_check_plans.py [--suite PATH ...] [--precision tf32|fp32]
                                     [--candidates N] [--layers NAME,...] [--json PATH]

The GPU tests (tests/test_cuda_gpu.py) run every kernel family on small shapes; this runs
the planner's N best plans of each benchmark layer at its real size, each call on a
poisoned (NaN) output, against torch in float64 on the GPU, four ways:

- ``own``: convgen's own device arrays, the driver synchronised before reading back;
- ``torch``: torch CUDA tensors, no stream argument, read back at once by torch (as
  bench/cuda_compare.py does): wrong here and right in ``own`` means the call and torch's
  work are not ordered on one stream;
- ``again``: the same after 50 calls back to back (state left between calls);
- ``stream``: torch tensors with ``stream=torch.cuda.current_stream()``.

It also times the planner's choice with CUDA events twice: as is, and with the GPU held
busy (``torch.cuda._sleep``) while the host enqueues the call, which leaves the host's
share of a call out of the kernel's time. Exit status 1 if any plan is wrong.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TOLERANCE = {"tf32": 5e-3, "fp32": 1e-4}


def rel(torch, ours, reference) -> float:
    diff = (ours.double() - reference).norm().item()
    return diff / max(reference.norm().item(), 1e-300)


def event_ms(torch, fn, hold_cycles: int, reps: int = 15) -> float:
    """Median CUDA-event milliseconds of ``fn``; with ``hold_cycles`` the GPU sleeps first,
    so the call is enqueued before the start event fires."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if hold_cycles:
            torch.cuda._sleep(hold_cycles)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_layer(torch, np, layer, compiled, tolerance) -> list[dict]:
    import cuda_compare as cc
    from convgen.cuda import DeviceArray, driver

    x, w, b = cc.operands(torch, layer, seed=1)
    reference = cc.torch_call(torch, layer, x.double(), w.double(), b.double())()
    torch.cuda.synchronize()
    own = [DeviceArray.from_host(t.cpu().numpy()) for t in (x, w, b)]
    rows = []
    for index, candidate in enumerate(compiled):
        kernel = candidate.kernel
        row = {"layer": layer["name"], "rank": index, "plan": str(kernel.plan)}
        out = DeviceArray.from_host(np.full(kernel.output_shape, np.nan, np.float32))
        kernel(*own, out=out)
        driver.driver().synchronize()
        row["own"] = rel(torch, torch.from_numpy(out.copy_to_host()).cuda(), reference)
        y = torch.full(kernel.output_shape, float("nan"), device="cuda")
        kernel(x, w, b, out=y)
        row["torch"] = rel(torch, y, reference)
        for _ in range(50):
            kernel(x, w, b, out=y)
        y.fill_(float("nan"))
        kernel(x, w, b, out=y)
        row["again"] = rel(torch, y, reference)
        y.fill_(float("nan"))
        kernel(x, w, b, out=y, stream=torch.cuda.current_stream())
        row["stream"] = rel(torch, y, reference)
        torch.cuda.synchronize()
        row["ok"] = all(math.isfinite(row[k]) and row[k] <= tolerance
                        for k in ("own", "torch", "again", "stream"))
        if index == 0:
            def call(kernel=kernel, y=y):
                kernel(x, w, b, out=y, stream=torch.cuda.current_stream())
            row["event_ms"] = event_ms(torch, call, 0)
            row["held_event_ms"] = event_ms(torch, call, 2_000_000)
        rows.append(row)
        print(f"{layer['name']:<22}{index:>3} {'ok ' if row['ok'] else 'BAD'} own "
              f"{row['own']:8.1e} torch {row['torch']:8.1e} again {row['again']:8.1e} "
              f"stream {row['stream']:8.1e}"
              + (f"  event {row['event_ms']:.4f} ms, held {row['held_event_ms']:.4f} ms"
                 if index == 0 else "") + f"  {row['plan']}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, action="append")
    parser.add_argument("--layers", default="")
    parser.add_argument("--precision", choices=["tf32", "fp32"], default="tf32")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ["CONVGEN_CUDA_TF32"] = "1" if args.precision == "tf32" else "0"
    import numpy as np
    import torch
    if not torch.cuda.is_available():
        print("needs an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    import cuda_compare as cc
    from convgen.backends import get_target

    torch.set_grad_enabled(False)
    cc.set_precision(torch, args.precision)
    target = get_target("cuda")
    print(f"torch current stream {torch.cuda.current_stream().cuda_stream}, default "
          f"{torch.cuda.default_stream().cuda_stream}; convgen {target.cuda.name}, "
          f"precision {args.precision}", flush=True)
    names = set(filter(None, args.layers.split(",")))
    rows = []
    for suite in args.suite or [cc.DEFAULT_SUITE]:
        layers = cc.load_suite(suite, names)
        compiled = cc.compile_all(layers, target, args.candidates, args.jobs)
        for layer in layers:
            rows += check_layer(torch, np, layer, compiled[layer["name"]],
                                TOLERANCE[args.precision])
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows)} plans checked, {len(bad)} wrong", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"precision": args.precision, "rows": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
