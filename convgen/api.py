"""``convgen.compile``: the front of the pipeline (layer -> spec -> workload -> plan -> kernel).

A front end: it names no backend. The registry (``backends``) resolves the target and
hands back the backend that plans, generates, builds and loads for it.
"""
from __future__ import annotations

from .backends import backend_for, get_target
from .core.dtypes import dtype_name
from .core.limits import check_workload_limits
from .core.planning import check_accuracy
from .core.spec import ConvSpec, Workload, workload_of
from .tuning.lookup import tuned_plan


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


def layer_dtype(layer) -> str:
    """The dtype a layer computes in: a module's own, a torch module's weights', else float32."""
    if isinstance(layer, ConvSpec):
        return "float32"
    if _is_torch_conv(layer):
        return dtype_name(layer.weight.dtype)
    dtype = getattr(layer, "dtype", None)
    return "float32" if dtype is None else dtype_name(dtype)


def _is_torch_conv(layer) -> bool:
    return type(layer).__module__.startswith("torch.nn") and hasattr(layer, "transposed")


def spec_of_torch(module) -> ConvSpec:
    _refuse_lazy(module)
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


def _refuse_lazy(module) -> None:
    weight = getattr(module, "weight", None)
    if type(weight).__name__ == "UninitializedParameter" or "Lazy" in type(module).__name__:
        plain = type(module).__name__.replace("Lazy", "")
        raise ValueError(f"{type(module).__name__} has uninitialised (lazy) parameters: run it "
                         f"once on an input first (torch then knows in_channels and turns it "
                         f"into a {plain}), then hand it to convgen")


def compile(layer, input_shape, dtype=None, target="cpu", plan="auto",
            accuracy="fast", db=None):
    """A kernel for ``layer`` on inputs of ``input_shape``: compiled, cached and loaded.

    ``dtype`` defaults to the layer's (a module's; float32 for a ConvSpec).
    ``plan="auto"`` takes the tuned plan where the tuning database has one for this
    workload, target and machine class (``convgen.tune``), else the planner's choice;
    ``db`` names the database (default: ``CONVGEN_TUNING_DB``, else the one under the
    cache directory; ``CONVGEN_TUNING_DB=off`` ignores tuning).
    ``accuracy="strict"`` keeps the planner to exact algorithms: no Winograd, whose float32
    results differ from a direct sum by a few more units in the last place.
    """
    accuracy = check_accuracy(accuracy)
    spec = as_spec(layer)
    workload, unbatched = workload_of(spec, input_shape,
                                      layer_dtype(layer) if dtype is None else dtype)
    check_workload_limits(workload)
    resolved = get_target(target)
    backend = backend_for(resolved)
    chosen = None
    if isinstance(plan, str) and plan == "auto":
        chosen = tuned_plan(workload, resolved, backend, accuracy, db)
    if chosen is None:
        chosen = backend.resolve(plan, workload, resolved, accuracy)
    return backend.kernel(workload, chosen, resolved, unbatched)


def choose_plan(spec, input_shape=None, dtype="float32", target="cpu", threads=None,
                accuracy="fast"):
    """The planner's choice for ``spec`` on inputs of ``input_shape`` (batched or not);
    ``spec`` may also be a Workload, which already carries the shape and dtype. ``threads``
    (CPU targets) plans for that many threads instead of the default."""
    workload = spec if isinstance(spec, Workload) else workload_of(spec, input_shape, dtype)[0]
    resolved = get_target(target)
    return backend_for(resolved).choose(workload, resolved, threads, check_accuracy(accuracy))


def explain(spec, input_shape=None, dtype="float32", target="cpu", top=5,
            accuracy="fast", plan="auto") -> str:
    """The planner's ranked candidates for a layer and input shape, as text; ``*`` marks
    the plan ``compile`` would use with the same ``plan=`` (the planner's choice for
    "auto"; the one named otherwise, checked as ``compile`` checks it)."""
    workload = spec if isinstance(spec, Workload) else workload_of(spec, input_shape, dtype)[0]
    resolved = get_target(target)
    backend = backend_for(resolved)
    accuracy = check_accuracy(accuracy)
    chosen = backend.resolve(plan, workload, resolved, accuracy)
    text = backend.explain(workload, resolved, top=top, accuracy=accuracy, chosen=chosen)
    if all(c.plan != chosen for c in backend.candidates(workload, resolved, accuracy)):
        text += f"\n  * (the requested plan, not one the planner lists) {chosen}"
    return text
