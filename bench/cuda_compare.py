"""convgen (target "cuda") vs torch on the public suite, on one NVIDIA GPU, in one process.

    python bench/cuda_compare.py [--precision tf32|fp32] [--layers NAME,...] [--candidates N]
                                 [--jobs J] [--min-time S] [--warmup S] [--json PATH]
                                 [--markdown]

Needs an NVIDIA GPU, nvcc, and a CUDA build of torch (the oracle and the competitor:
cuDNN with ``torch.backends.cudnn.benchmark = True``, so it picks its fastest algorithm per
layer). Every layer runs on torch CUDA tensors, the same tensors for both:

- torch is timed twice: with the bias (as ``F.conv2d(x, w, b)``: cuDNN's convolution, then
  the bias added by a separate kernel) and without it; convgen fuses the bias into its
  epilogue, so "vs torch" compares equal work and "vs torch, no bias" bounds the speedup
  from below;
- precision: ``tf32`` (PyTorch's default for convolutions: cuDNN allowed TF32 through
  ``torch.backends.cudnn.conv.fp32_precision = "tf32"``, convgen with CONVGEN_CUDA_TF32=1 so
  its planner may choose TF32 tensor cores) or ``fp32`` (``"ieee"`` for both); the setting
  torch reports back is recorded;
- depthwise layers are labelled ``torch-dw``: PyTorch runs float32 NCHW depthwise
  convolutions with its own kernel, not cuDNN;
- timing: about half a second of warm-up per layer (clocks up, cuDNN's autotuning), then
  CUDA-event medians of at least ``--min-time`` seconds and 20 repetitions, convgen and
  torch interleaved, the L2 cache flushed before every call (as Triton's do_bench). Layers
  of batch 1 are also timed by CUDA graph replay (L2 warm, no launch gaps): what a network
  that runs them back to back sees;
- the SM clock and the throttle reasons are read after every layer (NVML, else
  nvidia-smi), so a slow row can be told from a throttled GPU;
- ``--candidates N``: the planner's N best plans of the precision are compiled (``--jobs``
  at a time) and timed briefly; the fastest is timed fully, and so is the planner's own
  choice: "regret" is the choice's time over the best's (1.0: the planner chose the best).

The relative L2 error of each against torch in float64 on the GPU is printed too. The
table: times, TFLOP/s, speedups (torch time / convgen time; > 1: convgen is faster), then
the geometric means and the slowest layer.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = ROOT / "bench" / "suite_public.json"   # a copy of shared/bench's, in the repo
sys.path.insert(0, str(ROOT))   # run from a checkout without installing


def load_suite(path: Path, names: set[str] | None) -> list[dict]:
    layers = json.loads(path.read_text())["layers"]
    return [layer for layer in layers if not names or layer["name"] in names]


def is_depthwise(layer: dict) -> bool:
    groups = layer["args"].get("groups", 1)
    return layer["op"].startswith("conv") and "transpose" not in layer["op"] \
        and groups > 1 and layer["w"][1] == 1


HOLD_CYCLES = 1_000_000   # about 0.5 ms of GPU clock: longer than any call's host side


class Timer:
    """CUDA-event timing on torch's current stream, with an L2 flush before each call and
    the GPU held busy (``torch.cuda._sleep``) while the host enqueues the call, so that the
    events time the GPU's work and not the host's: a Python call that takes longer to
    enqueue than the kernel runs would otherwise be timed as the kernel (the first GPU run
    measured 55 us of host time in every convgen call, 5-10 us in torch's).
    ``host_seconds`` times the host's side of a call alone."""

    def __init__(self, torch, flush: bool = True):
        self.torch = torch
        # larger than any current L2 (H100: 50 MB, H200: 60 MB)
        self.scratch = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32,
                                   device="cuda") if flush else None

    def once(self, fn) -> float:
        torch = self.torch
        if self.scratch is not None:
            self.scratch.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(HOLD_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3   # seconds

    def host_seconds(self, fn, calls: int = 50) -> float:
        """Host seconds per call, the GPU held busy so that no call waits for it."""
        torch = self.torch
        torch.cuda._sleep(HOLD_CYCLES * 20)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        seconds = (time.perf_counter() - start) / calls
        torch.cuda.synchronize()
        return seconds

    def warm(self, runners: list, seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:   # clocks up, caches, cuDNN's autotuning
            for fn in runners:
                fn()
            self.torch.cuda.synchronize()

    def interleaved(self, runners: list, min_time: float, min_reps: int = 20) -> list[float]:
        samples = [[] for _ in runners]
        start = time.perf_counter()
        while time.perf_counter() - start < min_time or len(samples[0]) < min_reps:
            for fn, times in zip(runners, samples):
                times.append(self.once(fn))
        return [statistics.median(times) for times in samples]

    def graph(self, fn, calls: int = 20, reps: int = 10) -> float | None:
        """Seconds per call by CUDA graph replay of ``calls`` calls (None if capture fails).
        torch's graph context leaves its capture stream current when capture_end raises:
        the caller's stream is put back whatever happens, or every later call and event
        would run on the capture stream, unordered with the legacy stream."""
        torch = self.torch
        caller = torch.cuda.current_stream()
        try:
            return self._graph(fn, calls, reps)
        except Exception as exc:   # a capture the runtime refuses: report, do not stop
            print(f"  (graph replay unavailable: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0]})", file=sys.stderr)
            return None
        finally:
            torch.cuda.set_stream(caller)
            torch.cuda.synchronize()

    def _graph(self, fn, calls: int, reps: int) -> float:
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()   # warm on the capture stream
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        return statistics.median(times)


class Clocks:
    """The SM clock and the active throttle reasons of GPU 0, via NVML or nvidia-smi."""

    def __init__(self):
        self.nvml = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self.nvml = None

    def read(self) -> dict:
        if self.nvml is not None:
            try:
                nv = self.nvml
                reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons",
                                  getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
                return {"sm_mhz": nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM),
                        "throttle": hex(reasons(self.handle)) if reasons else "?"}
            except Exception:
                pass
        try:
            out = subprocess.run(["nvidia-smi", ("--query-gpu=clocks.sm,"
                                  "clocks_throttle_reasons.active"), "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            sm, reasons = (v.strip() for v in out.split(",")[:2])
            return {"sm_mhz": sm, "throttle": reasons}
        except Exception:
            return {"sm_mhz": "?", "throttle": "?"}


def torch_call(torch, layer: dict, x, w, b):
    """The layer as torch computes it on the GPU (padding_mode as nn.ConvNd applies it)."""
    import torch.nn.functional as F

    args = dict(layer["args"])
    mode = args.pop("padding_mode", "zeros")
    if mode != "zeros":
        ndim = len(layer["w"]) - 2
        module = getattr(torch.nn, f"Conv{ndim}d")(
            layer["w"][1] * args.get("groups", 1), layer["w"][0], tuple(layer["w"][2:]),
            padding_mode=mode, bias=b is not None, device="cuda", dtype=w.dtype, **args)
        with torch.no_grad():
            module.weight.copy_(w)
            if b is not None:
                module.bias.copy_(b)
        return lambda: module(x)
    op = getattr(F, layer["op"])
    return lambda: op(x, w, b, **args)


def set_precision(torch, precision: str) -> dict:
    """TF32 for cuDNN's convolutions through the fp32_precision API (the old allow_tf32
    flags raise once the new API is used), and what torch reports back."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    value = "tf32" if precision == "tf32" else "ieee"
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = value
        return {"cudnn.conv.fp32_precision": conv.fp32_precision}
    torch.backends.cudnn.allow_tf32 = precision == "tf32"   # torch before 2.9
    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


def rel_err(torch, ours, reference) -> float:
    diff = (ours.double() - reference).norm().item()
    scale = reference.norm().item()
    return diff / (scale if scale > 0 else 1.0)


def compile_all(layers: list[dict], target, candidates: int, jobs: int) -> dict:
    """Every kernel the run times, compiled up front, ``jobs`` nvcc processes at a time:
    layer name -> [kernels, the planner's choice first]."""
    import convgen
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    from convgen.cuda import candidates as ranked_plans
    from convgen.cuda.planner import allowed_maths

    work, analytical_plans = [], {}
    for layer in layers:
        spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
        workload, _ = workload_of(spec, tuple(layer["x"]), "float32")
        allowed = allowed_maths(workload, target.cuda)
        ranked = [c for c in ranked_plans(workload, target) if c.plan.math in allowed]
        chosen = ranked[:max(1, candidates)]
        analytical = analytical_choice(ranked, workload, target)
        analytical_plans[layer["name"]] = analytical.plan
        if analytical.plan not in [c.plan for c in chosen]:   # timed too: the fit's check
            chosen.append(analytical)
        work += [(layer["name"], i, spec, tuple(layer["x"]), c) for i, c in enumerate(chosen)]

    def build(item):
        name, i, spec, shape, candidate = item
        kernel = convgen.compile(spec, shape, "float32", target=target, plan=candidate.plan)
        return name, i, Compiled(kernel, candidate.cost_s,
                                 candidate.plan == analytical_plans[name])

    found: dict = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for name, i, compiled in pool.map(build, work):
            found.setdefault(name, []).append((i, compiled))
    return {name: [c for _, c in sorted(v, key=lambda e: e[0])] for name, v in found.items()}


def analytical_choice(ranked: list, workload, target):
    """The candidate the analytical model (no GPU timings) ranks first: where the planner's
    weights were fitted to timings, it is timed beside the fitted model's choices, so each
    GPU run checks the fit against what it replaced."""
    from convgen.cuda.cost import analytical_seconds, terms_of
    return min(ranked, key=lambda c: (analytical_seconds(terms_of(c.plan, workload,
                                                                  target.cuda)), str(c.plan)))


class Compiled:
    """A candidate's kernel, the cost model's predicted seconds for it, and whether it is
    the analytical model's first choice."""

    def __init__(self, kernel, predicted_s: float, analytical_first: bool = False):
        self.kernel, self.predicted_s = kernel, predicted_s
        self.analytical_first = analytical_first


def operands(torch, layer: dict, seed: int):
    """The layer's input, weight and bias: random, float32, on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(layer["x"], device="cuda", generator=gen)
    w = torch.randn(layer["w"], device="cuda", generator=gen)
    out_channels = layer["w"][1] * layer["args"].get("groups", 1) \
        if "transpose" in layer["op"] else layer["w"][0]
    return x, w, torch.randn(out_channels, device="cuda", generator=gen)


def bench_layer(torch, layer: dict, compiled: list, timer: Timer, clocks: Clocks,
                min_time: float, warmup: float) -> dict:
    kernels = [c.kernel for c in compiled]
    x, w, b = operands(torch, layer, seed=0)
    torch_bias = torch_call(torch, layer, x, w, b)
    torch_plain = torch_call(torch, layer, x, w, None)
    out = torch.empty(kernels[0].output_shape, device="cuda")
    # on torch's current stream (inside a graph capture: the capture stream), as a torch
    # user would pass it; no stream would mean the legacy stream, which a capture refuses
    runners = [lambda k=k: k(x, w, b, out=out, stream=torch.cuda.current_stream())
               for k in kernels]

    timer.warm([runners[0], torch_bias, torch_plain], warmup)
    if len(kernels) > 1:   # the best of the planner's few, by a short timing each
        quick = [timer.interleaved([fn], min_time=0.02, min_reps=5)[0] for fn in runners]
        best = min(range(len(kernels)), key=quick.__getitem__)
    else:
        quick, best = [None], 0
    timed = [runners[0]] + ([runners[best]] if best else [])
    results = timer.interleaved(timed + [torch_bias, torch_plain], min_time)
    choice_s, best_s = results[0], results[1] if best else results[0]
    torch_s, torch_plain_s = results[-2], results[-1]
    row = {"name": layer["name"], "op": layer["op"], "gflop": kernels[0].flops / 1e9,
           "competitor": "torch-dw" if is_depthwise(layer) else "cudnn",
           "convgen_s": best_s, "choice_s": choice_s, "regret": choice_s / best_s,
           "torch_s": torch_s, "torch_nobias_s": torch_plain_s,
           "speedup": torch_s / best_s, "speedup_nobias": torch_plain_s / best_s,
           "plan": str(kernels[best].plan), "choice_plan": str(kernels[0].plan),
           "candidates": len(kernels),
           # every candidate's short timing beside the cost model's prediction, in the
           # planner's order: what a later calibration of the model fits to
           "sweep": [{"plan": str(c.kernel.plan), "predicted_s": c.predicted_s,
                      "measured_s": q, "analytical_first": c.analytical_first}
                     for c, q in zip(compiled, quick)]}
    analytical = [q for c, q in zip(compiled, quick) if c.analytical_first]
    if analytical and analytical[0]:   # the analytical model's choice, timed briefly
        row["analytical_choice_regret"] = analytical[0] / min(q for q in quick if q)
        row["choice_quick_regret"] = quick[0] / min(q for q in quick if q)
    row["convgen_host_s"] = timer.host_seconds(runners[best])
    row["torch_host_s"] = timer.host_seconds(torch_bias)
    if layer["x"][0] == 1:   # batch 1: as a network replaying its kernels sees them
        row["convgen_graph_s"] = timer.graph(runners[best])
        row["torch_graph_s"] = timer.graph(torch_bias)
    with torch.no_grad():
        reference = torch_call(torch, layer, x.double(), w.double(), b.double())()
        for key, index in (("choice_rel_err", 0), ("rel_err", best)):
            out.fill_(float("nan"))   # poisoned: an element no candidate writes shows
            runners[index]()
            row[key] = rel_err(torch, out, reference)
        row["torch_rel_err"] = rel_err(torch, torch_bias(), reference)
    row.update(clocks.read())
    return row


def environment(torch, target, precision_setting: dict) -> dict:
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
            "torch_precision": precision_setting,
            "driver_and_max_sm_clock": smi.stdout.strip(), "host": platform.node(),
            "date": time.strftime("%Y-%m-%d")}


def _ms(seconds) -> str:
    return f"{seconds * 1e3:.4f}" if seconds else "-"


def geomean(values) -> float:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--precision", choices=["tf32", "fp32"], default="tf32",
                        help="tf32: TF32 tensor cores allowed for both (PyTorch's default for "
                             "convolutions); fp32: full float32 for both")
    parser.add_argument("--candidates", type=int, default=1,
                        help="time the planner's N best plans per layer, keep the fastest, "
                             "report the planner's regret")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 4,
                        help="kernels compiled at once")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of timed reps per layer")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per layer")
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
    setting = set_precision(torch, args.precision)
    target = get_target("cuda")
    env = environment(torch, target, setting)
    layers = load_suite(args.suite, set(filter(None, args.layers.split(","))))
    t0 = time.perf_counter()
    kernels = compile_all(layers, target, args.candidates, args.jobs)
    print(f"convgen vs torch on {env['gpu']} ({env['sm_count']} SMs, convgen for "
          f"{env['convgen_arch']}): {len(layers)} layers, float32 data, precision "
          f"{args.precision} (torch {setting}, convgen TF32 "
          f"{'allowed' if target.cuda.allow_tf32 else 'off'}), cudnn.benchmark=True, "
          f"{args.candidates} candidate(s) per layer compiled in "
          f"{time.perf_counter() - t0:.0f} s, CUDA-event medians, L2 "
          f"{'kept' if args.no_flush else 'flushed'}; graph = CUDA graph replay (batch 1)\n")
    header = (f"{'layer':<19}{'vs':>9}{'GFLOP':>8}{'convgen ms':>11}{'TFLOP/s':>8}"
              f"{'torch ms':>10}{'no bias':>9}{'speedup':>8}{'nobias':>7}{'regret':>7}"
              f"{'graph cg':>9}{'graph t':>9}{'host cg':>8}{'host t':>7}{'rel err':>9}"
              f"{'SM MHz':>7}  throttle  plan")
    print(header)
    timer, clocks = Timer(torch, flush=not args.no_flush), Clocks()
    results = []
    for layer in layers:
        r = bench_layer(torch, layer, kernels[layer["name"]], timer, clocks, args.min_time,
                        args.warmup)
        results.append(r)
        print(f"{r['name']:<19}{r['competitor']:>9}{r['gflop']:8.3f}{_ms(r['convgen_s']):>11}"
              f"{r['gflop'] / r['convgen_s'] / 1e3:8.2f}{_ms(r['torch_s']):>10}"
              f"{_ms(r['torch_nobias_s']):>9}{r['speedup']:7.2f}x{r['speedup_nobias']:6.2f}x"
              f"{r['regret']:7.2f}{_ms(r.get('convgen_graph_s')):>9}"
              f"{_ms(r.get('torch_graph_s')):>9}{r['convgen_host_s'] * 1e6:7.1f}u"
              f"{r['torch_host_s'] * 1e6:6.1f}u{r['rel_err']:9.1e}{r['sm_mhz']!s:>7}  "
              f"{r['throttle']}  {r['plan']}", flush=True)
        if args.json:   # after every layer: a run cut short still leaves its rows
            args.json.write_text(json.dumps({"environment": env, "precision": args.precision,
                                             "candidates": args.candidates, "complete": False,
                                             "layers": results}, indent=1))
    speedups = [r["speedup"] for r in results]
    slowest = min(results, key=lambda r: r["speedup"])
    summary = {"geomean_speedup": geomean(speedups),
               "geomean_speedup_nobias": geomean(r["speedup_nobias"] for r in results),
               "geomean_regret": geomean(r["regret"] for r in results),
               "geomean_regret_quick": geomean(r.get("choice_quick_regret")
                                               for r in results),
               "geomean_regret_analytical_quick": geomean(
                   r.get("analytical_choice_regret") for r in results),
               "geomean_graph_speedup": geomean(
                   r["torch_graph_s"] / r["convgen_graph_s"] for r in results
                   if r.get("torch_graph_s") and r.get("convgen_graph_s"))}
    print(f"\ngeometric mean speedup over torch: {summary['geomean_speedup']:.2f}x with the "
          f"bias, {summary['geomean_speedup_nobias']:.2f}x against torch without it; graph "
          f"replay (batch 1): {summary['geomean_graph_speedup']:.2f}x; slowest "
          f"{slowest['name']} {slowest['speedup']:.2f}x; planner regret (geomean, "
          f"{args.candidates} candidates): {summary['geomean_regret']:.2f}; by the short "
          f"timings, the planner's choice {summary['geomean_regret_quick']:.2f} and the "
          f"analytical model's {summary['geomean_regret_analytical_quick']:.2f} over the "
          f"fastest; target: >= 1.0x")
    if args.markdown:
        print("\n| layer | vs | GFLOP | convgen ms | TFLOP/s | torch ms | torch no-bias ms | "
              "speedup | no-bias speedup | regret | host us convgen / torch | rel err |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['name']} | {r['competitor']} | {r['gflop']:.3f} | "
                  f"{_ms(r['convgen_s'])} | {r['gflop'] / r['convgen_s'] / 1e3:.2f} | "
                  f"{_ms(r['torch_s'])} | {_ms(r['torch_nobias_s'])} | {r['speedup']:.2f}x | "
                  f"{r['speedup_nobias']:.2f}x | {r['regret']:.2f} | "
                  f"{r['convgen_host_s'] * 1e6:.0f} / {r['torch_host_s'] * 1e6:.0f} | "
                  f"{r['rel_err']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "precision": args.precision,
                                         "candidates": args.candidates, "complete": True,
                                         **summary, "layers": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
