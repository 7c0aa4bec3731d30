"""Targets: where a kernel runs and how it is compiled, as data.

A ``Target`` names the code generator family (``lang``), the compiler flags that pick
the instruction set, and the CPU features the binary may use: every one of them goes
into the cache key, so a kernel built for one machine is never loaded on another.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

# The features that change what -march=native emits; read from /proc/cpuinfo.
_RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq",
                   "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                   "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Target:
    name: str                 # what the user asked for: "cpu", "cpu-avx2", "c"
    lang: str                 # which template family renders it: "c"
    arch_flags: tuple[str, ...]
    isa: str                  # "avx512", "avx2" or "scalar": the widest vectors the code may use
    vector_bytes: int
    cpu_features: tuple[str, ...]
    sanitize: bool = False    # build with AddressSanitizer + UBSan (tests only)

    @property
    def description(self) -> str:
        return f"{self.name} ({self.isa}, {' '.join(self.arch_flags) or 'portable'})"


@functools.lru_cache(maxsize=None)
def host_cpu_features() -> tuple[str, ...]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return tuple(f for f in _RELEVANT_FLAGS if f in flags)


def _native() -> Target:
    features = host_cpu_features()
    if "avx512f" in features:
        isa, width = "avx512", 64
    elif "avx2" in features:
        isa, width = "avx2", 32
    else:
        isa, width = "scalar", 16
    return Target("cpu", "c", ("-march=native",), isa, width, features)


TARGET_NAMES = ("cpu", "cpu-avx2", "c", "cuda", "cuda-emu")


def get_target(target, sanitize: bool | None = None) -> Target:
    """Resolve a target name (or pass a Target through)."""
    if isinstance(target, Target):
        result = target
    elif not isinstance(target, str):
        raise TypeError(f"target must be a target name or a Target, got {target!r}")
    elif target == "cpu":
        result = _native()
    elif target == "cpu-avx2":
        if "avx2" not in host_cpu_features():
            raise ValueError("target 'cpu-avx2' needs a CPU with AVX2, which this machine lacks")
        result = Target("cpu-avx2", "c", ("-march=haswell",), "avx2", 32, ("avx2", "fma"))
    elif target == "c":
        # Portable C: no instruction-set flags; the binary runs on any x86-64 (or other) CPU.
        result = Target("c", "c", (), "scalar", 16, ())
    elif target in ("cuda", "cuda-emu"):
        raise ValueError(
            f"target {target!r} is not available in this version of convgen yet; "
            f"use one of 'cpu', 'cpu-avx2', 'c'"
        )
    else:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGET_NAMES}")
    if sanitize is None:
        sanitize = os.environ.get("CONVGEN_SANITIZE", "") not in ("", "0")
    if sanitize != result.sanitize:
        result = Target(**{**result.__dict__, "sanitize": sanitize})
    return result
