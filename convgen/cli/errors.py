"""How the command line reports a failure: one line on stderr and an exit status, never a
traceback unless asked for (``--debug`` or ``CONVGEN_DEBUG=1``).

Exit statuses: 2 when convgen refused what it was given (an argument, a layer, the
environment, the cache directory), 1 when something failed while doing the work (a
compiler, loading a kernel, the GPU, or a bug in convgen), 130 on Ctrl-C, 141 (as for
SIGPIPE) when the reader of its output went away (``convgen plan ... | head``).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..core.toolchain import CompileError
from ..runtime.loader import LoadError

REFUSED, FAILED, INTERRUPTED, BROKEN_PIPE = 2, 1, 130, 141
_OFF = ("", "0", "false", "no", "off")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``convgen plan: error: ... (see convgen plan --help)``.

    Subcommand parsers are made from the same class (argparse uses the parent's class)."""

    def error(self, message: str):
        self.exit(REFUSED, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def debug_requested() -> bool:
    """Whether CONVGEN_DEBUG asks for tracebacks (any value but empty, 0, false, no, off)."""
    return os.environ.get("CONVGEN_DEBUG", "").strip().lower() not in _OFF


def status_of(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, (ValueError, TypeError, OSError)) and not isinstance(exc, LoadError):
        return REFUSED   # bad arguments, a bad environment, a cache directory refused
    return FAILED        # a compiler, the loader, the GPU (CudaError), a template, a bug


def one_line(exc: BaseException) -> str:
    """The error as one line: what went wrong and, where there is one, what to do."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, CompileError):
        return _compile_error(exc)
    text = joined(str(exc))
    if isinstance(exc, (ValueError, TypeError, OSError)) or _is_convgen_error(exc):
        return text or type(exc).__name__
    # Not an error convgen raises on purpose: a bug. Name it so a report can quote it.
    return (f"internal error: {type(exc).__name__}: {text} (a bug in convgen; rerun with "
            f"--debug for the traceback and report it)")


def _is_convgen_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("convgen.")


def _compile_error(exc: CompileError) -> str:
    output = [line.strip() for line in exc.compiler_output.splitlines() if line.strip()]
    if str(exc.source_path) == "-":   # no source was compiled: the compiler is missing
        return "; ".join(output)
    errors = [line for line in output if "error" in line.lower()] or output or ["no output"]
    more = "; rerun with --debug for the compiler's full output" if len(output) > 1 else ""
    return (f"the compiler {exc.command[0]} failed on the generated kernel (source kept at "
            f"{exc.source_path}): {errors[0]}{more}")


def joined(text: str) -> str:
    """``text`` on one line, without a leading "convgen: " (the line names convgen already)."""
    return "; ".join(line.strip() for line in text.splitlines()
                     if line.strip()).removeprefix("convgen: ")


def report(command: str | None, exc: BaseException, debug: bool) -> int:
    """Print ``exc`` for the user (with its traceback first when ``debug``); the exit status."""
    if debug:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    where = f"convgen {command}" if command else "convgen"
    print(f"{where}: error: {one_line(exc)}", file=sys.stderr)
    return status_of(exc)


def closed_stdout() -> int:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's
    flush at exit does not fail again, and exit as a SIGPIPE'd program would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # stdout without a file descriptor (captured in tests)
        pass
    finally:
        os.close(devnull)
    return BROKEN_PIPE
