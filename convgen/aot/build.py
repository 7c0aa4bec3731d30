"""``convgen.build``: a model in, a directory of standalone C (or CUDA) out.

    model -> Network (onnx.py, json.py, torch.py; fuse.py) -> a plan per layer (plans.py)
          -> kernel sources (runtime.pipeline.generate, one symbol prefix per layer)
          -> packed weights (pack.py) -> NAME_run's schedule and arena (graph.py)
          -> NAME.h, NAME.c, Makefile, example.c, README.md, build_report.json (emit.py)

Everything that can be wrong with the model is found before anything is compiled or
written: a bad model raises ``ModelError`` (a ValueError naming the node or layer) and
leaves no trace. The CPU kernels are then compiled once (into convgen's cache) to pack the
weights with their own code, and OUT_DIR is written in one step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..core import epilogue
from ..core.limits import check_workload_limits
from ..core.names import MAX_LENGTH, c_identifier, check_c_identifier, unique_c_identifiers
from ..runtime import pipeline
from . import emit, graph, pack, plans
from .model import DTYPE, ConvLayer, Elementwise, ModelError, Network

MAX_NAME = 24          # NAME_<layer>_<suffix> must stay a 63-character identifier
LAYER_SUFFIX = 12      # the longest per-layer suffix: "_OUT_ELEMS" and some margin
ALIGN = 64
# Layer ids that would collide with the API's own names NAME_<x>:
RESERVED = frozenset({
    "create", "destroy", "run", "strerror", "layer", "layer_fn", "layer_info", "tensor_info",
    "run_input", "run_output", "workspace_bytes", "arena_bytes", "weights_bytes", "ctx",
    "options", "cuda_status", "embedded_weights", "cpu_supported", "API", "OK",
    "CONVGEN_VERSION", "TARGET", "NUM_LAYERS", "NUM_INPUTS", "NUM_OUTPUTS", "THREADS",
    "WORKSPACE_BYTES", "ARENA_BYTES", "WEIGHTS_BYTES", "EXTERNAL_WEIGHTS", "WEIGHTS_FILE_BYTES",
    "WEIGHTS_CRC32", "HAS_RUN", "H"})
_RESERVED_PATTERN = re.compile(r"(ERR_.*|(INPUT|OUTPUT)\d+(_.*)?|.*_(IN|OUT)_(RANK|SHAPE|ELEMS)"
                               r"|.*_RESIDUAL)")


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` wrote: the directory, the API's names and the build report."""

    out_dir: Path
    name: str
    target: str
    functions: tuple[str, ...]   # NAME_<layer>, one per layer
    has_run: bool                # NAME_run offered
    report: dict

    def __repr__(self) -> str:
        run = f", {self.name}_run" if self.has_run else ""
        return (f"<convgen.BuildResult {self.name} for {self.target}: {len(self.functions)} "
                f"layer(s){run} in {str(self.out_dir)!r}>")


