"""convgen vs torch (oneDNN) vs onnxruntime (MLAS) on the public suite.

    python bench/compare.py [--threads N] [--layers NAME,...] [--dtype float32] [--min-time S]

Each layer runs through convgen (default plan, weights packed once) and torch in one
process, interleaved rep by rep so machine noise hits both alike, with preallocated
outputs and warm threads; right before that, when it is installed (`pip install -e
'.[bench]'`), onnxruntime runs a one-node model of the same layer in a process of its own
(its thread pool spins after a run and, next to libgomp's workers, distorts every
library's timings), and so does convgen, called back to back as onnxruntime is. The
onnxruntime ratio compares those two (each library finding its own data in the caches),
the torch ratio the interleaved pair (each finding the other's). Every layer gets fresh
processes, and this one runs no OpenMP until the end: under OMP_WAIT_POLICY=ACTIVE
libgomp's workers spin for good once started and would take a core from the next
process. The table shows medians, GFLOP/s, the share of the machine's FMA peak (measured
by a generated micro-benchmark, a short run of it between each layer's timed calls: a
shared machine's clock moves from minute to minute) and the ratios torch/convgen and
onnxruntime/convgen (> 1: convgen is faster), then geometric means, the issue's targets,
the cold compile time and the per-call Python overhead.

torch's OpenMP workers spin (OMP_WAIT_POLICY=ACTIVE) so the anchor is at its best; torch
and convgen share one libgomp in a process, so convgen runs so too here. The threading
check runs convgen alone in a child process with the default environment.
"""
from __future__ import annotations

import os

# Before torch (and its libgomp) loads: the anchors at their best.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors
from convgen.target.host import cpu_name, usable_cores

# CONVGEN_MAX_CPU_ISA=avx2 measures this host as an AVX2 machine: torch is capped alike
# (ATen's kernels, oneDNN's, and MKL's, which torch calls for some 1x1 layers on one
# thread); main sets them before torch loads here or in a child. onnxruntime's MLAS picks
# its kernels from cpuid and has no such switch: it sits out.
MAX_ISA = os.environ.get("CONVGEN_MAX_CPU_ISA", "").strip().lower()
TORCH_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                       "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
              "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                          "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = ROOT / "bench" / "suite_public.json"   # shared/bench's, copied into the repo


def load_suite(path: Path, names: set[str] | None) -> list[dict]:
    layers = json.loads(path.read_text())["layers"]
    return [layer for layer in layers if not names or layer["name"] in names]


def interleaved_medians(runners: list, min_time: float, min_reps: int = 7) -> list[float]:
    for run in runners:   # warm-up: threads awake, pages touched, caches filled
        run()
    samples = [[] for _ in runners]
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(samples[0]) < min_reps:
        for run, times in zip(runners, samples):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return [statistics.median(times) for times in samples]


def bench_layer(layer: dict, dtype: str, min_time: float, threads: int) -> dict:
    """convgen and torch on one layer (the caller adds onnxruntime's time, ort_s), and the
    FMA peak measured alongside them (a short run between the calls: peak_gflops)."""
    import convgen
    from convgen.core.layers import spec_from_op
    from convgen.cpu.peak import fma_peak_probe

    rng = np.random.default_rng(0)
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    kernel = convgen.compile(spec, tuple(layer["x"]), dtype=dtype)
    x = rng.standard_normal(layer["x"]).astype(dtype)
    w = rng.standard_normal(layer["w"]).astype(dtype)
    b = rng.standard_normal(spec.out_channels).astype(dtype)
    out = np.empty(kernel.output_shape, dtype)
    packed = kernel.prepack(w)   # once per weight, as a deployed layer does
    torch_module = anchors.torch_module(layer, w, b)
    module = getattr(convgen.nn, type(torch_module).__name__).from_torch(torch_module)
    module(x)    # compiles and packs once, as a user's first call does
    probe, peaks = fma_peak_probe(threads), []
    runners = [lambda: kernel(x, packed, b, out=out), anchors.torch_call(layer, x, w, b),
               lambda: module(x), anchors.torch_module_call(torch_module, x),
               lambda: peaks.append(probe())]
    times = interleaved_medians(runners, min_time)
    reference = runners[1]()
    kernel(x, packed, b, out=out)
    err = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
    module_err = float(np.linalg.norm(module(x) - reference) / np.linalg.norm(reference))
    return {"name": layer["name"], "op": layer["op"], "gflop": kernel.flops / 1e9,
            "convgen_s": times[0], "torch_s": times[1],
            "module_s": times[2], "torch_module_s": times[3],
            "rel_err": max(err, module_err), "peak_gflops": statistics.median(peaks),
            "plan": str(kernel.plan), "gemm_like": _counts_for_peak_target(layer)}


