"""Float32 error of each algorithm on realistic layers, against torch in float64.

The bounds are the documented ones (README, "Accuracy"): the exact algorithms sum the
same products in another order (relative L2 error a few 1e-7); Winograd F(2,3) is close
to them; F(4,3) multiplies by larger transform constants and is a few times worse.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convgen
from convgen import ConvSpec
from helpers import rel_l2

# (documented bound, algorithms it covers)
BOUNDS = {"implicit_gemm": 2e-6, "direct_simd": 2e-6, "depthwise": 2e-6, "direct": 2e-6,
          "winograd2": 2e-6, "winograd4": 1e-5}
LAYERS = [   # 3x3 unit-stride layers of the sizes networks use (Winograd applies to all)
    (ConvSpec.conv(2, 64, 64, 3, padding=1), (1, 64, 28, 28)),
    (ConvSpec.conv(2, 256, 128, 3, padding=1), (1, 256, 14, 14)),
    (ConvSpec.conv(1, 512, 256, 3, padding=1), (1, 512, 64)),
]


DEPTHWISE_LAYERS = [   # where depthwise applies: one input channel per group
    (ConvSpec.conv(2, 256, 256, 5, padding=2, groups=256), (1, 256, 14, 14)),
    (ConvSpec.conv(1, 64, 128, 9, padding=4, groups=64), (1, 64, 300)),
]


@pytest.mark.parametrize("layer", range(len(DEPTHWISE_LAYERS)))
def test_depthwise_error_within_the_exact_bound(layer):
    spec, shape = DEPTHWISE_LAYERS[layer]
    rng = np.random.default_rng(layer)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    b = rng.standard_normal(spec.out_channels).astype(np.float32)
    op = getattr(F, spec.op)
    ref = op(*(torch.from_numpy(a.astype(np.float64)) for a in (x, w, b)),
             padding=spec.pad_before, groups=spec.groups).numpy()
    err = rel_l2(convgen.compile(spec, shape, plan="depthwise")(x, w, b), ref)
    assert err <= BOUNDS["depthwise"], f"depthwise: relative L2 error {err:.2e}"


@pytest.mark.parametrize("algorithm", sorted(set(BOUNDS) - {"depthwise"}))
@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_float32_error_within_the_documented_bound(algorithm, layer):
    spec, shape = LAYERS[layer]
    rng = np.random.default_rng(layer)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal(spec.weight_shape) / np.sqrt(spec.in_channels * 9)).astype(np.float32)
    b = rng.standard_normal(spec.out_channels).astype(np.float32)
    op = getattr(F, spec.op)
    ref = op(*(torch.from_numpy(a.astype(np.float64)) for a in (x, w, b)), padding=1).numpy()
    kernel = convgen.compile(spec, shape, plan=algorithm)
    err = rel_l2(kernel(x, w, b), ref)
    assert err <= BOUNDS[algorithm], f"{algorithm}: relative L2 error {err:.2e}"


@pytest.mark.parametrize("where", ["input", "weight", "packed weight"])
@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_winograd_hands_nonfinite_operands_to_an_exact_kernel(algorithm, where):
    """A NaN or an infinity would spread over whole Winograd tiles; the kernel notices (in
    its padded copy, or when packing) and the call is computed by the exact kernel, so the
    non-finite pattern is torch's."""
    spec, shape = ConvSpec.conv(2, 8, 8, 3, padding=1), (1, 8, 20, 20)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(spec.weight_shape)
    b = rng.standard_normal(8)
    if where == "input":
        x[0, 2, 7, 9], x[0, 5, 0, 3] = np.nan, np.inf
    else:
        w[3, 1, 1, 1] = -np.inf
    kernel = convgen.compile(spec, shape, dtype="float64", plan=algorithm)
    weight = kernel.prepack(w) if where == "packed weight" else w
    ours = kernel(x, weight, b)
    theirs = F.conv2d(*(torch.from_numpy(a) for a in (x, w, b)), padding=1).numpy()
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(ours), test(theirs))
    finite = np.isfinite(theirs)
    assert rel_l2(np.where(finite, ours, 0), np.where(finite, theirs, 0)) < 1e-12
    # the exact path is part of the kernel's own library (exact.c), not a Python fallback
    assert set(kernel.sources) == {"kernel.c", "exact.c"}
    assert "algorithm=direct_simd" in kernel.sources["exact.c"]
