"""convgen (target "cuda") vs torch (cuDNN) on the public suite, on one NVIDIA GPU, in one process.

    python bench/cuda_compare.py [--precision tf32|fp32] [--layers NAME,...] [--candidates N]
                                 [--min-time S] [--no-flush] [--json PATH] [--markdown]

Needs a machine with an NVIDIA GPU, nvcc, and a CUDA build of torch (the oracle and the
competitor: cuDNN with ``torch.backends.cudnn.benchmark = True``, so it picks its fastest
algorithm per layer). Every layer runs on torch CUDA tensors, the same tensors for both:

- warm-up by time, then repetitions (at least ``--min-time`` seconds and 20 reps each),
  convgen and cuDNN interleaved rep by rep, each timed with CUDA events on the current
  stream, the L2 cache flushed before every timed call (as Triton's do_bench), medians;
- convgen writes into a preallocated output on torch's current stream; cuDNN's time
  includes its own output allocation (the caching allocator makes that free);
- precision: ``tf32`` (the default, PyTorch's own default for convolutions: cuDNN with
  ``allow_tf32=True``, convgen with CONVGEN_CUDA_TF32=1 so its planner may choose TF32
  tensor cores) or ``fp32`` (both in full float32);
- the relative L2 error of each against torch in float64 on the GPU is printed too.

``--candidates N`` times the planner's N best plans of the precision per layer and keeps the
fastest (a small search; 1 = the planner's choice alone). The table reports time, TFLOP/s,
and the speedup cuDNN time / convgen time (> 1: convgen is faster), then the geometric
mean and the slowest layer.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = ROOT.parent / "shared" / "bench" / "suite_public.json"
sys.path.insert(0, str(ROOT))   # run from a checkout without installing


def load_suite(path: Path, names: set[str] | None) -> list[dict]:
    layers = json.loads(path.read_text())["layers"]
    return [layer for layer in layers if not names or layer["name"] in names]


class Timer:
    """CUDA-event timing on torch's current stream, with an L2 flush before each call."""

    def __init__(self, torch, flush: bool):
        self.torch = torch
        # larger than any current L2 (H100: 50 MB, H200: 60 MB)
        self.scratch = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32,
                                   device="cuda") if flush else None

    def once(self, fn) -> float:
        torch = self.torch
        if self.scratch is not None:
            self.scratch.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3   # seconds

    def interleaved(self, runners: list, min_time: float, min_reps: int = 20,
                    warmup_s: float = 0.05) -> list[float]:
        torch = self.torch
        deadline = time.perf_counter() + warmup_s
        while time.perf_counter() < deadline:   # warm-up: clocks up, caches, autotuning
            for fn in runners:
                fn()
        torch.cuda.synchronize()
        samples = [[] for _ in runners]
        start = time.perf_counter()
        while time.perf_counter() - start < min_time or len(samples[0]) < min_reps:
            for fn, times in zip(runners, samples):
                times.append(self.once(fn))
        return [statistics.median(times) for times in samples]


def torch_call(torch, layer: dict, x, w, b):
    """The layer as torch computes it on the GPU (padding_mode as nn.ConvNd applies it)."""
    import torch.nn.functional as F

    args = dict(layer["args"])
    mode = args.pop("padding_mode", "zeros")
    if mode != "zeros":
        ndim = len(layer["w"]) - 2
        module = getattr(torch.nn, f"Conv{ndim}d")(
            layer["w"][1] * args.get("groups", 1), layer["w"][0], tuple(layer["w"][2:]),
            padding_mode=mode, device="cuda", dtype=w.dtype, **args)
        with torch.no_grad():
            module.weight.copy_(w)
            module.bias.copy_(b)
        return lambda: module(x)
    op = getattr(F, layer["op"])
    return lambda: op(x, w, b, **args)


def rel_err(torch, ours, reference) -> float:
    diff = (ours.double() - reference).norm().item()
    scale = reference.norm().item()
    return diff / (scale if scale > 0 else 1.0)


def bench_layer(torch, layer: dict, target, timer: Timer, min_time: float,
                candidates: int) -> dict:
    import convgen
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    from convgen.cuda import candidates as ranked_plans
    from convgen.cuda.plan import allowed_maths

    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    workload, _ = workload_of(spec, tuple(layer["x"]), "float32")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(layer["x"], device="cuda", generator=gen)
    w = torch.randn(layer["w"], device="cuda", generator=gen)
    b = torch.randn(spec.out_channels, device="cuda", generator=gen)
    cudnn = torch_call(torch, layer, x, w, b)
    stream = torch.cuda.current_stream()

    # the planner's choice, or the fastest of its best few
    allowed = allowed_maths(workload, target.cuda)
    plans = [c.plan for c in ranked_plans(workload, target) if c.plan.math in allowed]
    t0 = time.perf_counter()
    kernels = [convgen.compile(spec, tuple(layer["x"]), "float32", target=target, plan=p)
               for p in plans[:max(1, candidates)]]
    compile_s = time.perf_counter() - t0
    out = torch.empty(kernels[0].output_shape, device="cuda")
    if len(kernels) > 1:
        quick = [timer.interleaved([lambda k=k: k(x, w, b, out=out, stream=stream)],
                                   min_time=0.02, min_reps=5)[0] for k in kernels]
        kernel = kernels[min(range(len(kernels)), key=quick.__getitem__)]
    else:
        kernel = kernels[0]

    def ours():
        kernel(x, w, b, out=out, stream=stream)

    ours_s, cudnn_s = timer.interleaved([ours, cudnn], min_time)
    with torch.no_grad():
        reference = torch_call(torch, layer, x.double(), w.double(), b.double())()
        ours()
        err_ours = rel_err(torch, out, reference)
        err_cudnn = rel_err(torch, cudnn(), reference)
    return {"name": layer["name"], "op": layer["op"], "gflop": kernel.flops / 1e9,
            "convgen_s": ours_s, "cudnn_s": cudnn_s, "speedup": cudnn_s / ours_s,
            "rel_err": err_ours, "cudnn_rel_err": err_cudnn, "compile_s": compile_s,
            "plan": str(kernel.plan)}


