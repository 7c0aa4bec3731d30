"""Ahead-of-time builds end to end: a small model with all six ops, exported from torch to
ONNX, built with ``convgen.build``, compiled with ``make`` in a fresh directory, and run by
the generated example program as a separate process with no Python -- every layer's output
and the whole graph (``NAME_run``) compared with torch in float64.

The model ("the zoo"): padding modes (reflect, circular, replicate: ONNX Pad nodes folded
into the convolutions), groups, depthwise, dilation, stride, a transposed conv with
output_padding in 1-, 2- and 3-D, two folded BatchNorms, SiLU, ReLU6, LeakyReLU, Sigmoid,
Tanh and ReLU in epilogues, residual Adds (one copied into the output, one computed in
place), and standalone elementwise nodes that only NAME_run executes.

Builds are shared: the exported model once per test session (across xdist workers), each
build once per module.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convgen
from helpers import rel_l2

onnx = pytest.importorskip("onnx")

TOLERANCE = 2e-5        # relative L2 error of a float32 layer against torch in float64
GRAPH_TOLERANCE = 1e-4  # ... of a chain of up to four layers
INPUTS = {"x": (1, 3, 10, 10), "y": (1, 4, 16), "z": (1, 2, 5, 6, 4)}
OUTPUTS = ["t", "s", "gate", "g", "i"]
BATCH_NORMS = {"stem": "stem_bn", "vol": "vol_bn"}


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.stem_bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.skip = nn.Conv2d(3, 4, 1)
        self.seq = nn.Conv1d(4, 6, 5, padding=2, padding_mode="circular")
        self.seq_up = nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1, groups=2)
        self.vol = nn.Conv3d(2, 4, 3, padding=1, padding_mode="replicate")
        self.vol_bn = nn.BatchNorm3d(4)
        self.vol_up = nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            for bn in (self.stem_bn, self.vol_bn):
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)

    def forward(self, x, y, z):
        skip = self.skip(x)
        a = F.silu(self.stem_bn(self.stem(x)))
        b = F.relu6(self.dw(a)) + a                 # residual == the conv's input: copied
        c = F.leaky_relu(self.down(b), 0.1)
        d = torch.sigmoid(self.up(c) + skip)        # a dying residual: computed in place
        gate = torch.sigmoid(a)                     # standalone: NAME_run only
        f = torch.tanh(self.seq(y))
        g = F.relu(self.seq_up(f))
        h = F.relu(self.vol_bn(self.vol(z)))
        return torch.tanh(d), torch.sigmoid(d), gate, g, self.vol_up(h)


# -- shared artifacts --------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def shared(tmp_path_factory, name: str, make) -> Path:
    """A directory made once per test session, even across xdist workers (pytest-xdist's
    recipe: the workers' base temp dirs share a parent)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    target = root / f"aot-shared-{name}"
    with _locked(root / f"aot-shared-{name}.lock"):
        if not target.exists():
            staging = root / f"aot-shared-{name}.{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            make(staging)
            os.rename(staging, target)
    return target


def _export_zoo(directory: Path) -> None:
    model = Zoo().eval()
    torch.save(model.state_dict(), directory / "zoo.pt")
    args = tuple(torch.randn(s) for s in INPUTS.values())
    # optimize=False keeps the BatchNormalization nodes (the optimiser would fold them itself)
    torch.onnx.export(model, args, str(directory / "zoo.onnx"), dynamo=True, optimize=False,
                      input_names=list(INPUTS), output_names=OUTPUTS, verbose=False)


@pytest.fixture(scope="session")
def zoo_files(tmp_path_factory) -> Path:
    return shared(tmp_path_factory, "zoo-onnx", _export_zoo)


@pytest.fixture(scope="session")
def zoo64(zoo_files) -> Zoo:
    model = Zoo()
    model.load_state_dict(torch.load(zoo_files / "zoo.pt"))
    return model.double().eval()


# -- building, compiling, running ------------------------------------------------------------
def make(out_dir: Path, *args: str, timeout: int = 300) -> str:
    done = subprocess.run(["make", "-j2", *args], cwd=out_dir, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def run_example(program: Path, *args, expect: int = 0) -> subprocess.CompletedProcess:
    """The example program, a separate process with no Python (only its own environment)."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
           **{k: v for k, v in os.environ.items() if k.startswith(("ASAN", "UBSAN", "LD_"))}}
    done = subprocess.run([str(program), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == expect, done.stdout + done.stderr
    return done


def build_zoo(zoo_files: Path, out: Path, target: str, make_args=(), **options):
    result = convgen.build(zoo_files / "zoo.onnx", out, target=target, name="zoo", **options)
    make(out, *make_args)
    return result


# -- the torch oracle --------------------------------------------------------------------------
def _module(model: nn.Module, weight_name: str) -> nn.Module:
    return model.get_submodule(weight_name.removesuffix(".weight"))


def _step(y: torch.Tensor, step: dict, residual: torch.Tensor | None) -> torch.Tensor:
    op, args = step["op"], step["args"]
    if op == "relu":
        return F.relu(y)
    if op == "clip":
        return torch.clamp(y, *args)
    if op == "leaky_relu":
        return F.leaky_relu(y, args[0])
    if op == "sigmoid":
        return torch.sigmoid(y)
    if op == "tanh":
        return torch.tanh(y)
    if op == "silu":
        return F.silu(y)
    assert op == "add"
    return y + residual


def layer_reference(model: nn.Module, layer: dict, x: np.ndarray, residual) -> np.ndarray:
    """One built layer in torch (float64): its conv module, the BatchNorm the report says was
    folded into it, then its epilogue steps."""
    name = layer["source"]["weight"].removesuffix(".weight")
    with torch.no_grad():
        y = _module(model, layer["source"]["weight"])(torch.from_numpy(x.astype(np.float64)))
        folded = any(f.startswith("BatchNormalization") for f in layer["fused"])
        assert folded == (name in BATCH_NORMS), layer["fused"]
        if folded:
            y = model.get_submodule(BATCH_NORMS[name])(y)
        r = None if residual is None else torch.from_numpy(residual.astype(np.float64))
        for step in layer["epilogue"]:
            y = _step(y, step, r)
    return y.numpy()


def check_layers(model: nn.Module, report: dict, program: Path, tmp: Path, seed: int = 0,
                 extra=()) -> None:
    """Every layer through the example program against torch."""
    rng = np.random.default_rng(seed)
    inputs, outputs = tmp / "in", tmp / "out"
    inputs.mkdir(exist_ok=True)
    outputs.mkdir(exist_ok=True)
    data = {}
    for layer in report["layers"]:
        name = layer["function"].removeprefix(report["name"] + "_")
        x = rng.standard_normal(layer["input_shape"]).astype(np.float32)
        x.tofile(inputs / f"{name}.in.bin")
        residual = None
        if layer["residual"] is not None:
            residual = rng.standard_normal(layer["output_shape"]).astype(np.float32)
            residual.tofile(inputs / f"{name}.residual.bin")
        data[name] = (layer, x, residual)
    done = run_example(program, *extra, inputs, outputs)
    assert done.stdout.count("\n") == len(report["layers"]), done.stdout
    for name, (layer, x, residual) in data.items():
        ours = np.fromfile(outputs / f"{name}.out.bin", np.float32)
        ref = layer_reference(model, layer, x, residual)
        assert ours.size == ref.size, name
        err = rel_l2(ours.reshape(ref.shape), ref)
        assert err < TOLERANCE, f"{name}: relative L2 error {err:.2e}"


def check_graph(model: nn.Module, report: dict, program: Path, tmp: Path, seed: int = 1,
                extra=()) -> None:
    """NAME_run (example --graph) against the torch model's forward."""
    rng = np.random.default_rng(seed)
    inputs, outputs = tmp / "graph-in", tmp / "graph-out"
    inputs.mkdir(exist_ok=True)
    outputs.mkdir(exist_ok=True)
    feeds = {}
    for tensor in report["graph"]["inputs"]:
        feeds[tensor["name"]] = rng.standard_normal(tensor["shape"]).astype(np.float32)
        feeds[tensor["name"]].tofile(inputs / f"graph.{tensor['c_name']}.in.bin")
    run_example(program, "--graph", *extra, inputs, outputs)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[n].astype(np.float64)) for n in INPUTS))
    assert [t["name"] for t in report["graph"]["outputs"]] == OUTPUTS
    for tensor, ref in zip(report["graph"]["outputs"], expected):
        ours = np.fromfile(outputs / f"graph.{tensor['c_name']}.out.bin", np.float32)
        err = rel_l2(ours.reshape(ref.shape), ref.numpy())
        assert err < GRAPH_TOLERANCE, f"graph output {tensor['name']}: {err:.2e}"