def build(model, out_dir, target: str = "native", name: str | None = None, *,
          weights: str = "embedded", example_input=None, input_shapes=None, tuning_db=None,
          skip_unsupported: bool = False, threads: int | None = None, arch: str | None = None,
          accuracy: str = "fast") -> BuildResult:
    """Build ``model`` ahead of time into ``out_dir``: standalone C for a CPU target, or
    CUDA for ``target="cuda"``, with a header, a Makefile, an example program and a README.

    ``model``: an ONNX file or ``onnx.ModelProto``; a JSON model (a ``.json`` path or a dict;
    schema in ``convgen.aot.json``); a list of ``(module, input_shape)`` or ``(name, module,
    input_shape)`` of ``convgen.nn``/``torch.nn`` conv modules (or a dict name -> (module,
    shape)); or a ``torch.nn.Module`` with ``example_input``, whose conv layers are found by
    running it. ``target``: native, x86-64-v3, x86-64-v4, generic or cuda (``arch`` sm_80,
    sm_90, ...). ``name``: the C prefix of every symbol (default: the JSON model's name,
    else the model file's stem, else "model"). ``weights``: "embedded" (constant arrays) or
    "external" (``NAME.weights``, read and checked at context creation). ``threads``: the
    OpenMP team each CPU layer is compiled for (default 1 for a named target, this
    machine's cores for native). ``input_shapes``: ONNX graph inputs' shapes where the model
    leaves them dynamic. ``tuning_db``: a tuning database (path or object) whose plans are
    used where it has them. ``skip_unsupported``: leave unsupported nodes out (listed in the
    report) instead of failing. ``accuracy="strict"``: no Winograd.
    """
    if weights not in ("embedded", "external"):
        raise ValueError(f"weights must be 'embedded' or 'external', got {weights!r}")
    chosen = plans.build_target(target, threads, arch)
    network, default_name = load_model(model, example_input, input_shapes, skip_unsupported)
    name = _check_name(name or default_name or "model")
    database = plans.open_tuning_db(tuning_db)
    layers = network.layers
    if not layers:
        raise ModelError("the model has no convolution to build")
    ids = layer_ids([layer.name for layer in layers], name)
    made = _share_kernels([_layer_build(i, layer, ids[i], name, chosen, accuracy, database)
                           for i, layer in enumerate(layers)])
    packed = pack.pack_all(layers, [m["workload"] for m in made], [m["plan"] for m in made],
                           chosen)
    payload, slots = pack.layout(layers, packed)
    schedule = graph.schedule(network) if network.whole_graph is None else None
    context = _context(name, network, chosen, made, packed, slots, payload, schedule,
                       weights == "external")
    report = _report(context, network, made, packed)
    payload_bytes = pack.payload_bytes(payload)
    contents = emit.files(context, _kernel_files(made), report,
                          pack.weights_file(payload) if weights == "external" else None,
                          _rows(payload_bytes))
    written = emit.write_atomically(out_dir, contents)
    return BuildResult(written, name, chosen.name, tuple(m["function"] for m in made),
                       schedule is not None, report)


# -- the model ---------------------------------------------------------------------------------
def load_model(model, example_input=None, input_shapes=None,
               skip_unsupported: bool = False) -> tuple[Network, str | None]:
    """The network of ``model`` (any form ``build`` takes) and the name it suggests."""
    from . import json as json_model
    from . import onnx as onnx_model
    from . import torch as torch_model

    if input_shapes is not None and not isinstance(input_shapes, dict):
        raise TypeError(f"input_shapes must be a dict of graph input name -> shape, got "
                        f"{input_shapes!r}")
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".onnx":
            return onnx_model.load(path, input_shapes, skip_unsupported), _stem(path)
        if path.suffix == ".json":
            network, named = json_model.load(path)
            return network, named or _stem(path)
        raise ValueError(f"model {path.name!r}: expected an .onnx or .json file")
    if type(model).__name__ == "ModelProto":
        return onnx_model.load(model, input_shapes, skip_unsupported), None
    if isinstance(model, dict) and "convgen_model" in model:
        return json_model.load(model)
    if torch_model.is_torch_module(model) and example_input is not None:
        return torch_model.from_traced(model, example_input), None
    if isinstance(model, (list, tuple, dict)):
        return torch_model.from_modules(model), None
    raise TypeError(f"model must be an .onnx or .json path, an onnx.ModelProto, a JSON model "
                    f"dict, a list of (module, input_shape), or a torch.nn.Module with "
                    f"example_input; got {type(model).__name__}")


def conv_layers(model, input_shapes=None) -> list[tuple]:
    """``(name, spec, input_shape, dtype)`` of every convolution a build of ``model`` would
    compile (BatchNorm folded, what it fuses left out): what ``convgen tune MODEL`` tunes, so
    that ``convgen build MODEL --tuning-db`` finds the plans under the same workloads."""
    network, _ = load_model(model, input_shapes=input_shapes, skip_unsupported=True)
    return [(layer.name, layer.spec, layer.input_shape, DTYPE)
            for layer in network.layers]


def _stem(path: Path) -> str | None:
    try:
        return c_identifier(path.stem)[:MAX_NAME]
    except ValueError:
        return None


def _check_name(name: str) -> str:
    check_c_identifier(name)
    if len(name) > MAX_NAME:
        raise ValueError(f"name {name!r} is longer than {MAX_NAME} characters (it prefixes "
                         f"every symbol of the build)")
    return name


