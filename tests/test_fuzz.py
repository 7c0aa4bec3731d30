"""Fuzz the six functional ops over their whole argument space.

The property is deliberately weak and total: for any call at all -- valid or not, any
argument type, dtype, rank, layout -- convgen either raises a ValueError/TypeError with a
message, or returns what torch computes (in float64). Never another exception, a crash, a
wrong shape, dtype or number.

Budget: CONVGEN_FUZZ_EXAMPLES examples in all (default 60, a few seconds), spread over
the six ops; ``make fuzz`` runs 2000.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import convgen
from helpers import TOLERANCE, rel_l2, torch_reference

OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
EXAMPLES_PER_OP = max(1, int(os.environ.get("CONVGEN_FUZZ_EXAMPLES", "60")) // len(OPS))
FLOATS = ["float32", "float64"]
ODD_DTYPES = ["float16", "int64", "int8", "complex64", "bool", "object", "longdouble", "U1"]
JUNK = [None, 1.5, True, "1", "", (), [], object(), -1, 0]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# -- argument values: mostly plausible, sometimes anything --------------------------------------
@st.composite
def axis_arg(draw, ndim: int, lo: int, hi: int, wild: bool = False):
    """An int, a tuple or list of ndim ints, a one-element tuple or a numpy int in [lo, hi];
    ``wild``: also a tuple of the wrong length, a value out of range, or junk."""
    forms = ["int", "int", "tuple", "tuple", "list", "single", "numpy"]
    if wild:
        forms = ["wrong-length", "out-of-range", "junk", "junk"]
    form = draw(st.sampled_from(forms))
    value = st.integers(lo, hi)
    if form == "int":
        return draw(value)
    if form == "tuple":
        return tuple(draw(value) for _ in range(ndim))
    if form == "list":
        return [draw(value) for _ in range(ndim)]
    if form == "single":
        return (draw(value),)
    if form == "numpy":
        return np.int64(draw(value))
    if form == "wrong-length":
        return tuple(draw(value) for _ in range(draw(st.sampled_from([0, ndim + 1]))))
    if form == "out-of-range":
        return draw(st.sampled_from([lo - 1, -3, 10 ** 6]))
    return draw(st.sampled_from(JUNK))


@st.composite
def operand(draw, shape, dtype, rng):
    """An array of ``shape`` in ``dtype``, in one of the layouts users pass."""
    data = rng.standard_normal(shape)
    try:
        array = data.astype(dtype)
    except (TypeError, ValueError):
        array = data
    layout = draw(st.sampled_from(["plain", "plain", "plain", "strided", "fortran", "read-only",
                                   "big-endian", "torch", "list"]))
    if layout == "strided" and array.ndim:
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "read-only":
        array.setflags(write=False)
    if layout == "big-endian" and array.dtype.kind in "fiuc":
        return array.astype(array.dtype.newbyteorder(">"))
    if layout == "torch" and array.dtype in (np.float32, np.float64, np.int64, np.complex64):
        return torch.from_numpy(np.ascontiguousarray(array))
    if layout == "list" and array.dtype == np.float64:
        return array.tolist()
    return array


@st.composite
def calls(draw, op: str):
    """(input, weight, bias, kwargs) for ``op``: 60% plausible calls (some still invalid
    by the rules between arguments), 40% with a few arguments of any kind at all."""
    ndim, transposed = int(op[-2]), op.startswith("conv_transpose")
    wild = draw(st.integers(0, 9)) < 4

    def mistake() -> bool:               # each argument of a wild call goes wrong at 1 in 4
        return wild and draw(st.integers(0, 3)) == 0

    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 4)) for _ in range(ndim)]
    # forward convs need room for the dilated kernel; transposed ones grow their input
    most = (5 if ndim < 3 else 3) if transposed else (10 if ndim < 3 else 6)
    spatial = [draw(st.integers(1, most)) for _ in range(ndim)]
    if mistake():                        # a zero-sized axis somewhere
        (kernel if draw(st.booleans()) else spatial)[draw(st.integers(0, ndim - 1))] = 0
    batch = draw(st.sampled_from([None, 0, 1, 1, 2]))
    x_shape = (cin, *spatial) if batch is None else (batch, cin, *spatial)
    w_shape = (cin, cout // groups, *kernel) if transposed else (cout, cin // groups, *kernel)
    if mistake():                        # a rank or channel mistake
        x_shape, w_shape = draw(st.sampled_from([
            (x_shape[1:], w_shape), ((1, *x_shape), w_shape), (x_shape, w_shape[:-1]),
            (x_shape, (*w_shape, 1)), ((*x_shape[:-ndim - 1], x_shape[-ndim - 1] + 1,
                                        *x_shape[-ndim:]), w_shape)]))
    kwargs = {"stride": draw(axis_arg(ndim, 1, 3, mistake())),
              "dilation": draw(axis_arg(ndim, 1, 3 if transposed else 2, mistake()))}
    if mistake():
        kwargs["groups"] = draw(st.sampled_from([0, -1, 4, 2.0, None, "2", True]))
    elif groups != 1 or draw(st.booleans()):
        kwargs["groups"] = groups
    if transposed:
        kwargs["padding"] = draw(axis_arg(ndim, 0, 2, mistake())) if not mistake() else "same"
        if draw(st.booleans()):
            kwargs["output_padding"] = draw(axis_arg(ndim, 0, 1, mistake()))
        if draw(st.integers(0, 3)) == 0:
            kwargs["output_size"] = draw(output_sizes(ndim, x_shape, w_shape, kwargs, mistake()))
    else:
        kwargs["padding"] = draw(st.one_of(axis_arg(ndim, 0, 3, mistake()),
                                           st.sampled_from(["same", "valid"])))
        if kwargs["padding"] == "same" and not mistake():
            kwargs["stride"] = 1             # the rule torch enforces; broken now and then
        if mistake():
            kwargs["padding"] = draw(st.sampled_from(["SAME", "full", b"same"]))
        if draw(st.booleans()):
            kwargs["padding_mode"] = draw(st.sampled_from(
                ["zeros", "reflect", "replicate", "circular"]))
        if mistake():
            kwargs["padding_mode"] = draw(st.sampled_from(["constant", None, "Zeros", 0]))
    if mistake():                        # an argument the op does not take
        kwargs["padding_mode" if transposed else "output_padding"] = 0
    dtypes = [draw(st.sampled_from(FLOATS))] * 3
    if mistake():
        dtypes[draw(st.integers(0, 2))] = draw(st.sampled_from(FLOATS + ODD_DTYPES))
    bias_shape = draw(st.sampled_from([None, (cout,)]))
    if mistake():
        bias_shape = draw(st.sampled_from([(cout + 1,), (cout, 1), ()]))
    x = draw(operand(x_shape, dtypes[0], rng))
    w = draw(operand(w_shape, dtypes[1], rng))
    b = None if bias_shape is None else draw(operand(bias_shape, dtypes[2], rng))
    return x, w, b, kwargs


@st.composite
def output_sizes(draw, ndim, x_shape, w_shape, kwargs, wild):
    """Around the valid range of output sizes when the arguments allow computing it."""
    def per_axis(value, default):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return [int(value)] * ndim
        if isinstance(value, (tuple, list)) and len(value) in (1, ndim) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            return [int(v) for v in value] * (ndim // len(value))
        return [default] * ndim
    stride, pad = per_axis(kwargs["stride"], 1), per_axis(kwargs["padding"], 0)
    dil = per_axis(kwargs["dilation"], 1)
    sizes = []
    for i in range(ndim):
        low = ((x_shape[-ndim + i] - 1) * stride[i] - 2 * pad[i]
               + dil[i] * (w_shape[-ndim + i] - 1) + 1)
        sizes.append(low + draw(st.integers(-1 if wild else 0, max(stride[i], 1) - (not wild))))
    if wild:
        return draw(st.sampled_from([sizes[:-1], sizes + [3], sizes[0], "big", sizes]))
    if draw(st.booleans()):
        return [*x_shape[:-ndim], *sizes]     # torch also takes the whole shape
    return sizes


# -- the property --------------------------------------------------------------------------------
def _plain(value):
    """Arguments as torch's functional ops take them (no numpy ints)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _float64(value):
    return None if value is None else np.array(np.asarray(value), dtype=np.float64)


