"""Models given in Python: conv modules with their input shapes, or a ``torch.nn.Module``
whose conv layers are found by running it once on an example input.

- A list of ``(module, input_shape)`` or ``(name, module, input_shape)`` entries, or a dict
  ``{name: (module, input_shape)}`` of ``convgen.nn`` or ``torch.nn`` conv modules (a bare
  ``ConvSpec`` has no weights to build). Unnamed layers are called ``layer0``, ``layer1``...
- A ``torch.nn.Module`` and ``example_input`` (a tensor, or a tuple of them): forward hooks
  record the input shape of every ``torch.nn`` conv submodule it calls; each (module,
  shape) becomes a layer named by the module's path in the model (``features.0`` ->
  ``features_0``). Only the convolutions are built, each as its own function: for the whole
  graph with its activations fused, export the model to ONNX and build that.

Weights are taken as float32 (the build's type).
"""
from __future__ import annotations

from ..api import as_spec
from ..core.spec import Workload
from .fuse import assemble
from .model import DTYPE, ConvLayer, ModelError, Network, as_float32, where


def _array(value, what: str):
    if value is None:
        return None
    if hasattr(value, "detach"):   # a torch tensor or parameter
        value = value.detach().cpu().numpy()
    return as_float32(value, what)


def _layer(name: str, module, input_shape) -> ConvLayer:
    here = where("layer", name)
    try:
        spec = as_spec(module)
    except TypeError as exc:
        raise ModelError(f"{here}: {exc}") from exc
    if getattr(module, "weight", None) is None:
        raise ModelError(f"{here}: the module has no weight")
    weight = _array(module.weight, f"{here}: weight")
    bias = _array(getattr(module, "bias", None), f"{here}: bias")
    try:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == spec.ndim + 1:   # unbatched, as the modules accept it
            shape = (1, *shape)
        workload = Workload(spec, shape, DTYPE)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{here}: {exc}") from exc
    if weight.shape != spec.weight_shape:
        raise ModelError(f"{here}: mismatched weight shape {list(weight.shape)}, the layer "
                         f"needs {list(spec.weight_shape)}")
    if (bias is None) == spec.bias:
        raise ModelError(f"{here}: the module's bias does not match its configuration")
    return ConvLayer(name, spec, workload.input_shape, weight, bias, f"{name}:input", name,
                     source={"module": type(module).__name__})


def from_modules(items) -> Network:
    """The network of conv modules given with their input shapes (each layer alone)."""
    if isinstance(items, dict):
        entries = [(name, *value) for name, value in items.items()]
    else:
        entries = []
        for index, item in enumerate(items):
            parts = tuple(item)
            if len(parts) == 2:
                entries.append((f"layer{index}", *parts))
            elif len(parts) == 3:
                entries.append(parts)
            else:
                raise TypeError(f"model[{index}] must be (module, input_shape) or (name, "
                                f"module, input_shape), got {len(parts)} items")
    if not entries:
        raise ModelError("the model has no layers")
    layers = []
    for name, module, shape in entries:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a layer's name must be a non-empty str, got {name!r}")
        layers.append(_layer(name, module, shape))
    return assemble(layers, {}, [], [], "conv modules given in Python")


def is_torch_module(model) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module"
               for c in type(model).__mro__)


def from_traced(module, example_input) -> Network:
    """The conv layers ``module`` calls on ``example_input``, with their input shapes."""
    import torch

    if example_input is None:
        raise TypeError("a torch.nn.Module is built from its conv layers as called on an "
                        "example input: pass example_input=")
    names = {id(m): n for n, m in module.named_modules()}
    seen: dict[tuple, tuple] = {}

    def record(submodule, args):
        shape = tuple(args[0].shape)
        seen.setdefault((id(submodule), shape), (names.get(id(submodule), "conv"), submodule,
                                                 shape))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules()
             if isinstance(m, torch.nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            inputs = example_input if isinstance(example_input, tuple) else (example_input,)
            module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise ModelError(f"{type(module).__name__} called no torch.nn conv module on the "
                         f"example input")
    calls: dict[str, int] = {}
    entries = []
    for name, submodule, shape in seen.values():
        calls[name] = calls.get(name, 0) + 1
        label = name if calls[name] == 1 else f"{name}.call{calls[name]}"
        entries.append((label, submodule, shape))
    return from_modules(entries)
