"""Hardening: loading native code safely, odd arrays, non-finite data, huge sizes, C names.

Each rule of issue 5 that is not about the cache (tests/test_cache.py), threads
(tests/test_threads.py) or the whole argument space (tests/test_fuzz.py).
"""
from __future__ import annotations

import subprocess
import tempfile
import zlib

import numpy as np
import pytest
import torch

import convgen
from convgen.core.limits import ADDRESS_SPACE_BYTES, MAX_ELEMENTS, check_workload_limits
from convgen.core.names import C_KEYWORDS, c_identifier, check_c_identifier, unique_c_identifiers
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu import compile as compiler
from convgen.cpu import render
from convgen.runtime import cache, loader
from convgen.runtime import kernel as runtime_kernel
from helpers import assert_matches, random, torch_reference

OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


@pytest.fixture
def no_native(monkeypatch):
    """Compiling or loading anything fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("native code was reached")
    for module, name in [(compiler, "compile_shared"), (loader, "load"), (render, "render")]:
        monkeypatch.setattr(module, name, boom)


# -- loading: a private copy, several ways, never the wrong library -------------------------
def _library_returning(tmp_path, value: int) -> bytes:
    """A shared library whose one function, convgen_probe(), returns ``value``."""
    source, library = tmp_path / f"probe{value}.c", tmp_path / f"probe{value}.so"
    source.write_text(f"int convgen_probe(void) {{ return {value}; }}\n")
    subprocess.run([compiler.compiler_path(), "-shared", "-fPIC", "-o", str(library),
                    str(source)], check=True)
    return library.read_bytes()


@pytest.fixture
def probes(tmp_path):
    loader.declare_type("cg_probe_fn", "typedef int (*cg_probe_fn)(void);")
    return [_library_returning(tmp_path, v) for v in (101, 202, 303)]


def _fail(*args, **kwargs):
    raise OSError("simulated: this way of loading is unavailable (noexec mount)")


def test_every_library_loaded_is_its_own(probes):
    """Two libraries with one symbol, loaded one after the other, each through a reused fd
    number: dlopen must not hand back the first for the second (it caches by path)."""
    for _ in range(3):
        for library, value in zip(probes, (101, 202, 303)):
            (probe,) = loader.load(library, ("convgen_probe",))
            assert loader.function(probe, "cg_probe_fn")() == value


@pytest.mark.parametrize("unavailable", [
    ["_load_from_memfd"], ["_load_from_memfd", "_load_from_cache_dir"]],
    ids=["cache-dir", "tmpdir"])
def test_loading_falls_back_when_a_way_fails(probes, monkeypatch, private_cache, tmp_path,
                                             unavailable):
    for name in unavailable:
        monkeypatch.setattr(loader, name, _fail)
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for library, value in zip(probes, (101, 202, 303)):
        (probe,) = loader.load(library, ("convgen_probe",))
        assert loader.function(probe, "cg_probe_fn")() == value
    if "_load_from_cache_dir" not in unavailable:
        load_dir = private_cache / "load"
        assert load_dir.stat().st_mode & 0o777 == 0o700 and list(load_dir.iterdir()) == []
    assert list(scratch.iterdir()) == []          # nothing left behind either way


def test_memfd_failure_falls_back_for_real_kernels(monkeypatch, private_cache):
    monkeypatch.setattr(loader.os, "memfd_create", _fail)
    runtime_kernel.forget_loaded()
    rng = np.random.default_rng(0)
    x, w = random(rng, (1, 3, 6, 6)), random(rng, (2, 3, 3, 3))
    assert_matches(convgen.conv2d(x, w, padding=1), torch_reference("conv2d", x, w, padding=1),
                   "float64")


def test_loading_reports_every_way_that_failed(probes, monkeypatch):
    for name in ("_load_from_memfd", "_load_from_cache_dir", "_load_from_tmpdir"):
        monkeypatch.setattr(loader, name, _fail)
    with pytest.raises(loader.LoadError, match="could not load") as info:
        loader.load(probes[0], ("convgen_probe",))
    assert str(info.value).count("simulated") == 3


def test_unique_fd_paths_name_the_same_fd():
    paths = {loader._unique_fd_path(7, serial) for serial in range(1, 2000)}
    assert len(paths) == 1999
    with open(__file__, "rb") as f:
        start = f.read(40)
        for serial in (1, 2, 5, 1000):
            with open(loader._unique_fd_path(f.fileno(), serial), "rb") as again:
                assert again.read(40) == start


# -- arrays: what is refused, what is copied ---------------------------------------------------
REFUSED_ARRAYS = [
    ("object", lambda x: x.astype(object), TypeError, "object"),
    ("complex", lambda x: x.astype(np.complex128), TypeError, "complex128"),
    ("bool", lambda x: x > 0, TypeError, "bool"),
    ("int", lambda x: x.astype(np.int32), TypeError, "int32"),
    ("float16", lambda x: x.astype(np.float16), TypeError, "float16"),
    ("structured", lambda x: np.zeros(x.shape, [("a", "f8")]), TypeError, "input"),
    ("0-d", lambda x: np.float64(1.0), ValueError, "input"),
    ("rank-5", lambda x: x[None], ValueError, "input"),
    ("rank-2", lambda x: x[0, 0], ValueError, "input"),
    ("spatial-0", lambda x: x[:, :, :0], ValueError, "input"),
    ("torch-sparse", lambda x: torch.from_numpy(x).to_sparse(), TypeError, "input"),
    ("torch-complex", lambda x: torch.from_numpy(x).to(torch.complex64), TypeError, "complex"),
]


@pytest.mark.parametrize("make, error, name", [c[1:] for c in REFUSED_ARRAYS],
                         ids=[c[0] for c in REFUSED_ARRAYS])
def test_bad_input_arrays_are_refused_before_native_code(no_native, make, error, name):
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5))
    with pytest.raises(error, match=name):
        convgen.conv2d(make(x), np.ones((4, 3, 3, 3)))


def _unaligned(shape, dtype=np.float64) -> np.ndarray:
    """A C-contiguous, writeable array one byte off its type's alignment."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(int(np.prod(shape)) * itemsize + 1, np.uint8)
    view = raw[1:].view(dtype).reshape(shape)
    assert view.flags.c_contiguous and not view.flags.aligned
    return view


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unaligned_operands_are_copied_aligned(dtype):
    rng = np.random.default_rng(2)
    x, w, b = random(rng, (2, 3, 6, 5), dtype), random(rng, (4, 3, 3, 3), dtype), \
        random(rng, (4,), dtype)
    ux, uw, ub = _unaligned(x.shape, dtype), _unaligned(w.shape, dtype), _unaligned(b.shape, dtype)
    ux[...], uw[...], ub[...] = x, w, b
    ref = torch_reference("conv2d", x, w, b, padding=1)
    assert_matches(convgen.conv2d(ux, uw, ub, padding=1), ref, dtype)
    k = convgen.compile(ConvSpec.conv(2, 3, 4, 3, padding=1), x.shape, dtype=dtype)
    assert_matches(k(ux, uw, ub), ref, dtype)