def _torch_fails_where_convgen_is_documented_to_accept(op, kwargs, exc) -> bool:
    """torch's _output_padding indexes one-element stride/padding/dilation tuples with an
    IndexError where convgen repeats them (tests/test_errors.py, module docstring)."""
    return (isinstance(exc, IndexError) and kwargs.get("output_size") is not None
            and any(isinstance(kwargs.get(k), (tuple, list)) and len(kwargs[k]) == 1
                    for k in ("stride", "padding", "dilation")))


def check_call(op, x, w, b, kwargs):
    note(f"{op}(x={type(x).__name__} {getattr(x, 'dtype', '')} {np.shape(x)}, "
         f"w={type(w).__name__} {getattr(w, 'dtype', '')} {np.shape(w)}, "
         f"b={None if b is None else np.shape(b)}, **{kwargs!r})")
    try:
        ours = getattr(convgen, op)(x, w, b, **kwargs)
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted")
    dtype = np.asarray(x).dtype.newbyteorder("=")
    assert isinstance(ours, np.ndarray) and ours.flags.c_contiguous and ours.dtype.isnative
    assert ours.dtype == dtype, f"result dtype {ours.dtype}, input dtype {dtype}"
    try:
        theirs = torch_reference(op, _float64(x), _float64(w), _float64(b),
                                 **{k: _plain(v) for k, v in kwargs.items()})
    except Exception as exc:
        if _torch_fails_where_convgen_is_documented_to_accept(op, kwargs, exc):
            return
        raise AssertionError(f"convgen accepted a call torch refuses: {exc!r}") from exc
    assert ours.shape == theirs.shape, f"shape {ours.shape}, torch's {theirs.shape}"
    err = rel_l2(ours, theirs)
    assert err <= TOLERANCE[dtype.name], f"relative L2 error {err:.3g} ({dtype.name})"


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=EXAMPLES_PER_OP, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_refuses_clearly_or_matches_torch(op, data):
    check_call(op, *data.draw(calls(op), label="call"))
