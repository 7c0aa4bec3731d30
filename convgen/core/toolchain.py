"""The compilers convgen calls, as they describe themselves, and the error they raise.

A compiler's identity (resolved path and ``--version`` text) goes into every cache key:
a different compiler is a different kernel. Both backends find and probe their compilers
through these helpers.
"""
from __future__ import annotations

import functools
import os
import shlex
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


NATIVE_FLAGS = ("-march=native", "-mcpu=native", "-mtune=native")


@functools.cache
def native_expansion(path: str, arch_flags: tuple[str, ...]) -> tuple[str, ...]:
    """What the compiler at ``path`` makes of ``-march=native`` here: the -march/-mtune it
    picks, every -m feature switch and cache --param, as its driver passes them to the
    compiler proper (``-###``). Two hosts whose CPUs gcc treats alike give the same tuple;
    a Zen 4 and a Zen 5 with the same model string and AVX-512 flags do not (another tuning,
    other instructions allowed), so their kernels never share a cache key. () when
    ``arch_flags`` names no native CPU, or the driver will not say."""
    if not any(flag in NATIVE_FLAGS for flag in arch_flags):
        return ()
    command = [path, "-###", *arch_flags, "-x", "c", "-c", os.devnull, "-o", os.devnull]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    for line in result.stderr.splitlines():
        words = shlex.split(line) if line.startswith(" ") else []
        if words and (os.path.basename(words[0]).startswith("cc1") or words[1:2] == ["-cc1"]):
            return _machine_options(words[1:])
    return ()


# Options of the compiler proper that take the CPU's name or a feature as the next word
# (gcc's cache sizes; clang's -cc1 CPU, tuning and features).
_PAIRED = ("--param", "-target-cpu", "-tune-cpu", "-target-feature")


def _machine_options(words: list[str]) -> tuple[str, ...]:
    """The -m options and the CPU's paired options of a compiler-proper command line."""
    kept: list[str] = []
    for word, following in zip(words, words[1:] + [""]):
        if word.startswith("-m"):
            kept.append(word)
        elif word in _PAIRED:
            kept.append(f"{word}={following}")
    return tuple(kept)
