"""The whole graph as ``NAME_run`` executes it: operations in topological order, and every
intermediate tensor placed in one activation arena, a buffer reused once its tensor is dead.

Where tensors live: graph inputs in the caller's input buffers, graph outputs in the
caller's output buffers (read from there by later nodes too), everything else at an
offset in the arena.

A fused residual is read from the output buffer (the kernels add what ``out`` holds), so a
convolution with a residual either computes in place in the residual's buffer -- when the
residual is an intermediate that dies at this node and is not also the convolution's
input -- or its output is first filled with a copy of the residual. An elementwise node
computes in place in its input's (or residual's) buffer when that dies there.

Offsets: the greedy-by-size placement of TFLite's arena planner -- largest buffer first,
each at the lowest 64-byte aligned offset free over its whole lifetime -- which is
deterministic and within a few percent of optimal on real networks.
"""
from __future__ import annotations

from dataclasses import dataclass

from .model import ConvLayer, Elementwise, Network

ALIGN = 64   # bytes: a cache line, and enough for every vector load
ITEM = 4     # float32


@dataclass(frozen=True)
class Place:
    """Where a tensor lives: ``inputs[index]``, ``outputs[index]`` or ``arena + offset``
    (bytes)."""

    kind: str          # "input", "output" or "arena"
    index: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Operation:
    """One step of NAME_run: a convolution layer, an elementwise node, or a copy."""

    kind: str                  # "conv", "elementwise" or "copy"
    node: int                  # index in layers (conv) or elementwise nodes; -1 for a copy
    source: Place
    destination: Place
    elements: int              # of the destination
    residual: Place | None = None   # elementwise only (convolutions read it from out)
    note: str = ""


@dataclass(frozen=True)
class Schedule:
    operations: tuple[Operation, ...]
    arena_bytes: int           # the activations' arena (besides the kernels' workspace)
    naive_bytes: int           # every intermediate in its own buffer, for the report
    places: dict               # tensor name -> Place


def _elements(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


class _Groups:
    """Union-find over tensors that share one buffer (in-place computation)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, t: str) -> str:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(b)] = self.find(a)


def schedule(network: Network) -> Schedule:
    """The operations and arena plan of a network that NAME_run can run."""
    layers = [n for n in network.nodes if isinstance(n, ConvLayer)]
    elementwise = [n for n in network.nodes if isinstance(n, Elementwise)]
    shapes = dict(network.inputs)
    for node in network.nodes:
        shapes[node.output] = node.output_shape if isinstance(node, ConvLayer) else node.shape
    inputs = {name: i for i, name in enumerate(network.inputs)}
    homes: dict[str, int] = {}   # tensor -> the output buffer it is computed in
    for k, name in enumerate(network.outputs):
        if name not in inputs and name not in homes:
            homes[name] = k
    last_reader: dict[str, int] = {}
    for i, node in enumerate(network.nodes):
        for t in (node.input, node.residual):
            if t:
                last_reader[t] = i

    def intermediate(t: str) -> bool:
        return t not in inputs and t not in homes

    def dies_at(t: str, i: int) -> bool:
        return intermediate(t) and last_reader.get(t) == i

    groups = _Groups()
    plan: list[tuple] = []   # (kind, node index, source, destination, residual, note)
    for i, node in enumerate(network.nodes):
        out = node.output
        if isinstance(node, ConvLayer):
            index = layers.index(node)
            if node.residual:
                if intermediate(out) and dies_at(node.residual, i) and node.residual != node.input:
                    groups.join(node.residual, out)
                    note = "in place in the residual's buffer"
                else:
                    plan.append(("copy", -1, node.residual, out, None,
                                 "the residual into the output, which the kernel adds"))
                    note = ""
                plan.append(("conv", index, node.input, out, None, note))
            else:
                plan.append(("conv", index, node.input, out, None, ""))
        else:
            index = elementwise.index(node)
            note = ""
            if intermediate(out):
                for t in (node.input, node.residual):
                    if t and dies_at(t, i):
                        groups.join(t, out)
                        note = "in place"
                        break
            plan.append(("elementwise", index, node.input, out, node.residual, note))
    for k, name in enumerate(network.outputs):
        if homes.get(name) != k:
            plan.append(("copy", -1, name, f"\0output{k}", None, "a repeated graph output"))
    return _place(plan, shapes, inputs, homes, groups)


def _place(plan, shapes, inputs, homes, groups: _Groups) -> Schedule:
    """Lifetimes (in operations) of the arena buffers, then their offsets."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for i, (_, _, source, destination, residual, _) in enumerate(plan):
        for t in (source, residual):
            if t and t in shapes and t not in inputs and t not in homes:
                last[groups.find(t)] = i
        if destination in shapes and destination not in homes:
            g = groups.find(destination)
            first.setdefault(g, i)
            last[g] = max(last.get(g, i), i)
            sizes[g] = max(sizes.get(g, 0), _elements(shapes[destination]) * ITEM)
    offsets = _offsets({g: (first[g], last[g], sizes[g]) for g in sizes})
    places = {t: Place("input", k) for t, k in inputs.items()}
    places.update({t: Place("output", k) for t, k in homes.items()})
    for t in shapes:
        if t not in places and groups.find(t) in offsets:
            places[t] = Place("arena", 0, offsets[groups.find(t)])
    operations = []
    for kind, node, source, destination, residual, note in plan:
        if destination.startswith("\0output"):
            k = int(destination[len("\0output"):])
            target, elements = Place("output", k), _elements(shapes[source])
        else:
            target, elements = places[destination], _elements(shapes[destination])
        operations.append(Operation(kind, node, places[source], target, elements,
                                    places[residual] if residual else None, note))
    arena = max((offsets[g] + _aligned(s) for g, s in sizes.items()), default=0)
    naive = sum(_aligned(_elements(shapes[t]) * ITEM) for t, p in places.items()
                if p.kind == "arena")   # every intermediate in a buffer of its own
    return Schedule(tuple(operations), arena, naive, places)


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _offsets(buffers: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    """Greedy by size: the largest buffer first, each at the lowest aligned offset that no
    placed buffer alive at the same time occupies."""
    order = sorted(buffers, key=lambda g: (-buffers[g][2], buffers[g][0], g))
    placed: list[tuple[int, int, int, int]] = []   # (offset, end, first, last)
    offsets = {}
    for g in order:
        begin, end, size = buffers[g]
        size = _aligned(size)
        busy = sorted((o, e) for o, e, f, la in placed if f <= end and begin <= la)
        offset = 0
        for o, e in busy:
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[g] = offset
        placed.append((offset, offset + size, begin, end))
    return offsets
