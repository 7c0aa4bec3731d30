"""The backend registry: target names to the backend that plans, renders, builds and loads
for them. The one place that names CUDA; the front ends (api, functional, nn, cli) ask here.

A backend (``runtime.pipeline.Backend`` plus planning and loading) is imported on first
use, so ``import convgen`` never loads the CUDA driver bindings.
"""
from __future__ import annotations

from .target import CPU_ALIASES, CPU_TARGETS, Target, cpu_target, with_sanitize

CUDA_TARGETS = ("cuda", "cuda-emu")
TARGET_NAMES = CPU_TARGETS + CUDA_TARGETS
_ALIASES = tuple(CPU_ALIASES)


def get_target(target, sanitize: bool | None = None) -> Target:
    """Resolve a target name (or pass a Target through)."""
    if isinstance(target, Target):
        result = target
    elif not isinstance(target, str):
        raise TypeError(f"target must be a target name or a Target, got {target!r}")
    elif target in CUDA_TARGETS:
        from .cuda.target import cuda_target
        result = cuda_target(target)
    elif target in CPU_TARGETS or target in CPU_ALIASES:
        result = cpu_target(target)
    else:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGET_NAMES} "
                         f"(or the aliases {_ALIASES})")
    return with_sanitize(result, sanitize)


def backend_for(target: Target):
    """The backend that generates code for ``target``."""
    if target.lang == "c":
        from .cpu import BACKEND
        return BACKEND
    if target.lang == "cuda":
        from .cuda import BACKEND
        return BACKEND
    raise ValueError(f"no backend generates code for target {target.name!r} (lang "
                     f"{target.lang!r})")


# -- where a module's parameters live --------------------------------------------------------
def module_device(device) -> str:
    """A module's ``device=`` as a target name: "cpu", "cuda" or "cuda-emu"."""
    # torch.device("cpu") prints as "cpu", so it is accepted as well (and "cuda", "cuda:0").
    name = "cpu" if device is None else str(device)
    if name in ("cpu", "cuda-emu"):
        return name
    if name in ("cuda", "cuda:0"):
        from .cuda import driver
        if not driver.available():
            raise ValueError(f"device={device!r} needs an NVIDIA GPU and its driver (libcuda), "
                             f"which this machine lacks; device='cuda-emu' runs the same CUDA "
                             f"kernels on the CPU")
        return "cuda"
    raise ValueError(f"device must be None, 'cpu', 'cuda' (device 0) or 'cuda-emu', "
                     f"got {device!r}")


def to_device(array, device: str):
    """``array`` where a module on ``device`` computes: host arrays, or GPU memory."""
    if device != "cuda":
        return array
    from .cuda.device import to_device as copy_to_device
    return copy_to_device(array)


def device_dtype(value, name: str):
    """The dtype of a GPU array (``__cuda_array_interface__`` or DLPack); a clear error for
    anything else."""
    from .cuda.device import device_view
    return device_view(value, name).dtype


def synchronize(device: str) -> None:
    """Wait until the work queued on ``device`` is done ("cpu" and "cuda-emu" run synchronously)."""
    if device == "cuda":
        from .cuda.driver import driver
        driver().synchronize()
