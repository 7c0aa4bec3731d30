"""convgen: PyTorch's convolution family as kernels generated for one layer and shape.

Pipeline: ConvSpec (core/spec.py) -> Workload -> Plan (cpu/ or cuda/ planner) -> source
(templates/) -> shared library -> cache -> Kernel; ``runtime/pipeline.py`` runs the back
half for every backend, ``backends.py`` maps target names to backends.
"""
# First: OpenMP's wait policy is set before anything could load an OpenMP runtime.
from .runtime import openmp as _openmp  # noqa: F401

# isort: split
from . import nn
from ._version import __version__
from .aot import BuildResult, build
from .api import compile
from .core.spec import ConvSpec, Workload
from .core.toolchain import CompileError
from .cpu.kernel import Kernel, PackedWeights
from .cpu.plan import Plan
from .functional import conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d
from .runtime.cache import CacheError
from .runtime.threads import ThreadingStatus, threading_status
from .tuning import TuningDB, tune

__all__ = ["BuildResult", "CacheError", "CompileError", "ConvSpec", "Kernel", "PackedWeights",
           "Plan", "ThreadingStatus", "TuningDB", "Workload", "__version__", "build", "compile",
           "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "nn", "threading_status", "tune"]
