"""Compile generated CUDA: with nvcc into a shared library for a GPU, or with the host C++
compiler against the emulator header into a shared library that runs the grid on the CPU.

Both libraries export the same two functions (the launcher and the status description),
so loading and calling do not care which one they got. The identity of each compiler
(path and ``--version``) and the exact flags are exposed for the cache key. ``ptxas_report``
compiles device code only, with ``-Xptxas -v``, and returns what ptxas says of each kernel
(registers, spills, shared memory): the test suite's check that no kernel spills and each
fits its architecture.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core import toolchain
from ..core.toolchain import CompileError
from ..target import Target
from .render import emulator_include_dir

NVCC_FLAGS = ("-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo", "-x", "cu")
# hidden visibility: each library keeps its own emulator state (no symbol is shared between
# loaded kernels; only the CG_EXPORT entry points are visible). -O0: the emulator checks
# kernels on test-sized layers, where compiling is the time (1.0 s a kernel at -O1, 0.5 at
# -O0; the emulator's tests took 105 s at -O1, 49 at -O0)
EMU_FLAGS = ("-O0", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
             "-fvisibility-inlines-hidden", "-fno-strict-aliasing", "-Wall",
             "-Wno-unused-variable", "-Wno-unused-but-set-variable", "-x", "c++",
             "-DCONVGEN_EMULATE")
NVCC_CANDIDATES = ("/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc")


def nvcc_path() -> str | None:
    """CONVGEN_NVCC, else nvcc on PATH, else the usual install places; None if none."""
    named = os.environ.get("CONVGEN_NVCC")
    if named:
        found = shutil.which(named)
        return os.path.realpath(found) if found else None
    found = shutil.which("nvcc") or next((p for p in NVCC_CANDIDATES if os.path.exists(p)), None)
    return os.path.realpath(found) if found else None


def require_nvcc() -> str:
    path = nvcc_path()
    if path is None:
        raise CompileError(["nvcc"], Path("-"),
                           "nvcc (the CUDA compiler) was not found: install the CUDA toolkit, "
                           "put nvcc on PATH or set CONVGEN_NVCC; target 'cuda-emu' needs "
                           "only a C++ compiler")
    return path


def host_compiler_path() -> str:
    return toolchain.find_compiler("CXX", "c++", "C++17 compiler")


def compiler_identity(target: Target) -> dict:
    """The compilers a kernel for ``target`` is built with, as they describe themselves."""
    identity = {"host": toolchain.identity(host_compiler_path())}
    if not target.emulated:
        identity["nvcc"] = toolchain.identity(require_nvcc())
    return identity


def flags(target: Target) -> tuple[str, ...]:
    if target.emulated:
        return EMU_FLAGS + (f"-DCG_EMU_SMEM_OPTIN={target.cuda.smem_per_block}",
                            f"-I{emulator_include_dir()}")
    return NVCC_FLAGS + target.arch_flags + ("-ccbin", host_compiler_path())


def compile_library(source_paths: list[Path], library_path: Path, target: Target) -> None:
    """Build ``library_path`` from the sources; CompileError with the compiler's output."""
    compiler = host_compiler_path() if target.emulated else require_nvcc()
    command = [compiler, *flags(target), "-o", str(library_path),
               *(str(p) for p in source_paths)]
    toolchain.run_compiler(command, source_paths[0])


# -- ptxas's resource report ----------------------------------------------------------------
@dataclass(frozen=True)
class KernelResources:
    """What ptxas reports for one function compiled for one architecture."""

    function: str
    arch: str
    registers: int
    shared_bytes: int          # static shared memory (the dynamic part is the launch's)
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    entry: bool                # a __global__ kernel (not a device function)


_COMPILING = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(output: str, arch: str) -> list[KernelResources]:
    """Parse ``-Xptxas -v`` output into one record per function."""
    records: dict[str, dict] = {}
    entries: set[str] = set()
    current = None
    for line in output.splitlines():
        if m := _COMPILING.search(line):
            current = m[1]
            entries.add(current)
            records.setdefault(current, {})
        elif m := _PROPERTIES.search(line):
            current = m[1]
            records.setdefault(current, {})
        elif (m := _FRAME.search(line)) and current is not None:
            records[current].update(stack=int(m[1]), stores=int(m[2]), loads=int(m[3]))
        elif (m := _USED.search(line)) and current is not None:
            records[current].update(registers=int(m[1]), smem=int(m[2] or 0))
    return [KernelResources(name, arch, r.get("registers", 0), r.get("smem", 0),
                            r.get("stack", 0), r.get("stores", 0), r.get("loads", 0),
                            name in entries)
            for name, r in records.items()]


def ptxas_report(source: str, arch: str) -> tuple[list[KernelResources], str]:
    """Compile ``source``'s device code for ``arch`` with -Xptxas -v: (records, raw output)."""
    nvcc = require_nvcc()
    with tempfile.TemporaryDirectory(prefix="convgen-ptxas-") as tmp:
        src, out = Path(tmp) / "kernel.cu", Path(tmp) / "kernel.cubin"
        src.write_text(source)
        command = [nvcc, "-cubin", f"-arch={arch}", "-O3", "-std=c++17", "-Xptxas", "-v",
                   "-x", "cu", "-o", str(out), str(src)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        output = result.stderr + result.stdout
        if result.returncode != 0:
            raise CompileError(command, src, output.strip())
    return parse_ptxas(output, arch), output
