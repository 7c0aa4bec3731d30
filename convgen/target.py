"""Targets: where a kernel runs and how it is compiled, as data.

A ``Target`` names the code generator family (``lang``), the compiler flags that pick
the instruction set, and the CPU features the binary may use: every one of them goes
into the cache key, so a kernel built for one machine is never loaded on another.

The CUDA targets (``lang="cuda"``) also carry a ``CudaArch``: the GPU architecture the
kernels are generated and compiled for, and the facts about it the planner sizes tiles
by (SM count, shared memory). ``"cuda"`` takes them from the GPU present (through the
driver), else from ``CONVGEN_CUDA_ARCH`` (default ``sm_90``); ``"cuda-emu"`` runs the same
generated CUDA on the CPU in convgen's emulator, planned for the same architecture.
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
class CudaArch:
    """One GPU architecture as the CUDA planner and compiler see it."""

    name: str                       # nvcc's spelling: "sm_80", "sm_90", "sm_90a"
    compute_capability: tuple[int, int]
    sm_count: int                   # streaming multiprocessors: how many blocks run at once
    smem_per_block: int             # bytes of shared memory one block may opt in to
    smem_per_sm: int                # bytes of shared memory per SM (occupancy)
    max_threads_per_sm: int
    registers_per_sm: int = 65536
    tensor_cores_tf32: bool = True  # mma/WMMA with TF32 inputs (sm_80 and later)
    async_copy: bool = True         # cp.async global -> shared (sm_80 and later)
    device_name: str = ""           # the GPU the facts were read from; "" for the table's
    allow_tf32: bool = False        # may "auto" plans use TF32 tensor cores for float32?

    @property
    def number(self) -> int:
        """The architecture as one number: sm_90 -> 90."""
        return self.compute_capability[0] * 10 + self.compute_capability[1]


# Architecture facts (CUDA C Programming Guide, "Compute Capabilities"). The SM counts are
# those of the usual data-centre part (A100, H100 SXM); a present GPU's own count replaces them.
CUDA_ARCHS = {
    "sm_75": CudaArch("sm_75", (7, 5), 40, 64 * 1024, 64 * 1024, 1024,
                      tensor_cores_tf32=False, async_copy=False),
    "sm_80": CudaArch("sm_80", (8, 0), 108, 163 * 1024, 164 * 1024, 2048),
    "sm_86": CudaArch("sm_86", (8, 6), 84, 99 * 1024, 100 * 1024, 1536),
    "sm_87": CudaArch("sm_87", (8, 7), 16, 163 * 1024, 164 * 1024, 2048),
    "sm_89": CudaArch("sm_89", (8, 9), 128, 99 * 1024, 100 * 1024, 1536),
    "sm_90": CudaArch("sm_90", (9, 0), 132, 227 * 1024, 228 * 1024, 2048),
    "sm_90a": CudaArch("sm_90a", (9, 0), 132, 227 * 1024, 228 * 1024, 2048),
    "sm_100": CudaArch("sm_100", (10, 0), 148, 227 * 1024, 228 * 1024, 2048),
    "sm_120": CudaArch("sm_120", (12, 0), 84, 99 * 1024, 100 * 1024, 1536),
}
DEFAULT_CUDA_ARCH = "sm_90"


@dataclass(frozen=True)
class Target:
    name: str                 # what the user asked for: "cpu", "cpu-avx2", "c"
    lang: str                 # which template family renders it: "c"
    arch_flags: tuple[str, ...]
    isa: str                  # "avx512", "avx2" or "scalar": the widest vectors the code may use
    vector_bytes: int
    cpu_features: tuple[str, ...]
    sanitize: bool = False    # build with AddressSanitizer + UBSan (tests only)
    cuda: CudaArch | None = None   # the GPU architecture, for lang == "cuda"

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
        result = cuda_target(emulated=target == "cuda-emu")
    else:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGET_NAMES}")
    if sanitize is None:
        sanitize = os.environ.get("CONVGEN_SANITIZE", "") not in ("", "0")
    if result.lang == "cuda":
        sanitize = False   # nvcc builds have no ASan; the emulator checks every access itself
    if sanitize != result.sanitize:
        result = Target(**{**result.__dict__, "sanitize": sanitize})
    return result


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 0 or 1, got {os.environ[name]!r}")


def cuda_arch_named(name: str) -> CudaArch:
    if name not in CUDA_ARCHS:
        raise ValueError(f"unknown CUDA architecture {name!r}; expected one of "
                         f"{sorted(CUDA_ARCHS)} (set CONVGEN_CUDA_ARCH to one of them)")
    return CUDA_ARCHS[name]


def cuda_target(emulated: bool) -> Target:
    """The "cuda" or "cuda-emu" target.

    The architecture: ``CONVGEN_CUDA_ARCH`` if set; else, for "cuda", the present GPU's
    (compute capability, SM count and shared memory read through the driver); else sm_90.
    ``CONVGEN_CUDA_TF32=1`` lets "auto" plans use TF32 tensor cores for float32 (cuDNN's
    default in PyTorch); without it they compute in full float32.
    """
    allow_tf32 = _env_flag("CONVGEN_CUDA_TF32")
    requested = os.environ.get("CONVGEN_CUDA_ARCH", "").strip()
    if requested:
        arch = cuda_arch_named(requested)
    elif emulated:
        arch = CUDA_ARCHS[DEFAULT_CUDA_ARCH]
    else:
        arch = _present_gpu_arch() or CUDA_ARCHS[DEFAULT_CUDA_ARCH]
    arch = CudaArch(**{**arch.__dict__, "allow_tf32": allow_tf32})
    if emulated:
        return Target("cuda-emu", "cuda", (), "emu", 16, (), cuda=arch)
    return Target("cuda", "cuda", (f"-arch={arch.name}",), arch.name, 16, (), cuda=arch)


@functools.lru_cache(maxsize=None)
def _present_gpu_arch() -> CudaArch | None:
    """The architecture of CUDA device 0 as the driver reports it; None without a GPU."""
    from .cuda import driver

    device = driver.device_properties()
    if device is None:
        return None
    major, minor = device.compute_capability
    base = CUDA_ARCHS.get(f"sm_{major}{minor}")
    if base is None:   # a newer GPU: the nearest older architecture's code runs on it
        known = [a for a in CUDA_ARCHS.values() if a.compute_capability <= (major, minor)
                 and not a.name.endswith("a")]
        if not known:
            return None
        base = max(known, key=lambda a: a.compute_capability)
    return CudaArch(**{**base.__dict__, "sm_count": device.sm_count,
                       "smem_per_block": device.smem_per_block_optin,
                       "smem_per_sm": device.smem_per_sm,
                       "max_threads_per_sm": device.max_threads_per_sm,
                       "device_name": device.name})
