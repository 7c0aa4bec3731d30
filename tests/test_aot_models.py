"""Ahead-of-time builds: the model formats and what can go wrong with them.

- ONNX built with onnx.helper (auto_pad SAME_UPPER / SAME_LOWER / VALID / NOTSET, pads,
  strides, dilations, group, ConvTranspose pads and output_shape, Clip's opset-13 form),
  against ONNX's reference evaluator; ConvTranspose's pads mapped exactly;
- the JSON schema (.npz and .safetensors weights, BatchNorm, epilogues, a residual) and
  conv modules given in Python, built, compiled and run against torch;
- bad models (a missing initializer, a dynamic shape, an unsupported op, mismatched weight
  shapes, hostile node names): a clear error naming the node, nothing written;
- the build itself: byte-identical output, OUT_DIR written atomically, the tuning database,
  layer names, the arena plan, threads and targets, the command line.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convgen
import test_aot
from convgen.aot import ModelError, build, conv_layers, emit, graph, load_model, pack, plans
from convgen.aot.build import layer_ids
from convgen.aot.model import Elementwise, Network
from convgen.core.epilogue import Step
from convgen.core.layers import spec_from_op
from convgen.core.reference import convolve
from convgen.core.spec import Workload
from helpers import rel_l2
from test_aot import make, run_example

zoo_files = test_aot.zoo_files   # the zoo model's fixture (tests/test_aot.py)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402


# -- ONNX built by hand -------------------------------------------------------------------------
def _conv_model(nodes, initializers, inputs, outputs, opset=17):
    graph_ = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                        for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in initializers.items()])
    return helper.make_model(graph_, opset_imports=[helper.make_opsetid("", opset)])


def _hand_model(rng):
    """Every node's output is a graph output: NAME_run is compared with the reference."""
    w = {n: rng.standard_normal(s) * 0.3 for n, s in {
        "w_up": (6, 4, 3, 3), "b_up": (6,), "w_low": (6, 4, 4, 3), "w_valid": (6, 2, 3, 2),
        "w_dw": (4, 1, 3, 3), "b_dw": (4,), "w_t": (4, 3, 4, 4), "b_t": (3,),
        "w_t2": (4, 2, 3, 3)}.items()}
    w["lo"], w["hi"] = np.array(-0.5), np.array(0.75)
    nodes = [
        helper.make_node("Conv", ["x", "w_up", "b_up"], ["same_upper"], "same_upper",
                         auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Conv", ["x", "w_low"], ["low"], "same_lower", auto_pad="SAME_LOWER",
                         dilations=[2, 1]),
        helper.make_node("Relu", ["low"], ["same_lower_relu"], "relu"),
        helper.make_node("Conv", ["x", "w_valid"], ["valid"], "valid_grouped",
                         auto_pad="VALID", group=2, strides=[1, 2]),
        helper.make_node("Conv", ["x", "w_dw", "b_dw"], ["dw"], "depthwise_asym",
                         pads=[1, 0, 2, 1], group=4),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["dw_clip"], "clip13"),
        helper.make_node("ConvTranspose", ["x", "w_t", "b_t"], ["t_same"], "t_same_upper",
                         auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("ConvTranspose", ["x", "w_t2"], ["t_pads"], "t_asym_pads",
                         pads=[2, 1, 1, 1], strides=[2, 2], output_padding=[0, 1]),
    ]
    outputs = ["same_upper", "same_lower_relu", "valid", "dw_clip", "t_same", "t_pads"]
    return _conv_model(nodes, w, {"x": (1, 4, 9, 11)}, outputs), outputs


def test_onnx_attributes_match_the_onnx_reference(tmp_path):
    rng = np.random.default_rng(3)
    model, outputs = _hand_model(rng)
    result = build(model, tmp_path / "hand", target="generic", name="hand")
    assert result.has_run and len(result.functions) == 6
    make(tmp_path / "hand", "CFLAGS=-O2 -Wall -Wextra -Werror -pedantic")
    x = rng.standard_normal((1, 4, 9, 11)).astype(np.float32)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    x.tofile(tmp_path / "in" / "graph.x.in.bin")
    run_example(tmp_path / "hand" / "example", "--graph", tmp_path / "in", tmp_path / "out")
    expected = ReferenceEvaluator(model).run(None, {"x": x.astype(np.float32)})
    for name, ref in zip(outputs, expected):
        ours = np.fromfile(tmp_path / "out" / f"graph.{name}.out.bin", np.float32)
        assert ours.size == ref.size, name
        assert rel_l2(ours.reshape(ref.shape), ref) < 2e-5, name