def test_unaligned_out_is_refused():
    k = convgen.compile(ConvSpec.conv(2, 3, 4, 3, padding=1), (2, 3, 6, 5), dtype="float64")
    x, w, b = np.ones((2, 3, 6, 5)), np.ones((4, 3, 3, 3)), np.ones(4)
    with pytest.raises(ValueError, match="out must be .*aligned.*not aligned"):
        k(x, w, b, out=_unaligned(k.output_shape))


@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_out_overlapping_an_operand_is_refused_by_name(which):
    k = convgen.compile(ConvSpec.conv(1, 2, 2, 1), (1, 2, 8), dtype="float64")
    arena = np.zeros(64)
    operands = {"input": np.ones((1, 2, 8)), "weight": np.ones((2, 2, 1)), "bias": np.ones(2)}
    out = arena[:16].reshape(1, 2, 8)
    operands[which] = arena[14:14 + operands[which].size].reshape(operands[which].shape)
    with pytest.raises(ValueError, match=f"overlaps the {which}"):
        k(operands["input"], operands["weight"], operands["bias"], out=out)
    with pytest.raises(ValueError, match="overlaps the input"):
        k(out, operands["weight"], operands["bias"], out=out)     # in place


def test_batch_zero_gives_an_empty_result_like_torch():
    x, w = np.ones((0, 3, 5, 5)), np.ones((4, 3, 3, 3))
    for op, weight in (("conv2d", w), ("conv_transpose2d", np.ones((3, 4, 3, 3)))):
        ours = getattr(convgen, op)(x, weight, np.ones(4))
        assert ours.shape == torch_reference(op, x, weight, np.ones(4)).shape
        assert ours.size == 0


