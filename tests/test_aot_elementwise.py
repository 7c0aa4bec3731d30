"""NAME_run's elementwise nodes (the activations the builder could not fuse into a kernel)
on vectors: every step against torch in float64, on each CPU target's vector width, with a
tail of every length class, NaN, values past e^x's cut-offs and a poisoned output.

A conv whose output feeds several activations cannot fuse any of them, so each becomes an
elementwise node of its own: sigmoid, tanh, SiLU (Sigmoid then Mul), LeakyReLU, ReLU6
(Clip), ReLU, and an Add of two activations (a node with a residual). The tensor has
5 x 70 x 97 = 33,950 elements: past the 32,768 where the nodes run on every thread, and a
tail of 14 floats after AVX-512's vectors and 6 after AVX2's.
"""
from __future__ import annotations

import ctypes as C
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convgen
from convgen.target import host

onnx = pytest.importorskip("onnx")

SHAPE = (1, 3, 70, 97)
OUTPUTS = ["conv", "sigmoid", "tanh", "silu", "leaky", "relu6", "sum"]
POISON = np.float32(-3.0e38)   # no activation of these inputs makes it


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        a = self.conv(x)
        return (a, *steps(a))


def steps(a: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The activations of the conv's output a (the outputs after the first)."""
    return (torch.sigmoid(a), torch.tanh(a), F.silu(a), F.leaky_relu(a, 0.1), F.relu6(a),
            F.relu(a) + torch.tanh(a))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Activations, Path]:
    torch.manual_seed(0)
    module = Activations().eval()
    path = tmp_path_factory.mktemp("activations") / "acts.onnx"
    torch.onnx.export(module, (torch.randn(SHAPE),), str(path), dynamo=False,
                      input_names=["x"], output_names=OUTPUTS)
    return module, path


def _inputs() -> np.ndarray:
    """Values beyond 200 in the conv's output (beyond e^x's cut-offs at -87 and 88.4),
    small ones around 0, and a NaN that reaches 45 outputs."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(SHAPE) * rng.choice([1e-3, 1.0, 150.0], SHAPE)).astype(np.float32)
    x[0, 1, 30, 40] = np.nan
    return x


def _run_built(out: Path, x: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
    """NAME_run through ctypes, every output poisoned first."""
    lib = C.CDLL(str(out / "libacts.so"))
    lib.acts_create.argtypes = [C.POINTER(C.c_void_p), C.c_void_p]
    lib.acts_run.argtypes = [C.c_void_p, C.POINTER(C.c_void_p), C.POINTER(C.c_void_p)]
    lib.acts_destroy.argtypes = [C.c_void_p]
    ctx = C.c_void_p()
    assert lib.acts_create(C.byref(ctx), None) == 0
    ys = [np.full(shape, POISON, np.float32) for shape in shapes]
    try:
        status = lib.acts_run(ctx, (C.c_void_p * 1)(x.ctypes.data),
                              (C.c_void_p * len(ys))(*(y.ctypes.data for y in ys)))
    finally:
        lib.acts_destroy(ctx)
    assert status == 0
    return ys


FEATURES = set(host.cpu_features())
TARGETS = [
    "generic",
    pytest.param("x86-64-v3", marks=pytest.mark.skipif(
        not {"avx2", "fma"} <= FEATURES, reason="this CPU has no AVX2 and FMA")),
    pytest.param("x86-64-v4", marks=pytest.mark.skipif(
        "avx512f" not in FEATURES, reason="this CPU has no AVX-512")),
]


@pytest.mark.parametrize("target", TARGETS)
def test_elementwise_nodes_match_torch_on_every_vector_width(model, target, tmp_path):
    module, path = model
    out = tmp_path / target
    result = convgen.build(path, out, target=target, name="acts", threads=2)
    operations = result.report["graph"]["operations"]
    assert sum(op.startswith("elementwise") for op in operations) >= 6, operations
    done = subprocess.run(["make", "-j2", "libacts.so"], cwd=out, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    x = _inputs()
    with torch.no_grad():
        expected_conv = module.double().conv(torch.from_numpy(x.astype(np.float64))).numpy()
    ours = _run_built(out, x, [expected_conv.shape] * len(OUTPUTS))
    for name, y in zip(OUTPUTS, ours):
        assert not (y == POISON).any(), f"{name} on {target}: elements left unwritten"
    nan = np.isnan(expected_conv)
    assert 0 < nan.sum() < nan.size
    conv = ours[0]
    assert (np.isnan(conv) == nan).all()
    assert np.linalg.norm(conv[~nan] - expected_conv[~nan]) < 2e-6 * np.linalg.norm(
        expected_conv[~nan])
    # Each step on the conv's float32 output, against torch in float64 on the same values:
    # within a few ulp, NaN where the conv gave NaN. Below -88.4, e^-x overflows and sigmoid
    # and SiLU are 0 (as torch's float32 gives), where the exact SiLU is down to -4e-37.
    with torch.no_grad():
        expected = [t.numpy() for t in steps(torch.from_numpy(conv.astype(np.float64)))]
    for name, y, ref in zip(OUTPUTS[1:], ours[1:], expected):
        assert (np.isnan(y) == nan).all(), f"{name} on {target}: NaN moved"
        err = np.abs(y[~nan] - ref[~nan])
        bound = 8 * np.finfo(np.float32).eps * np.abs(ref[~nan]) + 4e-37
        worst = np.argmax(err - bound)
        assert (err <= bound).all(), (f"{name} on {target}: {y[~nan][worst]!r} for "
                                      f"{conv[~nan][worst]!r}, torch {ref[~nan][worst]!r}")