def _transposed_oracle(x, w, b, begin, end, output_padding):
    """ONNX ConvTranspose (stride 2) from its definition: the full transposed convolution,
    extended by output_padding, cropped to [begin, full + output_padding - end)."""
    full = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), None, 2).numpy()
    size = full.shape[-1] + output_padding - begin - end
    out = np.zeros(full.shape[:-1] + (size,))
    for i in range(size):
        if 0 <= i + begin < full.shape[-1]:
            out[..., i] = full[..., i + begin]
    return out + b.reshape(1, -1, 1)


@pytest.mark.parametrize("attrs, begin, end", [
    ({"pads": [2, 1]}, 2, 1),
    ({"pads": [1, 1], "output_padding": [1]}, 1, 1),
    ({"auto_pad": "SAME_LOWER"}, None, None),
    ({"output_shape": [12]}, None, None),
    ({"output_shape": [14], "output_padding": [1]}, None, None),
    ({"output_shape": [1, 2, 13]}, None, None),
])
def test_conv_transpose_pads_are_mapped_exactly(attrs, begin, end):
    """ConvTranspose's begin/end pads (given, from auto_pad, from output_shape by the
    specification's formula) become PyTorch's symmetric padding and output_padding exactly."""
    from convgen.aot.onnx import _transpose_spec

    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 3, 6)), rng.standard_normal((3, 2, 3)), \
        rng.standard_normal(2)
    spec = _transpose_spec({**attrs, "strides": [2]}, w.shape, x.shape, True, None)
    ours = convolve(Workload(spec, x.shape, "float64"), x, w, b)
    op = attrs.get("output_padding", [0])[0]
    if begin is None:   # the specification: output_shape (else in * stride) fixes the total
        total = 2 * 5 + op + 3 - attrs.get("output_shape", [12])[-1]
        begin, end = total - total // 2, total // 2
    ref = _transposed_oracle(x, w, b, begin, end, op)
    assert ours.shape == ref.shape and np.allclose(ours, ref)


def test_conv_transpose_pads_without_a_pytorch_form_are_refused():
    from convgen.aot.onnx import _transpose_spec

    with pytest.raises(ValueError, match="no exact PyTorch form"):
        _transpose_spec({"pads": [0, 1], "strides": [2]}, (3, 2, 3), (1, 3, 6), True, None)


# -- JSON models -------------------------------------------------------------------------------
def _json_model(tmp_path: Path, weights_name: str = "tiny.npz") -> tuple[Path, dict]:
    rng = np.random.default_rng(5)
    arrays = {
        "enc.weight": rng.standard_normal((8, 4, 3)) * 0.3,
        "enc.bn.weight": rng.random(8) + 0.5, "enc.bn.bias": rng.standard_normal(8),
        "enc.bn.running_mean": rng.standard_normal(8), "enc.bn.running_var": rng.random(8) + 0.5,
        "dec.weight": rng.standard_normal((8, 2, 4)) * 0.3, "dec.bias": rng.standard_normal(4),
        "head.weight": rng.standard_normal((4, 4, 1)), "head.bias": rng.standard_normal(4),
    }
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    document = {
        "convgen_model": 1, "name": "tiny", "weights": weights_name,
        "inputs": {"x": [1, 4, 12]},
        "layers": [
            {"name": "enc", "op": "conv1d", "input": "x", "bias": None,
             "args": {"padding": "same", "padding_mode": "reflect"},
             "batch_norm": "enc.bn", "epilogue": ["silu"]},
            {"name": "dec", "op": "conv_transpose1d", "input": "enc",
             "args": {"stride": 2, "padding": 1, "groups": 2},
             "epilogue": [{"op": "clip", "min": -1.0, "max": None}]},
            {"name": "head", "op": "conv1d", "input": "dec",
             "epilogue": [{"op": "leaky_relu", "alpha": 0.2}, {"op": "add", "input": "dec"}]},
        ],
    }
    if weights_name.endswith(".npz"):
        np.savez(tmp_path / weights_name, **arrays)
    else:
        from safetensors.numpy import save_file
        save_file(arrays, str(tmp_path / weights_name))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(document))
    return path, arrays


