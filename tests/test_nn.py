"""convgen.nn modules against torch.nn: signature, repr, init, outputs, output_size, errors."""
from __future__ import annotations

import copy
import inspect
import zlib

import numpy as np
import pytest
import torch
from tests.helpers import assert_matches, random

from convgen import nn as cnn

NAMES = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]

# (class name, args, kwargs, input shape); each runs in float32 and float64, so every row
# costs two kernel compiles: keep the list short and the shapes awkward.
CASES = [
    ("Conv1d", (3, 5, 3), {}, (2, 3, 11)),
    ("Conv1d", (4, 8, 5), dict(stride=2, padding=2, groups=2, padding_mode="circular"), (4, 13)),
    ("Conv1d", (4, 4, 4), dict(padding="same", dilation=2, groups=4, bias=False,
                               padding_mode="reflect"), (1, 4, 12)),
    ("Conv2d", (3, 6, (3, 5)), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
     (2, 3, 9, 14)),
    ("Conv2d", (4, 8, 3), dict(padding="same", groups=4, bias=False, padding_mode="reflect"),
     (4, 7, 10)),
    ("Conv2d", (4, 4, [2, 4]), dict(padding="same", padding_mode="replicate"), (1, 4, 6, 9)),
    ("Conv2d", (6, 4, 3), dict(padding="valid", groups=2, padding_mode="circular"),
     (3, 6, 8, 5)),
    ("Conv2d", (2, 3, 3), dict(stride=2, padding=3, padding_mode="circular"), (1, 2, 5, 6)),
    ("Conv3d", (2, 4, (2, 3, 3)), dict(stride=(1, 2, 1), padding=(1, 0, 1)), (2, 2, 5, 7, 6)),
    ("Conv3d", (3, 3, 3), dict(padding="same", groups=3, bias=False, padding_mode="replicate"),
     (3, 4, 5, 6)),
    ("Conv3d", (2, 2, 3), dict(dilation=(2, 1, 1), padding=1, padding_mode="reflect"),
     (1, 2, 6, 5, 4)),
    ("ConvTranspose1d", (3, 5, 3), {}, (2, 3, 7)),
    ("ConvTranspose1d", (4, 6, 4), dict(stride=3, padding=1, output_padding=2, groups=2), (4, 9)),
    ("ConvTranspose1d", (2, 2, 3), dict(stride=2, output_padding=1, dilation=2, groups=2,
                                        bias=False), (3, 2, 5)),
    ("ConvTranspose2d", (3, 4, (3, 2)), dict(stride=(2, 3), padding=(1, 0),
                                             output_padding=(1, 2)), (2, 3, 5, 4)),
    ("ConvTranspose2d", (4, 8, 3), dict(stride=2, padding=1, output_padding=1, groups=4,
                                        bias=False, dilation=2), (4, 6, 7)),
    ("ConvTranspose3d", (2, 3, (2, 3, 2)), dict(stride=(2, 1, 2), padding=(0, 1, 1),
                                                output_padding=(1, 0, 1)), (2, 2, 3, 4, 5)),
    ("ConvTranspose3d", (3, 3, 3), dict(groups=3, dilation=(1, 2, 1), bias=False),
     (3, 3, 4, 3)),
]
CASE_IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]
CONFIG_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "output_padding", "groups", "padding_mode", "transposed")


def both(name, args, kwargs):
    """The convgen module and the torch module for the same constructor arguments."""
    return getattr(cnn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)


def torch_output(module, x, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return module(torch.as_tensor(x), **kwargs).numpy()


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torchs(name):
    ours = inspect.signature(getattr(cnn, name)).parameters
    theirs = inspect.signature(getattr(torch.nn, name)).parameters
    assert [(p.name, p.default) for p in ours.values()] == \
        [(p.name, p.default) for p in theirs.values()]


@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=CASE_IDS)
def test_repr_and_attributes_are_torchs(name, args, kwargs, shape):
    ours, theirs = both(name, args, kwargs)
    assert repr(ours) == repr(theirs)
    for attr in CONFIG_ATTRS:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.weight.shape == tuple(theirs.weight.shape)
    assert (ours.bias is None) == (theirs.bias is None)
    if ours.bias is not None:
        assert ours.bias.shape == tuple(theirs.bias.shape)


