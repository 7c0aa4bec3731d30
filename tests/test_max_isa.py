"""CONVGEN_MAX_CPU_ISA: the native target as if the host had no wider ISA (as oneDNN's
ONEDNN_MAX_CPU_ISA does): the kernels' vectors and flags, the features in the cache key,
the machine model's class and the tuning records' machine all follow the cap, and a
capped kernel computes what torch does."""
from __future__ import annotations

import numpy as np
import pytest

import convgen
from convgen.backends import backend_for, get_target
from convgen.runtime import machine
from convgen.target import MAX_ISA_ENV, host, max_isa
from convgen.tuning import records
from helpers import assert_matches, poisoned_call, random, torch_reference

HAS_AVX2 = "avx2" in host.cpu_features()
HAS_AVX512 = "avx512f" in host.cpu_features()


def test_uncapped_the_native_target_is_the_hosts_widest(monkeypatch):
    monkeypatch.delenv(MAX_ISA_ENV, raising=False)
    target = get_target("cpu")
    assert max_isa() == "avx512" and target.arch_flags == ("-march=native",)
    assert target.cpu_features == host.cpu_features()


@pytest.mark.skipif(not HAS_AVX2, reason="no AVX2")
@pytest.mark.parametrize("value", ["avx2", "AVX2", " avx2 "])
def test_capped_to_avx2_the_native_target_drops_avx512(monkeypatch, value):
    monkeypatch.setenv(MAX_ISA_ENV, value)
    target = get_target("cpu")
    assert target.isa == "avx2" and target.vector_bytes == 32
    assert target.arch_flags == ("-march=native", "-mno-avx512f")
    assert "avx2" in target.cpu_features and "fma" in target.cpu_features
    assert not [f for f in target.cpu_features if f.startswith(("avx512", "amx"))]
    assert target.missing_features() == ()


def test_capped_to_generic_the_native_target_has_no_vectors(monkeypatch):
    monkeypatch.setenv(MAX_ISA_ENV, "generic")
    target = get_target("cpu")
    assert target.isa == "generic" and target.vector_bytes == 0
    assert target.arch_flags == ("-march=native", "-mno-avx")
    assert not [f for f in target.cpu_features if f.startswith(("avx", "fma", "f16c", "amx"))]


def test_a_bad_value_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(MAX_ISA_ENV, "avx1024")
    with pytest.raises(ValueError, match=r"CONVGEN_MAX_CPU_ISA must be one of avx512, avx2, "
                                         r"generic .*got 'avx1024'"):
        get_target("cpu")


@pytest.mark.skipif(not HAS_AVX512, reason="needs an AVX-512 host to cap")
def test_a_capped_kernel_has_its_own_key_model_class_and_tuning_machine(monkeypatch):
    spec = convgen.ConvSpec.conv(2, 16, 32, 3, padding=1)
    backend = backend_for(get_target("cpu"))
    monkeypatch.delenv(MAX_ISA_ENV, raising=False)
    wide = convgen.compile(spec, (1, 16, 9, 20), "float32")
    wide_class = machine.machine_class(get_target("cpu").isa_row)
    wide_records = records.machine_class(get_target("cpu"), backend)
    monkeypatch.setenv(MAX_ISA_ENV, "avx2")
    capped = convgen.compile(spec, (1, 16, 9, 20), "float32")
    assert capped.key != wide.key and capped.plan.vector == 8 and wide.plan.vector == 16
    assert "-mno-avx512f" in capped.source and "vector_size(32)" in capped.source
    assert machine.machine_class(get_target("cpu").isa_row) != wide_class
    assert records.machine_class(get_target("cpu"), backend) != wide_records


@pytest.mark.skipif(not HAS_AVX2, reason="no AVX2")
@pytest.mark.parametrize("cap", ["avx2", "generic"])
def test_a_capped_kernel_matches_torch(monkeypatch, cap):
    monkeypatch.setenv(MAX_ISA_ENV, cap)
    rng = np.random.default_rng(7)
    x, w, b = random(rng, (2, 24, 7, 19)), random(rng, (40, 24, 3, 3)), random(rng, 40)
    for dtype in ("float32", "float64"):
        spec = convgen.ConvSpec.conv(2, 24, 40, 3, padding=1, padding_mode="reflect")
        kernel = convgen.compile(spec, x.shape, dtype, plan="implicit_gemm")
        args = [a.astype(dtype) for a in (x, w, b)]
        assert_matches(poisoned_call(kernel, *args),
                       torch_reference("conv2d", *args, padding=1, padding_mode="reflect"),
                       dtype)
