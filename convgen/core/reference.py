"""A slow, obviously right numpy reference (float64), independent of torch and of our C.

Used by the demo (``make demo``) so that a user with only the runtime dependencies can
see every kernel checked; the test suite checks against torch itself.
"""
from __future__ import annotations

import itertools

import numpy as np

from .spec import Workload

_NP_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
                 "circular": "wrap"}


def convolve(workload: Workload, x, w, b=None) -> np.ndarray:
    """The workload's output for batched ``x``, in float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    spec = workload.spec
    y = _transposed(workload, x, w) if spec.transposed else _forward(workload, x, w)
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * spec.ndim)
    return y


def _forward(workload: Workload, x, w):
    spec, g = workload.spec, workload.spec.groups
    pads = [(0, 0), (0, 0)] + list(zip(spec.pad_before, spec.pad_after))
    xp = np.pad(x, pads, mode=_NP_PAD_MODES[spec.padding_mode])
    n = x.shape[0]
    out = workload.out_spatial
    xg = xp.reshape(n, g, spec.cin_per_group, *xp.shape[2:])
    wg = w.reshape(g, spec.cout_per_group, spec.cin_per_group, *spec.kernel_size)
    y = np.zeros((n, g, spec.cout_per_group, *out))
    for tap in itertools.product(*(range(k) for k in spec.kernel_size)):
        window = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                       for t, d, s, o in zip(tap, spec.dilation, spec.stride, out))
        y += np.einsum("ngc...,goc->ngo...", xg[(slice(None),) * 3 + window],
                       wg[(slice(None),) * 3 + tap])
    return y.reshape(n, spec.out_channels, *out)


def _transposed(workload: Workload, x, w):
    spec, g = workload.spec, workload.spec.groups
    n, ins, out = x.shape[0], workload.in_spatial, workload.out_spatial
    full = [(i - 1) * s + d * (k - 1) + 1 + op for i, s, d, k, op in
            zip(ins, spec.stride, spec.dilation, spec.kernel_size, spec.output_padding)]
    xg = x.reshape(n, g, spec.cin_per_group, *ins)
    wg = w.reshape(g, spec.cin_per_group, spec.cout_per_group, *spec.kernel_size)
    y = np.zeros((n, g, spec.cout_per_group, *full))
    for tap in itertools.product(*(range(k) for k in spec.kernel_size)):
        window = tuple(slice(t * d, t * d + s * (i - 1) + 1, s)
                       for t, d, s, i in zip(tap, spec.dilation, spec.stride, ins))
        y[(slice(None),) * 3 + window] += np.einsum("ngc...,gco->ngo...", xg,
                                                    wg[(slice(None),) * 3 + tap])
    crop = tuple(slice(p, p + o) for p, o in zip(spec.pad_before, out))
    return y[(slice(None),) * 3 + crop].reshape(n, spec.out_channels, *out)