@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=CASE_IDS)
def test_initial_values_within_torchs_bound(name, args, kwargs, shape):
    ours, theirs = both(name, args, kwargs)
    bound = 1 / np.sqrt(np.prod(ours.weight.shape[1:]))
    assert ours.weight.dtype == np.float32
    assert np.abs(ours.weight).max() <= bound * (1 + 1e-6)
    assert np.abs(theirs.weight.detach().numpy()).max() <= bound * (1 + 1e-6)
    if ours.bias is not None:
        assert ours.bias.dtype == np.float32
        assert np.abs(ours.bias).max() <= bound * (1 + 1e-6)
        assert len(np.unique(ours.bias)) == ours.bias.size   # random, not constant


@pytest.mark.parametrize("name,args", [("Conv2d", (64, 64, 3)),
                                       ("ConvTranspose1d", (48, 96, 5)),
                                       ("Conv3d", (16, 12, (4, 3, 5)))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_initial_distribution_is_uniform_kaiming(name, args, dtype):
    cnn.manual_seed(1234)
    m = getattr(cnn, name)(*args, dtype=dtype)
    assert m.weight.size >= 10000 and m.weight.dtype == dtype
    bound = 1 / np.sqrt(np.prod(m.weight.shape[1:]))
    assert np.abs(m.weight).max() <= bound * (1 + 1e-6)
    assert abs(m.weight.std() / (bound / np.sqrt(3)) - 1) < 0.05
    assert abs(m.weight.mean()) < 0.05 * bound
    assert m.bias.shape == (m.out_channels,) and np.abs(m.bias).max() <= bound * (1 + 1e-6)


def test_manual_seed_reproduces_and_modules_differ():
    cnn.manual_seed(7)
    a, b = cnn.Conv2d(3, 4, 3), cnn.Conv2d(3, 4, 3)
    cnn.manual_seed(7)
    c = cnn.Conv2d(3, 4, 3)
    assert not np.array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.weight, c.weight)
    np.testing.assert_array_equal(a.bias, c.bias)


@pytest.mark.parametrize("name,args,kwargs,shape", CASES, ids=CASE_IDS)
def test_from_torch_matches_torch(name, args, kwargs, shape):
    rng = np.random.default_rng(zlib.crc32(repr((name, args, kwargs, shape)).encode()))
    theirs32 = getattr(torch.nn, name)(*args, **kwargs)
    theirs64 = copy.deepcopy(theirs32).double()
    x64 = random(rng, shape)
    x32 = random(rng, shape, "float32")
    for module, x, dtype in ((theirs64, x64, "float64"), (theirs32, x32, "float32")):
        ours = getattr(cnn, name).from_torch(module)
        assert ours.dtype == dtype and ours.weight.dtype == dtype
        assert repr(ours) == repr(module)
        ref = torch_output(theirs64, x.astype(np.float64))
        y = ours(x)
        assert y.dtype == dtype
        assert_matches(y, ref, dtype)
    assert_matches(ours(torch.as_tensor(x32)), ref, "float32")   # a torch tensor as input


def test_from_torch_copies_weights():
    theirs = torch.nn.Conv1d(2, 3, 3)
    ours = cnn.Conv1d.from_torch(theirs)
    before = ours.weight.copy()
    with torch.no_grad():
        theirs.weight.mul_(2)
    np.testing.assert_array_equal(ours.weight, before)


@pytest.mark.parametrize("name,module", [("Conv2d", torch.nn.Conv1d(2, 2, 3)),
                                         ("Conv1d", torch.nn.ConvTranspose1d(2, 2, 3)),
                                         ("ConvTranspose2d", torch.nn.Conv2d(2, 2, 3)),
                                         ("Conv2d", torch.nn.Linear(2, 2)),
                                         ("Conv2d", cnn.Conv2d(2, 2, 3))])
def test_from_torch_refuses_another_class(name, module):
    with pytest.raises(TypeError):
        getattr(cnn, name).from_torch(module)


# output_size: (class name, args, kwargs, input shape, output_size)
OUTPUT_SIZES = [
    ("ConvTranspose1d", (2, 3, 3), dict(stride=3, padding=1), (2, 2, 5), [14]),
    ("ConvTranspose2d", (3, 4, 3), dict(stride=3, padding=1), (1, 3, 4, 5), [11, 15]),
    ("ConvTranspose2d", (3, 4, 3), dict(stride=3, padding=1), (1, 3, 4, 5), (1, 4, 12, 13)),
    ("ConvTranspose2d", (3, 4, 3), dict(stride=3, padding=1, output_padding=2), (3, 4, 5),
     torch.Size([4, 10, 14])),
    ("ConvTranspose3d", (2, 2, 2), dict(stride=(2, 1, 3), groups=2), (2, 3, 4, 2), [7, 5, 5]),
]


@pytest.mark.parametrize("name,args,kwargs,shape,size", OUTPUT_SIZES)
def test_output_size_matches_torch(name, args, kwargs, shape, size):
    rng = np.random.default_rng(5)
    theirs = getattr(torch.nn, name)(*args, **kwargs, dtype=torch.float64)
    ours = getattr(cnn, name).from_torch(theirs)
    x = random(rng, shape)
    ref = torch_output(theirs, x, output_size=size)
    y = ours(x, output_size=size)
    assert y.shape[-ours.spec.ndim:] == tuple(size)[-ours.spec.ndim:]
    assert_matches(y, ref, "float64")


@pytest.mark.parametrize("shape,size", [((1, 3, 4, 5), [13, 13]),     # above the range
                                        ((1, 3, 4, 5), [9, 15]),      # below it
                                        ((1, 3, 4, 5), [4, 11, 15]),  # ndim+1 with a batch
                                        ((3, 4, 5), [1, 4, 11, 15]),  # ndim+2 unbatched
                                        ((1, 3, 4, 5), [11])])        # too short
def test_bad_output_size_raises_like_torch(shape, size):
    theirs = torch.nn.ConvTranspose2d(3, 4, 3, stride=3, padding=1)
    ours = cnn.ConvTranspose2d.from_torch(theirs)
    x = random(np.random.default_rng(6), shape, "float32")
    with pytest.raises(ValueError):
        torch_output(theirs, x, output_size=size)
    with pytest.raises(ValueError):
        ours(x, output_size=size)


# (class name, args, kwargs, whether torch also refuses it at construction)
INVALID = [
    ("Conv2d", (4, 6, 3), dict(groups=4), True),              # groups do not divide out
    ("Conv1d", (3, 6, 3), dict(groups=2), True),              # groups do not divide in
    ("ConvTranspose2d", (4, 6, 3), dict(groups=4), True),
    ("Conv3d", (2, 2, 3), dict(groups=0), True),
    ("ConvTranspose1d", (2, 2, 3), dict(groups=0), True),
    ("Conv2d", (2, 2, 3), dict(padding="full"), True),
    ("Conv1d", (2, 2, 3), dict(padding="same", stride=2), True),
    ("Conv2d", (2, 2, 3), dict(padding="same", stride=(1, 2)), True),
    ("Conv2d", (2, 2, 3), dict(padding_mode="mirror"), True),
    ("ConvTranspose2d", (2, 2, 3), dict(padding_mode="reflect"), True),
    ("ConvTranspose1d", (2, 2, 3), dict(padding_mode="circular"), True),
    ("Conv2d", (2, 2, 0), {}, False),
    ("ConvTranspose3d", (2, 2, (3, 0, 3)), {}, False),
    ("Conv2d", (2, 2, (3, 3, 3)), {}, False),
    ("Conv3d", (2, 2, 3), dict(stride=(1, 1)), False),
    ("ConvTranspose1d", (2, 2, 3), dict(padding=(1, 1)), False),
    ("Conv2d", (2, 2, 3), dict(stride=0), False),
    ("Conv2d", (2, 2, 3), dict(padding=-1), False),
    ("ConvTranspose2d", (2, 2, 3), dict(stride=2, output_padding=2), False),
    ("Conv2d", (2, 2, 3), dict(dtype="float16"), False),
    ("Conv2d", (2, 2, 3), dict(dtype="int32"), False),
    ("Conv2d", (2, 2, 3), dict(dtype=np.int64), False),
    ("Conv1d", (2, 2, 3), dict(device="cuda"), False),
    ("Conv1d", (2.0, 2, 3), {}, False),
]


@pytest.mark.parametrize("name,args,kwargs,torch_refuses", INVALID)
def test_invalid_arguments_raise(name, args, kwargs, torch_refuses):
    with pytest.raises((ValueError, TypeError)):
        getattr(cnn, name)(*args, **kwargs)
    if torch_refuses:
        with pytest.raises((ValueError, TypeError)):
            getattr(torch.nn, name)(*args, **kwargs)


def test_dtype_and_device_spellings():
    assert cnn.Conv1d(2, 2, 3, dtype=np.float64).weight.dtype == np.float64
    assert cnn.Conv1d(2, 2, 3, dtype=np.dtype("float32")).weight.dtype == np.float32
    assert cnn.Conv1d(2, 2, 3, dtype="float64", device="cpu").bias.dtype == np.float64
    assert cnn.Conv1d(2, 2, 3, device=torch.device("cpu")).dtype == "float32"


def test_config_is_read_only_weights_are_replaced_not_edited():
    m = cnn.Conv2d(2, 2, 3)
    for attr in ("stride", "padding", "in_channels", "spec", "dtype"):
        with pytest.raises(AttributeError):
            setattr(m, attr, getattr(m, attr))
    m.weight = m.weight * 2
    with pytest.raises(ValueError, match="read-only"):
        m.weight[0] = 1.0


def test_changed_weights_are_used_by_the_next_call():
    # Same config and shape as CASES[3], so the kernel is already compiled.
    name, args, kwargs, shape = CASES[3]
    rng = np.random.default_rng(11)
    theirs = getattr(torch.nn, name)(*args, **kwargs, dtype=torch.float64)
    ours = getattr(cnn, name).from_torch(theirs)
    x = random(rng, shape)
    assert_matches(ours(x), torch_output(theirs, x), "float64")
    with pytest.raises(ValueError, match="read-only"):
        ours.weight *= -1.5                                # in place: refused, not stale
    ours.weight = ours.weight * -1.5                       # replaced: packed again
    bias = random(rng, ours.bias.shape)
    ours.bias = bias
    with torch.no_grad():
        theirs.weight.mul_(-1.5)
        theirs.bias.copy_(torch.as_tensor(bias))
    assert_matches(ours(x), torch_output(theirs, x), "float64")
    ours.bias, theirs.bias = None, None                    # as torch allows
    assert_matches(ours(x), torch_output(theirs, x), "float64")
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("module_dtype,input_dtype", [("float32", "float64"),
                                                      ("float64", "float32")])
def test_input_dtype_must_match_module(module_dtype, input_dtype):
    m = cnn.ConvTranspose1d(2, 3, 3, dtype=module_dtype)
    x = random(np.random.default_rng(3), (1, 2, 6), input_dtype)
    with pytest.raises(TypeError) as info:
        m(x)
    assert module_dtype in str(info.value) and input_dtype in str(info.value)


def test_wrong_input_rank_and_channels_raise():
    m = cnn.Conv2d(3, 4, 3)
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError):
        m(random(rng, (1, 1, 3, 6, 6), "float32"))
    with pytest.raises(ValueError):
        m(random(rng, (1, 2, 6, 6), "float32"))
    with pytest.raises(ValueError):
        cnn.ConvTranspose2d(3, 4, 3)(random(rng, (6, 6), "float32"), output_size=[8, 8])