def _counts_for_peak_target(layer: dict) -> bool:
    """The machine-model issue's peak target: GEMM-like layers, i.e. dense (one group) with
    >= 64 channels both ways, forward or transposed, any kernel (Winograd layers count
    their direct-convolution FLOPs)."""
    return layer["args"].get("groups", 1) == 1 and min(layer["w"][:2]) >= 64


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def print_header() -> None:
    print(f"{'layer':<20}{'GFLOP':>7}{'convgen ms':>11}{'GFLOP/s':>8}{'%peak':>6}{'peak':>6}"
          f"{'torch ms':>10}{'ort ms':>9}{'cg alone':>9}{'%peak':>6}{'torch/cg':>9}{'ort/cg':>8}"
          f"{'m(x)':>7}{'rel err':>9}  plan")


def print_targets(rows: list[dict], peak: float, share: float) -> None:
    """The machine-model issue's targets (2 threads; 1 thread is reported against the same);
    ``share``: of the peak, for the GEMM-like layers (``peak_share_target``)."""
    vs_torch = [r["torch_s"] / r["convgen_s"] for r in rows]
    vs_module = [r["torch_module_s"] / r["module_s"] for r in rows]
    print(f"\ngeometric mean torch/convgen, prepacked kernels: {geomean(vs_torch):.2f}x "
          f"(min {min(vs_torch):.2f}x, max {max(vs_torch):.2f}x)")
    print(f"geometric mean torch/convgen, modules m(x): {geomean(vs_module):.2f}x "
          f"(min {min(vs_module):.2f}x, max {max(vs_module):.2f}x)")
    with_ort = [r for r in rows if r["ort_s"]]
    vs_ort = [r["ort_s"] / r["convgen_alone_s"] for r in with_ort]
    if vs_ort:
        print(f"geometric mean onnxruntime/convgen, each alone, back to back: "
              f"{geomean(vs_ort):.2f}x (min {min(vs_ort):.2f}x, max {max(vs_ort):.2f}x)")
        mixed = [r["ort_s"] / r["convgen_s"] for r in with_ort]
        print(f"  (against convgen interleaved with torch: {geomean(mixed):.2f}x, "
              f"min {min(mixed):.2f}x)")
    dense = [r for r in rows if r["gemm_like"]]
    slow = [r["name"] for r, v in zip(rows, vs_torch) if v < 0.9]
    checks = [("geomean vs torch >= 1.8x (prepacked)", geomean(vs_torch) >= 1.8),
              ("geomean vs torch >= 1.8x (modules)", geomean(vs_module) >= 1.8),
              (f"no layer below 0.9x torch{' (' + ', '.join(slow) + ')' if slow else ''}",
               not slow)]
    if vs_ort:
        slow_ort = [r["name"] for r, v in zip(with_ort, vs_ort) if v < 0.7]
        checks += [("geomean vs onnxruntime >= 1.3x", geomean(vs_ort) >= 1.3),
                   ((f"no layer below 0.7x onnxruntime"
                    f"{' (' + ', '.join(slow_ort) + ')' if slow_ort else ''}"), not slow_ort)]
    for key, how in (("convgen_s", "interleaved with torch"), ("convgen_alone_s", "alone")):
        shares = {r["name"]: r["gflop"] / r[key] / row_peak(r, key, peak)
                  for r in dense if r[key]}
        if shares:
            low = [name for name, got in shares.items() if got < share]
            print(f"GEMM-like layers (one group, >= 64 channels both ways), {how}: "
                  f"{min(shares.values()):.0%} to {max(shares.values()):.0%} of the measured "
                  f"peak")
            named = f" ({', '.join(low)})" if low else ""
            checks.append((f"GEMM-like layers at >= {share:.0%} of peak, {how}{named}",
                           not low))
    paired = [r["peak_gflops"] for r in rows if r.get("peak_gflops")]
    if paired:
        print(f"FMA peak measured alongside the layers: {min(paired):.0f} to {max(paired):.0f} "
              f"GFLOP/s (before the table: {peak:.0f})")
    print("targets (issue 11, stated for 2 threads):")
    for text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")