# -- NaN and Inf propagate as torch propagates them -------------------------------------------
def _sprinkle(rng, array, count):
    """``array`` with ``count`` elements set to NaN, +Inf or -Inf."""
    array = array.copy()
    flat = array.reshape(-1)
    where = rng.choice(flat.size, size=min(count, flat.size), replace=False)
    flat[where] = rng.choice([np.nan, np.inf, -np.inf], size=where.size)
    return array


def _zero_padded(op, args) -> bool:
    """Whether some taps fall on zeros: zero padding of a forward conv, or the borders of a
    transposed conv (convgen's stride-phase kernels read zeros around the input there)."""
    padding = args.get("padding", 0)
    return op.startswith("conv_transpose") or (
        args.get("padding_mode", "zeros") == "zeros" and padding not in (0, "valid"))


NONFINITE_CASES = [
    ("conv1d", (2, 3, 9), (4, 3, 3), dict(padding=1)),
    ("conv1d", (2, 4, 9), (4, 2, 3), dict(padding=2, groups=2, padding_mode="circular")),
    ("conv2d", (2, 3, 7, 6), (4, 3, 3, 2), dict(padding=(1, 2), stride=(2, 1))),
    ("conv2d", (1, 3, 7, 6), (4, 3, 3, 3), dict(padding="same", padding_mode="reflect",
                                                dilation=2)),
    ("conv2d", (1, 3, 7, 6), (4, 3, 3, 3), dict(padding=1, padding_mode="replicate")),
    ("conv3d", (1, 2, 4, 5, 4), (3, 2, 2, 3, 2), dict(padding=1)),
    ("conv_transpose1d", (2, 3, 6), (3, 4, 3), dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose2d", (1, 4, 5, 4), (4, 2, 3, 3), dict(stride=(2, 1), padding=1, groups=2,
                                                          dilation=(1, 2))),
    ("conv_transpose3d", (1, 2, 3, 3, 2), (2, 3, 2, 2, 2), dict(stride=2)),
]


