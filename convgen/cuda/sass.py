"""What the compiled kernel is: ptxas's resource report and the SASS of a cubin, read back.

``compile_cubin`` builds a kernel's device code for one architecture (``nvcc -cubin``, with
``-Xptxas -v``); ``disassemble`` runs ``cuobjdump -sass`` on it; ``parse_sass`` gives each
function's instructions; ``main_loop`` finds the loop that holds the most multiply
instructions (HMMA / HGMMA / FFMA / DFMA) -- the GEMM's main loop -- and ``LoopStats`` counts
what it issues per k-tile. The SASS tests (tests/test_cuda_nvcc.py) and the planner's
calibration (cuda/calibration.py) read kernels through this module.

cuobjdump (and the nvdisasm it runs) come with a CUDA toolkit, or from PyPI's
``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` wheels (the ``test`` extra installs
them): ``cuobjdump_path`` looks on PATH, beside nvcc, then in those wheels.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.toolchain import CompileError
from .compile import KernelResources, parse_ptxas, require_nvcc

MULTIPLIES = ("HMMA", "HGMMA", "FFMA", "DFMA")


def _wheel_bin() -> Path | None:
    """The bin/ folder of the nvidia-cuda-cuobjdump wheel (nvidia/cu13/bin), if installed."""
    try:
        import nvidia  # a namespace package: the NVIDIA wheels share it
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for candidate in sorted(Path(root).glob("cu*/bin")):
            if (candidate / "cuobjdump").exists():
                return candidate
    return None


def cuobjdump_path() -> str | None:
    """cuobjdump on PATH, beside nvcc, or from the PyPI wheel; None if none is found."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    beside = Path(os.path.realpath(nvcc)).parent / "cuobjdump"
    if beside.exists():
        return str(beside)
    wheel = _wheel_bin()
    return str(wheel / "cuobjdump") if wheel else None


def _tool_env(cuobjdump: str) -> dict:
    """cuobjdump runs nvdisasm: find it beside cuobjdump (the wheels put both in one bin/),
    executable (a wheel may install it without the execute bit for others)."""
    env = dict(os.environ)
    folder = Path(cuobjdump).parent
    nvdisasm = folder / "nvdisasm"
    if nvdisasm.exists():
        if not os.access(nvdisasm, os.X_OK):
            try:
                nvdisasm.chmod(nvdisasm.stat().st_mode | 0o111)
            except OSError:
                pass
        env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class Compiled:
    """One source compiled for one architecture: ptxas's report and the SASS."""

    arch: str
    resources: tuple[KernelResources, ...]
    ptxas: str
    sass: str


