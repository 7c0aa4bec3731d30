"""What this machine is: CPU model, ISA flags, core count and cache sizes.

Read once from ``/proc/cpuinfo``, ``sched_getaffinity`` and sysfs. Only reading here: what
the cost model makes of it is ``target.machine``'s job.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

_SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
# The features that change what -march=native emits; read from /proc/cpuinfo.
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "bmi1", "bmi2", "movbe", "fma", "f16c", "avx512f",
                  "avx512bw", "avx512dq",
                  "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                  "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Caches:
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.cache
def cpu_features() -> tuple[str, ...]:
    flags = set(_cpuinfo().get("flags", "").split())
    return tuple(f for f in RELEVANT_FLAGS if f in flags)


@functools.cache
def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Processor") or platform.processor() or \
        platform.machine() or "unknown CPU"


@functools.cache
def cpu_id() -> str:
    """Vendor, family and model as the CPU reports them (x86: "AuthenticAMD family 25 model
    17"; Arm: implementer, architecture and part). Virtual machines often hide the model
    name ("AMD EPYC" on a Zen 4 and on a Zen 5 alike, with the same AVX-512 flags): these
    numbers tell them apart."""
    info = _cpuinfo()
    if "vendor_id" in info:
        return (f"{info['vendor_id']} family {info.get('cpu family', '?')} "
                f"model {info.get('model', '?')}")
    if "CPU implementer" in info:
        return (f"implementer {info['CPU implementer']} architecture "
                f"{info.get('CPU architecture', '?')} part {info.get('CPU part', '?')}")
    return "unknown"


def cpu_name() -> str:
    """The model name with the numbers that tell look-alikes apart, for tables."""
    return f"{cpu_model()} ({cpu_id()})"


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@functools.cache
def caches() -> Caches:
    """Per-core data cache sizes from sysfs (typical sizes where sysfs says nothing)."""
    sizes = {"1": 32 << 10, "2": 1 << 20, "3": 32 << 20}
    try:
        for index in _SYSFS_CACHE.glob("index*"):
            kind = (index / "type").read_text().strip()
            if kind in ("Data", "Unified"):
                sizes[(index / "level").read_text().strip()] = _size((index / "size").read_text())
    except (OSError, ValueError):
        pass   # not Linux, or an unusual sysfs: keep typical sizes
    return Caches(sizes["1"], sizes["2"], sizes["3"])


def identity() -> dict:
    """What distinguishes this machine for measurements made on it (tuning records, the
    measured machine model): CPU model, vendor/family/model, ISA features, usable cores,
    architecture. The
    compiler's identity is the backend's to add (``Backend.toolchain_parts``)."""
    return {"cpu_model": cpu_model(), "cpu_id": cpu_id(), "features": list(cpu_features()),
            "cores": usable_cores(), "arch": platform.machine()}
