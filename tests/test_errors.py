"""Bad input is refused as PyTorch refuses it; what PyTorch accepts is accepted and agrees.

The rule (the issue): wrong ranks, channel mismatches, bad groups, 'same' with stride > 1,
output_padding / output_size out of range, non-positive sizes, empty outputs, unsupported
dtypes and weights of the wrong shape raise ``ValueError``/``TypeError`` with a message that
names the argument, before any C is rendered, compiled, loaded or run. Odd layouts
(non-contiguous, Fortran order, negative strides, big-endian, read-only) are accepted.

PyTorch is the oracle: for every invalid case torch raises (any exception) and convgen raises
ValueError/TypeError; for every valid edge case both accept and the results agree.

Known, deliberate deviations from PyTorch 2.13 (tested as such, not as parity):
  * in_channels or out_channels of 0 are refused (torch returns oddly shaped empty tensors,
    e.g. conv1d(x[1, 0, 5], w[2, 0, 3]) -> shape (1, 0, 3)).
  * Only float32 and float64 are supported: integer, float16, bfloat16, complex, bool, object
    and string arrays raise TypeError naming the dtype (torch computes int64/float16/complex
    convolutions, and refuses bool).
  * A bias whose dtype differs from the input's is refused by every op (torch's
    conv_transpose1d/2d cast it; its conv_transpose3d and forward convs refuse it).
  * Batch 0: torch returns early for an empty batch and skips some of its checks (a bad
    output_padding, dilation 0, an empty transposed output are accepted); convgen checks the
    arguments whatever the batch size. What both accept agrees (an empty array of torch's shape).
  * Negative padding with padding_mode reflect/replicate/circular: nn.ConvNd hands it to F.pad,
    which crops; convgen refuses negative padding in every mode.
  * A one-element padding tuple with padding_mode != 'zeros' in 2-d/3-d (and a one-element
    dilation with padding='same' there): torch refuses it for batched input but, for unbatched
    input, pads only the last axis (or computes a 'same' padding for one axis only); convgen
    refuses it for both. (With padding_mode='zeros', one-element stride/padding/dilation/
    output_padding tuples are repeated over all axes, as ATen does, and accepted.)
  * A padding tuple of the wrong length with padding_mode != 'zeros': nn.ConvNd hands it to
    F.pad, which may accept it and pad other dimensions (channels, even), e.g.
    Conv1d(padding=(0, 0), padding_mode='reflect'); convgen refuses it.
  * ConvTransposeNd(..., stride=(2,))(x, output_size=...) in 2-d/3-d: torch fails with an
    IndexError inside ``_output_padding``; convgen repeats the one-element tuple and accepts.
  * convgen accepts inputs that numpy reads (nested lists, big-endian arrays) where torch's
    functional ops want tensors.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import convgen
from convgen.core.spec import ConvSpec
from helpers import assert_matches, random, torch_reference

pytestmark = pytest.mark.filterwarnings(
    "ignore:Initializing zero-element tensors:UserWarning",
    "ignore:Using padding='same' with even kernel:UserWarning")

OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
REFUSALS = (ValueError, TypeError)


def op_info(op: str) -> tuple[int, bool]:
    return int(op[-2]), op.startswith("conv_transpose")


def torch_run(op, x, w, b=None, **args):
    """torch's verdict on a call, operands in their own dtypes.

    The extensions are computed as their torch equivalents: ``padding_mode`` by nn.ConvNd,
    ``output_size`` by nn.ConvTransposeNd's forward (which then ignores output_padding).
    """
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    bt = None if b is None else torch.as_tensor(b)
    ndim, transposed = op_info(op)
    args = dict(args)
    groups = args.get("groups", 1)
    if transposed and args.get("output_size") is not None:
        output_size = args.pop("output_size")
        args.pop("output_padding", None)
        module = getattr(torch.nn, f"ConvTranspose{ndim}d")(
            wt.shape[0], wt.shape[1] * groups, tuple(wt.shape[2:]), bias=bt is not None,
            dtype=xt.dtype, **args)
        with torch.no_grad():
            return _with_parameters(module, wt, bt)(xt, output_size=output_size)
    args.pop("output_size", None)
    mode = args.pop("padding_mode", "zeros")
    if mode != "zeros":
        module = getattr(torch.nn, f"Conv{ndim}d")(
            wt.shape[1] * groups, wt.shape[0], tuple(wt.shape[2:]), bias=bt is not None,
            padding_mode=mode, dtype=xt.dtype, **args)
        with torch.no_grad():
            return _with_parameters(module, wt, bt)(xt)
    return getattr(F, op)(xt, wt, bt, **args)


def _with_parameters(module, wt, bt):
    """The module computing with exactly these tensors: no copy_(), which would broadcast a
    wrong-shaped weight or bias into place, so torch's own shape checks see them."""
    module.weight = torch.nn.Parameter(wt, requires_grad=False)
    if bt is not None:
        module.bias = torch.nn.Parameter(bt, requires_grad=False)
    return module


def refusal(call) -> BaseException | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


@pytest.fixture
def no_native(monkeypatch):
    """Any attempt to render, compile, load or run C fails the test loudly."""
    def boom(*args, **kwargs):
        raise AssertionError("native code was reached for an invalid call")

    for module, name in [("convgen.runtime.pipeline", "library"),
                         ("convgen.runtime.pipeline", "_load"),
                         ("convgen.runtime.loader", "load"),
                         ("convgen.cpu.render", "render"),
                         ("convgen.cpu.compile", "compile_shared")]:
        monkeypatch.setattr(sys.modules[module], name, boom)
    return boom


def assert_refused(exc, names) -> None:
    """convgen's refusal: a ValueError/TypeError whose message names every one of ``names``."""
    assert exc is not None, "convgen accepted it"
    assert isinstance(exc, REFUSALS), f"{type(exc).__name__}: {exc}"
    message = str(exc).lower()
    for name in (names,) if isinstance(names, str) else names:
        assert name.lower() in message, f"message does not name {name!r}: {exc}"


