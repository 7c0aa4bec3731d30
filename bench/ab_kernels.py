"""Two or more CPU kernels for one suite layer, timed head to head in one process.

    python bench/ab_kernels.py LAYER [--threads N] [--seconds S] [--between LAYER2]
                               [--fresh-input]
                               [--plan "algorithm=... threads=N" | --source FILE.c] ...

Each variant is a plan (compiled by convgen) or a C file (a kernel convgen generated,
edited by hand: `convgen compile` or `kernel.sources` gives the text; a Winograd kernel
comes with a second file, its exact fallback, named after a comma). The default plan
always comes first, as the baseline of the ratios. Every variant is built with the flags
of the default plan's build into a shared library of its own, and all are loaded into this
process. Their calls are alternated, three at a time, for --seconds, on the same operands
with warm threads, all writing one preallocated output and using one workspace (buffers of
their own biased the ratios by up to 8%: _share_buffers). The table gives each variant's
median and 10th percentile, its ratio to the first, and whether its output, computed once
more afterwards into a poisoned array of its own, equals the first's bit for bit.
With --between LAYER2, LAYER2's default kernel runs (untimed, on its own operands) before
every timed call: each call then finds what a network's previous layer leaves in the
caches, as compare.py's calls interleaved with torch do, instead of its own data. With
--fresh-input the calling thread rewrites the input before every timed call (untimed), as
numpy or a network's previous layer leaves it: in that core's caches only, where back-to-back
calls find the unchanged input in every core's L2. The cost model prices this case (a thread
first fetches the input its items cover); the tables and the regret sweep time the other
(bench/RESULTS.md, the twenty-fourth session: pointwise_256_128's oc_outer plan 0.86x the
chosen panel's time back to back, 1.23x with the input rewritten).

Why one process: on a shared VM a neighbour can slow memory by 1.3x for minutes, so timings
from separate processes or separate minutes disagree more than most kernel changes differ.
Calls alternated in one process meet the same neighbours. The 10th percentile shows the
calls that met none (bench/RESULTS.md, the twenty-first session).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SUITES = [HERE / "suite_public.json", HERE / "suite_classes.json"]


def find_layer(name: str, suites) -> dict:
    for suite in suites:
        for layer in json.loads(Path(suite).read_text())["layers"]:
            if layer["name"] == name:
                return layer
    raise SystemExit(f"ab_kernels: no layer {name!r} in {', '.join(map(str, suites))}")


def prefix_of(source: str) -> str:
    """The exported symbols' prefix (``<prefix>_run``) of a generated kernel's source."""
    head, found, _ = source.partition("_workspace_bytes(void)")
    if not found:
        raise SystemExit("ab_kernels: not a convgen CPU kernel (no <prefix>_workspace_bytes)")
    return head.rsplit("size_t ", 1)[1].strip()


class Variant:
    """One kernel built into a shared library of its own, packed and ready to call."""

    def __init__(self, label: str, sources: list[str], target, workdir: Path, operands,
                 out_shape):
        from convgen.cpu.compile import compile_shared
        index = len(list(workdir.glob("*.so")))
        paths, library = [workdir / f"v{index}_{i}.c" for i in range(len(sources))], \
            workdir / f"v{index}.so"
        for path, source in zip(paths, sources):
            path.write_text(source)
        compile_shared(paths, library, target)
        lib, prefix = ctypes.CDLL(str(library)), prefix_of(sources[0])
        for name in ("_workspace_bytes", "_packed_weights_bytes"):
            getattr(lib, prefix + name).restype = ctypes.c_size_t
        x, w, b = operands
        self.label, self.lib = label, lib
        self.work = np.zeros(getattr(lib, prefix + "_workspace_bytes")() // 8 + 8, np.float64)
        self.packed = np.zeros(getattr(lib, prefix + "_packed_weights_bytes")() // 8 + 8,
                               np.float64)
        self.out = np.full(out_shape, np.nan, x.dtype)
        getattr(lib, prefix + "_pack")(_pointer(w), _pointer(self.packed))
        self.run = getattr(lib, prefix + "_run")
        self.args = (_pointer(x), _pointer(self.packed), _pointer(b), _pointer(self.out),
                     _pointer(self.work))
        self.times: list[float] = []

    def use_output(self, out: np.ndarray) -> None:
        """Write the results into ``out`` (and use the current workspace) from now on."""
        self.out = out
        self.args = self.args[:3] + (_pointer(out), _pointer(self.work))

    def call(self, prepare=None) -> None:
        if prepare is not None:
            prepare()
        start = time.perf_counter()
        status = self.run(*self.args)
        self.times.append(time.perf_counter() - start)
        if status != 0:
            raise SystemExit(f"ab_kernels: {self.label} returned {status}")


def _pointer(array):
    return None if array is None else array.ctypes.data_as(ctypes.c_void_p)


def kernel_sources(kernel) -> list[str]:
    """A compiled kernel's C sources, the kernel's own first (Winograd adds its exact
    fallback's)."""
    sources = dict(kernel.sources)
    return [sources.pop("kernel.c")] + list(sources.values())


def variants_of(args) -> list[tuple[str, str]]:
    """(kind, value) of every variant asked for, the default plan first where none is."""
    asked = [(kind, value) for kind, value in args.variants]
    if not asked or asked[0] != ("plan", "auto"):
        asked.insert(0, ("plan", "auto"))
    return asked


def operands_of(layer: dict):
    """The layer's spec and fresh random (x, w, b), float32."""
    from convgen.core.layers import spec_from_op
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    rng = np.random.default_rng(0)
    return spec, tuple(rng.standard_normal(shape).astype(np.float32)
                       for shape in (layer["x"], layer["w"], (spec.out_channels,)))


def measure(layer: dict, asked, threads: int, seconds: float, workdir: Path,
            between: dict | None = None, fresh_input: bool = False) -> list[dict]:
    os.environ["CONVGEN_NUM_THREADS"] = str(threads)
    import convgen

    spec, (x, w, b) = operands_of(layer)
    default = convgen.compile(spec, tuple(layer["x"]), dtype="float32")
    before = None
    if between is not None:    # another layer's default kernel, run before every timed call
        other_spec, other_operands = operands_of(between)
        other = convgen.compile(other_spec, tuple(between["x"]), dtype="float32")
        before = Variant(str(other.plan), kernel_sources(other), other.target, workdir,
                         other_operands, other.output_shape)
    variants = []
    for kind, value in asked:
        if kind == "plan":
            kernel = convgen.compile(spec, tuple(layer["x"]), dtype="float32", plan=value)
            label, sources = str(kernel.plan), kernel_sources(kernel)
        else:
            label, sources = value, [Path(f).read_text() for f in value.split(",")]
        variants.append(Variant(label, sources, default.target, workdir, (x, w, b),
                                default.output_shape))
    outputs = {id(variant): variant.out for variant in variants}
    _share_buffers(variants)
    prepare = _preparation(before, x if fresh_input else None)
    for variant in variants:          # warm: threads awake, operands and weights in cache
        variant.call(prepare)
        variant.times.clear()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(variants[0].times) < 9:
        for variant in variants:
            for _ in range(3):
                variant.call(prepare)
    for variant in variants:          # each variant's result, into a poisoned array of its own
        variant.use_output(outputs[id(variant)])
        variant.call()
    first = variants[0]
    rows = []
    for variant in variants:
        rows.append({"variant": variant.label, "median_s": statistics.median(variant.times[:-1]),
                     "p10_s": float(np.percentile(variant.times[:-1], 10)),
                     "calls": len(variant.times) - 1,
                     "output": compare_outputs(variant.out, first.out)})
    return rows


def _share_buffers(variants: list[Variant]) -> None:
    """Every variant writes one output and uses one workspace while timed. With buffers of
    their own, where each sits against what the layer --between leaves in the caches
    favoured some: three copies of one kernel read 0.99x, 1.05x and 1.08x the first's time
    (pointwise_256_128 after strided_3x3, 2 threads), and the next run otherwise. Packed
    weights stay each variant's own (their layouts differ)."""
    out = np.full_like(variants[0].out, np.nan)
    work = np.zeros(max(v.work.size for v in variants), np.float64)
    for variant in variants:
        variant.work = work
        variant.use_output(out)


def _preparation(before: Variant | None, fresh: np.ndarray | None):
    """What runs, untimed, before every timed call: ``before``'s kernel, then (``fresh``,
    the operand array) the calling thread rewriting the input with the same values."""
    if before is None and fresh is None:
        return None
    pristine = None if fresh is None else fresh.copy()

    def prepare() -> None:
        if before is not None:
            before.run(*before.args)
        if pristine is not None:
            np.copyto(fresh, pristine)
    return prepare


def compare_outputs(out, reference) -> str:
    """'same' (bit for bit), 'unwritten' (some of the poisoned output left NaN), or the
    largest difference."""
    if np.array_equal(out, reference):
        return "same"
    if np.isnan(out).any():
        return "unwritten"
    return f"{float(np.abs(out - reference).max()):.2g}"


def table(layer: str, threads: int, rows: list[dict], between: str | None = None,
          fresh_input: bool = False) -> str:
    from convgen.target.host import cpu_name
    base, base_p10 = rows[0]["median_s"], rows[0]["p10_s"]
    after = f", each after {between}'s kernel" if between else ""
    if fresh_input:
        after += ", the input rewritten by the calling thread before each"
    lines = [(f"{layer}, {threads} thread(s), calls alternated in one process{after}; "
              f"CPU: {cpu_name()}"),
             (f"{'median ms':>10s} {'ratio':>6s} {'p10 ms':>9s} {'ratio':>6s} {'calls':>6s}"
              "  output    variant")]
    for row in rows:
        lines.append(f"{row['median_s'] * 1e3:10.4f} {row['median_s'] / base:6.3f} "
                     f"{row['p10_s'] * 1e3:9.4f} {row['p10_s'] / base_p10:6.3f} "
                     f"{row['calls']:6d}  {row['output']:9s} {row['variant']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layer", help="a layer of bench/suite_public.json or suite_classes.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--suite", action="append", help="look for LAYER here instead")
    parser.add_argument("--plan", dest="variants", action="append", default=[],
                        type=lambda text: ("plan", text), help="a plan string, or auto")
    parser.add_argument("--source", dest="variants", action="append",
                        type=lambda text: ("source", text),
                        help="a generated kernel's C file (FILE.c,EXACT.c: with the other "
                             "files of its sources, a Winograd kernel's exact.c)")
    parser.add_argument("--between", metavar="LAYER2",
                        help="run LAYER2's default kernel (untimed) before every timed call")
    parser.add_argument("--fresh-input", action="store_true",
                        help="the calling thread rewrites the input before every timed call")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")   # before any OpenMP loads
    suites = args.suite or SUITES
    layer = find_layer(args.layer, suites)
    between = find_layer(args.between, suites) if args.between else None
    with tempfile.TemporaryDirectory(prefix="ab_kernels-") as tmp:
        rows = measure(layer, variants_of(args), args.threads, args.seconds, Path(tmp), between,
                       args.fresh_input)
    print(table(args.layer, args.threads, rows, args.between, args.fresh_input))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
