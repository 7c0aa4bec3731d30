"""The machine as the CPU cost model sees it: cache sizes and throughputs per core.

Cache sizes come from the host (``target.host``); throughputs are the ISA row's defaults
until measured ones replace them (``runtime.machine``, ``cpu.measure``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from . import host
from .isa import Isa


@dataclass(frozen=True)
class Machine:
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int
    fma_per_cycle: float              # full-width vector FMAs per cycle per core
    loads_per_cycle: float            # load slots per cycle; a broadcast takes one
    vector_load_cost: float           # slots a full-width vector load takes
    fma_latency: float = 4.0          # cycles before an FMA's result feeds the next one
    fma_chain_rates: tuple[float, ...] = ()   # full-width FMAs per cycle with 1, 2, ...
                                              # independent chains (empty: not measured)
    broadcast_fma_per_cycle: float = 0.0   # FMAs each with a broadcast from memory (0: as
                                           # fma_per_cycle)
    fp_ops_per_cycle: float = 2.0     # full-width vector adds and FMAs, half and half
    clock_hz: float = 3.3e9
    dram_bytes_per_s: float = 12e9    # one core reading
    l1_bytes_per_cycle: float = 128.0
    l2_bytes_per_cycle: float = 32.0
    l2_tile_bytes_per_cycle: float = 12.0   # a register tile's operand streams from L2
    l3_bytes_per_cycle: float = 8.0   # one core streaming from L3
    dram_total_bytes_per_s: float = 25e9   # every core reading at once
    l2_latency: float = 16.0          # cycles for a load no prefetcher saw coming, from L2
    l3_latency: float = 70.0          # ... from L3
    dram_latency: float = 250.0       # ... from DRAM
    l2_misses_in_flight: float = 10.0    # misses one core overlaps, reading scattered
    l3_misses_in_flight: float = 10.0    # lines from L2, L3, DRAM (the L1 fill buffers,
    dram_misses_in_flight: float = 10.0  # and in DRAM the page walks, bound them)
    parallel_overhead_s: float = 4e-6  # one fork/join of the thread team, workers awake
    gather_macs_per_s: float = 2.5e9             # the scalar gather kernels, one thread
    transposed_gather_macs_per_s: float = 2.5e9  # (the exact fallback paths)


@functools.cache
def default_machine(isa: Isa) -> Machine:
    """The host's caches with ``isa``'s default throughputs."""
    found = host.caches()
    return Machine(found.l1d_bytes, found.l2_bytes, found.l3_bytes, isa.fma_per_cycle,
                   isa.loads_per_cycle, isa.vector_load_cost, isa.fma_latency)
