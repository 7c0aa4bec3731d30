"""convgen: PyTorch's convolution family as kernels generated for one layer and shape.

Pipeline: ConvSpec (core/spec.py) -> Workload -> Plan (cpu/ or cuda/ planner) -> source
(templates/) -> shared library -> cache -> Kernel; ``runtime/pipeline.py`` runs the back
half for every backend, ``backends.py`` maps target names to backends.
"""
from ._version import __version__
from .runtime import openmp as _openmp  # noqa: F401  (before any kernel loads libgomp)

from . import nn  # noqa: E402
from .api import compile  # noqa: E402,A004
from .core.spec import ConvSpec, Workload  # noqa: E402
from .core.toolchain import CompileError  # noqa: E402
from .cpu.kernel import Kernel, PackedWeights  # noqa: E402
from .cpu.plan import Plan  # noqa: E402
from .functional import (conv1d, conv2d, conv3d, conv_transpose1d,  # noqa: E402
                         conv_transpose2d, conv_transpose3d)
from .runtime.cache import CacheError  # noqa: E402

__all__ = ["__version__", "nn", "ConvSpec", "Workload", "Plan", "Kernel", "PackedWeights",
           "CompileError", "CacheError", "compile", "conv1d", "conv2d", "conv3d",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]
