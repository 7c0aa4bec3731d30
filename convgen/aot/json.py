"""JSON model descriptions: layers with an op, PyTorch's arguments, an input shape, and
their weights in one ``.npz`` or ``.safetensors`` file. The schema (version 1):

.. code-block:: json

    {
      "convgen_model": 1,
      "name": "tiny",
      "weights": "tiny.npz",
      "inputs": {"x": [1, 3, 32, 32]},
      "outputs": ["head"],
      "layers": [
        {"name": "stem", "op": "conv2d", "input": "x",
         "args": {"stride": 2, "padding": 1},
         "weight": "stem.weight", "bias": "stem.bias",
         "batch_norm": "stem.bn",
         "epilogue": ["relu"]},
        {"name": "head", "op": "conv_transpose2d", "input": "stem",
         "args": {"stride": 2, "padding": 1, "output_padding": 1},
         "epilogue": [{"op": "add", "input": "x"}, {"op": "clip", "min": 0, "max": 6}]}
      ]
    }

Top level: ``convgen_model`` (required, 1), ``layers`` (required), ``weights`` (the file,
relative to the JSON file; required unless ``build`` is given the arrays), ``name`` (the
build's default NAME), ``inputs`` (graph inputs and their shapes: with them, and every
layer reading a graph input or an earlier layer, the build offers ``NAME_run``),
``outputs`` (graph outputs; default: the layers no layer reads).

A layer: ``name`` (required, unique), ``op`` (``conv1d|conv2d|conv3d|conv_transpose1d|
conv_transpose2d|conv_transpose3d``), ``input`` (a graph input or an earlier layer's
output; omit it for a layer built alone), ``input_shape`` (the batched input shape,
required unless ``input`` has a known shape), ``args`` (``torch.nn.functional``'s keyword
arguments: stride, padding (ints, "same", "valid"), dilation, groups, padding_mode,
output_padding, output_size), ``weight`` / ``bias`` (keys in the weights file; defaults
``<name>.weight`` and ``<name>.bias`` if present; ``"bias": null`` for none),
``batch_norm`` (a key prefix ``P`` with ``P.weight``, ``P.bias``, ``P.running_mean``,
``P.running_var``, or an object naming the four keys and ``eps``; folded into the
weights), ``epilogue`` (steps applied in order: ``"relu"``, ``"sigmoid"``, ``"tanh"``,
``"silu"``, ``{"op": "clip", "min": a, "max": b}`` (either may be null), ``{"op":
"leaky_relu", "alpha": a}``, ``{"op": "add", "input": tensor}`` at most once: the residual),
``output`` (the tensor's name; default: the layer's name).

Every key is checked: an unknown one is an error, never ignored.
"""
from __future__ import annotations

import json as jsonlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.epilogue import Step
from ..core.layers import OPS, spec_from_op
from ..core.spec import Workload
from .fuse import assemble
from .model import DTYPE, ConvLayer, ModelError, Network, as_float32, fold_batch_norm, where

VERSION = 1
TOP_KEYS = {"convgen_model", "name", "weights", "inputs", "outputs", "layers"}
LAYER_KEYS = {"name", "op", "input", "input_shape", "args", "weight", "bias", "batch_norm",
              "epilogue", "output"}
BN_KEYS = {"weight", "bias", "running_mean", "running_var", "eps"}
SIMPLE_STEPS = ("relu", "sigmoid", "tanh", "silu")


def load(model, weights=None) -> tuple[Network, str | None]:
    """The network of a JSON model (a path or an already parsed dict) and its default name.
    ``weights`` (a mapping of arrays) replaces the ``weights`` file."""
    base = Path(".")
    if isinstance(model, (str, Path)):
        path = Path(model)
        try:
            document = jsonlib.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the JSON model {path.name!r}: {exc}") from exc
        base, description = path.parent, f"{path.name} (convgen JSON model)"
    elif isinstance(model, dict):
        document, description = model, "a convgen JSON model"
    else:
        raise TypeError(f"a JSON model is a path or a dict, got {type(model).__name__}")
    _check_top(document)
    arrays = weights if weights is not None else _read_weights(document, base)
    return _Reader(document, arrays).network(description), document.get("name")


