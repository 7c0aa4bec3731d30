"""Targets: where a kernel runs and how it is compiled, as data.

A ``Target`` names the code generator family (``lang``: "c" or "cuda"), the ISA row it
generates for, the compiler flags that pick the instruction set and the CPU features the
binary may use: every one of them goes into the cache key, so a kernel built for one
machine is never loaded on another. This package knows the CPU targets; the backend
registry (``convgen.backends``) resolves every target name, the CUDA ones through the CUDA
backend.

CPU targets:

- ``cpu`` (alias ``native``): the host's widest ISA, ``-march=native``; ``CONVGEN_MAX_CPU_ISA``
  (``avx2`` or ``generic``) caps it, as oneDNN's ``ONEDNN_MAX_CPU_ISA`` does: the kernels,
  the machine model and the cache key are then those of the host without the wider ISAs;
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


MAX_ISA_ENV = "CONVGEN_MAX_CPU_ISA"
_WIDEST_FIRST = ("avx512", "avx2", "generic")
# What -march=native loses under a cap: gcc's -mno-X also drops every ISA that builds on X
# (-mno-avx takes AVX2, FMA and AVX-512 with it), and the features the binary may use lose
# the same flags, so a capped kernel never shares a cache key with an uncapped one.
_CAP_FLAGS = {"avx512": (), "avx2": ("-mno-avx512f",), "generic": ("-mno-avx",)}
_CAP_DROPS = {"avx512": (), "avx2": ("avx512", "amx"),
              "generic": ("avx", "fma", "f16c", "amx")}


def max_isa() -> str:
    """The widest ISA the native target may use: ``CONVGEN_MAX_CPU_ISA``, else "avx512"."""
    value = os.environ.get(MAX_ISA_ENV, "").strip().lower()
    if not value:
        return _WIDEST_FIRST[0]
    if value not in _WIDEST_FIRST:
        raise ValueError(f"{MAX_ISA_ENV} must be one of {', '.join(_WIDEST_FIRST)} (the widest "
                         f"ISA the native target may use), got {os.environ[MAX_ISA_ENV]!r}")
    return value


def host_isa() -> Isa:
    """The widest ISA row the host has, within ``max_isa()``."""
    features = set(host.cpu_features())
    allowed = _WIDEST_FIRST[_WIDEST_FIRST.index(max_isa()):]
    for name in allowed:
        if set(ISAS[name].features) <= features:
            return ISAS[name]
    return ISAS["generic"]


def _native_target() -> Target:
    isa, cap = host_isa(), max_isa()
    features = tuple(f for f in host.cpu_features() if not f.startswith(_CAP_DROPS[cap]))
    return Target("cpu", "c", ("-march=native",) + _CAP_FLAGS[cap], isa.name,
                  isa.vector_bytes, features)


def cpu_target(name: str) -> Target:
    """The CPU target called ``name`` (or one of its aliases)."""
    name = CPU_ALIASES.get(name, name)
    if name == "cpu":
        return _native_target()
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