# -- 1. invalid calls: torch refuses, convgen refuses with a clear message ---------------------
def _bad_cases():
    cases = []

    def bad(op, label, x, w, names, b=None, dtypes=("float64",) * 3, **args):
        cases.append(pytest.param(op, x, w, b, dtypes, args, names, id=f"{op}-{label}"))

    for op in OPS:
        n, transposed = op_info(op)
        sp, k3 = (5,) * n, (3,) * n
        x = (2, 4, *sp)
        w = (4, 3, *k3) if transposed else (6, 4, *k3)
        # ranks, channels, groups
        bad(op, "input-rank-low", sp, w, "input")
        bad(op, "input-rank-high", (1, *x), w, "input")
        bad(op, "weight-rank-low", x, w[:-1], "weight")
        bad(op, "weight-rank-high", x, (*w, 1), "weight")
        bad(op, "channel-mismatch", (2, 5, *sp), w, "channels")
        bad(op, "channel-mismatch-unbatched", (5, *sp), w, "channels")
        bad(op, "groups-0", x, w, "groups", groups=0)
        bad(op, "groups-negative", x, w, "groups", groups=-2)
        bad(op, "groups-not-dividing", x, w, "groups", groups=3 if transposed else 4)
        bad(op, "groups-float", x, w, "groups", groups=1.0)
        bad(op, "out-channels-0", x, (4, 0, *k3) if transposed else (0, 4, *k3), "channels")
        bad(op, "kernel-size-0", x, (*w[:-1], 0), "kernel_size")
        # stride, dilation, padding
        bad(op, "stride-0", x, w, "stride", stride=0)
        bad(op, "stride-negative", x, w, "stride", stride=-1)
        bad(op, "stride-one-axis-0", x, w, "stride", stride=(1,) * (n - 1) + (0,))
        bad(op, "stride-float", x, w, "stride", stride=1.5)
        bad(op, "dilation-0", x, w, "dilation", dilation=0)
        bad(op, "dilation-negative", x, w, "dilation", dilation=-2)
        bad(op, "padding-negative", x, w, "padding", padding=-1)
        bad(op, "padding-float", x, w, "padding", padding=1.0)
        for name, value in (("stride", 1), ("padding", 0), ("dilation", 1)):
            bad(op, f"{name}-too-long", x, w, name, **{name: (value,) * (n + 1)})
            bad(op, f"{name}-empty", x, w, name, **{name: ()})
        # sizes
        bad(op, "input-spatial-0", (2, 4, *sp[:-1], 0), w, "input")
        bad(op, "input-spatial-0-padded", (2, 4, 0, *sp[1:]), w, "input", padding=2)
        # bias and dtypes
        bad(op, "bias-length", x, w, "bias", b=(7,))
        bad(op, "bias-2d", x, w, "bias", b=(w[1] if transposed else w[0], 1))
        bad(op, "bias-0d", x, w, "bias", b=())
        bad(op, "weight-dtype", x, w, ("weight", "dtype"), dtypes=("float64", "float32", None))
        bad(op, "input-dtype", x, w, ("dtype",), dtypes=("float32", "float64", None))
        if not transposed or n == 3:   # see test_bias_dtype_mismatch_refused_transposed
            bad(op, "bias-dtype", x, w, ("bias", "dtype"), b=(w[1] if transposed else w[0],),
                dtypes=("float64", "float64", "float32"))
        if transposed:
            tx = (1, 4, *sp)
            bad(op, "padding-same", x, w, "padding", padding="same")
            bad(op, "padding-valid", x, w, "padding", padding="valid")
            bad(op, "output-padding-eq-stride", x, w, "output_padding", stride=2,
                output_padding=2)
            bad(op, "output-padding-no-stride", x, w, "output_padding", output_padding=1)
            bad(op, "output-padding-ge-dilation", x, w, "output_padding", stride=2, dilation=3,
                output_padding=3)
            bad(op, "output-padding-negative", x, w, "output_padding", output_padding=-1)
            bad(op, "output-padding-too-long", x, w, "output_padding", stride=2,
                output_padding=(1,) * (n + 1))
            bad(op, "output-empty", (2, 4, *(1,) * n), (4, 3, *(1,) * n), "empty", padding=1)
            bad(op, "output-empty-dilated", (2, 4, *(2,) * n), w, "empty", padding=4)
            # min output 11, max 12 along each axis
            bad(op, "output-size-below", tx, w, "output_size", stride=2, output_size=[10] * n)
            bad(op, "output-size-above", tx, w, "output_size", stride=2, output_size=[13] * n)
            bad(op, "output-size-one-axis", tx, w, "output_size", stride=2,
                output_size=[11] * (n - 1) + [14])
            bad(op, "output-size-length", tx, w, "output_size", stride=2,
                output_size=[11] * (n + 1))
            bad(op, "output-size-empty", tx, w, "output_size", stride=2, output_size=[])
            bad(op, "output-size-int", tx, w, "output_size", stride=2, output_size=11)
            bad(op, "output-size-unbatched-length", (4, *sp), w, "output_size", stride=2,
                output_size=[1, 3, *[11] * n])
            bad(op, "output-size-dilation-not-stride", tx, w, "output_size", stride=1,
                dilation=2, output_size=[10] * n)
        else:
            bad(op, "kernel-larger-than-input", (2, 4, *(2,) * n), w, "kernel")
            bad(op, "kernel-larger-than-padded", (2, 4, *(1,) * n), (6, 4, *(4,) * n),
                "kernel", padding=1)
            bad(op, "dilated-kernel-too-large", x, w, "kernel", dilation=3)
            bad(op, "valid-kernel-too-large", (2, 4, *(2,) * n), w, "kernel", padding="valid")
            bad(op, "padding-foo", x, w, "padding", padding="foo")
            bad(op, "padding-SAME", x, w, "padding", padding="SAME")
            bad(op, "same-stride-2", x, w, ("same", "stride"), padding="same", stride=2)
            bad(op, "same-stride-one-axis", x, w, ("same", "stride"), padding="same",
                stride=(1,) * (n - 1) + (2,))
            bad(op, "padding-mode-foo", x, w, "padding_mode", padding_mode="foo")
            bad(op, "reflect-pad-eq-size", x, w, ("reflect", "padding"), padding=5,
                padding_mode="reflect")
            bad(op, "reflect-same-too-big", (2, 4, *(1,) * n), w, ("reflect", "padding"),
                padding="same", padding_mode="reflect")
            bad(op, "circular-pad-gt-size", x, w, ("circular", "padding"), padding=6,
                padding_mode="circular")
            if n > 1:
                bad(op, "reflect-padding-one-element", x, w, "padding", padding=(1,),
                    padding_mode="reflect")
    return cases