# Non-finite weights with zero padding are left out: torch's own answer there depends on
# its backend (see the next test and the README's Safety section).
NONFINITE_PARAMS = [pytest.param(*case, where, id=f"{case[0]}-{i}-{where}")
                    for i, case in enumerate(NONFINITE_CASES)
                    for where in ("input", "weight", "bias")
                    if not (where == "weight" and _zero_padded(case[0], case[3]))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op, x_shape, w_shape, args, where", NONFINITE_PARAMS)
def test_nan_and_inf_propagate_like_torch(op, x_shape, w_shape, args, where, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{op}{x_shape}{where}{dtype}".encode()))
    transposed = op.startswith("conv_transpose")
    n_out = w_shape[1] * args.get("groups", 1) if transposed else w_shape[0]
    operands = {"input": random(rng, x_shape, dtype), "weight": random(rng, w_shape, dtype),
                "bias": random(rng, (n_out,), dtype)}
    operands[where] = _sprinkle(rng, operands[where], 3)
    x, w, b = operands["input"], operands["weight"], operands["bias"]
    theirs = torch_reference(op, x, w, b, **args)     # in float64: exact products, no overflow
    ours = getattr(convgen, op)(x, w, b, **args)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    assert (~np.isfinite(ours)).any()                  # the sprinkle reached the output
    assert_matches(np.where(finite, ours, 0), np.where(finite, theirs, 0), dtype)


def test_nonfinite_weights_over_zero_padding_multiply_the_zeros():
    """The rule, pinned: a tap over zero padding multiplies a zero, so an infinite weight
    there gives 0 * Inf = NaN, as torch's float64 (im2col) path does; torch's float32
    oneDNN path skips such taps instead. Inside, the infinity propagates as usual."""
    x, w = np.ones((1, 1, 6, 6)), np.ones((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.inf
    ours = convgen.conv2d(x, w, padding=1)
    theirs = torch_reference("conv2d", x, w, None, padding=1)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.isnan(ours[0, 0, 0, :]).all() and np.isinf(ours[0, 0, 1:, 1:]).all()


# -- sizes too large to index or to hold ------------------------------------------------------
HUGE = [
    # (layer, input shape, dtype, the tensor named, the limit named)
    (ConvSpec.conv(2, 1, 1, 1), (2 ** 40, 1, 2 ** 12, 2 ** 12), "float32", "input", "index"),
    (ConvSpec.conv(2, 1, 1, 1), (1, 1, 2 ** 23, 2 ** 23), "float32", "input", "address space"),
    (ConvSpec.conv(1, 2 ** 31, 2 ** 31, 3), (1, 2 ** 31, 3), "float64", "weight", "index"),
    (ConvSpec.conv(1, 2 ** 20, 2 ** 20, 2 ** 8), (1, 2 ** 20, 2 ** 8), "float64", "weight",
     "address space"),
    (ConvSpec.conv_transpose(2, 1, 1, 1, stride=2 ** 16), (1, 1, 2 ** 10, 2 ** 10), "float64",
     "output", "address space"),
    (ConvSpec.conv(3, 4, 8, 1), (2 ** 30, 4, 2 ** 12, 2 ** 12, 2 ** 12), "float64", "input",
     "index"),
]


@pytest.mark.parametrize("layer, shape, dtype, tensor, limit", HUGE,
                         ids=[f"{h[3]}-{h[4].replace(' ', '-')}-{i}" for i, h in enumerate(HUGE)])
def test_huge_workloads_are_refused_before_compiling(no_native, layer, shape, dtype, tensor,
                                                     limit):
    with pytest.raises(ValueError, match=f"^{tensor} of shape .* {limit}"):
        convgen.compile(layer, shape, dtype=dtype)


def test_limits_are_what_they_say():
    assert MAX_ELEMENTS == 2 ** 62 and ADDRESS_SPACE_BYTES == 2 ** 47
    spec = ConvSpec.conv(1, 1, 1, 1)
    fits, _ = workload_of(spec, (1, 1, ADDRESS_SPACE_BYTES // 8), "float64")
    check_workload_limits(fits)                           # exactly the address space: allowed
    too_big, _ = workload_of(spec, (1, 1, ADDRESS_SPACE_BYTES // 8 + 1), "float64")
    with pytest.raises(ValueError, match="input of shape"):
        check_workload_limits(too_big)
    # large but allocatable: more than 2**31 elements is fine (64-bit indexing)
    check_workload_limits(workload_of(ConvSpec.conv(2, 3, 4, 3), (1, 3, 2 ** 16, 2 ** 16),
                                      "float32")[0])


def test_large_but_allocatable_workload_reaches_the_compiler(monkeypatch, private_cache):
    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached
    monkeypatch.setattr(compiler, "compile_shared", reached)
    monkeypatch.setattr(cache, "_fetch", lambda root, key: None)   # never a cached copy
    with pytest.raises(Reached):   # 2**33 input elements: not refused, compiled
        convgen.compile(ConvSpec.conv(2, 2, 2, 3), (1, 2, 2 ** 16, 2 ** 16))


# -- names that reach generated C ----------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("conv1", "conv1"),
    ("conv1/3x3.b", "conv1_3x3_b"),
    ("/model/layer.0/Conv", "_model_layer_0_Conv"),
    ("3x3", "layer_3x3"),
    ("0", "layer_0"),
    ("int", "layer_int"),
    ("__init", "layer___init"),
    ("_Bool", "layer__Bool"),
    ("naïve conv", "na_ve_conv"),
    ('x"; system("rm -rf /"); //', "x___system__rm__rf________"),
    ("a\nb */ c", "a_b____c"),
    ("a" * 63, "a" * 63),
])
def test_c_identifier(name, expected):
    assert c_identifier(name) == expected
    assert check_c_identifier(expected) == expected


def test_long_names_stay_distinct_and_short():
    one, two = c_identifier("block" * 20 + "_a"), c_identifier("block" * 20 + "_b")
    assert one != two and len(one) == len(two) == 63
    assert check_c_identifier(one) == one


def test_unique_c_identifiers_resolve_collisions():
    assert unique_c_identifiers(["a.b", "a-b", "a_b", "c"]) == ["a_b", "a_b_2", "a_b_3", "c"]


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a-b", "a" * 64, "int", "while", "__x",
                                  "_Foo", "é", "a\n", "a\0"])
def test_check_c_identifier_refuses(name):
    with pytest.raises(ValueError, match="not a safe C identifier"):
        check_c_identifier(name)


@pytest.mark.parametrize("bad, error", [("", ValueError), (None, TypeError), (b"x", TypeError),
                                        (3, TypeError)])
def test_c_identifier_refuses(bad, error):
    with pytest.raises(error):
        c_identifier(bad)


def test_every_keyword_is_refused():
    for keyword in C_KEYWORDS:
        with pytest.raises(ValueError, match="keyword|reserved"):
            check_c_identifier(keyword)
        assert c_identifier(keyword) == f"layer_{keyword}"


def test_nothing_but_identifier_characters_get_through():
    every = "".join(chr(i) for i in range(1, 0x250))
    safe = c_identifier(every)
    assert set(safe) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
