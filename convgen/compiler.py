"""Compile C source into a shared library with the system C compiler.

The compiler's identity (path and ``--version``) and the exact flags are exposed for
the cache key: a different compiler or flag set is a different kernel.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from .target import Target

# -ffp-contract=fast: a*b+c becomes one FMA (ISO C mode would otherwise keep two roundings
# and half the throughput); it only ever makes a sum more accurate.
BASE_FLAGS = ("-O3", "-std=c11", "-ffp-contract=fast", "-fPIC", "-shared", "-fopenmp",
              "-fno-math-errno",
              "-Wall", "-Werror=implicit-function-declaration")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g")


class CompileError(RuntimeError):
    """The C compiler rejected a generated kernel; the message has its output and the source path."""

    def __init__(self, command: list[str], source_path: Path, compiler_output: str):
        super().__init__(command, source_path, compiler_output)
        self.command = command
        self.source_path = source_path   # updated by the cache to where the source was kept
        self.compiler_output = compiler_output

    def __str__(self) -> str:
        return (f"compiling {self.source_path} failed:\n$ {' '.join(self.command)}\n"
                f"{self.compiler_output}")


def compiler_path() -> str:
    name = os.environ.get("CC", "cc")
    found = shutil.which(name)
    if not found:
        raise CompileError([name], Path("-"), f"C compiler {name!r} not found; set CC to a C compiler")
    return os.path.realpath(found)


@functools.lru_cache(maxsize=None)
def _version_of(path: str) -> str:
    result = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else f"unknown ({path})"


def compiler_identity() -> dict:
    path = compiler_path()
    return {"path": path, "version": _version_of(path)}


def flags(target: Target) -> tuple[str, ...]:
    extra = SANITIZE_FLAGS if target.sanitize else ()
    return BASE_FLAGS + target.arch_flags + extra


def compile_shared(source_path: Path, library_path: Path, target: Target) -> None:
    """Compile ``source_path`` into ``library_path``; raise CompileError with the compiler's message."""
    command = [compiler_path(), *flags(target), "-o", str(library_path), str(source_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CompileError(command, source_path, (result.stderr + result.stdout).strip())