@pytest.mark.parametrize("op, x_shape, w_shape, b_shape, dtypes, args, names", _bad_cases())
def test_invalid_call_refused_like_torch(op, x_shape, w_shape, b_shape, dtypes, args, names,
                                         no_native):
    rng = np.random.default_rng(0)
    x = random(rng, x_shape, dtypes[0])
    w = random(rng, w_shape, dtypes[1])
    b = None if b_shape is None else random(rng, b_shape, dtypes[2] or dtypes[0])
    assert refusal(lambda: torch_run(op, x, w, b, **args)) is not None, "torch accepts it"
    assert_refused(refusal(lambda: getattr(convgen, op)(x, w, b, **args)), names)


# -- 1b. dtypes convgen does not support (a deliberate deviation: torch computes some) ----------
UNSUPPORTED = [np.int8, np.int32, np.int64, np.uint8, np.float16, np.complex64, np.complex128,
               np.bool_, np.longdouble]


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose1d"])
@pytest.mark.parametrize("dtype", UNSUPPORTED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("which", ["input", "weight", "bias", "all"])
def test_unsupported_dtype_refused(op, dtype, which, no_native):
    n, transposed = op_info(op)
    x = np.ones((1, 2, *(4,) * n))
    w = np.ones((2, 2, *(3,) * n))
    b = np.ones(2)
    arrays = {"input": x, "weight": w, "bias": b}
    for name in arrays:
        if which in (name, "all"):
            arrays[name] = arrays[name].astype(dtype)
    exc = refusal(lambda: getattr(convgen, op)(arrays["input"], arrays["weight"],
                                               arrays["bias"]))
    assert isinstance(exc, TypeError), f"{type(exc).__name__}: {exc}"
    assert np.dtype(dtype).name in str(exc), exc
    assert "input" in str(exc) or which in str(exc), exc


@pytest.mark.parametrize("value, what", [
    (np.array([[["a", "b", "c"]]]), "<u1"),
    (np.array([[[object(), object(), object()]]], dtype=object), "object"),
    ([[[1.0, 2.0], [3.0]]], "input"),          # ragged
    ("abc", "input"),
    (torch.ones(1, 1, 3, dtype=torch.bfloat16), "bfloat16"),
    (torch.ones(1, 1, 3, dtype=torch.float16), "float16"),
    (torch.ones(1, 1, 3, dtype=torch.int64), "int64"),
], ids=["str", "object", "ragged", "text", "torch-bfloat16", "torch-float16", "torch-int64"])
def test_unreadable_input_refused(value, what, no_native):
    exc = refusal(lambda: convgen.conv1d(value, np.ones((1, 1, 1))))
    assert_refused(exc, ("input", what))
    assert isinstance(exc, TypeError)


def test_zero_channels_refused():
    """Deliberate deviation: torch accepts in_channels=0 and returns an odd empty shape."""
    x, w = np.ones((1, 0, 5)), np.ones((2, 0, 3))
    assert refusal(lambda: torch_run("conv1d", x, w)) is None   # torch: shape (1, 0, 3)
    assert_refused(refusal(lambda: convgen.conv1d(x, w)), "channels")
    assert_refused(refusal(lambda: ConvSpec.conv(2, 0, 4, 3)), "channels")
    assert_refused(refusal(lambda: ConvSpec.conv_transpose(2, 4, 0, 3)), "channels")


def test_batch_zero_checks_arguments_anyway():
    """Deliberate deviation: torch skips the output_padding rule for an empty batch."""
    x, w = np.ones((0, 1, 5)), np.ones((1, 1, 3))
    assert refusal(lambda: torch_run("conv_transpose1d", x, w, output_padding=1)) is None
    assert_refused(refusal(lambda: convgen.conv_transpose1d(x, w, output_padding=1)),
                   "output_padding")


@pytest.mark.parametrize("op", ["conv_transpose1d", "conv_transpose2d"])
def test_bias_dtype_mismatch_refused_transposed(op):
    """Deliberate deviation: torch's conv_transpose1d/2d cast a float bias of the other
    precision (its conv_transpose3d and forward convs refuse it); convgen refuses it always."""
    n, _ = op_info(op)
    x, w, b = np.ones((1, 2, *(3,) * n)), np.ones((2, 2, *(2,) * n)), np.ones(2, np.float32)
    assert refusal(lambda: torch_run(op, x, w, b)) is None
    assert_refused(refusal(lambda: getattr(convgen, op)(x, w, b)), ("bias", "dtype"))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_negative_padding_with_padding_mode_refused(mode):
    """Deliberate deviation: nn.ConvNd crops with F.pad; convgen refuses negative padding."""
    x, w = np.ones((1, 1, 5)), np.ones((1, 1, 1))
    assert refusal(lambda: torch_run("conv1d", x, w, padding=-1, padding_mode=mode)) is None
    assert_refused(refusal(lambda: convgen.conv1d(x, w, padding=-1, padding_mode=mode)),
                   "padding")


def test_one_element_padding_with_padding_mode_refused_unbatched():
    """Deliberate deviation: torch pads only the last axis of an unbatched input here."""
    x, w = np.ones((1, 6, 6)), np.ones((1, 1, 3, 3))
    args = dict(padding=(1,), padding_mode="reflect")
    assert refusal(lambda: torch_run("conv2d", x, w, **args)) is None   # (1, 4, 6)
    assert_refused(refusal(lambda: convgen.conv2d(x, w, **args)), ("padding_mode", "padding"))


# -- 1c. ConvSpec constructors: refused as torch.nn's constructor-then-forward refuses ----------
def _spec_cases():
    cases = []

    def bad(ndim, transposed, names, **kw):
        label = f"{'T' if transposed else ''}{ndim}d-" + "-".join(f"{k}={v}" for k, v in kw.items())
        cases.append(pytest.param(ndim, transposed, kw, names, id=label))

    for ndim in (1, 2, 3):
        for transposed in (False, True):
            bad(ndim, transposed, "groups", groups=0)
            bad(ndim, transposed, "groups", groups=-1)
            bad(ndim, transposed, "groups", groups=3)            # 4 channels
            bad(ndim, transposed, "groups", in_channels=6, groups=4)
            bad(ndim, transposed, "stride", stride=0)
            bad(ndim, transposed, "dilation", dilation=0)
            bad(ndim, transposed, "padding", padding=-1)
            bad(ndim, transposed, "kernel_size", kernel_size=0)
            bad(ndim, transposed, "kernel_size", kernel_size=(3,) * (ndim + 1))
            bad(ndim, transposed, "stride", stride=(1,) * (ndim + 1))
            bad(ndim, transposed, "padding_mode", padding_mode="foo")
            if transposed:
                bad(ndim, transposed, "padding_mode", padding_mode="reflect")
                bad(ndim, transposed, "padding", padding="same")
                bad(ndim, transposed, "output_padding", output_padding=1)
                bad(ndim, transposed, "output_padding", stride=2, output_padding=-1)
            else:
                bad(ndim, transposed, "padding", padding="foo")
                bad(ndim, transposed, "stride", padding="same", stride=2)
            if ndim > 1:
                bad(ndim, transposed, "kernel_size", kernel_size=(3,))
    return cases


@pytest.mark.parametrize("ndim, transposed, kw, names", _spec_cases())
def test_spec_constructor_refused_like_torch(ndim, transposed, kw, names):
    kw = {"in_channels": 4, "out_channels": 4, "kernel_size": 3, **kw}

    def torch_layer():
        cls = getattr(torch.nn, f"ConvTranspose{ndim}d" if transposed else f"Conv{ndim}d")
        module = cls(**kw, dtype=torch.float64)
        return module(torch.ones(1, kw["in_channels"], *(8,) * ndim, dtype=torch.float64))

    assert refusal(torch_layer) is not None, "torch accepts it"
    make = ConvSpec.conv_transpose if transposed else ConvSpec.conv
    assert_refused(refusal(lambda: make(ndim, **kw)), names)


# -- 2. valid edge cases: torch accepts, convgen accepts and agrees ----------------------------
def _good_cases():
    cases = []

    def good(label, op, x, w, b=False, **args):
        cases.append(pytest.param(op, x, w, b, args, id=f"{op}-{label}"))

    for n in (1, 2, 3):
        ones = (1,) * n
        good("1x1-input-1x1-kernel", f"conv{n}d", (1, 1, *ones), (1, 1, *ones), b=True)
        good("1x1-input-1x1-kernel", f"conv_transpose{n}d", (1, 1, *ones), (1, 1, *ones), b=True)
        good("kernel-equals-padded-input", f"conv{n}d", (2, 3, *(3,) * n), (2, 3, *(5,) * n),
             padding=1)
        good("same-even-kernel", f"conv{n}d", (1, 2, *(5,) * n), (3, 2, *(4,) * n), b=True,
             padding="same")
        good("groups-eq-channels", f"conv{n}d", (2, 4, *(4,) * n), (8, 1, *(3,) * n), groups=4,
             padding=1)
        good("unbatched", f"conv{n}d", (2, *(4,) * n), (3, 2, *(2,) * n), b=True)
        good("unbatched", f"conv_transpose{n}d", (2, *(3,) * n), (2, 3, *(2,) * n), b=True,
             stride=2)
        good("batch-0", f"conv{n}d", (0, 2, *(4,) * n), (3, 2, *(3,) * n), b=True, padding=1)
        good("batch-0", f"conv_transpose{n}d", (0, 2, *(4,) * n), (2, 3, *(3,) * n), stride=2)
        good("outpad-lt-dilation-ge-stride", f"conv_transpose{n}d", (1, 2, *(3,) * n),
             (2, 2, *(2,) * n), dilation=3, output_padding=2)
        good("reflect-pad-size-minus-1", f"conv{n}d", (1, 2, *(3,) * n), (2, 2, *(3,) * n),
             padding=2, padding_mode="reflect")
        good("circular-pad-eq-size", f"conv{n}d", (1, 2, *(3,) * n), (2, 2, *(2,) * n),
             padding=3, padding_mode="circular")
        good("replicate-pad-much-larger", f"conv{n}d", (1, 1, *(2,) * n), (1, 1, *(2,) * n),
             padding=5, padding_mode="replicate")
        good("output-size-max", f"conv_transpose{n}d", (1, 2, *(3,) * n), (2, 1, *(3,) * n),
             stride=3, output_size=[11] * n)
        good("output-size-whole-shape", f"conv_transpose{n}d", (1, 2, *(3,) * n),
             (2, 1, *(3,) * n), stride=2, output_size=[1, 1, *[8] * n])
    good("valid", "conv2d", (1, 2, 5, 4), (3, 2, 2, 3), b=True, padding="valid")
    good("same-even-kernel-dilated", "conv1d", (2, 2, 6), (2, 2, 4), padding="same", dilation=3)
    good("same-kernel-larger-than-input", "conv2d", (1, 1, 2, 3), (1, 1, 5, 4), padding="same")
    good("same-reflect-even-kernel", "conv2d", (1, 2, 5, 4), (2, 2, 2, 4), padding="same",
         padding_mode="reflect")
    good("same-circular", "conv1d", (1, 1, 3), (1, 1, 6), padding="same",
         padding_mode="circular")
    good("depthwise-multiplier", "conv2d", (1, 3, 5, 5), (6, 1, 3, 3), b=True, groups=3)
    good("transposed-groups-eq-channels", "conv_transpose2d", (1, 4, 3, 3), (4, 2, 3, 3),
         groups=4, stride=2)
    good("stride-larger-than-input", "conv1d", (1, 1, 3), (1, 1, 1), stride=5)
    good("transposed-output-of-1", "conv_transpose1d", (1, 1, 1), (1, 1, 1))
    good("transposed-padding-eats-kernel", "conv_transpose1d", (1, 1, 2), (1, 1, 3), padding=1)
    good("output-size-min-negative", "conv_transpose1d", (1, 1, 1), (1, 1, 1), stride=3,
         padding=1, output_size=[1])
    good("output-size-ignores-output-padding", "conv_transpose1d", (1, 1, 4), (1, 1, 3),
         stride=2, output_padding=5, output_size=[10])
    good("unbatched-output-size-whole", "conv_transpose2d", (2, 3, 3), (2, 1, 2, 2), stride=2,
         output_size=[1, 7, 6])
    good("one-element-stride", "conv2d", (1, 1, 6, 5), (1, 1, 3, 3), stride=(2,))
    good("one-element-padding-dilation", "conv3d", (1, 1, 4, 4, 4), (1, 1, 2, 2, 2),
         padding=[1], dilation=(2,))
    good("one-element-output-padding", "conv_transpose2d", (1, 1, 3, 3), (1, 1, 2, 2),
         stride=(2,), output_padding=(1,), padding=(1,))
    good("one-element-stride-reflect", "conv2d", (1, 1, 6, 5), (1, 1, 3, 3), stride=(2,),
         padding=(1, 2), padding_mode="reflect")
    good("list-args", "conv2d", (1, 2, 6, 5), (2, 1, 3, 2), stride=[2, 1], padding=[1, 0],
         dilation=[1, 2], groups=2)
    good("numpy-int-args", "conv1d", (1, 2, 7), (2, 1, 3), stride=np.int64(2),
         padding=np.int32(1), groups=np.int64(2))
    return cases


@pytest.mark.parametrize("op, x_shape, w_shape, bias, args", _good_cases())
def test_valid_edge_case_matches_torch(op, x_shape, w_shape, bias, args):
    rng = np.random.default_rng(1)
    x, w = random(rng, x_shape), random(rng, w_shape)
    n, transposed = op_info(op)
    cout = w_shape[1] * args.get("groups", 1) if transposed else w_shape[0]
    b = random(rng, (cout,)) if bias else None
    ref = torch_reference(op, x, w, b, **args)
    ours = getattr(convgen, op)(x, w, b, **args)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64 and ours.flags.c_contiguous
    assert_matches(ours, ref, "float64")


# -- 3. convgen.compile and Kernel.__call__ -----------------------------------------------------
@pytest.fixture(scope="module")
def kernels():
    spec = ConvSpec.conv(2, 4, 6, 3, padding=1, bias=True)
    nobias = ConvSpec.conv(2, 4, 6, 3, padding=1, bias=False)
    return (convgen.compile(spec, (2, 4, 5, 5), dtype="float64"),
            convgen.compile(nobias, (2, 4, 5, 5), dtype="float64"))


@pytest.fixture
def operands():
    rng = np.random.default_rng(2)
    return random(rng, (2, 4, 5, 5)), random(rng, (6, 4, 3, 3)), random(rng, (6,))


@pytest.fixture
def unrunnable(kernels, monkeypatch):
    """The kernels' C functions fail the test if called: refusals must come first."""
    for k in kernels:
        def boom(*args):
            raise AssertionError("the C kernel was called for an invalid call")
        monkeypatch.setattr(k, "_run_c", boom)
        monkeypatch.setattr(k, "_pack_c", boom)
    return kernels


def _out(shape=(2, 6, 5, 5), dtype=np.float64):
    return np.empty(shape, dtype)


def _readonly():
    out = _out()
    out.setflags(write=False)
    return out


CALL_ERRORS = [
    ("input-shape", lambda x, w, b: (x[:, :, :4], w, b, None), ValueError, "input"),
    ("input-unbatched", lambda x, w, b: (x[0], w, b, None), ValueError, "input"),
    ("input-dtype", lambda x, w, b: (x.astype(np.float32), w, b, None), TypeError, "input"),
    ("input-int", lambda x, w, b: (x.astype(np.int64), w, b, None), TypeError, "input"),
    ("weight-shape", lambda x, w, b: (x, w[:, :, :2], b, None), ValueError, "weight"),
    ("weight-transposed-layout", lambda x, w, b: (x, w.reshape(4, 6, 3, 3), b, None),
     ValueError, "weight"),
    ("weight-dtype", lambda x, w, b: (x, w.astype(np.float32), b, None), TypeError, "weight"),
    ("bias-missing", lambda x, w, b: (x, w, None, None), ValueError, "bias"),
    ("bias-shape", lambda x, w, b: (x, w, b[:5], None), ValueError, "bias"),
    ("bias-dtype", lambda x, w, b: (x, w, b.astype(np.float32), None), TypeError, "bias"),
    ("out-shape", lambda x, w, b: (x, w, b, _out((2, 6, 5, 4))), ValueError, "out"),
    ("out-dtype", lambda x, w, b: (x, w, b, _out(dtype=np.float32)), TypeError, "out"),
    ("out-not-array", lambda x, w, b: (x, w, b, _out().tolist()), TypeError, "out"),
    ("out-non-contiguous", lambda x, w, b: (x, w, b, _out((2, 6, 5, 10))[..., ::2]),
     ValueError, "out"),
    ("out-fortran", lambda x, w, b: (x, w, b, np.asfortranarray(_out())), ValueError, "out"),
    ("out-read-only", lambda x, w, b: (x, w, b, _readonly()), ValueError, "out"),
    ("out-big-endian", lambda x, w, b: (x, w, b, _out(dtype=">f8")), (TypeError, ValueError),
     "out"),
]


@pytest.mark.parametrize("make, error, name", [c[1:] for c in CALL_ERRORS],
                         ids=[c[0] for c in CALL_ERRORS])
def test_kernel_call_refuses(unrunnable, operands, make, error, name):
    x, w, b, out = make(*operands)
    exc = refusal(lambda: unrunnable[0](x, w, b, out=out))
    assert_refused(exc, name)
    assert isinstance(exc, error)


def test_kernel_call_refuses_bias_it_was_not_compiled_with(unrunnable, operands):
    x, w, b = operands
    assert_refused(refusal(lambda: unrunnable[1](x, w, b)), "bias")


@pytest.mark.parametrize("overlap", ["input", "weight", "bias"])
def test_kernel_call_refuses_out_overlapping_an_operand(unrunnable, overlap):
    rng = np.random.default_rng(3)
    arena = random(rng, 2 * 6 * 5 * 5 + 2 * 4 * 5 * 5 + 6 * 4 * 3 * 3)
    out = arena[:300].reshape(2, 6, 5, 5)
    x, w, b = random(rng, (2, 4, 5, 5)), random(rng, (6, 4, 3, 3)), random(rng, (6,))
    if overlap == "input":
        x = arena[250:450].reshape(2, 4, 5, 5)
    elif overlap == "weight":
        w = arena[10:226].reshape(6, 4, 3, 3)
    else:
        b = arena[294:300]
    assert_refused(refusal(lambda: unrunnable[0](x, w, b, out=out)), ("out", "overlap"))


def test_kernel_call_into_good_out(kernels, operands):
    x, w, b = operands
    out = np.full((2, 6, 5, 5), np.nan)
    assert kernels[0](x, w, b, out=out) is out
    assert_matches(out, torch_reference("conv2d", x, w, b, padding=1), "float64")


COMPILE_ERRORS = [
    ("target-unknown", dict(target="tpu"), ValueError, "target"),
    ("target-cuda-cpu-plan", dict(target="cuda", plan="transposed_gather"), ValueError, "cuda"),
    ("target-cuda-emu-bad-plan", dict(target="cuda-emu", plan="algorithm=direct tile=64x4 warp=- "
     "stages=1 split_k=1 math=fp32 threads=32"), ValueError, "threads"),
    ("target-not-a-name", dict(target=3), TypeError, "target"),
    ("dtype-float16", dict(dtype="float16"), TypeError, "dtype"),
    ("dtype-np-float16", dict(dtype=np.float16), TypeError, "dtype"),
    ("dtype-int32", dict(dtype="int32"), TypeError, "dtype"),
    ("dtype-bogus", dict(dtype="bogus"), TypeError, "dtype"),
    ("plan-nonsense", dict(plan="nonsense"), ValueError, "plan"),
    ("plan-number", dict(plan=42), ValueError, "plan"),
    ("layer-string", dict(layer="conv2d"), TypeError, "layer"),
    ("layer-linear", dict(layer=torch.nn.Linear(3, 4)), TypeError, "layer"),
    ("layer-none", dict(layer=None), TypeError, "layer"),
    ("torch-layer-stride-0", dict(layer=torch.nn.Conv2d(4, 6, 3, stride=0)), ValueError,
     "stride"),
    ("torch-layer-negative-padding", dict(layer=torch.nn.Conv2d(4, 6, 3, padding=-1)),
     ValueError, "padding"),
    ("input-shape-rank", dict(input_shape=(4, 5)), ValueError, "input"),
    ("input-shape-channels", dict(input_shape=(1, 3, 5, 5)), ValueError, "channels"),
    ("input-shape-floats", dict(input_shape=(1, 4, 5.0, 5)), TypeError, "input_shape"),
    ("input-shape-empty-output", dict(input_shape=(1, 4, 2, 2)), ValueError, "empty"),
    ("input-shape-spatial-0", dict(input_shape=(1, 4, 0, 5)), ValueError, "input"),
    ("input-shape-negative-batch", dict(input_shape=(-1, 4, 5, 5)), ValueError, "batch"),
]


@pytest.mark.parametrize("kw, error, name", [c[1:] for c in COMPILE_ERRORS],
                         ids=[c[0] for c in COMPILE_ERRORS])
def test_compile_refuses(kw, error, name, no_native):
    kw = {"layer": ConvSpec.conv(2, 4, 6, 3), "input_shape": (1, 4, 5, 5), **kw}
    exc = refusal(lambda: convgen.compile(**kw))
    assert_refused(exc, name)
    assert isinstance(exc, error)


# -- 4. before any C runs: the whole invalid table runs under ``no_native`` (above); a few
# more entry points here, with a kernel already compiled for the same layer ----------------
def test_refusals_do_not_reach_native_code_even_when_cached(kernels, no_native):
    x = np.ones((2, 4, 5, 5))
    w, b = np.ones((6, 4, 3, 3)), np.ones(6)
    for call, name in [
        (lambda: convgen.conv2d(x, w, b, padding=1, groups=0), "groups"),
        (lambda: convgen.conv2d(x, w, b[:5], padding=1), "bias"),
        (lambda: convgen.conv2d(x, w, b[:, None], padding=1), "bias"),
        (lambda: convgen.conv2d(x, w, b, padding=1, stride=(1, 0)), "stride"),
        (lambda: convgen.conv2d(x.astype(np.float16), w, b, padding=1), "float16"),
        (lambda: convgen.conv2d(x, w[:, :3], b, padding=1), "channels"),
        (lambda: convgen.conv2d(x, w, b, padding="same", stride=2), "stride"),
        (lambda: convgen.compile(ConvSpec.conv(2, 4, 6, 3, padding=1), (2, 4, 5, 5),
                                 dtype="float64", target="cuda", plan="depthwise"), "cuda"),
    ]:
        assert_refused(refusal(call), name)


# -- 5. layouts: accepted, copied as needed, never misread -------------------------------------
def _layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    strided = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]
    strided[...] = a
    reversed_ = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    readonly = a.copy()
    readonly.setflags(write=False)
    return {"strided": strided, "fortran": np.asfortranarray(a), "negative-stride": reversed_,
            "big-endian": a.astype(a.dtype.newbyteorder(">")), "read-only": readonly,
            "transposed-view": np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1),
            "torch-tensor": torch.from_numpy(a.copy()), "list": a.tolist()}