# -- the builds ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def generic_build(zoo_files, tmp_path_factory) -> tuple[dict, Path]:
    """The zoo for the portable target, compiled as strict C99 with every warning an error
    (once per session: the build has no absolute path in it, so it may move)."""
    def build(directory: Path) -> None:
        build_zoo(zoo_files, directory / "zoo", "generic",
                  ["CFLAGS=-O2 -Wall -Wextra -Werror -pedantic"])

    out = shared(tmp_path_factory, "zoo-generic", build) / "zoo"
    return json.loads((out / "build_report.json").read_text()), out


def test_the_zoo_fuses_as_designed(generic_build):
    report, out = generic_build
    by_weight = {layer["source"]["weight"]: layer for layer in report["layers"]}
    assert len(by_weight) == 9 and report["skipped"] == []
    assert [s["op"] for s in by_weight["stem.weight"]["epilogue"]] == ["silu"]
    assert [s["op"] for s in by_weight["dw.weight"]["epilogue"]] == ["clip", "add"]
    assert by_weight["vol.weight"]["layer"].endswith("padding_mode=replicate")
    assert "padding_mode=circular" in by_weight["seq.weight"]["layer"]
    assert "padding_mode=reflect" in by_weight["stem.weight"]["layer"]
    operations = report["graph"]["operations"]
    assert any("in place" in op for op in operations)          # the dying residual
    assert any(op.startswith("copy") for op in operations)      # the residual that is the input
    assert sum(op.startswith("elementwise") for op in operations) == 3
    assert report["graph"]["activation_bytes"] < report["graph"]["naive_bytes"]
    assert report["target"]["threads"] == 1   # a named target does not take this machine's
    header = (out / "zoo.h").read_text()
    assert "#define zoo_THREADS 1" in header and "int zoo_run(" in header