def compile_cubin(source: str, arch: str, with_sass: bool = True) -> Compiled:
    """nvcc -cubin -arch=ARCH -O3 -Xptxas -v; cuobjdump -sass when ``with_sass``."""
    nvcc = require_nvcc()
    with tempfile.TemporaryDirectory(prefix="convgen-sass-") as tmp:
        src, out = Path(tmp) / "kernel.cu", Path(tmp) / "kernel.cubin"
        src.write_text(source)
        command = [nvcc, "-cubin", f"-arch={arch}", "-O3", "-std=c++17", "-Xptxas", "-v",
                   "-x", "cu", "-o", str(out), str(src)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        output = result.stderr + result.stdout
        if result.returncode != 0:
            raise CompileError(command, src, output.strip())
        sass = disassemble(out) if with_sass else ""
    return Compiled(arch, tuple(parse_ptxas(output, arch)), output, sass)


def disassemble(cubin: Path) -> str:
    tool = cuobjdump_path()
    if tool is None:
        raise FileNotFoundError("cuobjdump was not found: install the CUDA toolkit's, or "
                                "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (the "
                                "test extra does)")
    result = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True,
                            env=_tool_env(tool), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {result.stderr.strip()}")
    return result.stdout


# -- reading SASS ------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str          # with its modifiers: "LDGSTS.E.BYPASS.128"
    operands: str
    predicate: str = ""

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


_FUNCTION = re.compile(r"\n\s*Function : (\S+)\n")
_INSTRUCTION = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """Each function's instructions, in address order."""
    parts = _FUNCTION.split(text)
    functions = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        functions[name] = [Instruction(int(m[1], 16), m[3], m[4].strip(), (m[2] or "").strip())
                           for m in _INSTRUCTION.finditer(body)]
    return functions


@dataclass(frozen=True)
class LoopStats:
    """The instructions of one loop body. ``instructions`` counts each once (static; the
    branches that advance the tap counted together although an iteration takes one at most);
    ``longest`` and ``shortest`` are the most and fewest one iteration can issue, following
    the body's branches (the longest is the sound bound per iteration; the shortest is what
    an iteration that stays within a tap issues)."""

    instructions: int
    counts: dict = field(default_factory=dict)      # base opcode -> count
    opcodes: dict = field(default_factory=dict)     # full opcode -> count
    longest: int = 0
    shortest: int = 0

    @property
    def multiplies(self) -> int:
        return sum(self.counts.get(op, 0) for op in MULTIPLIES)

    @property
    def others_per_multiply(self) -> float:
        """Static: every instruction of the body once, per multiply."""
        return (self.instructions - self.multiplies) / max(1, self.multiplies)

    @property
    def issued_per_multiply(self) -> float:
        """Other instructions per multiply on the longest path through one iteration."""
        return (self.longest - self.multiplies) / max(1, self.multiplies)

    def count(self, prefix: str) -> int:
        """Instructions whose full opcode starts with ``prefix`` ("LDGSTS", "LD.E", "LDS")."""
        return sum(n for op, n in self.opcodes.items()
                   if op == prefix or op.startswith(prefix + "."))


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """(first, last) address of every backward branch's range."""
    found = []
    for ins in instructions:
        if ins.base in ("BRA", "JMP"):
            m = _TARGET.search(ins.operands)
            if m and int(m[1], 16) <= ins.address:
                found.append((int(m[1], 16), ins.address))
    return found


COPIES = ("LDGSTS", "UTMALDG")


def main_loop(instructions: list[Instruction]) -> LoopStats | None:
    """The loop with the most multiply instructions, among those that also load the next
    operands if any does (the compiler may peel the pipeline's last iterations into a loop
    of their own); the smallest such on a tie. None if no loop multiplies."""
    best = None
    for first, last in loops(instructions):
        body = [i for i in instructions if first <= i.address <= last and i.base != "NOP"]
        multiplies = sum(i.base in MULTIPLIES for i in body)
        copies = any(i.base in COPIES for i in body)
        rank = (copies, multiplies, -len(body))
        if multiplies and (best is None or rank > best[0]):
            best = (rank, body)
    if best is None:
        return None
    body = best[1]
    longest, shortest = _paths(body)
    return LoopStats(len(body), dict(collections.Counter(i.base for i in body)),
                     dict(collections.Counter(i.opcode for i in body)), longest, shortest)


def _paths(body: list[Instruction]) -> tuple[int, int]:
    """Most and fewest instructions from the body's first to its last (the backward branch),
    over its forward branches: a predicated BRA may fall through or jump, an unpredicated one
    jumps; instructions are counted when issued, predicated or not."""
    index = {ins.address: k for k, ins in enumerate(body)}
    n = len(body)
    most, fewest = [None] * n, [None] * n
    most[0] = fewest[0] = 1
    for k, ins in enumerate(body[:-1]):
        if most[k] is None:
            continue
        successors = []
        if ins.base == "BRA":
            m = _TARGET.search(ins.operands)
            target = index.get(int(m[1], 16)) if m else None
            if target is not None and target > k:
                successors.append(target)
            elif target is None and m:   # leaves the loop: not an iteration's path
                pass
            if ins.predicate:
                successors.append(k + 1)
        else:
            successors.append(k + 1)
        for nxt in successors:
            a, b = most[k] + 1, fewest[k] + 1
            most[nxt] = a if most[nxt] is None else max(most[nxt], a)
            fewest[nxt] = b if fewest[nxt] is None else min(fewest[nxt], b)
    return most[-1] or n, fewest[-1] or n


def kernel_functions(functions: dict[str, list[Instruction]], name: str) -> dict:
    """The functions whose (mangled) name holds ``name``."""
    return {f: ins for f, ins in functions.items() if name in f}