LAYOUT_OPS = [("conv2d", (2, 3, 6, 5), (4, 3, 3, 2), dict(padding=(1, 0), stride=(1, 2))),
              ("conv_transpose2d", (2, 3, 4, 5), (3, 2, 3, 2), dict(stride=2, groups=1)),
              ("conv1d", (3, 7), (2, 3, 3), dict(padding="same", padding_mode="reflect"))]


@pytest.mark.parametrize("layout, dtype", [
    (layout, dtype) for layout in _layouts(np.zeros((2, 2))) for dtype in ("float32", "float64")
    if (layout, dtype) != ("list", "float32")])   # a list is read as float64
@pytest.mark.parametrize("op, x_shape, w_shape, args", LAYOUT_OPS, ids=[c[0] for c in LAYOUT_OPS])
def test_layouts_accepted_and_read_correctly(op, x_shape, w_shape, args, layout, dtype):
    rng = np.random.default_rng(4)
    x, w = random(rng, x_shape, dtype), random(rng, w_shape, dtype)
    n, transposed = op_info(op)
    b = random(rng, (w_shape[1] if transposed else w_shape[0],), dtype)
    xl, wl, bl = (_layouts(a)[layout] for a in (x, w, b))
    ref = torch_reference(op, x, w, b, **args)
    tolerance = dtype
    for call in [(xl, w, b), (x, wl, b), (x, w, bl), (xl, wl, bl)]:
        ours = getattr(convgen, op)(*call, **args)
        assert ours.dtype == np.dtype(dtype) and ours.flags.c_contiguous
        assert ours.dtype.isnative
        assert_matches(ours, ref, tolerance)
    # and the compiled kernel's own call
    if layout != "list":
        k = convgen.compile(_spec_of(op, w_shape, args), x_shape, dtype=dtype)
        assert_matches(k(xl, wl, bl), ref, tolerance)


