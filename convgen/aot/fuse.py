"""From a model's nodes to the network a build compiles: convolutions with what follows them
fused in, elementwise nodes for the rest, in topological order.

A loader hands over ``RawNode``s whose constants are already resolved (weights, BatchNorm
statistics, Clip bounds). Fusion follows one rule: a tensor can be fused past only when
exactly one node reads it and it is not a graph output, so nothing that needs the
intermediate value loses it. Starting at each convolution:

1. a BatchNormalization that alone reads its output is folded into its weights and bias;
2. then, while the chain's tensor has that one reader: Relu, Clip, LeakyRelu, Sigmoid,
   Tanh become epilogue steps, an Add of a same-shaped tensor the ``add`` step (once),
   and SiLU spelled as ``x * Sigmoid(x)`` (the chain's tensor read by exactly that
   Sigmoid and that Mul) the ``silu`` step.

Activations and Adds left over become Elementwise nodes (grown the same way), which only
``NAME_run`` executes. Anything else is unsupported: an error naming the node, or with
``skip_unsupported`` a line of the build report (and no ``NAME_run``).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

from ..core.epilogue import Step
from .model import (
    ConvLayer,
    Elementwise,
    ModelError,
    Network,
    Skipped,
    fold_batch_norm,
    shown,
    where,
)

UNARY = ("relu", "clip", "leaky_relu", "sigmoid", "tanh")


@dataclass
class RawNode:
    """One node of the model with its constants resolved. ``op`` is one of "conv",
    "batch_norm", "relu", "clip", "leaky_relu", "sigmoid", "tanh", "mul", "add",
    "identity" or "unsupported" (``params["reason"]`` says why)."""

    name: str
    op: str
    model_op: str                  # the model's spelling ("Conv", "Relu"), for messages
    inputs: tuple[str, ...]        # tensors computed at run time (constants resolved)
    outputs: tuple[str, ...]
    params: dict = field(default_factory=dict)


def step_of(node: RawNode) -> Step:
    """The epilogue step of a unary activation node."""
    if node.op == "clip":
        return Step("clip", (node.params.get("min"), node.params.get("max")))
    if node.op == "leaky_relu":
        return Step("leaky_relu", (node.params["alpha"],))
    return Step(node.op)


class _Fuser:
    def __init__(self, nodes: list[RawNode], outputs: list[str], shapes: dict):
        self.nodes, self.outputs, self.shapes = nodes, set(outputs), shapes
        self.readers: dict[str, list[int]] = {}
        self.producers: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for tensor in dict.fromkeys(node.inputs):
                self.readers.setdefault(tensor, []).append(i)
            for tensor in node.outputs:
                self.producers.setdefault(tensor, i)
        self.used: set[int] = set()

    def only_reader(self, tensor: str) -> int | None:
        """The one node reading ``tensor``, if it is fusable past."""
        readers = self.readers.get(tensor, [])
        if tensor in self.outputs or len(readers) != 1 or readers[0] in self.used:
            return None
        return readers[0]

    def silu_after(self, tensor: str) -> tuple[int, int] | None:
        """(sigmoid, mul) if ``tensor`` is read by exactly ``tensor * Sigmoid(tensor)``."""
        readers = self.readers.get(tensor, [])
        if tensor in self.outputs or len(readers) != 2 or set(readers) & self.used:
            return None
        return self.silu_pattern(tensor, readers)

    def silu_pattern(self, tensor: str, readers) -> tuple[int, int] | None:
        sigmoid = next((i for i in readers if self.nodes[i].op == "sigmoid"
                        and self.nodes[i].inputs == (tensor,)), None)
        if sigmoid is None:
            return None
        gate = self.nodes[sigmoid].outputs[0]
        mul = self.only_reader(gate)
        if mul is None or mul not in readers or mul == sigmoid:
            return None
        if sorted(self.nodes[mul].inputs) != sorted((tensor, gate)):
            return None
        return sigmoid, mul

    def grow(self, tensor: str, steps: list[Step], residual: str | None,
             fused: list[str]) -> tuple[str, str | None]:
        """Fuse what follows ``tensor`` into ``steps``; the chain's last tensor and the
        residual."""
        while True:
            nxt = self.only_reader(tensor)
            node = self.nodes[nxt] if nxt is not None else None
            if node is not None and node.op == "identity":
                pass   # the same values under another name
            elif node is not None and node.op in UNARY:
                steps.append(step_of(node))
            elif node is not None and node.op == "add" and residual is None \
                    and self._residual_of(node, tensor) is not None:
                residual = self._residual_of(node, tensor)
                steps.append(Step("add"))
            elif (silu := self.silu_after(tensor)) is not None:
                sigmoid, mul = silu
                self.used.add(sigmoid)
                fused.append(_label(self.nodes[sigmoid]))
                node, nxt = self.nodes[mul], mul
                steps.append(Step("silu"))
            else:
                return tensor, residual
            self.used.add(nxt)
            fused.append(_label(node))
            tensor = node.outputs[0]

    def _residual_of(self, add: RawNode, tensor: str) -> str | None:
        if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            return None
        other = add.inputs[1] if add.inputs[0] == tensor else add.inputs[0]
        shape, other_shape = self.shapes.get(tensor), self.shapes.get(other)
        return other if shape is not None and shape == other_shape else None

    # -- convolutions ------------------------------------------------------------------------
    def conv(self, index: int) -> ConvLayer:
        node = self.nodes[index]
        self.used.add(index)
        p = node.params
        spec, weight, bias = p["spec"], p["weight"], p["bias"]
        fused = list(p.get("fused", ()))
        tensor = node.outputs[0]
        nxt = self.only_reader(tensor)
        if nxt is not None and self.nodes[nxt].op == "batch_norm":
            bn = self.nodes[nxt]
            weight, bias = fold_batch_norm(spec, weight, bias, **bn.params)
            if not spec.bias:
                spec = _with_bias(spec)
            self.used.add(nxt)
            fused.append(_label(bn))
            tensor = bn.outputs[0]
        steps: list[Step] = []
        out, residual = self.grow(tensor, steps, None, fused)
        return ConvLayer(node.name, spec, p["input_shape"], weight, bias, node.inputs[0], out,
                         tuple(steps), residual, tuple(fused), dict(p.get("source", {})))

    # -- what is left -----------------------------------------------------------------------
    def elementwise(self, index: int) -> Elementwise | None:
        """An Elementwise node starting at ``index``, or None if that node is no start."""
        node = self.nodes[index]
        fused: list[str] = []
        if node.op in UNARY:
            if node.op == "sigmoid" and self._standalone_silu(index):
                return None   # its Mul starts the node
            steps, source, residual = [step_of(node)], node.inputs[0], None
        elif node.op == "add" and len(node.inputs) == 2:
            source, residual = node.inputs
            if self.shapes.get(source) is None or self.shapes.get(source) != \
                    self.shapes.get(residual):
                return None
            steps = [Step("add")]
        elif node.op == "mul" and (silu := self._mul_as_silu(index)) is not None:
            source, sigmoid = silu
            self.used.add(sigmoid)
            steps, residual = [Step("silu")], None
        elif node.op == "identity":
            steps, source, residual = [], node.inputs[0], None
        else:
            return None
        shape = self.shapes.get(source)
        if shape is None:
            return None
        self.used.add(index)
        out, residual = self.grow(node.outputs[0], steps, residual, fused)
        return Elementwise(node.name, tuple(steps), source, out, tuple(shape), residual)

    def _standalone_silu(self, index: int) -> bool:
        gate = self.nodes[index].outputs[0]
        mul = self.only_reader(gate)
        return mul is not None and self._mul_as_silu(mul) is not None

    def _mul_as_silu(self, index: int) -> tuple[str, int] | None:
        """(x, sigmoid node) if node ``index`` is ``x * Sigmoid(x)``."""
        node = self.nodes[index]
        if len(node.inputs) != 2:
            return None
        for gate, x in (node.inputs, node.inputs[::-1]):
            producer = self.producers.get(gate)
            if producer is not None and producer not in self.used \
                    and self.nodes[producer].op == "sigmoid" \
                    and self.nodes[producer].inputs == (x,) \
                    and self.only_reader(gate) == index:
                return x, producer
        return None


def _with_bias(spec):
    return replace(spec, bias=True)


def _label(node: RawNode) -> str:
    return f"{node.model_op} {shown(node.name)}"


def fuse(nodes: list[RawNode], inputs: dict, outputs: list[str], shapes: dict,
         skip_unsupported: bool = False, description: str = "") -> Network:
    """The network of ``nodes``: convolutions with what follows fused in, the rest as
    Elementwise nodes, in topological order (ModelError for what cannot be built)."""
    fuser = _Fuser(nodes, outputs, shapes)
    built: dict[int, object] = {}
    for i, node in enumerate(nodes):
        if node.op == "conv":
            built[i] = fuser.conv(i)
    skipped = []
    for i in range(len(nodes)):
        if i in fuser.used:
            continue
        made = fuser.elementwise(i)
        if made is not None:
            built[i] = made
    for i, node in enumerate(nodes):
        if i not in fuser.used:
            skipped.append(Skipped(node.name, node.model_op, _why_unsupported(node, shapes)))
    if skipped and not skip_unsupported:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more unsupported node(s))" if len(skipped) > 1 else ""
        raise ModelError(f"{where('node', first.name, first.op)}: {first.reason}{more}; build "
                         f"with skip_unsupported=True (--skip-unsupported) to leave such nodes "
                         f"out and build the convolutions alone")
    return assemble([built[i] for i in sorted(built)], inputs, outputs, skipped, description)


def assemble(nodes: list, inputs: dict, outputs: list[str], skipped: list[Skipped],
             description: str) -> Network:
    """The network of fused ``nodes`` (in model order): topologically ordered; NAME_run
    offered only when nothing was skipped and every tensor read is computed."""
    ordered = _topological(nodes, inputs)
    network = Network(ordered, dict(inputs), list(outputs), list(skipped), None, description)
    if skipped:
        return convolutions_only(network)
    network.whole_graph = _whole_graph_problem(network)
    return network if network.whole_graph is None else convolutions_only(network)


def _why_unsupported(node: RawNode, shapes: dict) -> str:
    if node.op == "unsupported":
        return node.params["reason"]
    if node.op == "batch_norm":
        return ("a BatchNormalization is supported only right after a convolution whose "
                "output it alone reads (it is folded into the convolution's weights)")
    if node.op == "mul":
        return "Mul is supported only as SiLU, x * Sigmoid(x)"
    if node.op == "add":
        return (f"Add needs two tensors of one known shape (no broadcasting), got "
                f"{[shapes.get(t) for t in node.inputs]}")
    return f"the shape of its input {shown(node.inputs[0])} is unknown"


def convolutions_only(network: Network) -> Network:
    """Without NAME_run, Elementwise nodes have nothing to run them: list them as skipped."""
    reason = network.whole_graph or "nodes were left out"
    for node in network.nodes:
        if isinstance(node, Elementwise):
            network.skipped.append(Skipped(node.name, "elementwise", (
                "runs only in NAME_run, which this build does not offer (" + reason + ")")))
    network.nodes = [n for n in network.nodes if isinstance(n, ConvLayer)]
    network.whole_graph = network.whole_graph or "nodes were left out (see skipped)"
    return network


def _reads(node) -> tuple[str, ...]:
    return (node.input,) + ((node.residual,) if node.residual else ())


def _topological(nodes: list, inputs: dict) -> list:
    """Kahn's order over the fused nodes, ties broken by model order (deterministic).
    Tensors nobody here produces (graph inputs, or outputs of skipped nodes) are ready."""
    producer = {n.output: i for i, n in enumerate(nodes)}
    waiting = [sum(1 for t in set(_reads(n)) if t in producer) for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in set(_reads(node)):
            if t in producer:
                readers.setdefault(producer[t], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in readers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i])
        raise ModelError(f"{where('node', stuck.name)}: the graph has a cycle through it")
    return order


def _whole_graph_problem(network: Network) -> str | None:
    """None if NAME_run can run the network: every tensor read is a graph input or made by
    a node, every graph output likewise; else the reason."""
    made = set(network.inputs) | {n.output for n in network.nodes}
    for node in network.nodes:
        for tensor in _reads(node):
            if tensor not in made:
                return f"{where('tensor', tensor)} read by {shown_node(node)} is not computed"
    for tensor in network.outputs:
        if tensor not in made:
            return f"graph output {shown(tensor)} is not computed"
    if not network.inputs:
        return "the graph has no inputs"
    return None


def shown_node(node) -> str:
    return where("node", node.name)
