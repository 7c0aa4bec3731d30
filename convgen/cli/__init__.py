"""The ``convgen`` command line: one module per subcommand, each with ``add_parser(sub)``.

A new subcommand is a module here and a line in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import bench, cache, compile, machine, plan, tune

COMMANDS = (compile, plan, bench, tune, machine, cache)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="convgen", description="Generate, compile and cache convolution kernels "
        "specialised to one layer and input shape (PyTorch semantics).")
    top.add_argument("--version", action="version", version=f"convgen {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as exc:
        print(f"convgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
