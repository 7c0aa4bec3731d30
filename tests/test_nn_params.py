"""convgen.nn parameters as torch users handle them: state_dict / load_state_dict with torch's
keys and strict= rules, read-only copies, weights packed once per kernel and again after an
assignment, torch dtypes, lazy modules, copies and pickles."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from tests.helpers import assert_matches, random

import convgen
from convgen import nn as cnn
from convgen.cpu import kernel as cpu_kernel

SHAPE = (2, 3, 9, 8)


def torch_output(module, x) -> np.ndarray:
    with torch.no_grad():
        return module(torch.as_tensor(x)).numpy()


def pair(bias=True, dtype=torch.float64):
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(3, 4, 3, padding=1, bias=bias, dtype=dtype)
    ours = cnn.Conv2d(3, 4, 3, padding=1, bias=bias,
                      dtype="float64" if dtype == torch.float64 else "float32")
    return ours, theirs


# -- state_dict / load_state_dict ------------------------------------------------------------
def test_state_dict_has_torchs_keys_and_loads_into_torch():
    ours, theirs = pair()
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict()) == ["weight", "bias"]
    assert theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = random(np.random.default_rng(1), SHAPE)
    assert_matches(ours(x), torch_output(theirs, x), "float64")
    state["weight"][...] = 0    # a copy: writeable, and the module keeps its own
    assert ours.weight.any()
    assert list(pair(bias=False)[0].state_dict()) == ["weight"]
    assert list(ours.state_dict(prefix="conv1.")) == ["conv1.weight", "conv1.bias"]


def test_load_torch_state_dict_round_trip():
    ours, theirs = pair()
    rng = np.random.default_rng(2)
    x = random(rng, SHAPE)
    ours(x)                                   # packed with the initial weights
    result = ours.load_state_dict(theirs.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_matches(ours(x), torch_output(theirs, x), "float64")   # packed again
    again = cnn.Conv2d(3, 4, 3, padding=1, dtype="float64")
    again.load_state_dict(ours.state_dict())
    assert_matches(again(x), ours(x), "float64")


def test_load_state_dict_takes_numpy_and_casts_like_torch():
    ours, theirs = pair(dtype=torch.float32)
    state = {k: v.double().numpy() for k, v in theirs.state_dict().items()}   # float64 arrays
    ours.load_state_dict(state)
    assert ours.weight.dtype == np.float32
    np.testing.assert_array_equal(ours.weight, theirs.weight.detach().numpy())
    ours.load_state_dict({k: v.half() for k, v in theirs.state_dict().items()})  # float16 tensors
    np.testing.assert_array_equal(ours.bias, theirs.bias.detach().half().float().numpy())


def test_strict_load_reports_missing_and_unexpected_keys_like_torch():
    ours, theirs = pair()
    state = dict(theirs.state_dict())
    del state["bias"]
    state["running_mean"] = torch.zeros(4)
    before = ours.weight.copy()
    with pytest.raises(RuntimeError) as info:
        theirs.load_state_dict(state)
    torch_text = str(info.value)
    with pytest.raises(cnn.StateDictError) as info:
        ours.load_state_dict(state)
    assert str(info.value) == torch_text                 # the same text as torch's
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    np.testing.assert_array_equal(ours.weight, before)   # nothing loaded


def test_non_strict_load_returns_the_keys_and_loads_the_rest():
    ours, theirs = pair()
    state = {"weight": theirs.weight.detach(), "extra": torch.ones(1)}
    result = ours.load_state_dict(state, strict=False)
    assert result == theirs.load_state_dict(state, strict=False)   # same missing/unexpected
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(ours.weight, theirs.weight.detach().numpy())
    no_bias, _ = pair(bias=False)
    result = no_bias.load_state_dict(theirs.state_dict(), strict=False)
    assert result.unexpected_keys == ["bias"] and no_bias.bias is None


@pytest.mark.parametrize("strict", [True, False])
def test_shape_mismatch_is_an_error_even_when_not_strict(strict):
    ours, _ = pair()
    other = torch.nn.Conv2d(3, 5, 3, dtype=torch.float64)
    with pytest.raises(cnn.StateDictError, match=r"size mismatch for weight: copying a param "
                       r"with shape \(5, 3, 3, 3\) from checkpoint, the shape in current model "
                       r"is \(4, 3, 3, 3\)"):
        ours.load_state_dict(other.state_dict(), strict=strict)


def test_load_state_dict_refuses_what_is_not_a_state_dict():
    ours, _ = pair()
    with pytest.raises(TypeError, match="dict-like"):
        ours.load_state_dict([("weight", ours.weight)])
    with pytest.raises(TypeError, match="real numbers"):
        ours.load_state_dict({"weight": np.full((4, 3, 3, 3), "a"), "bias": ours.bias})


# -- read-only copies, packing -----------------------------------------------------------------
def test_parameters_are_read_only_copies():
    m = cnn.Conv1d(2, 3, 3)
    w = random(np.random.default_rng(3), m.weight.shape, "float32")
    m.weight = w
    w[...] = 0                          # the caller's array: the module kept a copy
    assert m.weight.any()
    for edit in (lambda: m.weight.__setitem__(0, 1.0), lambda: m.bias.fill(0.0),
                 lambda: np.multiply(m.weight, 2, out=m.weight)):
        with pytest.raises(ValueError, match="read-only"):
            edit()
    with pytest.raises(ValueError):
        m.weight.setflags(write=True)   # not even by turning the flag back on
    with pytest.raises(TypeError, match="dtype float64 but the module's dtype is float32"):
        m.weight = w.astype(np.float64)
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 2, 3\)"):
        m.weight = w[:2]
    with pytest.raises(TypeError, match="cannot be None"):
        m.weight = None
    m.weight = torch.from_numpy(w)      # a CPU tensor is copied as well
    assert isinstance(m.weight, np.ndarray) and not m.weight.flags.writeable


@pytest.fixture
def count_packing(monkeypatch):
    """Counts Kernel.prepack calls and the C calls that pack weights per call."""
    counts = {"prepack": 0, "unpacked_calls": 0}
    prepack, run = cpu_kernel.Kernel.prepack, cpu_kernel.Kernel._run

    def counting_prepack(self, weight):
        counts["prepack"] += 1
        return prepack(self, weight)

    def counting_run(self, x, weight, bias, out):
        counts["unpacked_calls"] += not isinstance(weight, cpu_kernel.PackedWeights)
        return run(self, x, weight, bias, out)

    monkeypatch.setattr(cpu_kernel.Kernel, "prepack", counting_prepack)
    monkeypatch.setattr(cpu_kernel.Kernel, "_run", counting_run)
    return counts


def test_weights_are_packed_once_per_kernel_and_again_after_assignment(count_packing):
    # The layer of the issue: 128 channels, 3x3, 28x28.
    m = cnn.Conv2d(128, 128, 3, padding=1)
    x = random(np.random.default_rng(4), (1, 128, 28, 28), "float32")
    first = m(x)
    for _ in range(4):
        np.testing.assert_array_equal(m(x), first)
    assert count_packing == {"prepack": 1, "unpacked_calls": 0}
    m(x[:, :, :14])                                 # another shape: another kernel, its own pack
    assert count_packing["prepack"] == 2
    m.weight = m.weight * 2                         # re-packs both on their next calls
    np.testing.assert_allclose(m(x), 2 * first - m.bias[:, None, None], rtol=1e-5, atol=1e-5)
    m.bias = m.bias                                 # assigning the bias re-packs as well
    m(x)
    m.load_state_dict(m.state_dict())
    m(x)
    assert count_packing == {"prepack": 5, "unpacked_calls": 0}


def test_cuda_emu_module_reads_its_weights_unpacked(count_packing):
    torch.manual_seed(1)
    theirs = torch.nn.Conv1d(2, 3, 3, padding=1, dtype=torch.float64)
    ours = cnn.Conv1d(2, 3, 3, padding=1, dtype="float64", device="cuda-emu")
    ours.load_state_dict(theirs.state_dict())
    x = random(np.random.default_rng(5), (1, 2, 7))
    assert_matches(ours(x), torch_output(theirs, x), "float64")
    assert count_packing["prepack"] == 0
    assert not ours.weight.flags.writeable


def test_copies_and_pickles_compile_again_and_stay_read_only():
    m = cnn.Conv1d(2, 3, 3, dtype=torch.float64)
    x = random(np.random.default_rng(6), (1, 2, 7))
    y = m(x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone._kernels == {} and not clone.weight.flags.writeable
        np.testing.assert_array_equal(clone(x), y)
        assert repr(clone) == repr(m)


# -- torch dtypes, lazy modules, compile() defaults ------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_dtypes_are_accepted_everywhere(dtype):
    name = str(dtype).removeprefix("torch.")
    m = cnn.ConvTranspose1d(2, 3, 3, dtype=dtype)
    assert m.dtype == name and m.weight.dtype == name
    spec = convgen.ConvSpec.conv(1, 2, 3, 3)
    k = convgen.compile(spec, (1, 2, 8), dtype=dtype)
    assert k.dtype == name
    x, w = torch.ones(1, 2, 8, dtype=dtype), torch.ones(3, 2, 3, dtype=dtype)
    y = convgen.conv1d(x, w)             # functional: torch tensors in, numpy out, unchanged
    assert y.dtype == name and (y == 6).all()
    assert k(x, w, torch.zeros(3, dtype=dtype)).dtype == name
    with pytest.raises(TypeError, match="float16"):
        cnn.Conv1d(2, 3, 3, dtype=torch.float16)


def test_compile_defaults_to_the_layers_dtype():
    ours = cnn.Conv2d(3, 4, 3, dtype="float64")
    theirs = torch.nn.Conv2d(3, 4, 3, dtype=torch.float64)
    for layer in (ours, theirs):
        assert convgen.compile(layer, (1, 3, 6, 6)).dtype == np.float64
    assert convgen.compile(torch.nn.Conv2d(3, 4, 3), (1, 3, 6, 6)).dtype == np.float32
    assert convgen.compile(ours.spec, (1, 3, 6, 6)).dtype == np.float32
    assert convgen.compile(ours, (1, 3, 6, 6), dtype="float32").dtype == np.float32


@pytest.mark.parametrize("lazy", [torch.nn.LazyConv2d, torch.nn.LazyConvTranspose1d])
def test_lazy_torch_modules_are_refused_until_they_ran(lazy):
    module = lazy(8, 3)
    ours = getattr(cnn, lazy.__name__.removeprefix("Lazy"))
    shape = (1, 3, 6, 6) if "2d" in lazy.__name__ else (1, 3, 6)
    for attempt in (lambda: convgen.compile(module, shape), lambda: ours.from_torch(module)):
        with pytest.raises(ValueError, match="uninitialised .lazy. parameters: run it once"):
            attempt()
    module(torch.ones(shape))              # now torch knows in_channels: a plain module
    assert ours.from_torch(module).in_channels == 3
    assert convgen.compile(module, shape).output_shape[1] == 8