def _json_reference(arrays, x):
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in arrays.items()}
    x = torch.from_numpy(x.astype(np.float64))
    enc = F.conv1d(F.pad(x, (1, 1), mode="reflect"), t["enc.weight"])
    enc = F.batch_norm(enc, t["enc.bn.running_mean"], t["enc.bn.running_var"],
                       t["enc.bn.weight"], t["enc.bn.bias"], eps=1e-5)
    enc = F.silu(enc)
    dec = torch.clamp(F.conv_transpose1d(enc, t["dec.weight"], t["dec.bias"], stride=2,
                                         padding=1, groups=2), min=-1.0)
    head = F.leaky_relu(F.conv1d(dec, t["head.weight"], t["head.bias"]), 0.2) + dec
    return {"enc": enc, "dec": dec, "head": head}


def test_json_model_builds_and_matches_torch(tmp_path):
    path, arrays = _json_model(tmp_path)
    result = build(path, tmp_path / "out", target="generic")
    assert result.name == "tiny" and result.has_run
    assert result.functions == ("tiny_enc", "tiny_dec", "tiny_head")
    make(tmp_path / "out", "CFLAGS=-O2 -Wall -Wextra -Werror -pedantic")
    x = np.random.default_rng(6).standard_normal((1, 4, 12)).astype(np.float32)
    (tmp_path / "in").mkdir()
    (tmp_path / "res").mkdir()
    x.tofile(tmp_path / "in" / "graph.x.in.bin")
    run_example(tmp_path / "out" / "example", "--graph", tmp_path / "in", tmp_path / "res")
    ref = _json_reference(arrays, x)["head"].numpy()
    ours = np.fromfile(tmp_path / "res" / "graph.head.out.bin", np.float32).reshape(ref.shape)
    assert rel_l2(ours, ref) < 2e-5
    # the same model with .safetensors weights gives the same weights, byte for byte
    other = tmp_path / "st"
    other.mkdir()
    st_path, _ = _json_model(other, "tiny.safetensors")
    build(st_path, other / "out", target="generic")
    assert (other / "out" / "tiny_weights.c").read_bytes() == \
        (tmp_path / "out" / "tiny_weights.c").read_bytes()


@pytest.mark.parametrize("change, message", [
    (lambda d: d["layers"][0].update(stride=2), "unknown key"),
    (lambda d: d["layers"][1].update(op="conv4d"), "op must be one of"),
    (lambda d: d["layers"][1].update(weight="nope"), "has no weight 'nope'"),
    (lambda d: d["layers"][2].update(input="enc"), "channels"),
    (lambda d: d["layers"][2]["epilogue"][1].update(input="enc"), "residual 'enc'"),
    (lambda d: d["layers"][1].update(name="enc"), "two layers have this name"),
    (lambda d: d["layers"][0].update(input="nowhere"), "neither a graph input"),
    (lambda d: d.update(convgen_model=2), "schema version"),
])
def test_bad_json_models_are_refused_naming_the_layer(tmp_path, change, message):
    path, _ = _json_model(tmp_path)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(ModelError, match=message):
        build(path, tmp_path / "out", target="generic")
    assert not (tmp_path / "out").exists()


def test_mismatched_weight_shapes_name_the_layer(tmp_path):
    path, arrays = _json_model(tmp_path)
    arrays["head.weight"] = arrays["head.weight"][:, :3]
    np.savez(tmp_path / "tiny.npz", **arrays)
    with pytest.raises(ModelError, match="layer 'head': input has 4 channels"):
        build(path, tmp_path / "out", target="generic")


