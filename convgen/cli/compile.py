"""``convgen compile``: compile a layer's kernel and write its source."""
from __future__ import annotations

from pathlib import Path

from .layer import add_layer_arguments, spec_of


def run(args) -> int:
    from ..api import compile as compile_kernel
    kernel = compile_kernel(spec_of(args), args.input, dtype=args.dtype, target=args.target,
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


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a layer's kernel and write its C source")
    add_layer_arguments(p)
    p.add_argument("-o", "--output", help="where to write the source "
                   "(default: generated/<op>_<key>.c)")
    p.set_defaults(run=run)
