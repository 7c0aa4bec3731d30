"""GPU architectures as data: what the CUDA planner and compiler need to know of each.

The table holds the usual data-centre part of each architecture; the CUDA backend replaces
the SM count and shared-memory sizes with those of a GPU that is present.
"""
from __future__ import annotations

from dataclasses import dataclass


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


def nvcc_arch_flags(name: str) -> tuple[str, ...]:
    """nvcc's flags for machine code of architecture ``name``. An arch-specific target such
    as sm_90a takes the -gencode form: nvcc 13.0 expands ``-arch=sm_90a`` with a plain
    compute_90 PTX pass too, and ptxas rejects wgmma and setmaxnreg there."""
    if name.endswith("a"):
        virtual = "compute_" + name[len("sm_"):]
        return (f"-gencode=arch={virtual},code={name}",)
    return (f"-arch={name}",)


def cuda_arch_named(name: str) -> CudaArch:
    if name not in CUDA_ARCHS:
        raise ValueError(f"unknown CUDA architecture {name!r}; expected one of "
                         f"{sorted(CUDA_ARCHS)} (set CONVGEN_CUDA_ARCH to one of them)")
    return CUDA_ARCHS[name]