# -- modules given in Python ------------------------------------------------------------------
def test_conv_modules_build_and_match_torch(tmp_path):
    convgen.nn.manual_seed(7)
    first = convgen.nn.Conv1d(3, 5, 4, stride=2, padding=3, dilation=2, bias=False)
    torch.manual_seed(7)
    second = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                      output_padding=(1, 0), groups=2)
    third = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                     output_padding=(1, 0), groups=2)   # same layer, new weights
    result = build([(first, (1, 3, 20)), ("up", second, (2, 4, 5, 5)),
                    ("up2", third, (2, 4, 5, 5))], tmp_path / "out", target="generic",
                   name="mods")
    assert result.functions == ("mods_layer0", "mods_up", "mods_up2") and not result.has_run
    assert sorted(p.name for p in (tmp_path / "out" / "kernels").iterdir()) == ["layer0", "up"]
    assert result.report["layers"][2]["kernel"] == "kernels/up"   # one kernel, two layers
    make(tmp_path / "out")
    rng = np.random.default_rng(8)
    x0 = rng.standard_normal((1, 3, 20)).astype(np.float32)
    x1 = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    (tmp_path / "in").mkdir()
    (tmp_path / "res").mkdir()
    x0.tofile(tmp_path / "in" / "layer0.in.bin")
    x1.tofile(tmp_path / "in" / "up.in.bin")
    x1.tofile(tmp_path / "in" / "up2.in.bin")
    run_example(tmp_path / "out" / "example", tmp_path / "in", tmp_path / "res")
    with torch.no_grad():
        weight = torch.tensor(first.weight, dtype=torch.float64)   # a writable copy
        ref0 = F.conv1d(torch.from_numpy(x0).double(), weight, None, 2, 3, 2).numpy()
        ref1 = second.double()(torch.from_numpy(x1).double()).numpy()
        ref2 = third.double()(torch.from_numpy(x1).double()).numpy()
    for name, ref in (("layer0", ref0), ("up", ref1), ("up2", ref2)):
        ours = np.fromfile(tmp_path / "res" / f"{name}.out.bin", np.float32).reshape(ref.shape)
        assert rel_l2(ours, ref) < 2e-5, name


def test_a_torch_module_is_traced_for_its_conv_layers():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                                torch.nn.Conv2d(4, 4, 1))
            self.head = torch.nn.ConvTranspose1d(4, 2, 2, stride=2)

        def forward(self, x):
            y = self.features(x)
            y = self.features[2](y[:, :, :2])   # a second call, on another shape
            return self.head(y.flatten(2))

    network, _ = load_model(Net(), example_input=torch.randn(2, 3, 6, 7))
    shapes = {layer.name: layer.input_shape for layer in network.layers}
    assert shapes == {"features.0": (2, 3, 6, 7), "features.2": (2, 4, 4, 5),
                      "features.2.call2": (2, 4, 2, 5), "head": (2, 4, 10)}
    assert network.whole_graph is not None   # convolutions alone: no NAME_run


# -- bad ONNX models -----------------------------------------------------------------------------
def _single_conv(name="conv", w_shape=(4, 3, 3, 3), x_shape=(1, 3, 8, 8), with_w=True,
                 extra_nodes=(), x_dims=None):
    inits = {"w": np.ones(w_shape)} if with_w else {}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name, pads=[1, 1, 1, 1]),
             *extra_nodes]
    model = _conv_model(nodes, inits, {"x": x_dims or x_shape},
                        [n.output[0] for n in nodes[-1:]])
    return model


def _nothing_written(tmp_path: Path, before: set) -> None:
    assert set(tmp_path.iterdir()) == before, "a failed build left something behind"


