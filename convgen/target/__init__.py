"""Targets: where a kernel runs and how it is compiled, as data.

A ``Target`` names the code generator family (``lang``: "c" or "cuda"), the ISA row it
generates for, the compiler flags that pick the instruction set and the CPU features the
binary may use: every one of them goes into the cache key, so a kernel built for one
machine is never loaded on another. This package knows the CPU targets; the backend
registry (``convgen.backends``) resolves every target name, the CUDA ones through the CUDA
backend.

CPU targets:

- ``cpu`` (alias ``native``): the host's widest ISA, ``-march=native``;
- ``x86-64-v3`` (alias ``cpu-avx2``): AVX2 + FMA, ``-march=x86-64-v3``, whatever the host;
- ``x86-64-v4``: AVX-512 (F, BW, DQ, VL, CD), ``-march=x86-64-v4``, whatever the host;
- ``c`` (alias ``generic``): portable C with no ISA flag.

A named target's code does not depend on the build machine; running it needs the ISA's
features (``missing_features`` says which the host lacks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from . import host
from .cuda_arch import CudaArch
from .isa import ISAS, Isa

CPU_TARGETS = ("cpu", "x86-64-v3", "x86-64-v4", "c")
CPU_ALIASES = {"native": "cpu", "generic": "c", "cpu-avx2": "x86-64-v3"}


@dataclass(frozen=True)
class Target:
    name: str                 # the canonical name: "cpu", "x86-64-v4", "c", "cuda" ...
    lang: str                 # which backend renders it: "c" or "cuda"
    arch_flags: tuple[str, ...]
    isa: str                  # the ISA row's name ("avx512", "avx2", "generic");
                              # CUDA: the arch, or "emu"
    vector_bytes: int
    cpu_features: tuple[str, ...]
    sanitize: bool = False    # build with AddressSanitizer + UBSan (tests only)
    cuda: CudaArch | None = None   # the GPU architecture, for lang == "cuda"

    @property
    def isa_row(self) -> Isa:
        return ISAS[self.isa]

    @property
    def emulated(self) -> bool:
        """True for "cuda-emu": the CUDA kernels run on the CPU in convgen's emulator."""
        return self.lang == "cuda" and self.isa == "emu"

    @property
    def description(self) -> str:
        if self.cuda is not None:
            where = "emulated on the CPU" if self.emulated else (self.cuda.device_name or "nvcc")
            tf32 = ", TF32 allowed" if self.cuda.allow_tf32 else ""
            return f"{self.name} ({self.cuda.name}, {self.cuda.sm_count} SMs, {where}{tf32})"
        return f"{self.name} ({self.isa}, {' '.join(self.arch_flags) or 'portable'})"

    def missing_features(self) -> tuple[str, ...]:
        """The CPU features this target's code needs that the host lacks."""
        have = set(host.cpu_features())
        return tuple(f for f in self.cpu_features if f not in have) if self.lang == "c" else ()


def host_isa() -> Isa:
    features = set(host.cpu_features())
    for isa in (ISAS["avx512"], ISAS["avx2"]):
        if set(isa.features) <= features:
            return isa
    return ISAS["generic"]


def cpu_target(name: str) -> Target:
    """The CPU target called ``name`` (or one of its aliases)."""
    name = CPU_ALIASES.get(name, name)
    if name == "cpu":
        isa = host_isa()
        return Target("cpu", "c", ("-march=native",), isa.name, isa.vector_bytes,
                      host.cpu_features())
    if name == "c":
        isa = ISAS["generic"]
        return Target("c", "c", (), isa.name, isa.vector_bytes, ())
    for isa in ISAS.values():
        if isa.march == name:
            return Target(name, "c", (f"-march={isa.march}", "-mtune=generic"), isa.name,
                          isa.vector_bytes, isa.features)
    raise ValueError(f"unknown CPU target {name!r}; expected one of {CPU_TARGETS}")


def with_sanitize(target: Target, sanitize: bool | None) -> Target:
    """``target`` built with (or without) the sanitizers; ``None``: as CONVGEN_SANITIZE says.
    Only C targets have them (nvcc has no ASan; the CUDA emulator checks every access)."""
    if sanitize is None:
        sanitize = os.environ.get("CONVGEN_SANITIZE", "") not in ("", "0")
    if target.lang != "c":
        sanitize = False
    return target if sanitize == target.sanitize else replace(target, sanitize=sanitize)
