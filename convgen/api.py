"""``convgen.compile``: the front of the pipeline (layer -> spec -> workload -> plan)."""
from __future__ import annotations

from . import plan as planner
from .kernel import Kernel
from .limits import check_workload_limits
from .spec import ConvSpec, dtype_name, workload_of  # noqa: F401 (re-exported)
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


def compile(layer, input_shape, dtype="float32", target="cpu", plan="auto",  # noqa: A001
            accuracy="fast") -> Kernel:
    """A kernel for ``layer`` on inputs of ``input_shape``: compiled, cached and loaded.

    ``accuracy="strict"`` keeps the planner to exact algorithms: no Winograd, whose float32
    results differ from a direct sum by a few more units in the last place.
    """
    accuracy = planner.check_accuracy(accuracy)
    spec = as_spec(layer)
    workload, unbatched = workload_of(spec, input_shape, dtype)
    check_workload_limits(workload)
    resolved_target = get_target(target)
    if resolved_target.lang == "cuda":   # the CUDA backend plans, renders and loads on its own
        from .cuda import compile_cuda
        return compile_cuda(workload, unbatched, resolved_target, plan)
    if plan == "auto":  # the common case: skip re-ranking, the planner memoises its choice
        chosen = planner.choose(workload, resolved_target, accuracy=accuracy)
    else:
        chosen = planner.resolve(plan, workload, resolved_target, accuracy)
    memo = (workload, unbatched, resolved_target, chosen)
    kernel = _KERNELS.get(memo)
    if kernel is None:
        kernel = _KERNELS[memo] = Kernel(workload, chosen, resolved_target, unbatched)
    return kernel
