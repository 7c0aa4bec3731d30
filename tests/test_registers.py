"""Register budgets, read from gcc's machine code (objdump): every direct_simd tile the
planner offers (AVX2 and AVX-512) and the machine model's micro-benchmarks compile without
spilling in their FMA loops; AVX2's implicit_gemm tiles move at most a vector through the
stack now and then (AVX-512's widest implicit_gemm tiles are not held to either).

A spilled accumulator turns its FMA chain into a store and a reload per step: gcc 12 did
so on every step of a 4-channel x 3-vector direct_simd tile that filled all 16 AVX2
registers (pointwise_256_128 at 1 thread: 0.89 ms, 0.60 without), on small tiles with 4
accumulator sets (16 accumulators), and wherever it kept the blocked accumulation's
partial sums in registers beside the tile's own. The layers have 1, 9 and 7 taps and
reductions long enough to be blocked (``render._k_block``).
"""
from __future__ import annotations

import dataclasses
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import convgen
from convgen.backends import backend_for, get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import Workload
from convgen.cpu.plan import (
    DIRECT_SPARE_REGISTERS,
    Plan,
    check_plan,
    direct_chains,
    direct_registers,
    enumerate_plans,
)
from convgen.runtime import cache, pipeline
from convgen.target import host

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump"),
]

LAYERS = {   # op, weight, input: cin above 256 / taps, so the reduction is blocked
    "1x1": ("conv2d", (32, 300, 1, 1), (1, 300, 5, 40)),
    "3x3": ("conv2d", (32, 64, 3, 3), (1, 64, 6, 40)),
    "k7": ("conv1d", (32, 64, 7), (1, 64, 100)),
}
_LATCH = re.compile(r"\s+([0-9a-f]+):\t(j\w+)\s+([0-9a-f]+) <")
_LINE = re.compile(r"\s+([0-9a-f]+):\t(\S+)\s*(.*)")


def innermost_loop_spills(library: Path, folded: bool = False) -> list[tuple[int, ...]]:
    """(FMAs, vector stack accesses) of each innermost loop holding FMAs: a loop
    is a conditional branch back (an unconditional one is code layout), innermost when no
    other branch back lies inside it. ``folded``: a third count, the FMAs that read an
    operand from memory."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout
    code = [(int(m[1], 16), m[2], m[3]) for m in map(_LINE.match, text.splitlines()) if m]
    latches = [(int(m[3], 16), int(m[1], 16)) for m in map(_LATCH.match, text.splitlines())
               if m and m[2] != "jmp" and int(m[3], 16) < int(m[1], 16)]
    loops = []
    for start, end in latches:
        if any(start <= s and e < end for s, e in latches if (s, e) != (start, end)):
            continue
        body = [(op, args) for at, op, args in code if start <= at <= end]
        fmas = sum(op.startswith("vfmadd") for op, _ in body)
        stack = sum("(%rsp)" in args and re.search(r"[yz]mm", args) is not None
                    for _, args in body)
        if fmas:
            loads = sum(op.startswith("vfmadd") and "(" in args for op, args in body)
            loops.append((fmas, stack, loads) if folded else (fmas, stack))
    return loops


def _built(workload: Workload, plan, target) -> Path:
    """The kernel's shared library, built (or found in the cache) but not loaded: the
    machine code of any x86 target can be read on any x86 host, AVX-512's on an AVX2 one."""
    backend = backend_for(target)
    _, sources, parts = pipeline.generate(backend, workload, plan, target)
    key = cache.key_of(parts)
    cache.get_or_build(key, sources,
                       lambda paths, library: backend.build(paths, library, target), parts)
    found = sorted(cache.entry_dir(key).glob("*.so"))
    assert found, key
    return found[0]


def _tiles(target_name: str, algorithm: str):
    """(layer name, spec, input shape, plan) of every distinct tile the planner offers."""
    target = get_target(target_name)
    for name, (op, weight, shape) in LAYERS.items():
        spec = spec_from_op(op, weight, True, shape)
        workload = Workload(spec, shape, "float32")
        seen = set()
        for plan in enumerate_plans(workload, target, 1, "fast"):
            if (plan.algorithm != algorithm or plan.loop_order != "pixel_outer"
                    or (plan.oc_tile, plan.pixel_tile) in seen):
                continue
            check_plan(plan, workload, target)
            seen.add((plan.oc_tile, plan.pixel_tile))
            yield name, spec, shape, plan


def _spills(target_name: str, algorithm: str) -> dict[str, list[tuple[int, int]]]:
    found = {}
    for name, spec, shape, plan in _tiles(target_name, algorithm):
        library = _built(Workload(spec, shape, "float32"), plan, get_target(target_name))
        loops = innermost_loop_spills(library)
        assert loops, f"{name} {plan}: no reduction loop found in the machine code"
        found[f"{name} {plan.oc_tile}x{plan.pixel_tile}"] = loops
    return found


@pytest.mark.parametrize("target_name", ["x86-64-v3", "x86-64-v4"])
def test_direct_simd_tiles_never_spill(target_name):
    spilled = {tile: loops for tile, loops in _spills(target_name, "direct_simd").items()
               if any(stack for _, stack in loops)}
    assert not spilled, spilled


def test_implicit_gemm_tiles_on_avx2_barely_touch_the_stack():
    """AVX2's 16 registers: gcc keeps a register tile's accumulators, with at most a vector
    moved through the stack now and then (16 x 6: a store and a reload per 84 FMAs, where
    the spilled direct_simd tile above took 12 per 48). (AVX-512's widest implicit_gemm
    tiles, 48 x 9 and 64 x 6, spill 4-8% and are not held to this.)"""
    heavy = {tile: loops for tile, loops in _spills("x86-64-v3", "implicit_gemm").items()
             if any(stack > 0.05 * fmas for fmas, stack in loops)}
    assert not heavy, heavy