def layer_ids(names: list[str], name: str) -> list[str]:
    """C identifiers for the layers: from the model's names, unique, short enough that
    NAME_<layer>_OUT_ELEMS is a valid identifier, never one of the API's own names."""
    budget = MAX_LENGTH - len(name) - 1 - LAYER_SUFFIX
    taken = set(RESERVED)
    result = []
    for unique in unique_c_identifiers(names):
        base = _shortened(unique, budget)
        if _RESERVED_PATTERN.fullmatch(base):   # "INPUT0_SHAPE", "x_OUT_ELEMS": API-like
            base = _shortened(f"layer_{base}_0", budget)
        candidate, count = base, 1
        while candidate in taken or _RESERVED_PATTERN.fullmatch(candidate):
            count += 1
            candidate = _shortened(f"{base}_{count}", budget)
        taken.add(candidate)
        result.append(candidate)
    return result


def _shortened(identifier: str, budget: int) -> str:
    if len(identifier) <= budget:
        return identifier
    digest = hashlib.sha256(identifier.encode()).hexdigest()[:8]
    return check_c_identifier(f"{identifier[:budget - 9]}_{digest}")


# -- one layer -----------------------------------------------------------------------------------
def _layer_build(index: int, layer: ConvLayer, layer_id: str, name: str, chosen, accuracy,
                 database) -> dict:
    try:
        check_workload_limits(layer.workload)
    except ValueError as exc:
        raise ModelError(f"layer {layer_id}: {exc}") from exc
    workload = plans.plan_workload(layer.workload, chosen)
    choice = plans.choose(workload, chosen, accuracy, database)
    prefix = f"{name}_{index}"
    return {"layer": layer, "id": layer_id, "function": f"{name}_{layer_id}", "prefix": prefix,
            "workload": workload, "plan": choice.plan, "choice": choice,
            "sources": _sources(chosen, workload, choice.plan, prefix)}


def _sources(chosen, workload, plan, prefix: str):
    """A kernel's sources under ``prefix``. The CPU kernels go through the pipeline (they are
    compiled here anyway, to pack the weights); a CUDA build renders without the pipeline's
    cache key, whose parts name nvcc's version: the sources need no nvcc on the build
    machine, only on the one that runs make."""
    if not chosen.cuda:
        return pipeline.generate(chosen.backend, workload, plan, chosen.target, prefix)[1]
    return chosen.backend.render(workload, plan, chosen.target, check_c_identifier(prefix))


def _share_kernels(made: list[dict]) -> list[dict]:
    """Layers of one workload and plan (a network's repeated blocks) share the first one's
    kernel: its prefix, and no sources of their own."""
    first: dict = {}
    for m in made:
        key = (m["workload"], str(m["plan"]))
        if key in first:
            m.update(prefix=first[key]["prefix"], sources=(), shares=first[key]["id"])
        else:
            first[key] = m
    return made


def _kernel_files(made: list[dict]) -> list[tuple[str, str]]:
    return [(f"kernels/{m['id']}/{file_name}", text)
            for m in made for file_name, text in m["sources"]]


def _rows(data: bytes, per_line: int = 8):
    """The payload as lines of 32-bit hex words, generated lazily."""
    words = len(data) // 4
    hexed = memoryview(data)
    for start in range(0, words, per_line):
        chunk = bytes(hexed[start * 4:min(words, start + per_line) * 4])
        yield ", ".join(f"0x{int.from_bytes(chunk[i:i + 4], 'little'):08x}u"
                        for i in range(0, len(chunk), 4))