def compile_and_call_costs(dtype: str) -> None:
    """A cold compile (empty cache) and the Python overhead of a cached call."""
    import convgen
    from convgen import ConvSpec
    saved = os.environ.get("CONVGEN_CACHE_DIR")
    with tempfile.TemporaryDirectory() as empty:
        os.environ["CONVGEN_CACHE_DIR"] = empty
        spec = ConvSpec.conv(2, 64, 64, 3, padding=1, bias=True)
        t0 = time.perf_counter()
        kernel = convgen.compile(spec, (1, 64, 57, 59), dtype=dtype)   # a shape nothing else uses
        cold = time.perf_counter() - t0
    if saved is None:
        del os.environ["CONVGEN_CACHE_DIR"]
    else:
        os.environ["CONVGEN_CACHE_DIR"] = saved
    print(f"\ncold compile of one kernel (plan, render, cc, load): {cold:.2f} s  [{kernel.plan}]")
    tiny = convgen.compile(ConvSpec.conv(1, 1, 1, 1), (1, 1, 1), dtype=dtype)
    x, w, b = (np.ones(s, dtype) for s in ((1, 1, 1), (1, 1, 1), (1,)))
    out, packed = np.empty((1, 1, 1), dtype), tiny.prepack(w)
    calls = {"kernel(x, packed, b, out=)": lambda: tiny(x, packed, b, out=out),
             "kernel(x, w, b)": lambda: tiny(x, w, b),
             "convgen.conv1d(x, w, b)": lambda: convgen.conv1d(x, w, b)}
    for name, call in calls.items():
        call()
        best = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(2000):
                call()
            best.append((time.perf_counter() - t0) / 2000)
        print(f"cached call, a 1-element layer (all of it Python overhead): {name}: "
              f"{statistics.median(best) * 1e6:.1f} us")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--min-time", type=float, default=0.6, help="seconds per layer")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh processes per layer; each time is the median over them")
    parser.add_argument("--no-onnxruntime", action="store_true")
    parser.add_argument("--skip-threading-check", action="store_true")
    parser.add_argument("--layer-child", help=argparse.SUPPRESS)   # see layer_in_child
    args = parser.parse_args(argv)
    os.environ["CONVGEN_NUM_THREADS"] = str(args.threads)
    for name, value in TORCH_CAPS.get(MAX_ISA, {}).items():
        os.environ.setdefault(name, value)
    layers = load_suite(args.suite, set(filter(None, args.layers.split(","))))
    if args.layer_child:
        anchors.setup_torch(args.threads)
        print(json.dumps(bench_layer(layers[0], args.dtype, args.min_time, args.threads)))
        return 0
    ort_threads = None if args.no_onnxruntime or not anchors.have_onnxruntime() \
        or MAX_ISA in TORCH_CAPS else args.threads
    # Every measurement that runs OpenMP or another thread pool happens in a child process,
    # one at a time: under OMP_WAIT_POLICY=ACTIVE libgomp's workers spin for good once
    # started and would take a core from the next child (onnxruntime at 2 threads measured
    # as fast as at 1 that way), and a layer's onnxruntime run comes right before its
    # convgen/torch run, so slow drift on a shared machine hits all three alike.
    check = None if args.skip_threading_check else threading_check(args.threads)
    peak, fma_per_cycle = peak_in_child(args.threads)
    print(f"convgen vs torch {anchors.torch_version()}"
          f"{' vs onnxruntime ' + anchors.onnxruntime_version() if ort_threads else ''}: "
          f"{len(layers)} layers, {args.dtype}, {args.threads} threads, "
          f"medians of interleaved runs, {args.repeat} process(es) per layer")
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores; "
          f"measured float32 FMA peak, {args.threads} threads: {peak:.0f} GFLOP/s "
          f"({fma_per_cycle:.2f} full-width FMAs per cycle per core)")
    print("%peak: of the FMA peak measured alongside the layer's timed calls (column peak, "
          "GFLOP/s; the alone %peak against its own run's), as a shared machine's clock moves")
    if MAX_ISA in TORCH_CAPS:
        print(f"CONVGEN_MAX_CPU_ISA={MAX_ISA}: convgen and torch capped to {MAX_ISA} "
              f"({', '.join(f'{k}={v}' for k, v in TORCH_CAPS[MAX_ISA].items())}); "
              "onnxruntime left out (MLAS has no ISA cap)")
    print("m(x): torch module / convgen module, each called as users call them (a new "
          "output per call)\n")
    print_header()
    rows = []
    for layer in layers:
        rows.append(measure_layer(args, layer["name"], bool(ort_threads)))
        print_row(rows[-1], peak)
    print_targets(rows, peak, peak_share_target(fma_per_cycle))
    compile_and_call_costs(args.dtype)
    if check:
        print("\n" + check)
    return 0


TIMES = ("convgen_s", "torch_s", "module_s", "torch_module_s", "ort_s", "convgen_alone_s",
         "peak_gflops", "peak_alone_gflops")


