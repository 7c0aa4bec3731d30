"""The layer arguments the subcommands share: an op, shapes and torch's keyword arguments."""
from __future__ import annotations

import argparse

from ..backends import TARGET_NAMES
from ..core.layers import OPS, spec_from_op
from ..target import CPU_ALIASES


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from exc


def _int_or_ints(text: str):
    values = _ints(text)
    return values[0] if len(values) == 1 else values


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _padding(text: str):
    return text if text in ("same", "valid") else _int_or_ints(text)


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--target", default="cpu", choices=TARGET_NAMES + tuple(CPU_ALIASES),
                        metavar="TARGET", help="cpu (this machine's ISA; alias native), "
                        "x86-64-v3 (AVX2), x86-64-v4 (AVX-512), c (portable C; alias generic), "
                        "cuda (nvcc) or cuda-emu (the CUDA kernel run on the CPU)")
    parser.add_argument("--plan", default="auto",
                        help="auto (the planner's choice), an algorithm name, or a complete "
                        "plan string as `convgen plan` prints it")
    parser.add_argument("--accuracy", default="fast", choices=["fast", "strict"],
                        help="strict: exact algorithms only (no Winograd)")


def spec_of(args):
    layer_args = {"stride": args.stride, "padding": args.padding, "dilation": args.dilation,
                  "groups": args.groups}
    for name in ("padding_mode", "output_padding", "output_size"):
        if getattr(args, name) is not None:
            layer_args[name] = getattr(args, name)
    return spec_from_op(args.op, args.weight, not args.no_bias, args.input, **layer_args)


