"""Edge shapes for every algorithm, with two threads: tails of every tile, channel counts
that are no multiple of the vector width, 1x1 spatial, one output pixel, more and fewer
images than threads. Outputs poisoned, compared with torch in float64."""
from __future__ import annotations

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import workload_of
from convgen.cpu.planner import candidates
from helpers import assert_matches, poisoned_call, random, torch_reference

# (name, op, input shape, weight shape, args)
EDGES = [
    ("spatial_1x1", "conv2d", (3, 17, 1, 1), (33, 17, 1, 1), {}),
    ("spatial_1x1_padded", "conv2d", (2, 5, 1, 1), (7, 5, 3, 3), {"padding": 1}),
    ("one_output_pixel", "conv2d", (1, 6, 5, 5), (9, 6, 5, 5), {}),
    ("batch_gt_threads", "conv2d", (5, 19, 9, 13), (21, 19, 3, 3), {"padding": 1}),
    ("batch_lt_threads", "conv1d", (1, 24, 37), (40, 24, 3), {"padding": 1, "dilation": 2}),
    ("odd_everything", "conv2d", (3, 13, 17, 33), (31, 13, 3, 3), {"padding": (1, 2)}),
    ("wide_row_tail", "conv1d", (2, 3, 1000), (17, 3, 5), {"padding": 2,
                                                        "padding_mode": "reflect"}),
    ("grouped_odd", "conv2d", (2, 15, 11, 7), (25, 3, 3, 3), {"padding": 1, "groups": 5}),
    ("depthwise_mult", "conv2d", (2, 7, 10, 9), (21, 1, 3, 3), {"padding": 1, "groups": 7}),
    ("conv3d_tails", "conv3d", (2, 5, 3, 7, 9), (11, 5, 2, 3, 3), {"padding": (0, 1, 1)}),
    ("tconv_1x1", "conv_transpose2d", (3, 9, 1, 1), (9, 17, 3, 3), {"stride": 2}),
    ("tconv_tails", "conv_transpose2d", (2, 12, 5, 7), (12, 19, 4, 4),
     {"stride": 3, "padding": 1, "output_padding": 2}),
    ("tconv3d_odd", "conv_transpose3d", (1, 4, 2, 3, 5), (4, 9, 3, 2, 3),
     {"stride": (2, 1, 2), "padding": (1, 0, 1)}),
]


def _best_two_thread_plans(op, x_shape, w_shape, args, dtype) -> dict:
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    workload = workload_of(spec, x_shape, dtype)[0]
    best = {}
    for cand in candidates(workload, get_target("cpu"), threads=2):
        if cand.plan.threads == 2:
            best.setdefault(cand.plan.algorithm, cand.plan)
    return best


def _cases():
    for dtype in ("float32", "float64"):
        for name, op, x_shape, w_shape, args in EDGES:
            for algorithm, plan in sorted(_best_two_thread_plans(op, x_shape, w_shape, args,
                                                                 dtype).items()):
                yield pytest.param(name, op, x_shape, w_shape, args, plan, dtype,
                                   id=f"{name}-{algorithm}-{dtype}")


@pytest.mark.parametrize("name,op,x_shape,w_shape,args,plan,dtype", list(_cases()))
def test_edge_shapes_every_algorithm(name, op, x_shape, w_shape, args, plan, dtype):
    rng = np.random.default_rng(len(name) * 7 + len(plan.algorithm))
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    x, w = random(rng, x_shape, dtype), random(rng, w_shape, dtype)
    b = random(rng, (spec.out_channels,), dtype)
    kernel = convgen.compile(spec, x_shape, dtype, plan=plan)
    assert kernel.plan.threads == 2
    assert_matches(poisoned_call(kernel, x, w, b), torch_reference(op, x, w, b, **args), dtype)