def _check_top(document) -> None:
    if not isinstance(document, dict):
        raise ModelError("a JSON model is an object with 'convgen_model' and 'layers'")
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        raise ModelError(f"JSON model: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    if document.get("convgen_model") != VERSION:
        raise ModelError(f"JSON model: 'convgen_model' must be {VERSION} (the schema version), "
                         f"got {document.get('convgen_model')!r}")
    if not isinstance(document.get("layers"), list) or not document["layers"]:
        raise ModelError("JSON model: 'layers' must be a non-empty list")


def _read_weights(document: dict, base: Path) -> dict:
    name = document.get("weights")
    if not isinstance(name, str) or not name:
        raise ModelError("JSON model: 'weights' must name the .npz or .safetensors file")
    path = base / name
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        if path.suffix == ".safetensors":
            try:
                from safetensors.numpy import load_file
            except ImportError as exc:
                raise ModelError("reading .safetensors weights needs the safetensors package: "
                                 "pip install 'convgen[safetensors]'") from exc
            return load_file(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"JSON model: cannot read the weights file {name!r}: {exc}") from exc
    raise ModelError(f"JSON model: the weights file must be .npz or .safetensors, got {name!r}")


class _Reader:
    def __init__(self, document: dict, arrays):
        self.document, self.arrays = document, arrays
        self.shapes = {name: _shape(shape, f"inputs[{name!r}]")
                       for name, shape in _mapping(document.get("inputs", {}), "inputs").items()}

    def network(self, description: str) -> Network:
        layers, names = [], set()
        for index, entry in enumerate(self.document["layers"]):
            layer = self.layer(index, entry)
            if layer.name in names:
                raise ModelError(f"{where('layer', layer.name)}: two layers have this name")
            names.add(layer.name)
            if layer.output in self.shapes:
                raise ModelError(f"{where('layer', layer.name)}: its output tensor "
                                 f"{layer.output!r} is already defined")
            self.shapes[layer.output] = layer.output_shape
            layers.append(layer)
        read = {t for layer in layers for t in (layer.input, layer.residual) if t}
        outputs = self.document.get("outputs")
        if outputs is None:
            outputs = [layer.output for layer in layers if layer.output not in read]
        elif not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise ModelError("JSON model: 'outputs' must be a list of tensor names")
        inputs = {name: self.shapes[name] for name in self.document.get("inputs", {})}
        return assemble(layers, inputs, list(outputs), [], description)

    def layer(self, index: int, entry) -> ConvLayer:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not entry["name"]:
            raise ModelError(f"JSON model: layers[{index}] must be an object with a non-empty "
                             f"'name'")
        name = entry["name"]
        here = where("layer", name)
        unknown = sorted(set(entry) - LAYER_KEYS)
        if unknown:
            raise ModelError(f"{here}: unknown key(s) {unknown}; allowed: {sorted(LAYER_KEYS)}")
        op = entry.get("op")
        if op not in OPS:
            raise ModelError(f"{here}: op must be one of {sorted(OPS)}, got {op!r}")
        source = entry.get("input")
        shape = self._input_shape(entry, here, source)
        weight = self.array(entry.get("weight", f"{name}.weight"), here, "weight")
        bias = self._bias(entry, name, here)
        args = _mapping(entry.get("args", {}), f"{here}: args")
        try:
            spec = spec_from_op(op, weight.shape, bias is not None, shape, **args)
            workload = Workload(spec, shape, DTYPE)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{here}: {exc} (weight {list(weight.shape)}, input "
                             f"{list(shape)})") from exc
        fused = []
        if "batch_norm" in entry:
            weight, bias, spec = self._batch_norm(entry["batch_norm"], spec, weight, bias, here)
            fused.append("BatchNorm")
        steps, residual = self._epilogue(entry.get("epilogue", []), here, workload.output_shape)
        output = entry.get("output", name)
        if not isinstance(output, str) or not output:
            raise ModelError(f"{here}: 'output' must be a non-empty tensor name")
        return ConvLayer(name, spec, workload.input_shape, weight, bias,
                         source if source is not None else f"{name}:input", output,
                         steps, residual, tuple(fused), {"weight": entry.get("weight",
                                                                             f"{name}.weight")})

    def _input_shape(self, entry: dict, here: str, source) -> tuple[int, ...]:
        known = self.shapes.get(source) if source is not None else None
        if source is not None and not isinstance(source, str):
            raise ModelError(f"{here}: 'input' must be a tensor name")
        if source is not None and known is None:
            raise ModelError(f"{here}: its input {source!r} is neither a graph input nor an "
                             f"earlier layer's output")
        given = entry.get("input_shape")
        if given is None:
            if known is None:
                raise ModelError(f"{here}: give 'input_shape' (or an 'input' of known shape)")
            return known
        shape = _shape(given, f"{here}: input_shape")
        if known is not None and shape != known:
            raise ModelError(f"{here}: input_shape {list(shape)} disagrees with the shape "
                             f"{list(known)} of its input {source!r}")
        return shape

    def array(self, key, here: str, what: str) -> np.ndarray:
        if not isinstance(key, str):
            raise ModelError(f"{here}: the {what} must be named by a key of the weights file")
        if key not in self.arrays:
            raise ModelError(f"{here}: the weights file has no {what} {key!r}")
        return as_float32(self.arrays[key], f"{here}: {what} {key!r}")

    def _bias(self, entry: dict, name: str, here: str):
        if "bias" in entry:
            key = entry["bias"]
            return None if key is None else self.array(key, here, "bias").reshape(-1)
        key = f"{name}.bias"
        return self.array(key, here, "bias").reshape(-1) if key in self.arrays else None

    def _batch_norm(self, value, spec, weight, bias, here: str):
        if isinstance(value, str):
            keys = {k: f"{value}.{k}" for k in BN_KEYS - {"eps"}}
            eps = 1e-5
        elif isinstance(value, dict):
            unknown = sorted(set(value) - BN_KEYS)
            if unknown:
                raise ModelError(f"{here}: batch_norm: unknown key(s) {unknown}")
            keys = {k: value.get(k) for k in BN_KEYS - {"eps"}}
            eps = value.get("eps", 1e-5)
            if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
                raise ModelError(f"{here}: batch_norm eps must be a non-negative number")
        else:
            raise ModelError(f"{here}: batch_norm must be a key prefix or an object")
        parts = {k: self.array(key, here, f"batch_norm {k}").reshape(-1)
                 for k, key in keys.items()}
        for k, array in parts.items():
            if array.shape != (spec.out_channels,):
                raise ModelError(f"{here}: batch_norm {k} has {array.size} values, the layer "
                                 f"has {spec.out_channels} output channels")
        w, b = fold_batch_norm(spec, weight, bias, parts["weight"], parts["bias"],
                               parts["running_mean"], parts["running_var"], float(eps))
        return w, b, replace(spec, bias=True)

    def _epilogue(self, steps, here: str, out_shape) -> tuple[tuple[Step, ...], str | None]:
        if not isinstance(steps, list):
            raise ModelError(f"{here}: epilogue must be a list of steps")
        found, residual = [], None
        for step in steps:
            try:
                made, tensor = _step(step)
            except (ValueError, TypeError) as exc:
                raise ModelError(f"{here}: epilogue step {step!r}: {exc}") from exc
            if tensor is not None:
                if residual is not None:
                    raise ModelError(f"{here}: an epilogue adds at most one residual")
                if self.shapes.get(tensor) != out_shape:
                    raise ModelError(f"{here}: the residual {tensor!r} must be a graph input or "
                                     f"an earlier layer's output of the layer's output shape "
                                     f"{list(out_shape)}, got {self.shapes.get(tensor)}")
                residual = tensor
            found.append(made)
        return tuple(found), residual


def _step(step) -> tuple[Step, str | None]:
    if isinstance(step, str):
        if step not in SIMPLE_STEPS:
            raise ValueError(f"a step named by a string is one of {SIMPLE_STEPS}")
        return Step(step), None
    if not isinstance(step, dict):
        raise TypeError("a step is a string or an object with 'op'")
    op, rest = step.get("op"), {k: v for k, v in step.items() if k != "op"}
    allowed = {"clip": {"min", "max"}, "leaky_relu": {"alpha"}, "add": {"input"},
               **{s: set() for s in SIMPLE_STEPS}}
    if op not in allowed:
        raise ValueError(f"op must be one of {sorted(allowed)}")
    if set(rest) - allowed[op]:
        raise ValueError(f"unknown key(s) {sorted(set(rest) - allowed[op])}")
    if op == "clip":
        return Step("clip", (rest.get("min"), rest.get("max"))), None
    if op == "leaky_relu":
        return Step("leaky_relu", (rest.get("alpha", 0.01),)), None
    if op == "add":
        if not isinstance(rest.get("input"), str):
            raise ValueError("an add step names its residual tensor: {'op': 'add', 'input': ...}")
        return Step("add"), rest["input"]
    return Step(op), None


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ModelError(f"{what} must be an object")
    return value


def _shape(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ModelError(f"{what} must be a list of positive ints, got {value!r}")
    return tuple(value)
