"""ONNX models: Conv and ConvTranspose nodes with their initializers, and what surrounds them.

Attributes are mapped exactly as the ONNX operator specification defines them:

- ``Conv``: ``pads`` [x1_begin, x2_begin, ..., x1_end, x2_end]; ``auto_pad`` NOTSET (use
  ``pads``), VALID (none), SAME_UPPER / SAME_LOWER (output = ceil(input / stride), the
  total ``max(0, (out - 1) * stride + (k - 1) * dilation + 1 - in)`` split evenly, the odd
  element at the end for SAME_UPPER and at the beginning for SAME_LOWER); ``strides``,
  ``dilations``, ``group``, ``kernel_shape`` (checked against the weight).
- ``ConvTranspose``: the same, plus ``output_padding``, and ``output_shape`` (which, as the
  specification says, replaces ``pads``: the total ``stride * (in - 1) + output_padding +
  (k - 1) * dilation + 1 - output_shape`` is split, the larger half at the beginning unless
  ``auto_pad`` is SAME_UPPER; SAME_* without ``output_shape`` aims at ``in * stride``).
  Uneven begin/end pads become PyTorch's symmetric padding plus ``output_padding`` where
  that is exact (``begin >= end`` within the output_padding range), else an error.
- ``Pad`` (constant 0, reflect, edge, wrap) in front of a Conv that alone reads it becomes
  the Conv's padding and ``padding_mode`` (zeros, reflect, replicate, circular), as
  PyTorch exports ``padding_mode``.
- ``BatchNormalization`` (inference), ``Relu``, ``Clip``, ``LeakyRelu``, ``Sigmoid``,
  ``Tanh``, ``Mul`` (as SiLU), ``Add`` and ``Identity``: see ``fuse.py``.

Shapes come from the graph, else from ONNX shape inference; ``input_shapes`` fixes dynamic
graph inputs. The ``onnx`` package is an optional extra (``pip install convgen[onnx]``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.spec import ConvSpec, Workload
from .fuse import RawNode, convolutions_only, fuse
from .model import DTYPE, ModelError, Network, as_float32, shown, where

CONV_ATTRIBUTES = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}
TRANSPOSE_ATTRIBUTES = CONV_ATTRIBUTES | {"output_padding", "output_shape"}
PAD_MODES = {"constant": "zeros", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
SUPPORTED = ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "Clip", "LeakyRelu",
             "Sigmoid", "Tanh", "Mul", "Add", "Identity", "Pad")
FLOAT = 1   # TensorProto.FLOAT
# Nodes never evaluated at build time, even on constant inputs: their values are random.
NEVER_FOLDED = {"Constant", "RandomNormal", "RandomUniform", "RandomNormalLike",
                "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}


class Unsupported(Exception):
    """A node this build cannot compile (skippable with skip_unsupported)."""


def _require_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ModelError("reading ONNX models needs the onnx package: pip install "
                         "'convgen[onnx]'") from exc
    return onnx


def load(model, input_shapes: dict | None = None, skip_unsupported: bool = False) -> Network:
    """The network of an ONNX model (a path or a ``ModelProto``)."""
    onnx = _require_onnx()
    if isinstance(model, (str, Path)):
        path = Path(model)
        try:
            proto = onnx.load(str(path))
        except Exception as exc:   # protobuf's DecodeError, OSError, external data errors
            raise ModelError(f"cannot read the ONNX model {path.name!r}: {exc}") from exc
        description = f"{path.name} (ONNX)"
    elif type(model).__name__ == "ModelProto":
        proto, description = model, "an ONNX ModelProto"
    else:
        raise TypeError(f"an ONNX model is a path or an onnx.ModelProto, got "
                        f"{type(model).__name__}")
    return _Graph(onnx, proto, input_shapes or {}).network(skip_unsupported, description)


class _Graph:
    def __init__(self, onnx, proto, input_shapes: dict):
        self.onnx = onnx
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                          None)
        graph = proto.graph
        self.constants = {t.name: t for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in graph.output]
        proto = _with_input_shapes(onnx, proto, self.inputs, input_shapes)
        self.types = _value_types(onnx, proto)
        self.nodes = list(proto.graph.node)
        # ONNX node names are optional: an unnamed node is called by its op and position
        self.names = {id(n): n.name or f"{n.op_type.lower()}_{i}" for i, n in enumerate(self.nodes)}
        self.values: dict[str, np.ndarray] = {}
        self.produced = {out: node for node in self.nodes for out in node.output if out}
        self.readers: dict[str, list] = {}
        for node in self.nodes:
            for name in dict.fromkeys(i for i in node.input if i):
                self.readers.setdefault(name, []).append(node)
        self._check_defined()
        self.folded = self._fold_constants()

    def name(self, node) -> str:
        return self.names[id(node)]

    # -- tensors ------------------------------------------------------------------------------
    def _check_defined(self) -> None:
        known = set(self.constants) | set(self.inputs) | set(self.produced)
        for node in self.nodes:
            for name in node.input:
                if name and name not in known:
                    raise ModelError(
                        f"{where('node', self.name(node), node.op_type)}: its input "
                        f"{shown(name)} is neither an initializer, a graph input "
                        f"nor any node's output (a missing initializer?)")
        for name in self.outputs:
            if name not in known:
                raise ModelError(f"graph output {shown(name)} is not computed by "
                                 f"any node")

    def constant(self, name: str, node) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if name in self.values:
            return self.values[name]
        value = None
        if name in self.constants:
            value = self.onnx.numpy_helper.to_array(self.constants[name])
        elif name in self.produced and self.produced[name].op_type == "Constant":
            value = self._constant_node(self.produced[name])
        if value is not None:
            self.values[name] = value
        return value

    def _constant_node(self, node) -> np.ndarray:
        for attr in node.attribute:
            value = self.onnx.helper.get_attribute_value(attr)
            if attr.name == "value":
                return self.onnx.numpy_helper.to_array(value)
            if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                return np.asarray(value)
        raise ModelError(f"{where('node', self.name(node), 'Constant')}: only numeric tensor "
                         f"constants are supported")

    def weight(self, node, index: int, what: str) -> np.ndarray | None:
        """Input ``index`` of ``node`` as a constant; None if absent; Unsupported if
        computed at run time."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        value = self.constant(name, node)
        if value is None:
            raise Unsupported(f"its {what} {shown(name)} is computed at run time, "
                              f"not an initializer (a build bakes the weights in)")
        return value

    def shape(self, name: str) -> tuple[int, ...] | None:
        dims = self.types.get(name, (None, None))[1]
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        return tuple(dims)

    def static_shape(self, name: str, node) -> tuple[int, ...]:
        shape = self.shape(name)
        if shape is None:
            dims = self.types.get(name, (None, None))[1]
            stated = "unknown" if dims is None else "[" + ", ".join(map(str, dims)) + "]"
            raise Unsupported(f"the shape of its input {shown(name)} is dynamic or "
                              f"unknown ({stated}); fix it with input_shapes "
                              f"(--input-shape NAME=N,C,H,W) for the graph input(s)")
        elem = self.types.get(name, (None, None))[0]
        if elem not in (None, FLOAT):
            raise Unsupported(f"its input {shown(name)} has ONNX element type "
                              f"{elem}; a build computes in float32")
        return shape

    def _fold_constants(self) -> set[int]:
        """Evaluate, at build time, every node whose inputs are all constant (and Shape of a
        tensor of known shape): exporters emit such subgraphs for biases, pads and clip
        bounds (CastLike, Shape, Concat, Expand ...). ONNX's reference evaluator computes
        them, so every standard operator folds. The ids of the folded nodes."""
        from onnx.reference import ReferenceEvaluator

        folded = set()
        for node in self.nodes:
            if node.op_type in NEVER_FOLDED or node.domain not in ("", "ai.onnx"):
                continue
            names = [i for i in node.input if i]
            if node.op_type == "Shape" and names and self.shape(names[0]) is not None:
                feeds = {names[0]: np.zeros(self.shape(names[0]), np.float32)}
            elif node.op_type == "CastLike" and len(names) == 2 \
                    and self.constant(names[0], node) is not None \
                    and self.types.get(names[1], (None,))[0] == FLOAT:   # only its type counts
                feeds = {names[0]: self.constant(names[0], node),
                         names[1]: np.zeros(1, np.float32)}
            elif names and all(self.constant(i, node) is not None for i in names):
                feeds = {i: self.constant(i, node) for i in names}
            else:
                continue
            try:
                values = ReferenceEvaluator(node, opsets={"": self.opset or 1}).run(None, feeds)
            except Exception:   # not evaluable: the node stays, and is judged as any other
                continue
            for name, value in zip(node.output, values):
                if name:
                    self.values[name] = np.asarray(value)
            folded.add(id(node))
        return folded

    # -- nodes --------------------------------------------------------------------------------
    def network(self, skip_unsupported: bool, description: str) -> Network:
        pads = self._foldable_pads()
        folded = {id(p) for p in pads.values()}
        raw, shapes = [], {n: s for n in self.types if (s := self.shape(n)) is not None}
        for node in self.nodes:
            if node.op_type == "Constant" or id(node) in folded or id(node) in self.folded:
                continue
            try:
                made = self._raw(node, pads.get(id(node)), shapes)
            except Unsupported as exc:
                made = RawNode(self.name(node), "unsupported", node.op_type,
                               tuple(i for i in node.input if i), tuple(node.output),
                               {"reason": str(exc)})
            raw.append(made)
        if not any(r.op == "conv" for r in raw) and not any(
                n.op_type in ("Conv", "ConvTranspose") for n in self.nodes):
            raise ModelError(f"{description}: no Conv or ConvTranspose node to build")
        inputs = {}
        for name in self.inputs:
            shape = self.shape(name)
            if shape is not None:
                inputs[name] = shape
        network = fuse(raw, inputs, self.outputs, shapes, skip_unsupported,
                       f"{description}, opset {self.opset}")
        if network.whole_graph is None and len(inputs) != len(self.inputs):
            network.whole_graph = "a graph input has a dynamic shape"
            network = convolutions_only(network)
        return network

    def _raw(self, node, pad, shapes: dict) -> RawNode:
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"operator domain {node.domain!r} is not supported")
        op = node.op_type
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        runtime = tuple(i for i in node.input if i and self.constant(i, node) is None)
        outputs = tuple(node.output[:1])
        if op in ("Conv", "ConvTranspose"):
            return self._conv(node, attrs, pad, shapes)
        if op not in SUPPORTED:
            raise Unsupported(f"operator {op} is not supported (a build takes "
                              f"{', '.join(SUPPORTED)})")
        if op == "BatchNormalization":
            return RawNode(self.name(node), "batch_norm", op, runtime[:1], outputs,
                           self._batch_norm(node, attrs))
        if op == "Pad":
            raise Unsupported("Pad is supported only in front of a Conv that alone reads it "
                              "(it becomes the Conv's padding and padding_mode), with zero "
                              "constant, reflect, edge or wrap padding of the spatial axes")
        _no_other_attributes(node, attrs, {"Clip": {"min", "max"}, "LeakyRelu": {"alpha"}}
                             .get(op, set()))
        if len(runtime) != len([i for i in node.input if i]) and op not in ("Clip",):
            raise Unsupported(f"{op} with a constant operand is not supported")
        params = {}
        if op == "Clip":
            params = self._clip(node, attrs)
            runtime = runtime[:1]
        elif op == "LeakyRelu":
            params = {"alpha": float(np.float32(attrs.get("alpha", 0.01)))}
        if op in ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "Identity") \
                and runtime and runtime[0] in shapes:
            shapes.setdefault(outputs[0], shapes[runtime[0]])
        if op in ("Add", "Mul") and len(runtime) == 2 and shapes.get(runtime[0]) is not None \
                and shapes.get(runtime[0]) == shapes.get(runtime[1]):
            shapes.setdefault(outputs[0], shapes[runtime[0]])
        kind = {"Relu": "relu", "Clip": "clip", "LeakyRelu": "leaky_relu", "Sigmoid": "sigmoid",
                "Tanh": "tanh", "Mul": "mul", "Add": "add", "Identity": "identity"}[op]
        return RawNode(self.name(node), kind, op, runtime, outputs, params)

    def _clip(self, node, attrs) -> dict:
        if self.opset is not None and self.opset < 11:
            bounds = [attrs.get("min"), attrs.get("max")]
        else:
            bounds = []
            for index in (1, 2):
                value = self.weight(node, index, "bound") if index < len(node.input) else None
                if value is not None and np.asarray(value).size != 1:
                    raise Unsupported("Clip bounds must be scalars")
                bounds.append(None if value is None else float(np.asarray(value).reshape(())))
        bounds = [None if b is None else float(np.float32(b)) for b in bounds]
        if all(b is not None for b in bounds) and bounds[0] > bounds[1]:
            raise Unsupported(f"Clip min {bounds[0]} exceeds max {bounds[1]}")
        return {"min": bounds[0], "max": bounds[1]}

    def _batch_norm(self, node, attrs) -> dict:
        _no_other_attributes(node, attrs, {"epsilon", "momentum", "training_mode", "spatial",
                                           "is_test", "consumed_inputs"})
        if attrs.get("training_mode", 0) or attrs.get("spatial", 1) != 1 \
                or len([o for o in node.output if o]) > 1:
            raise Unsupported("a BatchNormalization in training mode (or with spatial=0) cannot "
                              "be folded")
        values = [self.weight(node, i, what) for i, what in
                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
        if any(v is None for v in values):
            raise ModelError(f"{where('node', self.name(node), node.op_type)}: it needs "
                             f"scale, bias, mean and variance")
        scale, shift, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
        return {"scale": scale, "shift": shift, "mean": mean, "var": var,
                "eps": float(np.float32(attrs.get("epsilon", 1e-5)))}

    # -- Pad in front of a Conv -----------------------------------------------------------------
    def _foldable_pads(self) -> dict:
        """Conv node id -> the Pad node that becomes its padding."""
        found = {}
        for node in self.nodes:
            if node.op_type != "Conv" or not node.input:
                continue
            pad = self.produced.get(node.input[0])
            if pad is None or pad.op_type != "Pad" or node.input[0] in self.outputs \
                    or len(self.readers.get(node.input[0], [])) != 1:
                continue
            try:
                self._pad_of(pad)
            except Unsupported:
                continue
            found[id(node)] = pad
        return found

    def _pad_of(self, pad) -> tuple[str, list[int], list[int], str]:
        """(data input, begins, ends over the spatial axes, padding_mode) of a Pad node."""
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in PAD_MODES:
            raise Unsupported(f"Pad mode {mode!r}")
        if self.opset is not None and self.opset < 11:
            pads, value, axes = attrs.get("pads"), attrs.get("value", 0.0), None
        else:
            pads = self.weight(pad, 1, "pads")
            value = self.weight(pad, 2, "constant value") if len(pad.input) > 2 else None
            axes = self.weight(pad, 3, "axes") if len(pad.input) > 3 else None
        shape = self.shape(pad.input[0])
        if pads is None or shape is None:
            raise Unsupported("Pad without constant pads or a known input shape")
        rank = len(shape)
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        axes = list(range(rank)) if axes is None else \
            [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        begins, ends = [0] * rank, [0] * rank
        for i, axis in enumerate(axes):
            begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
        if value is not None and float(np.asarray(value).reshape(-1)[0] if np.asarray(
                value).size else 0.0) != 0.0:
            raise Unsupported("Pad with a non-zero constant")
        if any(begins[:2] + ends[:2]) or min(begins + ends) < 0:
            raise Unsupported("Pad of the batch or channel axis, or a negative (cropping) pad")
        return pad.input[0], begins[2:], ends[2:], PAD_MODES[mode]

    # -- convolutions -------------------------------------------------------------------------
    def _conv(self, node, attrs: dict, pad, shapes: dict) -> RawNode:
        op = node.op_type
        here = where("node", self.name(node), op)
        transposed = op == "ConvTranspose"
        _no_other_attributes(node, attrs, TRANSPOSE_ATTRIBUTES if transposed else
                             CONV_ATTRIBUTES)
        if len(node.input) < 2 or not node.input[1]:
            raise ModelError(f"{here}: it has no weight input")
        weight = self.weight(node, 1, "weight")
        bias = self.weight(node, 2, "bias")
        source = pad.input[0] if pad is not None else node.input[0]
        x_shape = self.static_shape(source, node)
        folded = self._pad_of(pad) if pad is not None else None
        try:
            spec = (_transpose_spec if transposed else _conv_spec)(
                attrs, tuple(weight.shape), x_shape, bias is not None, folded)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{here}: {exc}") from exc
        weight = as_float32(weight, f"{here}")
        if bias is not None:
            bias = as_float32(bias, f"{here}").reshape(-1)
            if bias.shape != (spec.out_channels,):
                raise ModelError(f"{here}: bias has {bias.size} values, "
                                 f"the layer has {spec.out_channels} output channels")
        try:
            out_shape = Workload(spec, x_shape, DTYPE).output_shape
        except ValueError as exc:
            raise ModelError(f"{here}: {exc}") from exc
        inferred = self.shape(node.output[0])
        if inferred is not None and inferred != out_shape:
            raise ModelError(f"{here}: its attributes give an output of "
                             f"shape {list(out_shape)}, but the model says "
                             f"{list(inferred)}")
        shapes[node.output[0]] = out_shape
        fused = (f"Pad {shown(self.name(pad))} ({folded[3]})",) if pad is not None else ()
        return RawNode(self.name(node), "conv", op, (source,), tuple(node.output[:1]), {
            "spec": spec, "input_shape": x_shape, "weight": weight, "bias": bias,
            "fused": fused, "source": {"weight": node.input[1]}})


def _no_other_attributes(node, attrs: dict, allowed: set) -> None:
    unknown = sorted(set(attrs) - allowed)
    if unknown:
        raise Unsupported(f"attribute(s) {unknown} of {node.op_type} are not supported")


def _ints(attrs: dict, name: str, count: int, default: int) -> tuple[int, ...]:
    value = attrs.get(name)
    if value is None:
        return (default,) * count
    value = tuple(int(v) for v in value)
    if len(value) != count:
        raise ValueError(f"{name} must have {count} values, got {list(value)}")
    return value


def _auto_pad(attrs: dict) -> str:
    mode = attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, got "
                         f"{mode!r}")
    if mode != "NOTSET" and any(attrs.get("pads") or ()):
        raise ValueError(f"auto_pad={mode} and explicit pads {list(attrs['pads'])} together "
                         f"are ambiguous")
    return mode


def _split(total: int, upper: bool) -> tuple[int, int]:
    """A total padding split in two, the odd element at the end if ``upper``."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _common(attrs: dict, w_shape, x_shape):
    nd = len(x_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"input must have 3, 4 or 5 dimensions (N, C, spatial), got "
                         f"{list(x_shape)}")
    if len(w_shape) != nd + 2:
        raise ValueError(f"mismatched weight shape: weight {list(w_shape)} for a {nd}-d input "
                         f"{list(x_shape)}")
    kernel = tuple(w_shape[2:])
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
        raise ValueError(f"mismatched weight shape: kernel_shape {list(attrs['kernel_shape'])} "
                         f"but the weight is {list(w_shape)}")
    group = int(attrs.get("group", 1))
    if group < 1:
        raise ValueError(f"group must be positive, got {group}")
    return nd, kernel, _ints(attrs, "strides", nd, 1), _ints(attrs, "dilations", nd, 1), group


def _conv_spec(attrs, w_shape, x_shape, has_bias, pad) -> ConvSpec:
    nd, kernel, strides, dilations, group = _common(attrs, w_shape, x_shape)
    if w_shape[1] * group != x_shape[1]:
        raise ValueError(f"mismatched weight shape: weight {list(w_shape)} with group={group} "
                         f"takes {w_shape[1] * group} input channels, the input has "
                         f"{x_shape[1]}")
    mode = _auto_pad(attrs)
    spatial = x_shape[2:]
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        before, after = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-n // s)
            b, a = _split(max(0, (out - 1) * s + (k - 1) * d + 1 - n), mode == "SAME_UPPER")
            before.append(b)
            after.append(a)
    elif mode == "VALID":
        before, after = [0] * nd, [0] * nd
    else:
        pads = _ints(attrs, "pads", 2 * nd, 0)
        before, after = list(pads[:nd]), list(pads[nd:])
    padding_mode = "zeros"
    if pad is not None:
        _, pad_before, pad_after, padding_mode = pad
        if padding_mode != "zeros" and any(before + after):
            raise ValueError(f"a {padding_mode} Pad in front of a Conv with its own padding "
                             f"{before + after} cannot be folded")
        before = [b + p for b, p in zip(before, pad_before)]
        after = [a + p for a, p in zip(after, pad_after)]
    return ConvSpec(False, x_shape[1], w_shape[0], kernel, strides, tuple(before), tuple(after),
                    dilations, group, has_bias, padding_mode)


def _transpose_spec(attrs, w_shape, x_shape, has_bias, pad) -> ConvSpec:
    nd, kernel, strides, dilations, group = _common(attrs, w_shape, x_shape)
    if w_shape[0] != x_shape[1]:
        raise ValueError(f"mismatched weight shape: a ConvTranspose weight {list(w_shape)} takes "
                         f"{w_shape[0]} input channels, the input has {x_shape[1]}")
    mode = _auto_pad(attrs)
    output_padding = _ints(attrs, "output_padding", nd, 0)
    spatial = x_shape[2:]
    full = [s * (n - 1) + op + (k - 1) * d + 1
            for n, k, s, d, op in zip(spatial, kernel, strides, dilations, output_padding)]
    if "output_shape" in attrs or mode in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(attrs.get("output_shape") or [n * s for n, s in zip(spatial, strides)])
        if len(wanted) == nd + 2:
            wanted = wanted[2:]
        if len(wanted) != nd:
            raise ValueError(f"output_shape must have {nd} values, got {wanted}")
        split = [_split(f - int(w), mode == "SAME_UPPER") for f, w in zip(full, wanted)]
        begin, end = [b for b, _ in split], [e for _, e in split]
    elif mode == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = _ints(attrs, "pads", 2 * nd, 0)
        begin, end = list(pads[:nd]), list(pads[nd:])
    # PyTorch's form: symmetric padding p = begin, and output_padding making up the end
    adjusted = tuple(op + b - e for op, b, e in zip(output_padding, begin, end))
    for b, op, s, d in zip(begin, adjusted, strides, dilations):
        if b < 0 or not 0 <= op < max(s, d):
            raise ValueError(f"pads begin={begin} end={end} with output_padding="
                             f"{list(output_padding)} have no exact PyTorch form (symmetric "
                             f"padding plus an output_padding below max(stride, dilation))")
    groups_out = w_shape[1] * group
    return ConvSpec(True, x_shape[1], groups_out, kernel, strides, tuple(begin), tuple(begin),
                    dilations, group, has_bias, "zeros", adjusted)


# -- shapes ------------------------------------------------------------------------------------
def _with_input_shapes(onnx, proto, inputs: list[str], input_shapes: dict):
    """A copy of ``proto`` with the given graph inputs' shapes fixed (dynamic dimensions)."""
    if not input_shapes:
        return proto
    unknown = sorted(set(input_shapes) - set(inputs))
    if unknown:
        raise ModelError(f"input_shapes names {unknown}, which are not graph inputs "
                         f"(the graph inputs are {inputs})")
    proto = type(proto).FromString(proto.SerializeToString())
    for value in proto.graph.input:
        if value.name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[value.name])
            if not shape or min(shape) < 1:
                raise ModelError(f"input_shapes[{value.name!r}] must be positive sizes, got "
                                 f"{shape}")
            dims = value.type.tensor_type.shape.dim
            if len(dims) and len(dims) != len(shape):
                raise ModelError(f"input_shapes[{value.name!r}] = {shape} has {len(shape)} "
                                 f"dimensions, the graph input has {len(dims)}")
            del dims[:]
            for size in shape:
                dims.add().dim_value = size
    return proto


def _value_types(onnx, proto) -> dict:
    """tensor name -> (element type, dims: ints, or names for dynamic ones), from the graph
    and ONNX shape inference (which may fail on operators it does not know: then what the
    graph states)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:   # inference is a help, not a requirement: the graph's own facts stay
        inferred = proto
    found = {}
    graph = inferred.graph
    for value in (*graph.value_info, *graph.input, *graph.output):
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        dims = None
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in tensor.shape.dim]
        found[value.name] = (tensor.elem_type or None, dims)
    return found