def environment(torch, target) -> dict:
    from convgen import __version__
    from convgen.cuda.compile import nvcc_path

    props = torch.cuda.get_device_properties(0)
    nvcc = nvcc_path()
    nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True
                                  ).stdout.strip().splitlines()[-1] if nvcc else "absent"
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True)
    return {"gpu": props.name, "sm_count": props.multi_processor_count,
            "convgen": __version__, "convgen_arch": target.cuda.name,
            "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "nvcc": nvcc_version,
            "driver_and_max_sm_clock": smi.stdout.strip(), "host": platform.node(),
            "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--precision", choices=["tf32", "fp32"], default="tf32",
                        help="tf32: TF32 tensor cores allowed for both (PyTorch's default for "
                             "convolutions); fp32: full float32 for both")
    parser.add_argument("--candidates", type=int, default=1,
                        help="time the planner's N best plans per layer and keep the fastest")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of timed reps per layer")
    parser.add_argument("--no-flush", action="store_true", help="do not flush L2 between calls")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    args = parser.parse_args(argv)

    os.environ["CONVGEN_CUDA_TF32"] = "1" if args.precision == "tf32" else "0"
    import torch
    if not torch.cuda.is_available():
        print("bench/cuda_compare.py needs an NVIDIA GPU and a CUDA build of torch; "
              f"torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    from convgen.backends import get_target

    torch.set_grad_enabled(False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    target = get_target("cuda")
    env = environment(torch, target)
    layers = load_suite(args.suite, set(filter(None, args.layers.split(","))))
    timer = Timer(torch, flush=not args.no_flush)
    print(f"convgen vs cuDNN on {env['gpu']} ({env['sm_count']} SMs, convgen for "
          f"{env['convgen_arch']}): {len(layers)} layers, float32 data, precision "
          f"{args.precision} (cuDNN allow_tf32={torch.backends.cudnn.allow_tf32}, convgen "
          f"TF32 {'allowed' if target.cuda.allow_tf32 else 'off'}), cudnn.benchmark=True, "
          f"CUDA-event medians, L2 {'kept' if args.no_flush else 'flushed'}\n")
    header = (f"{'layer':<20}{'GFLOP':>8}{'convgen ms':>12}{'TFLOP/s':>9}{'cuDNN ms':>10}"
              f"{'TFLOP/s':>9}{'speedup':>9}{'rel err':>10}{'cuDNN err':>11}  plan")
    print(header)
    results = []
    for layer in layers:
        r = bench_layer(torch, layer, target, timer, args.min_time, args.candidates)
        results.append(r)
        print(f"{r['name']:<20}{r['gflop']:8.3f}{r['convgen_s'] * 1e3:12.4f}"
              f"{r['gflop'] / r['convgen_s'] / 1e3:9.2f}{r['cudnn_s'] * 1e3:10.4f}"
              f"{r['gflop'] / r['cudnn_s'] / 1e3:9.2f}{r['speedup']:8.2f}x"
              f"{r['rel_err']:10.1e}{r['cudnn_rel_err']:11.1e}  {r['plan']}", flush=True)
    speedups = [r["speedup"] for r in results]
    geomean = math.exp(sum(map(math.log, speedups)) / len(speedups))
    slowest = min(results, key=lambda r: r["speedup"])
    print(f"\ngeometric mean speedup over cuDNN: {geomean:.2f}x  (slowest {slowest['name']} "
          f"{slowest['speedup']:.2f}x, fastest {max(speedups):.2f}x); target: >= 1.0x, "
          f"no layer below 0.7x")
    if args.markdown:
        print("\n| layer | GFLOP | convgen ms | TFLOP/s | cuDNN ms | TFLOP/s | speedup | rel err |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['name']} | {r['gflop']:.3f} | {r['convgen_s'] * 1e3:.4f} | "
                  f"{r['gflop'] / r['convgen_s'] / 1e3:.2f} | {r['cudnn_s'] * 1e3:.4f} | "
                  f"{r['gflop'] / r['cudnn_s'] / 1e3:.2f} | {r['speedup']:.2f}x | "
                  f"{r['rel_err']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "precision": args.precision,
                                         "geomean_speedup": geomean, "layers": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