@pytest.mark.parametrize("case, message", [
    ("missing", "neither an initializer"),
    ("dynamic", "dynamic or unknown"),
    ("unsupported", "operator MaxPool is not supported"),
    ("mismatched", "mismatched weight shape"),
    ("kernel_shape", "kernel_shape"),
])
def test_bad_onnx_models_name_the_node_and_write_nothing(tmp_path, private_cache, case,
                                                         message):
    if case == "missing":
        model = _single_conv("conv1", with_w=False)
    elif case == "dynamic":
        model = _single_conv("conv1", x_dims=("N", 3, 8, 8))
    elif case == "unsupported":
        model = _single_conv("conv1", extra_nodes=[helper.make_node(
            "MaxPool", ["y"], ["p"], "pool1", kernel_shape=[2, 2])])
    elif case == "mismatched":
        model = _single_conv("conv1", w_shape=(4, 2, 3, 3))
    else:
        model = _single_conv("conv1")
        model.graph.node[0].attribute.append(helper.make_attribute("kernel_shape", [5, 5]))
    before = set(tmp_path.iterdir())
    with pytest.raises(ModelError, match=message) as raised:
        build(model, tmp_path / "out", target="generic")
    assert "'conv1'" in str(raised.value) or "'pool1'" in str(raised.value)
    _nothing_written(tmp_path, before)
    assert not list(private_cache.glob("kernels/*/*"))   # nothing compiled either


def test_unnamed_onnx_nodes_are_named_by_op_and_position():
    model = _single_conv("", extra_nodes=[helper.make_node("Relu", ["y"], ["r"])])
    network, _ = load_model(model)
    assert [(n.name, n.fused) for n in network.nodes] == [("conv_0", ("Relu 'relu_1'",))]


def test_dynamic_shapes_are_fixed_by_input_shapes():
    model = _single_conv("conv1", x_dims=("N", 3, "H", 8))
    network, _ = load_model(model, input_shapes={"x": (2, 3, 9, 8)})
    assert network.layers[0].input_shape == (2, 3, 9, 8) and network.whole_graph is None
    with pytest.raises(ModelError, match="not graph inputs"):
        load_model(model, input_shapes={"nope": (1, 3, 8, 8)})


def test_skip_unsupported_lists_the_nodes_and_drops_name_run(tmp_path):
    model = _single_conv("conv1", extra_nodes=[helper.make_node(
        "MaxPool", ["y"], ["p"], "pool1", kernel_shape=[2, 2])])
    result = build(model, tmp_path / "out", target="generic", name="m", skip_unsupported=True)
    assert not result.has_run and result.functions == ("m_conv1",)
    assert result.report["skipped"] == [{"name": "pool1", "op": "MaxPool", "reason": (
        "operator MaxPool is not supported (a build takes Conv, ConvTranspose, "
        "BatchNormalization, Relu, Clip, LeakyRelu, Sigmoid, Tanh, Mul, Add, Identity, Pad)")}]
    header = (tmp_path / "out" / "m.h").read_text()
    assert "#define m_HAS_RUN 0" in header and "m_run(" not in header


HOSTILE = ["../../../etc/passwd", "int", "conv */ #include <evil> /*", "a\nb\\", "x" * 10240,
           "ä/ö", "create", "OK", "2d"]


def test_hostile_node_names_become_safe_identifiers(tmp_path):
    rng = np.random.default_rng(9)
    nodes, inits = [], {}
    for i, name in enumerate(HOSTILE):
        inits[f"w{i}"] = rng.standard_normal((2, 3, 1, 1))
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"], [f"y{i}"], name))
    model = _conv_model(nodes, inits, {"x": (1, 3, 4, 4)}, [f"y{i}" for i in range(len(nodes))])
    out = tmp_path / "box" / "out"
    result = build(model, out, target="generic", name="h")
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert all(str(p).startswith("box") for p in written)
    assert not (tmp_path.parent / "etc").exists()
    for function in result.functions:
        assert len(function) <= 63 and function.isascii()
        assert function.replace("_", "a").isalnum()
    assert "h_layer_int" in result.functions and "h_create_2" in result.functions
    assert "h_OK_2" in result.functions and "h_layer_2d" in result.functions
    for path in out.iterdir():
        if path.suffix in (".h", ".c", ".md"):   # model text only inside comments, defused
            text = path.read_text()
            assert "*/ #include <evil>" not in text and "x" * 300 not in text
            assert not any(line.lstrip().startswith("#include <evil>")
                           for line in text.splitlines())
    make(out, "CFLAGS=-O2 -Wall -Wextra -Werror -pedantic")


