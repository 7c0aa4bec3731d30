"""What the host CPU offers the cost model: cache sizes (read from sysfs) and throughput.

The throughput numbers are per core and per cycle; they were measured on the development
machine (an AVX-512 EPYC: two 512-bit FMAs and two vector loads per cycle) and hold for
the x86-64 cores convgen targets closely enough to rank plans. The cache sizes are read
from the system so the model sees the machine it runs on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

_SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass(frozen=True)
class Machine:
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int
    clock_hz: float = 3.3e9
    fma_per_cycle: float = 1.0        # full-width vector FMAs per cycle per core (measured:
                                      # 117 GFLOP/s on one core with 512-bit vectors)
    fma_latency: float = 4.0          # cycles before an FMA's result feeds the next one
    loads_per_cycle: float = 3.0      # load slots per cycle; a broadcast takes one
    vector_load_cost: float = 2.0     # slots a full-width (512-bit) vector load takes
    dram_bytes_per_s: float = 12e9    # per core; about 25 GB/s for the whole VM
    l2_bytes_per_cycle: float = 32.0
    l3_bytes_per_cycle: float = 8.0     # one core streaming from L3 (measured: a 1.2 MB weight
                                        # block there costs a quarter of the FMA rate)


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@functools.lru_cache(maxsize=None)
def host() -> Machine:
    sizes = {"1": 32 << 10, "2": 1 << 20, "3": 32 << 20}
    try:
        for index in _SYSFS_CACHE.glob("index*"):
            kind = (index / "type").read_text().strip()
            if kind in ("Data", "Unified"):
                sizes[(index / "level").read_text().strip()] = _size((index / "size").read_text())
    except (OSError, ValueError):
        pass   # not Linux, or an unusual sysfs: keep typical sizes
    return Machine(sizes["1"], sizes["2"], sizes["3"])
