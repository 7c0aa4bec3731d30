"""Compile generated C into a shared library with the system C compiler (``CC``).

The compiler's identity and the exact flags are part of every cache key: a different
compiler or flag set is a different kernel.
"""
from __future__ import annotations

from pathlib import Path

from ..core import toolchain
from ..core.toolchain import CompileError
from ..target import Target
from . import pch

__all__ = ["BASE_FLAGS", "CompileError", "compile_shared", "compiler_identity",
           "compiler_path", "flags", "native_expansion"]

# -ffp-contract=fast: a*b+c becomes one FMA (ISO C mode would otherwise keep two roundings
# and half the throughput); it only ever makes a sum more accurate.
BASE_FLAGS = ("-O3", "-std=c11", "-ffp-contract=fast", "-fPIC", "-shared", "-fopenmp",
              "-fno-math-errno",
              "-Wall", "-Werror=implicit-function-declaration")
# CG_CHECK_PREFETCH: the kernels read the ends of what they prefetch, for ASan to check
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g", "-DCG_CHECK_PREFETCH")


def compiler_path() -> str:
    return toolchain.find_compiler("CC", "cc", "C compiler")


def compiler_identity() -> dict:
    return toolchain.identity(compiler_path())


def native_expansion(target: Target) -> tuple[str, ...]:
    """What -march=native means on this host to this compiler (() for named targets)."""
    return toolchain.native_expansion(compiler_path(), target.arch_flags)


def flags(target: Target) -> tuple[str, ...]:
    # Sanitizer builds at -O0: they check every access the source makes (-O3 adds none, and
    # may drop dead ones unchecked). gcc's -O3 under ASan took 5-7 s per direct_simd or
    # Winograd kernel, -O1 1-2 s; -O0 halves the suite's sanitizer samples again (92 s to
    # 44), their small layers running slower unnoticed. (ASan's documentation advises -O1
    # for speed, which a debugging build of a test-sized layer does not need.)
    if target.sanitize:
        base = tuple("-O0" if flag == "-O3" else flag for flag in BASE_FLAGS)
        return base + target.arch_flags + SANITIZE_FLAGS
    return BASE_FLAGS + target.arch_flags


def compile_shared(source_paths: list[Path], library_path: Path, target: Target) -> None:
    """Compile the sources into ``library_path``; CompileError with the compiler's message
    (naming the main source) if it fails."""
    compiler, options = compiler_path(), flags(target)
    command = [compiler, *options, "-o", str(library_path), *(str(p) for p in source_paths)]
    header = pch.include_args("\n".join(p.read_text() for p in source_paths), compiler, options)
    if header:
        try:
            toolchain.run_compiler(command[:1] + list(header) + command[1:], source_paths[0])
            return
        except CompileError:   # a broken PCH must not cost a kernel: try again without it
            pch.forget(header[1])
    toolchain.run_compiler(command, source_paths[0])