def test_a_hostile_name_in_an_error_is_shortened():
    model = _single_conv("y" * 10240, extra_nodes=[helper.make_node(
        "MaxPool", ["y"], ["p"], "z" * 10240, kernel_shape=[2, 2])])
    with pytest.raises(ModelError) as raised:
        load_model(model)
    assert len(str(raised.value)) < 600 and "10240 characters" in str(raised.value)


# -- the build itself ---------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_builds_are_byte_identical_and_replace_the_previous_one(tmp_path):
    path, _ = _json_model(tmp_path)
    build(path, tmp_path / "a", target="x86-64-v3", weights="external")
    build(path, tmp_path / "b", target="x86-64-v3", weights="external")
    first = _tree(tmp_path / "a")
    assert first == _tree(tmp_path / "b")
    assert "tiny.weights" in first and not any("tmp" in name for name in first)
    # a rebuild into the same directory replaces it whole
    (tmp_path / "a" / "stale.o").write_bytes(b"")
    build(path, tmp_path / "a", target="x86-64-v3", weights="external")
    assert _tree(tmp_path / "a") == first


def test_a_failed_build_leaves_the_previous_one_and_no_debris(tmp_path, monkeypatch):
    path, _ = _json_model(tmp_path)
    build(path, tmp_path / "out", target="generic")
    before_tree, before_dir = _tree(tmp_path / "out"), set(tmp_path.iterdir())
    def failing_write(target, content):
        if target.name == "Makefile":
            raise OSError("disk full")
        return original(target, content)

    original = emit._write
    monkeypatch.setattr(emit, "_write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        build(path, tmp_path / "out", target="generic", name="other")
    assert _tree(tmp_path / "out") == before_tree
    assert set(tmp_path.iterdir()) == before_dir
    with pytest.raises(OSError):
        build(path, tmp_path / "fresh", target="generic")
    assert not (tmp_path / "fresh").exists()


def test_out_dir_must_be_a_build_or_empty(tmp_path):
    path, _ = _json_model(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="holds no convgen build"):
        build(path, tmp_path / "docs", target="generic")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"
    (tmp_path / "link").symlink_to(tmp_path / "docs")
    with pytest.raises(ValueError, match="symbolic link"):
        build(path, tmp_path / "link", target="generic")
    with pytest.raises(ValueError, match="not a plain path"):
        emit._checked("../escape.c")


class FakeTuningDB:
    """A tuning database (convgen.tuning.db.TuningDB's interface): plans by op."""

    def __init__(self, plans_by_op):
        self.plans_by_op, self.asked = plans_by_op, []

    def best(self, workload, target, accuracy="fast", threads=None):
        self.asked.append((workload.spec.op, target.name))
        return self.plans_by_op.get(workload.spec.op)


def test_the_tuning_database_gives_plans_where_it_has_them(tmp_path):
    from convgen.cpu.plan import Plan

    path, _ = _json_model(tmp_path)
    db = FakeTuningDB({"conv_transpose1d": Plan("transposed_gather", 1, 1, 1, "oc_outer", 8),
                       "conv1d": Plan("winograd4", 16, 16, 16, "pixel_outer", 1)})
    result = build(path, tmp_path / "out", target="generic", tuning_db=db)
    layers = {layer["model_name"]: layer for layer in result.report["layers"]}
    assert layers["dec"]["plan_source"] == "tuning database"
    assert layers["dec"]["plan"].startswith("algorithm=transposed_gather")
    assert layers["dec"]["plan"].endswith("threads=1")    # the build's thread count
    assert layers["enc"]["plan_source"] == "planner"      # an illegal plan: the planner's
    assert "refused" in layers["enc"]["plan_note"]
    assert {target for _, target in db.asked} == {"c"}
    with pytest.raises(TypeError, match="tuning_db must be a path"):
        build(path, tmp_path / "x", target="generic", tuning_db=42)


def test_a_model_tuned_then_built_takes_the_tuned_plans(tmp_path, monkeypatch):
    """convgen tune MODEL then convgen build MODEL --tuning-db: the tuner measures the
    workloads the build compiles (conv_layers: BatchNorm folded, at the build's one thread),
    and the build finds their records by the database's path."""
    from convgen.tuning import tune_many
    from convgen.tuning.models import load_layers

    path, _ = _json_model(tmp_path)
    layers = conv_layers(path)
    # convgen tune MODEL.json reads a build's JSON model the same way
    assert [layer[:3] for layer in load_layers(path)] == [layer[:3] for layer in layers]
    assert [name for name, *_ in layers] == ["enc", "dec", "head"]
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "1")        # a named target builds for 1
    db_path = tmp_path / "tuning.jsonl"
    results = tune_many(layers[:2], target="generic", trials=3, db=db_path, workers=1,
                        progress=False, min_time=0.002)
    tuned = {name: str(result.best) for (name, *_), result in zip(layers, results)}
    monkeypatch.delenv("CONVGEN_NUM_THREADS")
    result = build(path, tmp_path / "out", target="generic", tuning_db=db_path)
    by_name = {layer["model_name"]: layer for layer in result.report["layers"]}
    for name in ("enc", "dec"):
        assert by_name[name]["plan_source"] == "tuning database", by_name[name]
        assert by_name[name]["plan"] == tuned[name]
    assert by_name["head"]["plan_source"] == "planner"     # not tuned
    onnx_path = tmp_path / "hand.onnx"
    onnx.save(_hand_model(np.random.default_rng(0))[0], onnx_path)
    from_onnx = load_layers(onnx_path)     # convgen tune MODEL.onnx reads it the same way
    assert [name for name, *_ in from_onnx] == [name for name, *_ in conv_layers(onnx_path)]
    assert len(from_onnx) == 6 and all(dtype == "float32" for *_, dtype in from_onnx)