def test_generic_build_matches_torch_layer_by_layer(generic_build, zoo64, tmp_path):
    report, out = generic_build
    check_layers(zoo64, report, out / "example", tmp_path)


def test_the_example_says_that_out_dir_must_exist(generic_build, zoo64, tmp_path):
    report, out = generic_build
    check_layers(zoo64, report, out / "example", tmp_path)     # writes tmp_path / "in"
    done = run_example(out / "example", tmp_path / "in", tmp_path / "missing", expect=1)
    assert "does OUT_DIR exist?" in done.stderr


def test_generic_build_runs_the_whole_graph(generic_build, zoo64, tmp_path):
    report, out = generic_build
    check_graph(zoo64, report, out / "example", tmp_path)


def test_native_build_with_external_weights(zoo_files, zoo64, tmp_path):
    """The native target, external weights: matches torch; a weights file of the wrong size,
    a corrupted one or a missing one is refused with its own status and message."""
    out = tmp_path / "native"
    result = build_zoo(zoo_files, out, "native", weights="external", threads=2)
    assert not (out / "zoo_weights.c").exists()
    weights = out / "zoo.weights"
    assert weights.stat().st_size == result.report["weights"]["bytes"] + 64
    check_layers(zoo64, result.report, out / "example", tmp_path)
    check_graph(zoo64, result.report, out / "example", tmp_path)
    original = weights.read_bytes()
    for damaged, message in ((original[:-4], "wrong size"), (original + b"\0", "wrong size"),
                             (original[:100] + bytes([original[100] ^ 1]) + original[101:],
                              "CRC-32")):
        weights.write_bytes(damaged)
        done = run_example(out / "example", tmp_path / "in", tmp_path / "out", expect=2)
        assert message in done.stderr
    weights.unlink()
    done = run_example(out / "example", "--weights", tmp_path / "nowhere.weights",
                       tmp_path / "in", tmp_path / "out", expect=2)
    assert "cannot open" in done.stderr


def test_sanitizers_run_the_example_clean(generic_build, zoo64, tmp_path):
    """AddressSanitizer + UBSan over every layer and NAME_run: a copy of the generic build,
    recompiled with the sanitizers and OPENMP=0 (which must then leave libgomp out)."""
    _, out = generic_build
    copy = tmp_path / "asan"
    shutil.copytree(out, copy)
    flags = "-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    subprocess.run(["make", "clean"], cwd=copy, check=True, capture_output=True)
    make(copy, "OPENMP=0", f"CFLAGS={flags}", f"LDFLAGS={flags}")
    libraries = subprocess.run(["ldd", str(copy / "example")], capture_output=True,
                               text=True).stdout
    assert "libasan" in libraries and "gomp" not in libraries
    report = json.loads((copy / "build_report.json").read_text())
    check_layers(zoo64, report, copy / "example", tmp_path)
    check_graph(zoo64, report, copy / "example", tmp_path)
