"""``convgen compile``: compile a layer's kernel and write its source."""
from __future__ import annotations

from pathlib import Path

from .layer import add_layer_arguments, spec_of


def run(args) -> int:
    from ..api import compile as compile_kernel
    kernel = compile_kernel(spec_of(args), args.input, dtype=args.dtype, target=args.target,
                            plan=args.plan, accuracy=args.accuracy)
    main_name = next(iter(kernel.sources))     # kernel.c or kernel.cu
    default_name = f"{kernel.spec.op}_{kernel.key[:12]}{Path(main_name).suffix}"
    output = Path(args.output or "generated")
    if args.output is None or output.is_dir() or args.output.endswith("/"):
        output = output / default_name
    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in kernel.sources.items():   # a Winograd kernel has its exact.c too
        path = output if name == main_name else output.with_name(f"{output.stem}.{name}")
        path.write_text(text)
        written.append(str(path))
    print(f"wrote {' '.join(written)}  ({kernel.spec.op}, input {kernel.input_shape} -> "
          f"{kernel.output_shape}, {kernel.workload.dtype})")
    print(f"plan: {kernel.plan}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a layer's kernel and write its C source")
    add_layer_arguments(p)
    p.add_argument("-o", "--output", help="the file to write the source to, or a directory "
                   "to write <op>_<key>.c (.cu for CUDA) into (default: generated/); a kernel "
                   "made of several files (Winograd's exact fallback) writes the others next "
                   "to it as <stem>.<name>")
    p.set_defaults(run=run)