def test_layer_ids_are_unique_short_and_never_the_apis_names():
    ids = layer_ids(["a.b", "a-b", "create", "OK", "INPUT0_SHAPE", "x_IN_SHAPE", "int",
                     "z" * 200, "z" * 199 + "y"], "model")
    assert ids[:3] == ["a_b", "a_b_2", "create_2"]
    assert ids[3] == "OK_2" and ids[4] != "INPUT0_SHAPE" and ids[5] != "x_IN_SHAPE"
    assert ids[6] == "layer_int"
    assert len(set(ids)) == len(ids)
    assert all(len("model_" + i + "_OUT_ELEMS") <= 63 for i in ids)


def _live_overlaps(schedule: graph.Schedule, network: Network) -> list[str]:
    """Simulate NAME_run: what each node writes in the arena must not overlap a tensor that
    is live then (made earlier, read now or later), except where it computes in place: an
    elementwise node over its input or residual, a convolution over its residual."""
    made: dict[str, int] = {}
    last_read: dict[str, int] = {}
    for i, node in enumerate(network.nodes):
        made[node.output] = i
        for t in (node.input, node.residual):
            if t:
                last_read[t] = i
    size = {t: 4 * math.prod(s) for t, s in network.inputs.items()}
    for node in network.nodes:
        size[node.output] = 4 * math.prod(node.shape if isinstance(node, Elementwise)
                                          else node.output_shape)
    problems = []
    for i, node in enumerate(network.nodes):
        out = schedule.places[node.output]
        if out.kind != "arena":
            continue
        in_place = {node.residual} | ({node.input} if isinstance(node, Elementwise) else set())
        for t, place in schedule.places.items():
            if place.kind != "arena" or t == node.output or not made.get(t, -1) < i \
                    or last_read.get(t, -1) < i:
                continue
            if t in in_place and place.offset == out.offset and last_read[t] == i:
                continue
            end = out.offset + size[node.output]
            if out.offset < place.offset + size[t] and place.offset < end:
                problems.append(f"{node.output} over {t} at node {i}")
    return problems


def test_the_arena_reuses_dead_buffers_and_never_a_live_one():
    chain = [Elementwise(f"e{i}", (Step("relu"),), "x" if i == 0 else f"t{i - 1}", f"t{i}",
                         (1, 64)) for i in range(6)]
    chain.append(Elementwise("sum", (Step("add"),), "t5", "out", (1, 64), residual="t1"))
    network = Network(chain, {"x": (1, 64)}, ["out"])
    schedule = graph.schedule(network)
    assert _live_overlaps(schedule, network) == []
    assert schedule.arena_bytes < schedule.naive_bytes
    assert schedule.places["out"].kind == "output"


