"""The ``convgen`` command line: one module per subcommand, each with ``add_parser(sub)``.

A new subcommand is a module here and a line in ``COMMANDS``. ``main`` reports whatever a
subcommand raises as one line on stderr with a non-zero exit (``errors.py``), so a
subcommand only raises: ``--debug`` (any subcommand) or ``CONVGEN_DEBUG=1`` adds the
traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .._version import __version__
from . import bench, build, cache, compile, machine, plan, tune
from .errors import Parser, closed_stdout, debug_requested, joined, report

COMMANDS = (compile, build, plan, bench, tune, machine, cache)

_DEBUG_HELP = "on an error, print the traceback too (also: CONVGEN_DEBUG=1)"


def parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="convgen", description="Generate, compile and cache convolution kernels "
        "specialised to one layer and input shape (PyTorch semantics).")
    top.add_argument("--version", action="version", version=f"convgen {__version__}")
    top.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():   # `convgen plan ... --debug` works as well
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help=_DEBUG_HELP)
    return top


def main(argv=None) -> int:
    """Run one command; the exit status (0, or one of errors.py's)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as done:    # --help, --version, or a refused argument (already printed)
        return done.code if isinstance(done.code, int) else 0
    debug = args.debug or debug_requested()
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings()
        try:
            status = args.run(args)
            sys.stdout.flush()   # a closed pipe surfaces here, not at exit
            return status
        except BrokenPipeError:   # `convgen plan ... | head`: the reader has gone, say nothing
            return closed_stdout()
        except (Exception, KeyboardInterrupt) as exc:
            return report(args.command, exc, debug)


def _one_line_warnings():
    """A ``warnings.showwarning`` that prints each warning (an oversubscribed
    CONVGEN_NUM_THREADS, a discarded cache entry) once, as one line."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = joined(str(message))
        if text not in shown:
            shown.add(text)
            print(f"convgen: warning: {text}", file=sys.stderr)
    return show
