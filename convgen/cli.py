"""The ``convgen`` command line: compile, plan, bench, cache."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._version import __version__
from .core.layers import OPS, spec_from_op
from .runtime import cache


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from exc


def _int_or_ints(text: str):
    values = _ints(text)
    return values[0] if len(values) == 1 else values


def _padding(text: str):
    return text if text in ("same", "valid") else _int_or_ints(text)


def _add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", choices=sorted(OPS), help="the torch.nn.functional op")
    parser.add_argument("--input", type=_ints, required=True, metavar="N,C,...",
                        help="input shape, e.g. 1,64,56,56 (unbatched C,H,W also works)")
    parser.add_argument("--weight", type=_ints, required=True, metavar="O,I,...",
                        help="weight shape in PyTorch's layout, e.g. 64,64,3,3")
    parser.add_argument("--stride", type=_int_or_ints, default=1, metavar="S[,S...]")
    parser.add_argument("--padding", type=_padding, default=0, metavar="P[,P...]|same|valid")
    parser.add_argument("--dilation", type=_int_or_ints, default=1, metavar="D[,D...]")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--padding-mode", default=None,
                        choices=["zeros", "reflect", "replicate", "circular"],
                        help="forward convs only")
    parser.add_argument("--output-padding", type=_int_or_ints, default=None, metavar="P[,P...]",
                        help="transposed convs only")
    parser.add_argument("--output-size", type=_ints, default=None, metavar="S,...",
                        help="transposed convs only")
    parser.add_argument("--no-bias", action="store_true", help="the layer has no bias")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--target", default="cpu", help="cpu (native), cpu-avx2, c (portable), "
                        "cuda (nvcc) or cuda-emu (CUDA run on the CPU)")
    parser.add_argument("--plan", default="auto",
                        help="auto, an algorithm name, or a complete plan string")
    parser.add_argument("--accuracy", default="fast", choices=["fast", "strict"],
                        help="strict: exact algorithms only (no Winograd)")


def _spec(args):
    layer_args = {"stride": args.stride, "padding": args.padding, "dilation": args.dilation,
                  "groups": args.groups}
    for name in ("padding_mode", "output_padding", "output_size"):
        if getattr(args, name) is not None:
            layer_args[name] = getattr(args, name)
    return spec_from_op(args.op, args.weight, not args.no_bias, args.input, **layer_args)


def _cmd_plan(args) -> int:
    from .api import explain
    print(explain(_spec(args), args.input, args.dtype, args.target, top=args.top,
                  accuracy=args.accuracy))
    return 0


def _cmd_compile(args) -> int:
    from .api import compile as compile_kernel
    kernel = compile_kernel(_spec(args), args.input, dtype=args.dtype, target=args.target,
                            plan=args.plan, accuracy=args.accuracy)
    main_name = next(iter(kernel.sources))     # kernel.c or kernel.cu
    output = Path(args.output) if args.output else \
        Path("generated") / f"{kernel.spec.op}_{kernel.key[:12]}{Path(main_name).suffix}"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(kernel.source)
    print(f"wrote {output}  ({kernel.spec.op}, input {kernel.input_shape} -> "
          f"{kernel.output_shape}, {kernel.workload.dtype})")
    print(f"plan: {kernel.plan}")
    return 0


def _cmd_bench(args) -> int:
    """Time one layer's kernel: weights packed once, output preallocated, median of runs."""
    import statistics
    import time

    import numpy as np

    from .api import compile as compile_kernel
    t0 = time.perf_counter()
    kernel = compile_kernel(_spec(args), args.input, dtype=args.dtype, target=args.target,
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


def _cmd_cache(args) -> int:
    try:
        if args.action == "info":
            _print_cache_info(cache.info())
        else:
            print(f"removed {cache.clear()} entries from {cache.cache_root()}")
    except cache.CacheError as exc:
        print(exc, file=sys.stderr)   # says what is wrong with which directory, and the fix
        return 2
    return 0


def _print_cache_info(info: dict) -> None:
    cap = info["max_bytes"]
    limit = "no limit" if cap is None else f"limit {cap / 1e6:.2f} MB"
    requests = info["hits"] + info["misses"]
    hit_rate = f" ({info['hits'] / requests:.0%} hits)" if requests else ""
    print(f"cache: {info['root']}\nentries: {info['entries']}\n"
          f"size: {info['bytes'] / 1e6:.2f} MB ({limit}; CONVGEN_CACHE_MAX_BYTES)\n"
          f"hits: {info['hits']}  misses: {info['misses']}{hit_rate}  "
          f"discarded: {info['discarded']}  evicted: {info['evicted']}  (since the last clear)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="convgen", description="Generate, compile and cache convolution kernels "
        "specialised to one layer and input shape (PyTorch semantics).")
    top.add_argument("--version", action="version", version=f"convgen {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compile", help="compile a layer's kernel and write its C source")
    _add_layer_arguments(p)
    p.add_argument("-o", "--output", help="where to write the source "
                   "(default: generated/<op>_<key>.c)")
    p.set_defaults(run=_cmd_compile)
    p = sub.add_parser("plan", help="explain the planner's choice for a layer")
    _add_layer_arguments(p)
    p.add_argument("--top", type=int, default=5, help="how many candidates to show")
    p.set_defaults(run=_cmd_plan)
    p = sub.add_parser("bench", help="time a layer's kernel (median of calls, GFLOP/s)")
    _add_layer_arguments(p)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of calls to time")
    p.set_defaults(run=_cmd_bench)
    p = sub.add_parser("cache", help="inspect or clear the kernel cache")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(run=_cmd_cache)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as exc:
        print(f"convgen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