def _spec_of(op, w_shape, args):
    n, transposed = op_info(op)
    if transposed:
        return ConvSpec.conv_transpose(n, w_shape[0], w_shape[1] * args.get("groups", 1),
                                       w_shape[2:], **args)
    return ConvSpec.conv(n, w_shape[1] * args.get("groups", 1), w_shape[0], w_shape[2:], **args)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(5)
    x, w, b = random(rng, (1, 2, 5, 5)), random(rng, (3, 2, 3, 3)), random(rng, (3,))
    copies = [a.copy() for a in (x, w, b)]
    convgen.conv2d(x, w, b, padding=1, padding_mode="circular")
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


# -- 6. property: torch and convgen refuse the same calls, and agree on the rest --------------
def _axis_arg(draw, ndim, lo, hi):
    """An int, an ndim-tuple or (now and then) a one-element tuple, values in [lo, hi]."""
    form = draw(st.sampled_from(["int", "int", "tuple", "tuple", "single"]))
    if form == "int":
        return draw(st.integers(lo, hi))
    if form == "single":
        return (draw(st.integers(lo, hi)),)
    return tuple(draw(st.integers(lo, hi)) for _ in range(ndim))


def _per_axis(value, ndim):
    return (value,) * ndim if isinstance(value, int) else (
        tuple(value) * ndim if len(value) == 1 else tuple(value))


