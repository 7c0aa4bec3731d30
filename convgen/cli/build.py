"""``convgen build``: a model's convolutions as a standalone C (or CUDA) library."""
from __future__ import annotations

import argparse


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected NAME=N,C,H,W (a graph input and its shape), got {text!r}") from exc


def run(args) -> int:
    from ..aot import build

    shapes = dict(args.input_shape) if args.input_shape else None
    result = build(args.model, args.output, target=args.target, name=args.name,
                   weights=args.weights, input_shapes=shapes, tuning_db=args.tuning_db,
                   skip_unsupported=args.skip_unsupported, threads=args.threads,
                   arch=args.arch, accuracy=args.accuracy)
    report = result.report
    print(f"wrote {result.out_dir}: {result.name}.h, {len(result.functions)} layer(s) for "
          f"{report['target']['description']}")
    if report["target"]["threads"] is not None:
        print(f"threads: at most {report['target']['threads']} per layer "
              f"({report['target']['threads_from']})")
    for layer in report["layers"]:
        shapes_text = (f"{'x'.join(map(str, layer['input_shape']))} -> "
                       f"{'x'.join(map(str, layer['output_shape']))}")
        steps = " -> ".join(step["op"] for step in layer["epilogue"])
        fused = ", ".join(layer["fused"] + ([steps] if steps else []))
        print(f"  {layer['function']}: {layer['op']} {shapes_text}"
              f"{'  [' + fused + ']' if fused else ''}")
        print(f"      plan ({layer['plan_source']}): {layer['plan']}")
    graph = report["graph"]
    if graph["run"]:
        print(f"{result.name}_run: {len(graph['operations'])} operations, activations in "
              f"{graph['activation_bytes']} bytes (separate buffers: {graph['naive_bytes']})")
    else:
        print(f"no {result.name}_run: {graph['reason']}")
    for skipped in report["skipped"]:
        print(f"skipped {skipped['op']} {skipped['name'][:80]!r}: {skipped['reason']}")
    print(f"next: make -C {result.out_dir} && {result.out_dir}/example IN_DIR OUT_DIR")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("build", help="build a model's convolutions ahead of time into "
                       "standalone C (or CUDA) with a header, a Makefile and an example")
    p.add_argument("model", help="an .onnx model or a .json model description")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="the directory to write (replaced as a whole; created if missing)")
    p.add_argument("--target", default="native",
                   help="native (this machine's ISA), x86-64-v3 (AVX2), x86-64-v4 (AVX-512), "
                   "generic (portable C99) or cuda")
    p.add_argument("--name", default=None,
                   help="the C prefix of every symbol (default: the model's name or file stem)")
    p.add_argument("--weights", default="embedded", choices=["embedded", "external"],
                   help="embedded constant arrays, or one NAME.weights file read at run time")
    p.add_argument("--tuning-db", default=None, metavar="PATH",
                   help="use this tuning database's plans where it has them")
    p.add_argument("--arch", default=None, metavar="sm_XX",
                   help="cuda target: the GPU architecture (default sm_90)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU targets: OpenMP threads per layer, compiled in (default: 1 for "
                   "a named target, this machine's cores for native)")
    p.add_argument("--input-shape", type=_input_shape, action="append", metavar="NAME=SHAPE",
                   help="ONNX: fix a graph input's dynamic shape, e.g. x=1,3,224,224")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave unsupported nodes out (listed in the report) instead of failing")
    p.add_argument("--accuracy", default="fast", choices=["fast", "strict"],
                   help="strict: exact algorithms only (no Winograd)")
    p.set_defaults(run=run)
