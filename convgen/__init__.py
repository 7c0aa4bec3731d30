"""convgen: PyTorch's convolution family as kernels generated for one layer and shape.

Pipeline: ConvSpec (spec.py) -> Workload -> Plan (plan.py) -> C source (render.py,
templates/) -> shared library (compiler.py) -> cache (cache.py) -> Kernel (kernel.py).
"""
__version__ = "0.3.0"

from . import _openmp  # noqa: E402,F401  (before any kernel loads libgomp)

from . import nn  # noqa: E402
from .api import compile  # noqa: E402,A004
from .cache import CacheError  # noqa: E402
from .compiler import CompileError  # noqa: E402
from .functional import (conv1d, conv2d, conv3d, conv_transpose1d,  # noqa: E402
                         conv_transpose2d, conv_transpose3d)
from .kernel import Kernel, PackedWeights  # noqa: E402
from .plan import Plan  # noqa: E402
from .spec import ConvSpec, Workload  # noqa: E402

__all__ = ["nn", "ConvSpec", "Workload", "Plan", "Kernel", "PackedWeights", "CompileError",
           "CacheError", "compile", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
           "conv_transpose2d", "conv_transpose3d"]