def _corrupt_axis(draw, value, ndim, bad):
    """``value`` with one axis (or all of them) set to the invalid ``bad``."""
    if draw(st.booleans()):
        return bad
    values = list(_per_axis(value, ndim))
    values[draw(st.integers(0, ndim - 1))] = bad
    return tuple(values)


@st.composite
def calls(draw):
    ndim = draw(st.sampled_from([1, 1, 2, 2, 3]))
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    spatial = tuple(draw(st.integers(1, 5 if ndim < 3 else 3)) for _ in range(ndim))
    batch = draw(st.sampled_from([None, 0, 1, 1, 2]))
    args = {"stride": _axis_arg(draw, ndim, 1, 2), "dilation": _axis_arg(draw, ndim, 1, 2)}
    if groups != 1 or draw(st.booleans()):
        args["groups"] = groups
    if transposed:
        op = f"conv_transpose{ndim}d"
        args["padding"] = _axis_arg(draw, ndim, 0, 2)
        strides, dils = _per_axis(args["stride"], ndim), _per_axis(args["dilation"], ndim)
        pads = _per_axis(args["padding"], ndim)
        if draw(st.booleans()):
            args["output_padding"] = tuple(draw(st.integers(0, max(s, d) - 1))
                                           for s, d in zip(strides, dils))
        if draw(st.booleans()):
            lows = [(i - 1) * s - 2 * p + d * (k - 1) + 1
                    for i, s, p, d, k in zip(spatial, strides, pads, dils, kernel)]
            sizes = [draw(st.integers(lo, lo + s - 1)) for lo, s in zip(lows, strides)]
            if batch is not None and draw(st.booleans()):
                sizes = [batch, cout, *sizes]
            args["output_size"] = sizes
        w_shape = (cin, cout // groups, *kernel)
    else:
        op = f"conv{ndim}d"
        if draw(st.integers(0, 3)) == 0:
            args["padding"] = draw(st.sampled_from(["same", "valid"]))
        else:
            args["padding"] = _axis_arg(draw, ndim, 0, 2)
        mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
        if mode != "zeros":
            args["padding_mode"] = mode
        w_shape = (cout, cin // groups, *kernel)
    x_shape = (cin, *spatial) if batch is None else (batch, cin, *spatial)
    b_shape = (cout,) if draw(st.booleans()) else None
    case = {"op": op, "x": x_shape, "w": w_shape, "b": b_shape, "args": args}
    if draw(st.integers(0, 9)) < 4:
        _corrupt(draw, case, ndim, transposed)
    return case


def _corrupt(draw, case, ndim, transposed):
    """One deliberate mistake of the kinds users make."""
    args, x, w = case["args"], case["x"], case["w"]
    kinds = ["stride", "dilation", "padding", "groups", "tuple-length", "channels", "weight-rank",
             "input-rank", "spatial-0", "bias", "kernel-0"]
    kinds += (["output-padding", "output-size", "padding-string", "empty-output"] if transposed
              else ["padding-string", "same-strided", "kernel-too-big", "padding-mode",
                    "reflect-range"])
    kind = kinds[draw(st.integers(0, len(kinds) - 1))]
    case["kind"] = kind
    if kind == "stride":
        args["stride"] = _corrupt_axis(draw, args["stride"], ndim, draw(st.sampled_from([0, -1])))
    elif kind == "dilation":
        args["dilation"] = _corrupt_axis(draw, args["dilation"], ndim,
                                         draw(st.sampled_from([0, -1])))
    elif kind == "padding":
        pads = args["padding"] if not isinstance(args["padding"], str) else 0
        args["padding"] = _corrupt_axis(draw, pads, ndim, draw(st.sampled_from([-1, -2])))
    elif kind == "groups":
        args["groups"] = draw(st.sampled_from([0, -1, 3, 4]))
    elif kind == "tuple-length":
        name = draw(st.sampled_from(["stride", "padding", "dilation"]
                                    + (["output_padding"] if transposed else [])))
        args[name] = tuple(draw(st.integers(0, 2)) for _ in range(draw(
            st.sampled_from([0, ndim + 1]))))
    elif kind == "channels":
        case["x"] = x[:-ndim - 1] + (x[-ndim - 1] + draw(st.sampled_from([-1, 1])),) + x[-ndim:]
    elif kind == "weight-rank":
        case["w"] = w[:-1] if draw(st.booleans()) else (*w, 1)
    elif kind == "input-rank":
        case["x"] = x[-ndim:] if draw(st.booleans()) else (1, 1, *x)
    elif kind == "spatial-0":
        i = draw(st.integers(1, ndim))
        case["x"] = x[:-i] + (0,) + x[len(x) - i + 1:]
    elif kind == "bias":
        n = w[1] * args.get("groups", 1) if transposed else w[0]
        case["b"] = draw(st.sampled_from([(n + 1,), (n, 1), ()]))
    elif kind == "kernel-0":
        case["w"] = (*w[:-1], 0)
    elif kind == "output-padding":
        args.pop("output_size", None)
        strides, dils = _per_axis(args["stride"], ndim), _per_axis(args["dilation"], ndim)
        bad = [max(s, d) + draw(st.integers(0, 1)) for s, d in zip(strides, dils)]
        args["output_padding"] = draw(st.sampled_from([tuple(bad), -1]))
    elif kind == "output-size":
        sizes = list(args.get("output_size") or [3] * ndim)[-ndim:]
        choice = draw(st.sampled_from(["low", "high", "length", "int"]))
        if choice == "low":
            sizes[0] -= draw(st.integers(1, 3)) + 3
        elif choice == "high":
            sizes[-1] += draw(st.integers(1, 3)) + 2
        elif choice == "length":
            sizes = sizes + [sizes[-1]] * draw(st.sampled_from([1, 3]))
        else:
            sizes = sizes[0]
        args["output_size"] = sizes
    elif kind == "padding-string":
        args["padding"] = draw(st.sampled_from(["foo", "SAME", ""] + (
            ["same", "valid"] if transposed else [])))
    elif kind == "same-strided":
        args["padding"] = "same"
        args["stride"] = _corrupt_axis(draw, args["stride"], ndim, 2)
    elif kind == "kernel-too-big":
        i = draw(st.integers(0, ndim - 1))
        case["w"] = w[:2 + i] + (x[len(x) - ndim + i] + 5,) + w[3 + i:]
        if args["padding"] == "same":
            args["padding"] = "valid"
    elif kind == "empty-output":
        args["padding"] = 6
        args.pop("output_size", None)
    elif kind == "padding-mode":
        args["padding_mode"] = draw(st.sampled_from(["foo", "Zeros", "constant"]))
    elif kind == "reflect-range":
        mode = draw(st.sampled_from(["reflect", "circular"]))
        args["padding_mode"] = mode
        args["padding"] = min(x[-ndim:]) + (0 if mode == "reflect" else 1)


def _is_single(value):
    return isinstance(value, (tuple, list)) and len(value) == 1


def convgen_may_refuse(case) -> str | None:
    """The known deviations where convgen refuses what torch accepts (module docstring)."""
    op, x, args = case["op"], case["x"], case["args"]
    ndim, transposed = op_info(op)
    mode = args.get("padding_mode", "zeros")
    padding = args.get("padding", 0)
    if len(x) == ndim + 2 and x[0] == 0:
        return "batch 0: torch skips argument checks"
    if mode in ("reflect", "replicate", "circular") and not isinstance(padding, str) and any(
            p < 0 for p in ((padding,) if isinstance(padding, int) else padding)):
        return "negative padding with a padding_mode: torch crops"
    if mode in ("reflect", "replicate", "circular") and ndim > 1 and (
            _is_single(padding) or (padding == "same" and _is_single(args.get("dilation")))):
        return "one-element padding with a padding_mode: torch pads one axis"
    if (mode in ("reflect", "replicate", "circular") and isinstance(padding, tuple)
            and len(padding) not in (1, ndim)):
        return "padding of the wrong length with a padding_mode: F.pad pads other dimensions"
    if len(case["w"]) == ndim + 2 and 0 in case["w"][:2]:
        return "zero channels"
    return None


def convgen_may_accept(case, torch_exc) -> str | None:
    """The known deviation where torch fails (with an IndexError) and convgen accepts."""
    ndim, transposed = op_info(case["op"])
    args = case["args"]
    if (transposed and ndim > 1 and args.get("output_size") is not None
            and isinstance(torch_exc, IndexError)
            and any(_is_single(args.get(k)) for k in ("stride", "padding", "dilation"))):
        return "torch's _output_padding indexes one-element tuples"
    return None


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_property_refuses_exactly_what_torch_refuses(case):
    note(repr(case))
    rng = np.random.default_rng(6)
    x, w = random(rng, case["x"]), random(rng, case["w"])
    b = None if case["b"] is None else random(rng, case["b"])
    op, args = case["op"], case["args"]
    theirs = ours = None
    try:
        theirs = torch_run(op, x, w, b, **args).numpy()
        torch_exc = None
    except Exception as exc:
        torch_exc = exc
    try:
        ours = getattr(convgen, op)(x, w, b, **args)
        our_exc = None
    except Exception as exc:
        our_exc = exc
    note(f"torch: {torch_exc!r}\nconvgen: {our_exc!r}")
    if our_exc is not None:
        assert isinstance(our_exc, REFUSALS), f"convgen raised {our_exc!r}"
    if torch_exc is not None:
        event("torch refuses")
        if our_exc is None:
            assert convgen_may_accept(case, torch_exc), f"convgen accepts; torch: {torch_exc!r}"
        return
    event("torch accepts")
    if our_exc is not None:
        assert convgen_may_refuse(case), f"torch accepts; convgen refuses: {our_exc!r}"
        return
    assert_matches(ours, theirs, "float64")