# -- the template context --------------------------------------------------------------------------
def _aligned(size: int, to: int = ALIGN) -> int:
    return -(-size // to) * to


_BUILTIN_FEATURES = {"avx": "avx", "avx2": "avx2", "fma": "fma", "bmi1": "bmi", "bmi2": "bmi2",
                     "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd",
                     "avx512dq": "avx512dq", "avx512vl": "avx512vl"}


def _target_context(chosen) -> dict:
    target = chosen.target
    if chosen.cuda:
        return {"name": chosen.name, "description": f"cuda {target.cuda.name} (nvcc; plans for "
                f"{target.cuda.sm_count} SMs, float32 without TF32)", "cuda": True,
                "arch": target.cuda.name, "threads": None, "threads_from": "", "features": [],
                "std_flag": "", "isa_flags": list(target.arch_flags)}
    isa = target.isa_row
    features = [_BUILTIN_FEATURES[f] for f in isa.features if f in _BUILTIN_FEATURES]
    flags = " ".join(target.arch_flags)
    description = {"native": f"native ({isa.name}, {flags}: the build machine's ISA)",
                   "generic": "generic (portable C99, no ISA flags)"}.get(
                       chosen.name, f"{chosen.name} ({isa.name}, {flags})")
    return {"name": chosen.name, "description": description,
            "cuda": False, "arch": None, "threads": chosen.threads,
            "threads_from": chosen.threads_from, "features": features,
            "std_flag": "-std=c99" if target.isa == "generic" else "-std=c11",
            "isa_flags": list(target.arch_flags)}


def _steps(steps) -> list[dict]:
    return [{"op": s.op, "args": list(s.args)} for s in steps]


def _elementwise(index: int, steps, comment: str) -> dict:
    """An elementwise node of NAME_run (or, on CUDA, a layer's epilogue run as one)."""
    return {"index": index, "steps": _steps(steps), "comment": comment,
            "text": epilogue.describe(steps), "residual": epilogue.has_residual(steps),
            "uses_math": epilogue.uses_math(steps)}


def _elementwise_vector(chosen, elementwise: list[dict]) -> dict:
    """The vectors NAME.c's elementwise nodes run on: the ISA's widest (float32), plain C
    on the generic target; math: float32 e^x and tanh on vectors (not libm's)."""
    if chosen.cuda:
        return {"lanes": 1, "bytes": 4, "math": False}
    vector_bytes = chosen.target.isa_row.vector_bytes
    lanes = max(vector_bytes // 4, 1)
    return {"lanes": lanes, "bytes": lanes * 4,
            "math": lanes > 1 and any(e["uses_math"] for e in elementwise)}


def _context(name, network: Network, chosen, made, packed, slots, payload, schedule,
             external: bool) -> dict:
    elementwise = []
    standalone = [n for n in network.nodes if isinstance(n, Elementwise)]
    for node in standalone:
        elementwise.append(_elementwise(len(elementwise), node.steps,
                                        f"elementwise node {node.name}"))
    layers = []
    for m, pack_of, slot in zip(made, packed, slots):
        layer: ConvLayer = m["layer"]
        ew = None
        if chosen.cuda and layer.epilogue:
            ew = len(elementwise)
            elementwise.append(_elementwise(ew, layer.epilogue,
                                            f"the epilogue of layer {m['id']}"))
        layers.append({
            "id": m["id"], "function": m["function"], "prefix": m["prefix"],
            "model_name": layer.name, "op": layer.spec.op, "spec": layer.spec.describe(),
            "plan": str(m["plan"]), "in_shape": list(layer.input_shape),
            "out_shape": list(layer.output_shape), "in_elems": math.prod(layer.input_shape),
            "out_elems": math.prod(layer.output_shape), "residual": layer.residual is not None,
            "epilogue": _steps(layer.epilogue), "fused": list(layer.fused), "ew": ew,
            "w_offset": slot.weights, "b_offset": slot.bias,
            "packed_bytes": slot.weight_count * 4, "workspace_bytes": pack_of.workspace_bytes})
    if chosen.cuda:   # the scratch a layer with a residual computes into
        workspace = max([e["out_elems"] * 4 for e in layers if e["residual"]], default=0)
    else:
        workspace = max(p.workspace_bytes for p in packed)
    activations = _aligned(workspace)
    data = pack.payload_bytes(payload)
    context = {
        "name": name, "version": __version__, "model": network.description,
        "target": _target_context(chosen), "layers": layers, "elementwise": elementwise,
        "uses_math": any(e["uses_math"] for e in elementwise),
        "ew_vector": _elementwise_vector(chosen, elementwise),
        "kernel_sources": [f"kernels/{m['id']}/{f}" for m in made for f, _ in m["sources"]],
        "kernels": [{"prefix": e["prefix"], "packed_bytes": e["packed_bytes"]}
                    for e, m in zip(layers, made) if "shares" not in m],
        "workspace_bytes": workspace, "activations_offset": activations,
        "arena_bytes": activations + (schedule.arena_bytes if schedule else 0),
        "weights": {"external": external, "bytes": len(data), "floats": payload.size,
                    "crc32": pack.crc32(data), "file_bytes": pack.HEADER_BYTES + len(data),
                    "header_bytes": pack.HEADER_BYTES, "version": pack.FORMAT_VERSION,
                    "magic": list(pack.MAGIC)},
        "graph": _graph_context(network, schedule, layers, made) if schedule else None,
        "graph_reason": network.whole_graph or "",
    }
    if not context["arena_bytes"]:
        context["arena_bytes"] = ALIGN
    return context


def _graph_context(network: Network, schedule, layers, made) -> dict:
    def tensors(names):
        ids = unique_c_identifiers(names)
        shapes = {**network.inputs, **{n.output: (n.output_shape if isinstance(n, ConvLayer)
                                                  else n.shape) for n in network.nodes}}
        return [{"id": i, "shape": list(shapes[t]), "elems": math.prod(shapes[t]),
                 "model_name": t} for i, t in zip(ids, names)]

    operations = []
    for op in schedule.operations:
        entry = dataclasses.asdict(op)
        if op.kind == "conv":
            what = f"layer {layers[op.node]['id']}"
        elif op.kind == "elementwise":
            what = f"elementwise node {op.node}"
        else:
            what = "copy"
        entry["comment"] = what + (f" ({op.note})" if op.note else "")
        operations.append(entry)
    return {"inputs": tensors(list(network.inputs)), "outputs": tensors(network.outputs),
            "operations": operations, "activation_bytes": schedule.arena_bytes,
            "naive_bytes": schedule.naive_bytes}


def _report(context: dict, network: Network, made, packed) -> dict:
    layers = []
    for entry, m, pack_of in zip(context["layers"], made, packed):
        layer: ConvLayer = m["layer"]
        layers.append({
            "function": entry["function"], "model_name": layer.name, "op": entry["op"],
            "layer": entry["spec"], "input": layer.input, "output": layer.output,
            "input_shape": entry["in_shape"], "output_shape": entry["out_shape"],
            "fused": entry["fused"], "epilogue": entry["epilogue"],
            "residual": layer.residual, "plan": entry["plan"],
            "plan_source": m["choice"].source, "plan_note": m["choice"].note,
            "kernel": f"kernels/{m.get('shares', m['id'])}",
            "packed": pack_of.how, "packed_weight_bytes": entry["packed_bytes"],
            "workspace_bytes": entry["workspace_bytes"], "source": layer.source})
    graph_part = {"run": context["graph"] is not None, "reason": context["graph_reason"] or None}
    if context["graph"]:
        g = context["graph"]
        graph_part.update({
            "inputs": [{"name": t["model_name"], "c_name": t["id"], "shape": t["shape"]}
                       for t in g["inputs"]],
            "outputs": [{"name": t["model_name"], "c_name": t["id"], "shape": t["shape"]}
                        for t in g["outputs"]],
            "operations": [op["comment"] for op in g["operations"]],
            "activation_bytes": g["activation_bytes"], "naive_bytes": g["naive_bytes"]})
    target = context["target"]
    return {
        "convgen_build": 1, "convgen_version": __version__, "name": context["name"],
        "model": network.description,
        "target": {"name": target["name"], "description": target["description"],
                   "threads": target["threads"], "threads_from": target["threads_from"] or None,
                   "arch": target["arch"]},
        "weights": {"mode": "external" if context["weights"]["external"] else "embedded",
                    "bytes": context["weights"]["bytes"],
                    "crc32": f"0x{context['weights']['crc32']:08x}"},
        "workspace_bytes": context["workspace_bytes"], "arena_bytes": context["arena_bytes"],
        "layers": layers, "graph": graph_part,
        "skipped": [dataclasses.asdict(s) for s in network.skipped],
    }