def measure_layer(args, name: str, with_ort: bool) -> dict:
    """One layer, ``args.repeat`` times in fresh processes (onnxruntime alone, convgen alone,
    then convgen and torch interleaved); each time the median over the repetitions. A
    process's buffers land on other physical pages and its threads on other cache states:
    layers under a millisecond move by 10-30% from one process to the next."""
    samples = []
    for _ in range(args.repeat):
        ort = alone_times(args, "onnxruntime", [name]) if with_ort else {}
        alone = alone_times(args, "convgen", [name]) if with_ort else {}
        row = layer_in_child(args, name)
        row["ort_s"], row["convgen_alone_s"] = ort.get(name), alone.get(name)
        row["peak_alone_gflops"] = alone.get(f"{name} peak")
        samples.append(row)
    row = dict(samples[0])
    for key in TIMES:
        found = [s[key] for s in samples if s[key]]
        row[key] = statistics.median(found) if found else None
    row["rel_err"] = max(s["rel_err"] for s in samples)
    return row


def layer_in_child(args, name: str) -> dict:
    """convgen and torch on one layer, interleaved, in a fresh process (see main)."""
    command = [sys.executable, __file__, "--layer-child", name, "--layers", name,
               "--suite", str(args.suite), "--threads", str(args.threads),
               "--dtype", args.dtype, "--min-time", str(args.min_time)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarking {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_in_child(threads: int) -> tuple[float, float]:
    """The measured float32 FMA peak on ``threads`` threads, and the full-width FMAs one core
    issues per cycle (the machine model's measurement: 1 on a one-FMA core, 2 on a two)."""
    code = ("from convgen.cpu.peak import fma_peak_gflops; from convgen.backends import "
            "get_target; from convgen.cpu.planner import model; "
            f"print(fma_peak_gflops({threads}), model(get_target('cpu')).fma_per_cycle)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    peak, fma_per_cycle = done.stdout.strip().splitlines()[-1].split()
    return float(peak), float(fma_per_cycle)


def peak_share_target(fma_per_cycle: float) -> float:
    """Issue 11's share of the peak for GEMM-like layers: 85% on a core with one FMA unit
    (it is easier to keep one busy), 75% on one with two."""
    return 0.85 if fma_per_cycle < 1.5 else 0.75


def row_peak(row: dict, key: str, peak: float) -> float:
    """The FMA peak measured alongside the row's ``key`` timing (convgen_s: interleaved with
    torch; convgen_alone_s: alone), or ``peak``, the one measured before the table, where
    the row has none."""
    paired = row.get("peak_alone_gflops" if key == "convgen_alone_s" else "peak_gflops")
    return paired or peak


def print_row(row: dict, peak: float) -> None:
    rate = row["gflop"] / row["convgen_s"]
    ort = f"{row['ort_s'] * 1e3:9.3f}" if row["ort_s"] else f"{'-':>9}"
    paired, alone_peak = row_peak(row, "convgen_s", peak), row_peak(row, "convgen_alone_s", peak)
    alone = (f"{row['convgen_alone_s'] * 1e3:9.3f}"
             f"{100 * row['gflop'] / row['convgen_alone_s'] / alone_peak:5.0f}%"
             if row["convgen_alone_s"] else f"{'-':>9}{'-':>6}")
    ort_ratio = (f"{row['ort_s'] / row['convgen_alone_s']:7.2f}x"
                 if row["ort_s"] and row["convgen_alone_s"] else f"{'-':>8}")
    module_ratio = row["torch_module_s"] / row["module_s"]
    print(f"{row['name']:<20}{row['gflop']:7.3f}{row['convgen_s'] * 1e3:11.3f}{rate:8.1f}"
          f"{100 * rate / paired:5.0f}%{paired:6.0f}{row['torch_s'] * 1e3:10.3f}{ort}{alone}"
          f"{row['torch_s'] / row['convgen_s']:8.2f}x{ort_ratio}{module_ratio:6.2f}x"
          f"{row['rel_err']:9.1e}  {row['plan']}",
          flush=True)


def alone_times(args, library: str, names: list[str]) -> dict:
    """One library's medians, alone in a child process (see alone_times.py for why)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("alone_times.py")),
                           library, str(args.suite), str(args.threads), str(args.min_time / 2),
                           ",".join(names)], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"{library} alone: timing failed; its column stays empty:\n"
              f"{done.stderr[-2000:]}")
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def threading_check(threads: int) -> str:
    """convgen alone, default environment (no OMP_* variables): back-to-back calls and
    calls after idle gaps, to show there is no wake-up cliff. Returns its report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["CONVGEN_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("threading_check.py"))],
                          env=env, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip()


if __name__ == "__main__":
    sys.exit(main())