@pytest.mark.parametrize("tune", ["znver3", "generic"])
def test_implicit_gemm_keeps_its_weights_in_registers_on_avx2(tune):
    """AVX2 has no embedded broadcast: an FMA that reads memory there reads a weight
    vector, again for every pixel of the tile. Tuned for AMD's Zen 3 (what -march=native
    gives on one) or generic (the named x86-64-v3 target's), gcc 12 folded the weights
    into every FMA of the 16 x 6 tile, 18 loads a step where 8 are needed (hifigan_up at
    one thread on a Zen 3 EPYC: 19.4 ms against 14.4 for the 16 x 5 tile), until render
    pinned them in registers (``weights_in_registers``). At most one FMA in 20 may read
    memory (gcc keeps one of a 9-tap step's 108 so)."""
    target = dataclasses.replace(get_target("x86-64-v3"),
                                 arch_flags=("-march=x86-64-v3", f"-mtune={tune}"))
    layers = [("conv_transpose1d", (300, 32, 16), (1, 300, 20), {"stride": 8, "padding": 4}),
              ("conv1d", (32, 64, 3), (1, 64, 40), {})]
    folded = {}
    for op, weight, shape, args in layers:
        workload = Workload(spec_from_op(op, weight, True, shape, **args), shape, "float32")
        for tile in ("oc_tile=16 pixel_tile=6", "oc_tile=8 pixel_tile=12"):
            plan = Plan.parse(f"algorithm=implicit_gemm {tile} vector=8 "
                              "loop_order=pixel_outer threads=1")
            loops = innermost_loop_spills(_built(workload, plan, target), folded=True)
            fmas, loads = sum(f for f, _, _ in loops), sum(n for _, _, n in loops)
            assert fmas, f"{op} {tile}: no reduction loop found in the machine code"
            folded[f"{op} {tile}"] = (loads, fmas)
    assert all(20 * loads <= fmas for loads, fmas in folded.values()), folded


@pytest.mark.parametrize("target_name", ["x86-64-v3", "x86-64-v4"])
def test_a_portable_twin_pins_nothing_and_builds(target_name):
    """A portable twin (an ISA target without its flags: ``aot.pack`` packs with it where
    the build machine lacks the target's features) keeps the target's vectors in memory,
    where an empty asm with a register constraint cannot hold them: 0.4.14 pinned the
    weights of both twins there, and gcc refused ("impossible constraint")."""
    from convgen.aot.pack import portable_twin
    target = get_target(target_name)
    twin = portable_twin(target)
    shape = (1, 8, 9, 9)
    workload = Workload(spec_from_op("conv2d", (16, 8, 3, 3), True, shape, stride=2,
                                     padding=1), shape, "float32")
    plan = Plan.parse(f"algorithm=implicit_gemm oc_tile=16 pixel_tile=6 "
                      f"vector={target.vector_bytes // 4} loop_order=pixel_outer threads=1")
    _, sources, _ = pipeline.generate(backend_for(twin), workload, plan, twin)
    assert not any('"+x"' in text for _, text in sources)
    assert _built(workload, plan, twin).stat().st_size > 0


@pytest.mark.parametrize("regs", [16, 32])
def test_accumulator_sets_fit_the_registers(regs):
    """Small direct_simd tiles take turns between up to 4 accumulator sets, toward 16
    accumulators, but never more sets than the registers hold beside the inputs."""
    for oc_tile in range(1, 17):
        for vectors in range(1, 9):
            if direct_registers(oc_tile, vectors) > regs:
                continue
            chains = direct_chains(oc_tile, vectors, regs)
            assert 1 <= chains <= 4 and chains * oc_tile * vectors <= max(16, oc_tile * vectors)
            assert chains == 1 or direct_registers(oc_tile, vectors, chains) <= regs
    assert direct_chains(1, 1, 32) == 4 and direct_chains(2, 2, 16) == 2
    assert direct_registers(4, 3) == 4 * 3 + 3 + 1 + DIRECT_SPARE_REGISTERS


def test_a_tile_that_fills_every_register_is_refused_with_the_count():
    spec = spec_from_op("conv2d", (128, 256, 1, 1), True, (1, 256, 28, 28))
    with pytest.raises(ValueError, match=r"4x24 direct_simd tile needs 17 vector registers "
                                         r"\(one left to the compiler\); the target has 16"):
        convgen.compile(spec, (1, 256, 28, 28), "float32", target="x86-64-v3",
                        plan="algorithm=direct_simd oc_tile=4 pixel_tile=24 vector=8 "
                             "loop_order=pixel_outer threads=1")


@pytest.mark.parametrize("cap", ["avx2", ""])
def test_the_machine_models_benchmarks_never_spill(private_cache, monkeypatch, cap):
    """The micro-benchmarks the cost model's throughputs come from hold their tiles within
    the registers too: the broadcast-FMA benchmark's 16 rows spilled in AVX2's 16 registers
    and measured 1.5 FMAs per cycle where the core issues 2 (model version 8 sizes it)."""
    from convgen.cpu import measure
    from convgen.target import MAX_ISA_ENV, host_isa
    if cap and "avx2" not in host.cpu_features():
        pytest.skip("no AVX2")
    monkeypatch.setenv(MAX_ISA_ENV, cap)
    measure._library(host_isa())
    (library,) = [so for so in private_cache.glob("kernels/*/*/*.so")
                  if "cg_broadcast_fma_rate" in subprocess.run(
                      ["nm", "-D", str(so)], capture_output=True, text=True).stdout]
    loops = innermost_loop_spills(library)
    assert len(loops) >= 4 and not any(stack for _, stack in loops), loops
