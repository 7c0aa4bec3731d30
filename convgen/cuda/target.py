"""The CUDA targets: "cuda" (nvcc, a GPU) and "cuda-emu" (the same kernels on the CPU).

The architecture: ``CONVGEN_CUDA_ARCH`` if set; else, for "cuda", the present GPU's
(compute capability, SM count and shared memory read through the driver); else sm_90.
``CONVGEN_CUDA_TF32=1`` lets "auto" plans use TF32 tensor cores for float32 (cuDNN's
default in PyTorch); without it they compute in full float32.
"""
from __future__ import annotations

import dataclasses
import functools
import os

from ..target import Target
from ..target.cuda_arch import (
    CUDA_ARCHS,
    DEFAULT_CUDA_ARCH,
    CudaArch,
    cuda_arch_named,
    nvcc_arch_flags,
)
from . import driver

TARGET_NAMES = ("cuda", "cuda-emu")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 0 or 1, got {os.environ[name]!r}")


def cuda_target(name: str) -> Target:
    """The "cuda" or "cuda-emu" target."""
    if name not in TARGET_NAMES:
        raise ValueError(f"unknown CUDA target {name!r}; expected one of {TARGET_NAMES}")
    emulated = name == "cuda-emu"
    allow_tf32 = _env_flag("CONVGEN_CUDA_TF32")
    requested = os.environ.get("CONVGEN_CUDA_ARCH", "").strip()
    if requested:
        arch = cuda_arch_named(requested)
    elif emulated:
        arch = CUDA_ARCHS[DEFAULT_CUDA_ARCH]
    else:
        arch = present_gpu_arch() or CUDA_ARCHS[DEFAULT_CUDA_ARCH]
    arch = dataclasses.replace(arch, allow_tf32=allow_tf32)
    if emulated:
        return Target("cuda-emu", "cuda", (), "emu", 16, (), cuda=arch)
    return Target("cuda", "cuda", nvcc_arch_flags(arch.name), arch.name, 16, (), cuda=arch)


@functools.cache
def present_gpu_arch() -> CudaArch | None:
    """The architecture of CUDA device 0 as the driver reports it; None without a GPU."""
    device = driver.device_properties()
    if device is None:
        return None
    major, minor = device.compute_capability
    # a 9.0 GPU gets sm_90a: Hopper's own instructions (wgmma, TMA) run only there
    base = CUDA_ARCHS.get("sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}")
    if base is None:   # a newer GPU: the nearest older architecture's code runs on it
        known = [a for a in CUDA_ARCHS.values() if a.compute_capability <= (major, minor)
                 and not a.name.endswith("a")]
        if not known:
            return None
        base = max(known, key=lambda a: a.compute_capability)
    return dataclasses.replace(base, sm_count=device.sm_count,
                               smem_per_block=device.smem_per_block_optin,
                               smem_per_sm=device.smem_per_sm,
                               max_threads_per_sm=device.max_threads_per_sm,
                               device_name=device.name)
