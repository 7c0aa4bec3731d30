"""``convgen.compile``: the front of the pipeline (layer -> spec -> workload -> plan)."""
from __future__ import annotations

import numpy as np

from . import plan as planner
from .kernel import Kernel
from .spec import DTYPES, ConvSpec, Workload
from .target import get_target

_KERNELS: dict[tuple, Kernel] = {}


def as_spec(layer) -> ConvSpec:
    """A ConvSpec from a ConvSpec, a convgen.nn module or a torch.nn conv module."""
    if isinstance(layer, ConvSpec):
        return layer
    spec = getattr(layer, "spec", None)
    if isinstance(spec, ConvSpec):
        return spec
    if _is_torch_conv(layer):
        return spec_of_torch(layer)
    raise TypeError(f"layer must be a convgen.ConvSpec, a convgen.nn module or a torch.nn conv "
                    f"module, got {type(layer).__name__}")


def _is_torch_conv(layer) -> bool:
    return type(layer).__module__.startswith("torch.nn") and hasattr(layer, "transposed")


def spec_of_torch(module) -> ConvSpec:
    ndim = len(module.kernel_size)
    bias = module.bias is not None
    if module.transposed:
        return ConvSpec.conv_transpose(ndim, module.in_channels, module.out_channels,
                                       module.kernel_size, module.stride, module.padding,
                                       module.output_padding, module.groups, bias,
                                       module.dilation, module.padding_mode)
    return ConvSpec.conv(ndim, module.in_channels, module.out_channels, module.kernel_size,
                         module.stride, module.padding, module.dilation, module.groups, bias,
                         module.padding_mode)


def dtype_name(dtype) -> str:
    if dtype is None:   # np.dtype(None) would quietly mean float64
        raise TypeError(f"dtype must be one of {DTYPES}, got None")
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise TypeError(f"dtype must be one of {DTYPES}, got {dtype!r}") from exc
    if name not in DTYPES:
        raise TypeError(f"dtype must be one of {DTYPES}, got {name}")
    return name


def workload_of(spec: ConvSpec, input_shape, dtype) -> tuple[Workload, bool]:
    """Bind a spec to an input shape; an unbatched shape (C, *spatial) becomes batch 1."""
    shape = tuple(input_shape)
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}")
    nd = spec.ndim
    if len(shape) not in (nd + 1, nd + 2):
        raise ValueError(f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to "
                         f"{spec.op}, but got input of shape {shape}")
    unbatched = len(shape) == nd + 1
    return Workload(spec, (1, *shape) if unbatched else shape, dtype_name(dtype)), unbatched


def compile(layer, input_shape, dtype="float32", target="cpu", plan="auto") -> Kernel:  # noqa: A001
    """A kernel for ``layer`` on inputs of ``input_shape``: compiled, cached and loaded."""
    spec = as_spec(layer)
    workload, unbatched = workload_of(spec, input_shape, dtype)
    resolved_target = get_target(target)
    if plan == "auto":  # the common case: skip re-ranking, the planner memoises its choice
        chosen = planner.plan(workload, resolved_target)
    else:
        chosen = planner.resolve(plan, workload, resolved_target)
    memo = (workload, unbatched, resolved_target, chosen)
    kernel = _KERNELS.get(memo)
    if kernel is None:
        kernel = _KERNELS[memo] = Kernel(workload, chosen, resolved_target, unbatched)
    return kernel
