"""Instruction sets as data: one row per ISA the CPU backend generates code for.

Everything the planner, the renderer and the compiler need to know about an ISA is in its
row: vector width, register count, which masked stores exist, the compiler flags of the
named target, the CPU features a binary needs, and default throughputs for the cost model
(used until the host's are measured; see ``target.machine``). Adding an ISA is adding a row.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Isa:
    name: str                     # "avx512", "avx2", "generic"
    vector_bytes: int             # the widest vectors the generated code uses (0: plain C
                                  # scalars, no vector extension)
    registers: int                # vector registers the micro-kernels may fill
    features: tuple[str, ...]     # /proc/cpuinfo flags a binary for this ISA needs
    march: str | None             # -march= of the named target (None: no ISA flags at all)
    masked_stores: bool           # AVX2/AVX-512 masked stores for a partial vector
    # Default throughputs per core and cycle, until the host's are measured:
    fma_per_cycle: float          # full-width vector FMAs
    loads_per_cycle: float        # load slots; a broadcast takes one
    vector_load_cost: float       # slots one full-width vector load takes
    fma_latency: float = 4.0      # cycles before an FMA's result feeds the next one
    embedded_broadcast: bool = False   # an FMA takes a broadcast operand from memory in
                                       # the same instruction (AVX-512's {1toN}); else a
                                       # broadcast is an instruction of its own


_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe")
AVX512 = Isa("avx512", 64, 32, _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
             "x86-64-v4", True, fma_per_cycle=1.0, loads_per_cycle=3.0, vector_load_cost=2.0,
             embedded_broadcast=True)
AVX2 = Isa("avx2", 32, 16, _V3, "x86-64-v3", True,
           fma_per_cycle=1.0, loads_per_cycle=3.0, vector_load_cost=2.0)
# The defaults are those the cost model was calibrated with on an AVX-512 EPYC (one full
# FMA per cycle); a measured machine model replaces them on the host.
# Portable C99 that any C compiler builds (ARM, RISC-V, ...): scalars, no vector extension,
# no intrinsic, no ISA flag; the compiler's auto-vectoriser does what it can.
GENERIC = Isa("generic", 0, 16, (), None, False,
              fma_per_cycle=1.0, loads_per_cycle=3.0, vector_load_cost=2.0)

ISAS = {isa.name: isa for isa in (AVX512, AVX2, GENERIC)}


def masked_store(isa: Isa, features: tuple[str, ...], vector_bytes: int) -> str | None:
    """Which masked-store instructions write a vector's first lanes: "avx512" (256-bit ones
    need AVX512VL), "avx2" for 256-bit vectors, else None (the template stores through a
    copy)."""
    if not isa.masked_stores:
        return None
    if isa.name == "avx512" and (vector_bytes == 64 or
                                 (vector_bytes == 32 and "avx512vl" in features)):
        return "avx512"
    if vector_bytes == 32:
        return "avx2"
    return None