def test_the_zoos_arena_plan_is_sound(zoo_files):
    network, _ = load_model(zoo_files / "zoo.onnx")
    schedule = graph.schedule(network)
    assert _live_overlaps(schedule, network) == []


def test_targets_and_threads():
    assert plans.build_target("generic").threads == 1
    assert plans.build_target("x86-64-v4", threads=4).threads == 4
    assert plans.build_target("cuda", arch="sm_90").target.cuda.name == "sm_90"
    for bad in ({"target": "cuda-emu"}, {"target": "arm"}, {"target": "generic", "threads": 0},
                {"target": "cuda", "threads": 2}, {"target": "generic", "arch": "sm_80"},
                {"target": "cuda", "arch": "sm_1"}):
        with pytest.raises(ValueError):
            plans.build_target(bad.pop("target"), **bad)


def test_native_threads_come_from_this_machine(monkeypatch):
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "1")
    chosen = plans.build_target("native")
    assert chosen.threads == 1 and "this machine" in chosen.threads_from


@pytest.mark.skipif("avx512f" not in convgen.target.host.cpu_features(),
                    reason="this machine cannot run x86-64-v4 code to compare with")
@pytest.mark.parametrize("algorithm, op, w_shape, x_shape, args", [
    ("implicit_gemm", "conv2d", (16, 8, 3, 3), (1, 8, 9, 9), {"stride": 2, "padding": 1}),
    ("direct_simd", "conv1d", (8, 4, 5), (1, 4, 40), {"padding": 2}),
    ("depthwise", "conv2d", (8, 1, 3, 3), (1, 8, 12, 12), {"padding": 1, "groups": 8}),
    ("winograd2", "conv2d", (8, 8, 3, 3), (1, 8, 12, 12), {"padding": 1}),
])
def test_the_portable_twin_packs_like_the_target(algorithm, op, w_shape, x_shape, args):
    """Where the build machine cannot run the target's code, its kernel's packing code is
    built without ISA flags: the layout must be the target's own, and the scratch the build
    reserves is the target kernel's (a twin without masked loads pads depthwise channels
    into planes the target's kernel reads in place)."""
    from convgen.aot.model import ConvLayer

    chosen = plans.build_target("x86-64-v4")
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    workload = Workload(spec, x_shape, "float32")
    plan = chosen.backend.resolve(algorithm, workload, chosen.target)
    weight = np.random.default_rng(10).standard_normal(w_shape).astype(np.float32)
    layer = ConvLayer("l", spec, x_shape, weight, None, "x", "y")
    own = pack.pack_layer(layer, workload, plan, chosen)
    twin = chosen.backend.kernel(workload, plan, pack.portable_twin(chosen.target))
    packed = twin.prepack(weight).packed
    if algorithm.startswith("winograd"):   # the transform may round differently without FMA
        np.testing.assert_allclose(packed, own.weights, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(packed, own.weights)
    target_kernel = chosen.backend.kernel(workload, plan, chosen.target)
    assert own.workspace_bytes == target_kernel.workspace_elements * 4
    assert chosen.backend.workspace_bytes(workload, plan, chosen.target) == own.workspace_bytes
    if algorithm == "depthwise":    # in place on the target, padded per channel on the twin
        assert own.workspace_bytes == 0 < twin.workspace_elements
    else:
        assert twin.workspace_elements * 4 == own.workspace_bytes


def test_the_command_line_builds_and_reports(tmp_path):
    path, _ = _json_model(tmp_path)
    done = subprocess.run([sys.executable, "-m", "convgen.cli", "build", str(path), "-o",
                           str(tmp_path / "out"), "--target", "generic", "--name", "cli"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cli_enc" in done.stdout and "plan (planner)" in done.stdout
    assert "cli_run: 4 operations" in done.stdout   # 3 layers, a residual copied
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run([sys.executable, "-m", "convgen.cli", "build", str(bad), "-o",
                           str(tmp_path / "bad")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "convgen build: error:" in done.stderr
