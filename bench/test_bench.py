"""The public suite under pytest-benchmark: convgen (default plan, packed weights) and torch.

    make bench-pytest      # or: pytest bench/test_bench.py -p no:xdist

Each layer is one benchmark group with a convgen and a torch entry at the same thread
count (CONVGEN_NUM_THREADS, default all cores), preallocated convgen outputs, warm-up
rounds first. This measures; the targets and ratios are in compare.py and RESULTS.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import anchors

SUITE = Path(__file__).resolve().parent / "suite_public.json"   # shared/bench's, in the repo
LAYERS = json.loads(SUITE.read_text())["layers"] if SUITE.exists() else []
THREADS = int(os.environ.get("CONVGEN_NUM_THREADS", len(os.sched_getaffinity(0))))


def _operands(layer):
    import convgen
    from convgen.core.layers import spec_from_op
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer["x"]).astype(np.float32)
    w = rng.standard_normal(layer["w"]).astype(np.float32)
    b = rng.standard_normal(spec.out_channels).astype(np.float32)
    return convgen.compile(spec, tuple(layer["x"])), x, w, b


@pytest.mark.parametrize("layer", LAYERS, ids=[layer["name"] for layer in LAYERS])
def test_convgen(benchmark, layer):
    kernel, x, w, b = _operands(layer)
    packed, out = kernel.prepack(w), np.empty(kernel.output_shape, np.float32)
    benchmark.group = layer["name"]
    benchmark.extra_info.update(plan=str(kernel.plan), gflop=kernel.flops / 1e9)
    benchmark.pedantic(kernel, args=(x, packed, b), kwargs={"out": out}, rounds=20,
                       warmup_rounds=3, iterations=1)


@pytest.mark.parametrize("layer", LAYERS, ids=[layer["name"] for layer in LAYERS])
def test_torch(benchmark, layer):
    anchors.setup_torch(THREADS)
    _, x, w, b = _operands(layer)
    benchmark.group = layer["name"]
    benchmark.pedantic(anchors.torch_call(layer, x, w, b), rounds=20, warmup_rounds=3,
                       iterations=1)
