"""Fused epilogues (activations and a residual add in the kernels' stores) against torch, and
the generated C's portability: the "c" target is strict C99 (``-std=c99 -pedantic``, no
vector extension), every target builds warning-free with and without OpenMP."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convgen.backends import backend_for, get_target
from convgen.core.epilogue import Step
from convgen.core.layers import spec_from_op
from convgen.core.spec import Workload
from convgen.cpu import pch
from convgen.cpu.compile import compiler_path
from convgen.runtime import pipeline
from convgen.target.host import cpu_features
from helpers import assert_matches, random, torch_reference

# (op, input, weight, args, algorithm): every CPU algorithm once
LAYERS = [
    ("conv2d", (2, 8, 9, 11), (8, 8, 3, 3), {"padding": 1}, "direct_simd"),
    ("conv2d", (1, 8, 9, 11), (16, 8, 3, 3), {"padding": 1, "stride": 2}, "implicit_gemm"),
    ("conv2d", (1, 8, 10, 12), (8, 8, 3, 3), {"padding": 1}, "winograd2"),
    ("conv1d", (1, 8, 37), (8, 8, 3), {"padding": 2, "dilation": 2}, "winograd4"),
    # rows long enough for whole vectors of the epilogue and a tail
    ("conv2d", (1, 8, 6, 37), (8, 8, 3, 3), {"padding": 1}, "winograd2"),
    ("conv2d", (1, 8, 9, 11), (16, 1, 3, 3), {"padding": 1, "groups": 8,
                                              "padding_mode": "reflect"}, "depthwise"),
    ("conv1d", (1, 6, 20), (6, 1, 5), {"padding": 2, "groups": 6}, "depthwise"),
    ("conv3d", (1, 4, 5, 6, 7), (6, 2, 3, 3, 3), {"padding": 1, "groups": 2}, "direct"),
    ("conv_transpose2d", (1, 8, 6, 7), (8, 4, 4, 4), {"stride": 2, "padding": 1},
     "transposed_gather"),
    ("conv_transpose1d", (1, 8, 13), (8, 6, 5), {"stride": 3, "padding": 1,
                                                 "output_padding": 2}, "implicit_gemm"),
    # staged rows with outer phases: the epilogue (and the residual) on the copy out
    ("conv_transpose2d", (2, 8, 5, 6), (8, 20, 4, 4), {"stride": 2, "padding": 1},
     "implicit_gemm"),
]
STEPS = {
    "relu": (Step("relu"),), "relu6": (Step("clip", (0.0, 6.0)),),
    "clip_low": (Step("clip", (-0.5, None)),), "leaky": (Step("leaky_relu", (0.1,)),),
    "sigmoid": (Step("sigmoid"),), "tanh": (Step("tanh"),), "silu": (Step("silu"),),
    "add_relu": (Step("add"), Step("relu")), "relu_add": (Step("relu"), Step("add")),
}


def torch_epilogue(y: torch.Tensor, steps, residual: torch.Tensor) -> torch.Tensor:
    for s in steps:
        if s.op == "relu":
            y = F.relu(y)
        elif s.op == "clip":
            y = torch.clamp(y, *s.args)
        elif s.op == "leaky_relu":
            y = F.leaky_relu(y, s.args[0])
        elif s.op == "sigmoid":
            y = torch.sigmoid(y)
        elif s.op == "tanh":
            y = torch.tanh(y)
        elif s.op == "silu":
            y = y * torch.sigmoid(y)
        elif s.op == "add":
            y = y + residual
    return y


CASES = [(layer, name, dtype) for i, layer in enumerate(LAYERS)
         for j, (name, dtype) in enumerate([(n, ("float32", "float64")[k % 2])
                                             for k, n in enumerate(STEPS)])
         if (i + j) % 4 == 0 or name == "add_relu"]


@pytest.mark.parametrize("layer, steps_name, dtype", CASES,
                         ids=[f"{layer[4]}-{layer[0]}-{name}-{dtype}"
                              for layer, name, dtype in CASES])
def test_epilogue_matches_torch(layer, steps_name, dtype):
    op, x_shape, w_shape, args, algorithm = layer
    steps = STEPS[steps_name]
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    workload = Workload(spec, x_shape, dtype, steps)
    target = get_target("cpu")
    backend = backend_for(target)
    kernel = backend.kernel(workload, backend.resolve(algorithm, workload, target), target)
    rng = np.random.default_rng(hash((steps_name, algorithm)) % 2**32)
    x, w = random(rng, x_shape, dtype), random(rng, w_shape, dtype)
    b = random(rng, spec.out_channels, dtype)
    residual = random(rng, kernel.output_shape, dtype)
    out = residual.copy() if any(s.op == "add" for s in steps) else \
        np.full(kernel.output_shape, np.nan, dtype)   # poisoned where nothing is read from it
    kernel(x, w, b, out=out)
    conv = torch.from_numpy(torch_reference(op, x, w, b, **args))
    ref = torch_epilogue(conv, steps, torch.from_numpy(residual.astype(np.float64))).numpy()
    assert_matches(out, ref, dtype)


# Stores that are not whole vectors of a row, where the epilogue now runs on vectors
# before them: implicit GEMM's where AVX-512's transpose does not apply (AVX2; float64),
# with 20 channels so that the last channel tile is partial (its missing lanes must read
# neither the bias nor the residual); staged rows (a transposed conv with a stride along
# the row: the epilogue on each phase's columns in the stage); Winograd with dilation
# (stored DIL_W apart); a row's tail with a residual. Rows are long enough for whole vectors
# and a tail.
HAS_AVX2 = {"avx2", "fma"} <= set(cpu_features())
STRIDED_GEMM = ("conv2d", (1, 8, 9, 11), (20, 8, 3, 3), {"padding": 1, "stride": 2},
                "implicit_gemm")
POINTWISE_GEMM = ("conv2d", (2, 8, 7, 13), (20, 8, 1, 1), {}, "implicit_gemm")
STAGED = ("conv_transpose2d", (1, 8, 3, 21), (8, 20, 4, 4), {"stride": 2, "padding": 1},
          "implicit_gemm")
DILATED = ("conv1d", (1, 8, 70), (8, 8, 3), {"padding": 3, "dilation": 3}, "winograd4")
# a row of 11: a vector and a tail, whose residual is one masked load on AVX2 and AVX-512
ROW_TAILS = ("conv2d", (2, 8, 9, 11), (8, 8, 3, 3), {"padding": 1}, "direct_simd")
VECTOR_EPILOGUES = [
    ("x86-64-v3", STRIDED_GEMM, "silu", "float32"),
    ("x86-64-v3", POINTWISE_GEMM, "tanh", "float64"),
    ("x86-64-v3", STRIDED_GEMM, "add_relu", "float32"),
    ("x86-64-v3", POINTWISE_GEMM, "relu_add", "float64"),
    ("cpu", STRIDED_GEMM, "tanh", "float64"), ("cpu", POINTWISE_GEMM, "add_relu", "float64"),
    ("cpu", STAGED, "silu", "float32"), ("cpu", STAGED, "add_silu", "float32"),
    ("cpu", STAGED, "relu_add", "float64"), ("x86-64-v3", STAGED, "add_silu", "float32"),
    ("cpu", DILATED, "sigmoid", "float32"), ("cpu", DILATED, "add_silu", "float32"),
    ("cpu", DILATED, "relu_add", "float64"), ("x86-64-v3", DILATED, "add_silu", "float32"),
    ("x86-64-v3", ROW_TAILS, "relu_add", "float32"),
    ("x86-64-v3", ROW_TAILS, "add_relu", "float64"),
    ("cpu", ROW_TAILS, "add_silu", "float32"),
]


@pytest.mark.parametrize("target_name, layer, steps_name, dtype", [
    pytest.param(*case, marks=pytest.mark.skipif(case[0] == "x86-64-v3" and not HAS_AVX2,
                                                 reason="this CPU has no AVX2 and FMA"))
    for case in VECTOR_EPILOGUES], ids=[f"{t}-{layer[0]}-{layer[4]}-{n}-{d}"
                                        for t, layer, n, d in VECTOR_EPILOGUES])
def test_epilogue_on_vectors_before_strided_stores(target_name, layer, steps_name, dtype):
    op, x_shape, w_shape, args, algorithm = layer
    steps = {**STEPS, "add_silu": (Step("add"), Step("silu"))}[steps_name]
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    workload = Workload(spec, x_shape, dtype, steps)
    target = get_target(target_name)
    backend = backend_for(target)
    plan = backend.resolve(algorithm, workload, target)
    assert plan.vector > 1, plan
    if algorithm == "implicit_gemm" and op == "conv2d":
        assert spec.out_channels % plan.oc_tile, plan
    kernel = backend.kernel(workload, plan, target)
    rng = np.random.default_rng(5)
    x, w = random(rng, x_shape, dtype), random(rng, w_shape, dtype)
    b = random(rng, spec.out_channels, dtype)
    residual = random(rng, kernel.output_shape, dtype)
    out = residual.copy() if any(s.op == "add" for s in steps) else \
        np.full(kernel.output_shape, np.nan, dtype)
    kernel(x, w, b, out=out)
    conv = torch.from_numpy(torch_reference(op, x, w, b, **args))
    ref = torch_epilogue(conv, steps, torch.from_numpy(residual.astype(np.float64))).numpy()
    assert_matches(out, ref, dtype)


@pytest.mark.parametrize("algorithm", ["direct", "direct_simd"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_goes_through_every_activation(algorithm, dtype):
    """Scalar code and whole-vector selects alike (direct_simd's stores are vectors)."""
    spec = spec_from_op("conv1d", (4, 4, 3), True, (1, 4, 40), padding=1)
    target = get_target("cpu")
    backend = backend_for(target)
    x = np.ones((1, 4, 40), dtype)
    x[0, 1, 3] = np.nan
    for steps in STEPS.values():
        workload = Workload(spec, x.shape, dtype, steps)
        plan = backend.resolve(algorithm, workload, target)
        assert (plan.vector > 1) == (algorithm == "direct_simd"), plan
        kernel = backend.kernel(workload, plan, target)
        out = np.zeros(kernel.output_shape, dtype)
        kernel(x, np.ones((4, 4, 3), dtype), np.zeros(4, dtype), out=out)
        assert np.isnan(out[0, :, 2:5]).all() and not np.isnan(out[0, :, 6:]).any(), steps


def _identity_outputs(steps, values, algorithm):
    """A 1x1 conv whose weight is the identity and bias zero: its outputs are exactly the
    input values, so the epilogue sees every value asked for (float32, a vector kernel;
    the row's last values in its scalar tail)."""
    channels = 16
    pixels = -(-len(values) // channels)
    x = np.zeros(channels * pixels, np.float32)
    x[:len(values)] = values
    x = x.reshape(1, pixels, channels).transpose(0, 2, 1).copy()   # value i: pixel i // 16
    spec = spec_from_op("conv1d", (channels, channels, 1), True, x.shape)
    target = get_target("cpu")
    backend = backend_for(target)
    workload = Workload(spec, x.shape, "float32", steps)
    plan = backend.resolve(algorithm, workload, target)
    assert plan.vector > 1, plan
    kernel = backend.kernel(workload, plan, target)
    out = np.full(kernel.output_shape, np.nan, np.float32)
    kernel(x, np.eye(channels, dtype=np.float32)[:, :, None], np.zeros(channels, np.float32),
           out=out)
    return out.transpose(0, 2, 1).reshape(-1)[:len(values)]


@pytest.mark.parametrize("algorithm", ["direct_simd", "implicit_gemm"])
@pytest.mark.parametrize("name", ["sigmoid", "silu", "tanh"])
def test_vector_activations_are_within_a_few_ulp(name, algorithm):
    """sigmoid, silu and tanh on float32 vectors (_vmath.c.j2's e^x and tanh) against
    float64, from 1e-30 to 100 in magnitude, both signs and zero: within 4 float32
    ulp of the exact value, or 1e-36 away from it (silu below -88: x times a sigmoid that
    is a denormal, which e^x's overflow at 88.38 instead of 88.72 makes 0)."""
    magnitudes = np.concatenate([np.geomspace(1e-30, 100.0, 2000), [0.625, 9.0, 88.0, 88.5, 89.0]])
    values = np.concatenate([magnitudes, -magnitudes, [0.0]]).astype(np.float32)
    ours = _identity_outputs((Step(name),), values, algorithm)
    v = values.astype(np.float64)
    exact = {"sigmoid": lambda: 1 / (1 + np.exp(-v)), "silu": lambda: v / (1 + np.exp(-v)),
             "tanh": lambda: np.tanh(v)}[name]()
    error = np.abs(ours - exact)
    allowed = 4 * np.finfo(np.float32).eps * np.abs(exact) + 1e-36
    worst = int(np.argmax(error / allowed))
    assert (error <= allowed).all(), (values[worst], ours[worst], exact[worst])


# -- portability of the generated C --------------------------------------------------------------
def _sources(target_name, algorithm_layers, steps):
    target = get_target(target_name)
    backend = backend_for(target)
    for i, (op, x_shape, w_shape, args, algorithm) in enumerate(algorithm_layers):
        # with bias and the epilogue in both dtypes; without either (the kernels' bias
        # parameter is then unused, which -Wextra must not see)
        for bias, dtype, with_steps in ((True, "float32", steps), (True, "float64", steps),
                                        (False, "float32", ())):
            spec = spec_from_op(op, w_shape, bias, x_shape, **args)
            workload = Workload(spec, x_shape, dtype, with_steps)
            plan = backend.resolve(algorithm, workload, target)
            _, sources, _ = pipeline.generate(backend, workload, plan, target,
                                              f"k{i}_{dtype}_{bias:d}")
            yield target, sources


def _immintrin_pch(source: str, options: tuple[str, ...]) -> tuple[str, ...]:
    """The kernels' own precompiled <immintrin.h> for these options, as a kernel compile
    reads it (none where the source does not include it): the header is a system one, so
    the kernel's warnings are the same; parsed in each of the sixty compiles, it was half
    of this test's 60 s."""
    found = pch.include_args(source, compiler_path(), options)
    if not found:
        pch.wait()   # the first asks for the build and does not wait: wait for it here
        found = pch.include_args(source, compiler_path(), options)
    return found


TARGETS = ["c", pytest.param("x86-64-v3", marks=pytest.mark.skipif(
    "avx2" not in cpu_features(), reason="no AVX2")), "x86-64-v4"]


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "no_openmp"])
def test_generated_c_builds_warning_free(target_name, openmp, tmp_path):
    """-Wall -Wextra -Werror -pedantic; the portable target as strict C99. (x86-64-v4 only
    compiles here, whatever the host: named targets do not depend on the build machine.)"""
    std = "-std=c99" if target_name == "c" else "-std=c11"
    count = 0
    for target, sources in _sources(target_name, LAYERS, (Step("add"), Step("silu"))):
        options = (std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", *target.arch_flags,
                   *(["-fopenmp"] if openmp else []))
        for name, text in sources:
            path = tmp_path / f"{count}_{name}"
            path.write_text(text)
            if target_name == "c":   # strict C: no GCC extension anywhere
                assert "__attribute__" not in text and "__builtin" not in text, name
            done = subprocess.run(
                [compiler_path(), *_immintrin_pch(text, options), *options, "-c", str(path),
                 "-o", str(path.with_suffix(".o"))], capture_output=True, text=True)
            assert done.returncode == 0, f"{name} ({target_name}):\n{done.stderr[:3000]}"
            count += 1
    assert count >= 3 * len(LAYERS)
