"""The compilers convgen calls, as they describe themselves, and the error they raise.

A compiler's identity (resolved path and ``--version`` text) goes into every cache key:
a different compiler is a different kernel. Both backends find and probe their compilers
through these helpers.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path


class CompileError(RuntimeError):
    """A compiler rejected a generated kernel (or is missing); the message has its output
    and where the source was kept."""

    def __init__(self, command: list[str], source_path: Path, compiler_output: str):
        super().__init__(command, source_path, compiler_output)
        self.command = command
        self.source_path = source_path   # updated by the cache to where the source was kept
        self.compiler_output = compiler_output

    def __str__(self) -> str:
        return (f"compiling {self.source_path} failed:\n$ {' '.join(self.command)}\n"
                f"{self.compiler_output}")


def find_compiler(variable: str, default: str, what: str) -> str:
    """The resolved path of the compiler named by environment ``variable`` (else ``default``)."""
    name = os.environ.get(variable) or default
    found = shutil.which(name)
    if not found:
        raise CompileError([name], Path("-"), f"{what} {name!r} not found; set {variable} to "
                           f"a {what} on PATH or its full path")
    return os.path.realpath(found)


@functools.cache
def version_of(path: str) -> str:
    """What ``path --version`` prints (every non-empty line), for the cache key."""
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True,
                                check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError([path, "--version"], Path("-"), f"could not run the compiler: "
                           f"{exc}") from exc
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return " | ".join(lines) or f"unknown ({path})"


def identity(path: str) -> dict:
    return {"path": path, "version": version_of(path)}


def run_compiler(command: list[str], source_path: Path) -> None:
    """Run one compile; CompileError with the compiler's output if it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CompileError(command, source_path, f"could not run the compiler: {exc}") from exc
    if result.returncode != 0:
        raise CompileError(command, source_path, (result.stderr + result.stdout).strip())
