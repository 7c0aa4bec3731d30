"""Where a working set lives and what reading it costs, for the CPU cost model.

A working set lives in the smallest cache level holding twice its size (L1, L2, L3) or
in DRAM. Reading it costs bytes over that level's measured bandwidth when a hardware
prefetcher follows the reads (a few sequential streams), or, for scattered reads that no
prefetcher follows (many streams far apart, as an input's channels are when a tile walks
them), each cache line's measured latency divided by the misses a core keeps in flight there
(measured too).
"""
from __future__ import annotations

from ..target.machine import Machine

LINE = 64
LEVELS = ("l1", "l2", "l3", "dram")


def level_of(working_set: float, machine: Machine) -> str:
    if working_set <= machine.l1d_bytes // 2:
        return "l1"
    if working_set <= machine.l2_bytes // 2:
        return "l2"
    if working_set <= machine.l3_bytes // 2:
        return "l3"
    return "dram"


def bandwidth(level: str, machine: Machine) -> float:
    """Bytes per cycle one core reads from ``level``."""
    return {"l1": machine.l1_bytes_per_cycle, "l2": machine.l2_bytes_per_cycle,
            "l3": machine.l3_bytes_per_cycle,
            "dram": machine.dram_bytes_per_s / machine.clock_hz}[level]


def read_cycles(nbytes: float, level: str, machine: Machine, scattered: bool = False,
                tile: bool = False) -> float:
    """Cycles to read ``nbytes`` from ``level`` (see the module docstring); ``tile``: a
    register tile's operand streams, which arrive from L2 at the measured tile rate."""
    if level == "l1" or nbytes <= 0:
        return nbytes / machine.l1_bytes_per_cycle
    rate = bandwidth(level, machine)
    if tile and level == "l2":
        rate = min(rate, machine.l2_tile_bytes_per_cycle)
    streamed = nbytes / rate
    if not scattered:
        return streamed
    # Scattered lines: each waits for its own miss, a core keeping several in flight.
    latency, in_flight = {"l2": (machine.l2_latency, machine.l2_misses_in_flight),
                          "l3": (machine.l3_latency, machine.l3_misses_in_flight),
                          "dram": (machine.dram_latency, machine.dram_misses_in_flight)}[level]
    return max(streamed, nbytes / LINE * latency / in_flight)
