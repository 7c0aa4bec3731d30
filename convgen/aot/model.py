"""What every model loader produces: a network of fused convolution layers and elementwise
nodes between named tensors, with the model's own names kept for messages and reports.

The loaders (``onnx.py``, ``json.py``, ``torch.py``) resolve everything a model file
leaves open -- attributes, shapes, weights, which nodes fold into which layer -- so that
what follows (planning, packing, the arena plan, the sources) never looks at the model
format again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.epilogue import Step
from ..core.spec import ConvSpec, Workload

DTYPE = "float32"   # what a deployed build computes in: the example and the header are float
NAME_SHOWN = 60     # characters of a model's node name quoted in a message


class ModelError(ValueError):
    """A model that cannot be built; the message names the node (or layer) and the rule."""


def shown(name: str) -> str:
    """A node name as a message quotes it: at most NAME_SHOWN characters (a hostile name
    may be 10 kB), the rest counted."""
    if len(name) <= NAME_SHOWN:
        return repr(name)
    return f"{name[:NAME_SHOWN]!r}... ({len(name)} characters)"


def where(kind: str, name: str, op: str | None = None) -> str:
    """'node 'conv1' (Conv)' or 'layer 'stem'': the start of every model error."""
    return f"{kind} {shown(name)}" + (f" ({op})" if op else "")


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """One convolution with everything fused into it: a folded BatchNorm (already in
    ``weight``/``bias``), then ``epilogue`` applied at the store; an ``add`` step adds the
    tensor ``residual``."""

    name: str                          # the model's name for it (node or layer name)
    spec: ConvSpec
    input_shape: tuple[int, ...]       # batched: (N, C, *spatial)
    weight: np.ndarray                 # float32, PyTorch's layout, BatchNorm folded in
    bias: np.ndarray | None            # float32 (out_channels,) or None
    input: str                         # tensor names
    output: str
    epilogue: tuple[Step, ...] = ()
    residual: str | None = None
    fused: tuple[str, ...] = ()        # what was folded or fused in, for the report
    source: dict = field(default_factory=dict)   # e.g. {"weight": initializer name}

    @property
    def workload(self) -> Workload:
        return Workload(self.spec, self.input_shape, DTYPE, self.epilogue)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.workload.output_shape


@dataclass(frozen=True)
class Elementwise:
    """Activations (and an Add) that no convolution could take into its epilogue:
    ``output = steps(input, residual)`` element by element (NAME_run only)."""

    name: str
    steps: tuple[Step, ...]
    input: str
    output: str
    shape: tuple[int, ...]
    residual: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A node left out of the build (``skip_unsupported``), and why."""

    name: str
    op: str
    reason: str


@dataclass
class Network:
    """The model as the build sees it. ``nodes`` are ConvLayers and Elementwise nodes in
    the model's order; ``inputs`` and ``outputs`` are the graph's tensors (for NAME_run),
    ``shapes`` every tensor's shape known. ``whole_graph`` is None when every node became
    one of ``nodes`` (NAME_run is offered), else the reason it is not."""

    nodes: list
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    whole_graph: str | None = None
    description: str = ""           # where the model came from, for the generated headers

    @property
    def layers(self) -> list[ConvLayer]:
        return [n for n in self.nodes if isinstance(n, ConvLayer)]


def fold_batch_norm(spec: ConvSpec, weight: np.ndarray, bias: np.ndarray | None,
                    scale: np.ndarray, shift: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNormalization after a convolution folded into its weights and bias, in
    float64: ``w' = w * s``, ``b' = (b - mean) * s + shift`` with ``s = scale /
    sqrt(var + eps)`` per output channel."""
    s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w = np.asarray(weight, np.float64)
    if spec.transposed:   # (in, out/groups, *k): output channel g * cout_pg + j on axis 1
        g, cin_pg, cout_pg = spec.groups, spec.cin_per_group, spec.cout_per_group
        grouped = w.reshape(g, cin_pg, cout_pg, *spec.kernel_size)
        grouped = grouped * s.reshape(g, 1, cout_pg, *(1,) * spec.ndim)
        w = grouped.reshape(w.shape)
    else:
        w = w * s.reshape(-1, *(1,) * (spec.ndim + 1))
    b = np.zeros(spec.out_channels) if bias is None else np.asarray(bias, np.float64)
    b = (b - np.asarray(mean, np.float64)) * s + np.asarray(shift, np.float64)
    return w.astype(np.float32), b.astype(np.float32)


def as_float32(array, what: str) -> np.ndarray:
    """A weight as a C-ordered float32 array; ModelError unless it holds floats."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise ModelError(f"{what}: weights must be floating point, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)
