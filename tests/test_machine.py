"""The measured machine model (runtime/machine.py, cpu/measure.py): measured once per
machine class, stored, re-measured when damaged, measured once by processes starting
together, and used by the cost model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from convgen.backends import get_target
from convgen.cpu.measure import _OVERLAP_CHAINS
from convgen.runtime import machine

TARGET = get_target("cpu")
FAKE = {"clock_hz": 3.0e9, "fma_per_cycle": 2.0, "loads_per_cycle": 3.0,
        "vector_load_cost": 1.0, "fma_latency": 4.0, "l1_bytes_per_cycle": 128.0,
        "l2_bytes_per_cycle": 48.0, "l3_bytes_per_cycle": 10.0, "dram_bytes_per_s": 12e9,
        "dram_total_bytes_per_s": 20e9}


@pytest.fixture
def measured_here(private_cache, monkeypatch):
    """A fresh cache, the measuring enabled, and a fake measurement that counts its calls."""
    monkeypatch.delenv("CONVGEN_MACHINE", raising=False)
    machine.forget()
    calls = []

    def fake(isa):
        calls.append(isa.name)
        return dict(FAKE)

    yield fake, calls
    machine.forget()


def stored(private_cache) -> dict:
    (path,) = (private_cache / "machine").glob("*.measured.json")
    return json.loads(path.read_text())


def test_first_use_measures_and_stores(measured_here, private_cache):
    fake, calls = measured_here
    model = machine.current(TARGET, fake)
    assert calls == [TARGET.isa_row.name] and model.fma_per_cycle == 2.0
    assert stored(private_cache)["fields"]["clock_hz"] == 3.0e9
    machine.forget()
    assert machine.current(TARGET, fake) == model and len(calls) == 1   # read back, not measured
    assert machine.describe(TARGET, fake)["origin"]["fma_per_cycle"] == "measured"


@pytest.mark.parametrize("damage", ["not json", "wrong version", "negative", "other class",
                                    "bad chain table"])
def test_a_damaged_model_is_measured_again(measured_here, private_cache, damage):
    fake, calls = measured_here
    machine.current(TARGET, fake)
    (path,) = (private_cache / "machine").glob("*.measured.json")
    record = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{ truncated")
    else:
        if damage == "wrong version":
            record["version"] = -1
        elif damage == "negative":
            record["fields"]["fma_per_cycle"] = -2
        elif damage == "bad chain table":
            record["fields"]["fma_chain_rates"] = [0.5, -1.0, "x"]
        else:
            record["machine_class"] = "avx512-0000000000000000"
        path.write_text(json.dumps(record))
    machine.forget()
    with pytest.warns(RuntimeWarning, match="measuring again"):
        assert machine.current(TARGET, fake).fma_per_cycle == 2.0
    assert len(calls) == 2 and stored(private_cache)["version"] == machine.MODEL_VERSION


def test_a_cpu_of_another_family_or_model_is_another_class(measured_here, monkeypatch):
    """A Zen 4 and a Zen 5 VM both report "AMD EPYC" with the same AVX-512 flags; one has
    one FMA unit, the other two. Their family and model tell them apart: a stored model of
    one is never the other's, and the other measures its own."""
    from convgen.target import host
    fake, calls = measured_here
    ours = machine.machine_class(TARGET.isa_row)
    machine.current(TARGET, fake)
    monkeypatch.setattr(host, "cpu_id", lambda: "AuthenticAMD 26 2")
    machine.forget()
    assert machine.machine_class(TARGET.isa_row) != ours
    machine.current(TARGET, fake)
    assert len(calls) == 2


def test_named_targets_and_the_defaults_switch_do_not_measure(measured_here, monkeypatch):
    fake, calls = measured_here
    for name in ("x86-64-v4", "c"):
        target = get_target(name)
        from convgen.target.machine import default_machine
        assert machine.current(target, fake) == default_machine(target.isa_row)
    monkeypatch.setenv("CONVGEN_MACHINE", "defaults")
    machine.current(TARGET, fake)
    assert calls == []


CONCURRENT = textwrap.dedent("""
    import os, sys, time
    from convgen.backends import get_target
    from convgen.runtime import machine
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.005)
    def fake(isa):
        with open(sys.argv[2], "a") as log:
            log.write("measured\\n")
        time.sleep(1.0)   # long enough for the other process to arrive and wait
        return {"clock_hz": 3e9, "fma_per_cycle": 2.0}
    print(machine.current(get_target("cpu"), fake).fma_per_cycle)
""")


def test_processes_starting_together_measure_once(private_cache, tmp_path):
    go, log = tmp_path / "go", tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if k != "CONVGEN_MACHINE"}
    env["CONVGEN_CACHE_DIR"] = str(private_cache)
    children = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(go), str(log)],
                                 env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    go.touch()
    outputs = [child.communicate(timeout=120)[0].strip() for child in children]
    assert outputs == ["2.0"] * 3
    assert log.read_text().splitlines() == ["measured"]


def test_convgen_machine_measures_this_host(private_cache, monkeypatch):
    """The real micro-benchmarks, through the CLI: plausible numbers for an x86-64 core."""
    env = {k: v for k, v in os.environ.items() if k != "CONVGEN_MACHINE"}
    env["CONVGEN_CACHE_DIR"] = str(private_cache)
    done = subprocess.run([sys.executable, "-m", "convgen.cli", "machine", "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    model = info["model"]
    if info["origin"]["fma_per_cycle"] != "measured":
        pytest.skip(f"this host ({info['identity']['arch']}, {info['isa']}) is not measured")
    assert 0.5e9 < model["clock_hz"] < 7e9
    assert 0.4 < model["fma_per_cycle"] < 4.5 and 2 < model["fma_latency"] < 10
    # the FMA rate of 1, 2, ... chains: one chain waits on its latency, many fill the units
    rates = model["fma_chain_rates"]
    registers = 32 if info["vector_bytes"] == 64 else 16
    assert info["origin"]["fma_chain_rates"] == "measured"
    assert len(rates) == min(16, registers - 4)
    assert rates[0] < 0.6 * max(rates) and max(rates) > 0.6 * model["fma_per_cycle"]
    assert model["l1_bytes_per_cycle"] > model["l2_bytes_per_cycle"] > model["l3_bytes_per_cycle"]
    # adds and FMAs mixed: at least the FMA rate (the adds share its units or have their own)
    assert info["origin"]["fp_ops_per_cycle"] == "measured"
    assert 0.8 * model["fma_per_cycle"] < model["fp_ops_per_cycle"] < 4.5
    assert info["measure_seconds"] < 10   # about 1 s on an idle machine
    for field in ("gather_macs_per_s", "transposed_gather_macs_per_s"):   # scalar, 1 thread
        assert info["origin"][field] == "measured" and 2e7 < model[field] < 2e10, field
    for level in ("l2", "l3", "dram"):    # an out-of-order core overlaps several misses
        assert info["origin"][f"{level}_misses_in_flight"] == "measured"
        # at most the chains walked
        assert 2 < model[f"{level}_misses_in_flight"] <= _OVERLAP_CHAINS, level
    if info["identity"]["cores"] > 1:     # one fork/join of awake workers: ~1 us, not ms
        assert info["origin"]["parallel_overhead_s"] == "measured"
        assert 5e-8 < model["parallel_overhead_s"] < 2e-4
    text = subprocess.run([sys.executable, "-m", "convgen.cli", "machine"], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert "measured" in text and "GFLOP/s" in text


# Two machine classes as measured: an AVX-512 core with one FMA unit (EPYC-like) and one
# with two (Sapphire Rapids-like). Same caches, so only what the measurements say differs.
ONE_FMA = {**FAKE, "fma_per_cycle": 1.0, "broadcast_fma_per_cycle": 1.0, "loads_per_cycle": 2.0,
           "vector_load_cost": 1.0, "l2_bytes_per_cycle": 32.0, "l2_tile_bytes_per_cycle": 16.0,
           "l3_bytes_per_cycle": 8.0}
TWO_FMA = {**FAKE, "fma_per_cycle": 2.0, "broadcast_fma_per_cycle": 1.9, "loads_per_cycle": 3.0,
           "vector_load_cost": 1.5, "l2_bytes_per_cycle": 46.0, "l2_tile_bytes_per_cycle": 19.5,
           "l3_bytes_per_cycle": 8.6}


@pytest.mark.skipif(TARGET.isa != "avx512", reason="the two classes compared are AVX-512 ones")
def test_the_planner_plans_by_the_measured_class(measured_here, monkeypatch):
    """deconv_outpad of the public suite (transposed 64 -> 32, 3x3, stride 2): a tile of one
    weight vector (16 channels x 28 pixels) takes a broadcast per FMA. On a one-FMA core the
    FMAs bind every tile alike; on a two-FMA core those broadcasts bind first (the measured
    rate of FMAs carrying a broadcast is below the plain FMA rate), so the planner moves to
    32 channels x 14 pixels: the same FMAs for half the broadcasts."""

    from convgen.core.spec import ConvSpec, workload_of
    from convgen.cpu.cost import estimate
    from convgen.cpu.planner import choose
    from convgen.target import host
    from convgen.target import machine as target_machine

    workload, _ = workload_of(ConvSpec.conv_transpose(2, 64, 32, 3, stride=2, padding=1,
                                                      output_padding=1),
                              (1, 64, 28, 28), "float32")
    # the same caches for both classes: only the measured throughputs differ
    monkeypatch.setattr(host, "caches", lambda: host.Caches(48 << 10, 2 << 20, 32 << 20))
    target_machine.default_machine.cache_clear()
    chosen, models = {}, {}
    for name, fields in (("one", ONE_FMA), ("two", TWO_FMA)):
        identity = {**host.identity(), "cpu_model": f"test CPU with {name} FMA unit(s)"}
        monkeypatch.setattr(host, "identity", lambda identity=identity: identity)
        machine.forget()
        models[name] = machine.current(TARGET, lambda isa, fields=fields: dict(fields))
        assert models[name].fma_per_cycle == fields["fma_per_cycle"]
        chosen[name] = choose(workload, TARGET, threads=2)
    target_machine.default_machine.cache_clear()
    vector = TARGET.vector_bytes // 4
    assert chosen["one"].oc_tile == vector and chosen["two"].oc_tile == 2 * vector
    # each class's choice is the cheaper one under its own measurements
    for mine, other in (("one", "two"), ("two", "one")):
        assert estimate(chosen[mine], workload, TARGET, models[mine])[0] < \
            estimate(chosen[other], workload, TARGET, models[mine])[0]


@pytest.mark.skipif(TARGET.isa_row.vector_bytes < 32, reason="measured on x86-64 SIMD only")
def test_the_l2_tile_rate_is_bound_by_l2_not_by_the_fmas(private_cache):
    """The micro-benchmark behind l2_tile_bytes_per_cycle, run on an L1-sized and an
    L2-sized set of operands: from L1 it must run much faster, or it measures its own FMAs
    and loads instead of L2. (Until model version 5 it did 8 FMAs per 96 bytes: on a core
    with two FMA units that gave 19.5 bytes/cycle from L1 and L2 alike, against 36 now from
    L2.)"""
    import platform

    from convgen.cpu.measure import _library
    from convgen.target import host
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the micro-benchmarks are x86-64 code")
    tile_rate = _library(TARGET.isa_row)["cg_l2_tile_rate"]
    step_bytes = (8 + TARGET.isa_row.vector_bytes // 4) * 4
    l1_steps = max(64, host.caches().l1d_bytes // 4 // step_bytes)
    l2_steps = max(256, host.caches().l2_bytes // 4 // step_bytes)
    # The benchmark bound by the core ran L1 and L2 alike (1.0x). AMD's Zen 5, whose L2
    # feeds a core 62 bytes a cycle, runs it at 77 and 47.5 bytes a cycle (1.63x) in steady
    # state, but a shared VM's runs wander: 1.06-1.45x seen in 4 of 36 tries, the L1 runs
    # slowed or the L2 ones sped up. So: the best of runs taken in turns, up to three tries
    # (a core-bound benchmark fails every one), and a bound between 1.0x and what a fast L2
    # gives.
    for _ in range(3):
        l1 = l2 = 0.0
        for _ in range(5):
            l1 = max(l1, tile_rate(max(1, 4_000_000 // l1_steps), l1_steps))
            l2 = max(l2, tile_rate(max(1, 2_000_000 // l2_steps), l2_steps))
        if l1 > 1.15 * l2:
            break
    assert l1 > 1.15 * l2, (l1, l2)


@pytest.mark.skipif(TARGET.isa_row.vector_bytes < 32, reason="sized for SIMD kernels")
def test_the_planner_forks_a_team_by_the_measured_fork_join(measured_here, monkeypatch):
    """A small layer (16 -> 16 channels, 3x3 at 24 x 24: ~10 us of FMAs on one core) splits
    over two threads where a parallel region costs what it measured here (about 1 us: the
    model's old constant, 4 us, was 4x that), and stays on one where it costs 50 us."""
    from convgen.core.spec import ConvSpec, workload_of
    from convgen.cpu.planner import choose
    from convgen.target import host

    workload, _ = workload_of(ConvSpec.conv(2, 16, 16, 3, padding=1), (1, 16, 24, 24),
                              "float32")
    chosen = {}
    for overhead in (1e-6, 50e-6):
        identity = {**host.identity(), "cpu_model": f"test CPU, fork/join {overhead}"}
        monkeypatch.setattr(host, "identity", lambda identity=identity: identity)
        machine.forget()
        fields = {**TWO_FMA, "parallel_overhead_s": overhead}
        model = machine.current(TARGET, lambda isa, fields=fields: dict(fields))
        assert model.parallel_overhead_s == overhead
        chosen[overhead] = choose(workload, TARGET, threads=2).threads
    assert chosen == {1e-6: 2, 50e-6: 1}


def test_scattered_reads_cost_the_latency_over_the_misses_in_flight_of_their_level():
    """The measured misses in flight of each level divide that level's latency: a scattered
    read from DRAM on a core that keeps twice the misses in flight costs half as much, and
    a level's own number is the one used."""
    import dataclasses

    from convgen.cpu.memory import read_cycles
    from convgen.target.machine import default_machine
    base = dataclasses.replace(default_machine(TARGET.isa_row), dram_latency=400.0,
                               l3_latency=300.0, dram_misses_in_flight=10.0,
                               l3_misses_in_flight=20.0)
    nbytes = 64 * 1000   # latency-bound at these numbers (streamed: 8000 cycles from L3)
    assert read_cycles(nbytes, "dram", base, scattered=True) == pytest.approx(1000 * 400 / 10)
    assert read_cycles(nbytes, "l3", base, scattered=True) == pytest.approx(1000 * 300 / 20)
    wider = dataclasses.replace(base, dram_misses_in_flight=20.0)
    assert read_cycles(nbytes, "dram", wider, scattered=True) == pytest.approx(1000 * 400 / 20)
    assert read_cycles(nbytes, "l3", wider, scattered=True) == pytest.approx(1000 * 300 / 20)


def test_the_overlapped_chains_overlap(private_cache):
    """The micro-benchmark behind the misses in flight: 48 chains walked together through
    a DRAM-sized buffer must take well under a single chain's time per line, or it times
    its own loop rather than the core's overlap."""
    import platform

    from convgen.cpu.measure import _library
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the micro-benchmarks are x86-64 code")
    f = _library(TARGET.isa_row)
    one = min(f["cg_load_latency"](64 << 20, 20_000) for _ in range(2))
    overlapped = min(f["cg_overlapped_load_seconds"](64 << 20, 1_000) for _ in range(2))
    assert 0 < overlapped < one / 3, (one, overlapped)


def test_misses_in_flight_stop_at_the_chains_walked(monkeypatch):
    """The misses in flight are a latency over an overlapped time, timed apart: where a
    neighbour slowed the chase (a CI run measured 49.8 L2 misses with 48 chains), the
    model keeps the chains walked, the most the benchmark can show."""
    from convgen.cpu import measure
    seconds = {"cg_clock_hz": lambda n: 2e9, "cg_fma_rate": lambda n: 4e9,
               "cg_broadcast_fma_rate": lambda n: 4e9, "cg_l2_tile_rate": lambda n, s: 60e9,
               "cg_fma_chain_seconds": lambda n: 2e-9, "cg_fma_chain_rate": lambda n, c: 2e9,
               "cg_load_rate": lambda n, b: 4e9, "cg_stream_rate": lambda b, s, t: 50e9,
               "cg_load_latency": lambda b, n: 100e-9,            # 200 cycles
               "cg_overlapped_load_seconds": lambda b, n: 1e-9,  # 2 cycles: 100 "in flight"
               "cg_fork_join_seconds": lambda n, t: 1e-6, "cg_fp_mix_rate": lambda n: 4e9}
    monkeypatch.setattr(measure, "_library", lambda isa: seconds)
    monkeypatch.setattr(measure, "_gather_rates", dict)
    model = measure.measure(TARGET.isa_row)
    for level in ("l2", "l3", "dram"):
        assert model[f"{level}_misses_in_flight"] == _OVERLAP_CHAINS, level


def test_a_slow_spell_at_the_start_does_not_set_the_core_rates(monkeypatch):
    """A neighbour on a shared VM's core slows it for a few hundred milliseconds at a time.
    Here every benchmark runs at half its rate or less (the loads most) until the cache
    levels have been streamed, the first half of a measurement's time: the in-core rates,
    sampled again after the cache levels and at the end, are still the unshared core's
    (two FMAs and three broadcast loads a cycle at 3 GHz). Taken back to back at the start,
    as they were until 0.4.13, all three repeats fell in the spell (1.33 FMAs a cycle
    measured on the 105 MiB-L3 Xeon class)."""
    from convgen.cpu import measure
    spell = {"on": True}

    def rate(quiet, shared):
        return lambda *args: shared if spell["on"] else quiet

    def chase(*args):   # the pointer chases come after the streams: the spell is over
        spell["on"] = False
        return 100e-9
    library = {"cg_clock_hz": rate(3e9, 1.5e9), "cg_fma_rate": rate(6e9, 2e9),
               "cg_broadcast_fma_rate": rate(6e9, 2e9), "cg_l2_tile_rate": rate(60e9, 30e9),
               "cg_fma_chain_seconds": rate(4e-9, 8e-9), "cg_fma_chain_rate": rate(3e9, 1e9),
               "cg_load_rate": rate(9e9, 2e9), "cg_stream_rate": rate(50e9, 25e9),
               "cg_load_latency": chase, "cg_overlapped_load_seconds": rate(10e-9, 20e-9),
               "cg_fork_join_seconds": rate(1e-6, 2e-6), "cg_fp_mix_rate": rate(9e9, 3e9)}
    monkeypatch.setattr(measure, "_library", lambda isa: library)
    monkeypatch.setattr(measure, "_gather_rates", dict)
    model = measure.measure(TARGET.isa_row)
    assert model["clock_hz"] == 3e9
    assert model["fma_per_cycle"] == 2.0 and model["broadcast_fma_per_cycle"] == 2.0
    assert model["loads_per_cycle"] == 3.0
    assert model["fp_ops_per_cycle"] == 3.0    # adds and FMAs mixed: sampled as the others


def test_the_gather_kernels_are_priced_at_their_measured_rates():
    """The scalar gather kernels cost their MACs at the rate measured for each (forward and
    transposed separately), per thread; a tiny layer's choice between them and a SIMD
    kernel moves with it."""
    import dataclasses

    from convgen.core.spec import ConvSpec, workload_of
    from convgen.cpu.cost import estimate
    from convgen.cpu.plan import Plan
    from convgen.target.machine import default_machine
    base = default_machine(TARGET.isa_row)
    forward, _ = workload_of(ConvSpec.conv(2, 16, 16, 3, padding=1), (1, 16, 16, 16), "float32")
    backward, _ = workload_of(ConvSpec.conv_transpose(2, 16, 16, 4, stride=2, padding=1),
                              (1, 16, 8, 8), "float32")
    gather = "oc_tile=1 pixel_tile=1 vector=1 loop_order=oc_outer threads=1"
    cases = ((forward, f"algorithm=direct {gather}", "gather_macs_per_s"),
             (backward, f"algorithm=transposed_gather {gather}", "transposed_gather_macs_per_s"))
    for workload, plan_text, field in cases:
        plan = Plan.parse(plan_text)
        slow = dataclasses.replace(base, **{field: 1e9})
        fast = dataclasses.replace(base, **{field: 4e9})
        other = next(f for f in ("gather_macs_per_s", "transposed_gather_macs_per_s")
                     if f != field)
        untouched = dataclasses.replace(slow, **{other: 1e6})
        at = {m: estimate(plan, workload, TARGET, m)[0] for m in (slow, fast, untouched)}
        assert at[slow] - at[fast] == pytest.approx(workload.macs * (1 / 1e9 - 1 / 4e9))
        assert at[untouched] == at[slow]


def test_the_gather_rates_are_measured_on_the_plain_build(private_cache, monkeypatch):
    """The stored model serves every process: a process under CONVGEN_SANITIZE=1 must not
    record the rates of its sanitizer builds."""
    import platform

    from convgen.cpu import measure
    from convgen.runtime import kernel as runtime_kernel
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the machine model is measured on x86-64 only")
    monkeypatch.setenv("CONVGEN_SANITIZE", "1")
    built = []
    real_kernel_for = runtime_kernel.kernel_for

    def recording(backend, kernel_class, workload, plan, target, *args, **kwargs):
        built.append((plan.algorithm, target.sanitize))
        return real_kernel_for(backend, kernel_class, workload, plan, target, *args, **kwargs)
    monkeypatch.setattr(runtime_kernel, "kernel_for", recording)
    rates = measure._gather_rates()
    assert built == [("direct", False), ("transposed_gather", False)]
    assert set(rates) == {"gather_macs_per_s", "transposed_gather_macs_per_s"}
    assert all(rate > 0 for rate in rates.values())


def test_a_users_kernel_is_not_the_one_the_gather_rate_timed(private_cache):
    """The machine model builds its gather kernels under a prefix of its own, so a user's
    request for the same layer and plan gets a kernel of the backend's (it can explain its
    plan)."""
    import platform

    import convgen
    from convgen.core.spec import ConvSpec
    from convgen.cpu import measure
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the machine model is measured on x86-64 only")
    measure._gather_rates()
    plan = "algorithm=direct oc_tile=1 pixel_tile=1 vector=1 loop_order=oc_outer threads=1"
    kernel = convgen.compile(ConvSpec.conv(2, 16, 16, 3, padding=1), (1, 16, 16, 16),
                             plan=plan)
    assert kernel.prefix != "cg_machine_gather"
    assert "scalar gather" in kernel.explain(top=50)


def test_a_measured_chain_table_is_stored_and_read_back(measured_here, private_cache):
    fake, calls = measured_here
    table = [0.25, 0.5, 0.75, 1.0, 1.2, 1.45, 1.5, 1.6, 1.85, 2.0, 2.0, 2.0]
    model = machine.current(TARGET, lambda isa: {**FAKE, "fma_chain_rates": table})
    assert model.fma_chain_rates == tuple(table)
    assert stored(private_cache)["fields"]["fma_chain_rates"] == table
    machine.forget()
    assert machine.current(TARGET, fake).fma_chain_rates == tuple(table) and not calls


def test_the_latency_bound_reads_the_measured_chain_rates():
    """chain_rate: the table's shape scaled to the FMA rate, never falling as chains are
    added, full past the table; without a table, chains over the latency."""
    import dataclasses

    from convgen.cpu.cost import chain_rate
    from convgen.target.machine import default_machine

    base = dataclasses.replace(default_machine(TARGET.isa_row), fma_per_cycle=2.0,
                               fma_latency=4.0)
    assert chain_rate(4, base) == 1.0 and chain_rate(8, base) == chain_rate(20, base) == 2.0
    table = dataclasses.replace(base, fma_chain_rates=(0.3, 0.5, 0.8, 1.0, 1.2, 1.4, 1.8,
                                                       1.6, 1.9, 2.2, 2.2, 2.2))
    assert chain_rate(8, table) == pytest.approx(2.0 * 1.8 / 2.2)   # as 7: never below fewer
    assert chain_rate(1, table) == pytest.approx(2.0 * 0.3 / 2.2)
    assert chain_rate(10, table) == chain_rate(28, table) == pytest.approx(2.0)


def test_the_planner_prices_a_tile_at_latency_x_throughput_chains_by_the_measurement():
    """pointwise_256_128 on AVX2 (16 registers): a 4 x 16 direct_simd tile has 8
    accumulators, the latency x throughput product of a two-FMA core, a 16 x 6
    implicit_gemm tile 12. With latency over chains alone the two price alike (the planner
    took the first: 0.38-0.41 ms measured against 0.34); with this Intel core's measured
    rates (8 chains issue 1.6 FMAs a cycle, 10 issue 2) the 8-accumulator tile costs more."""
    import dataclasses

    from convgen.core.spec import ConvSpec, workload_of
    from convgen.cpu.cost import estimate
    from convgen.cpu.plan import Plan
    from convgen.target.machine import default_machine

    target = get_target("x86-64-v3")
    # that core's caches (48 KiB L1d, 2 MiB L2), not the host's
    base = dataclasses.replace(default_machine(target.isa_row), l1d_bytes=48 << 10,
                               l2_bytes=2 << 20, l3_bytes=105 << 20)
    measured = dataclasses.replace(base, fma_chain_rates=(
        0.26, 0.5, 0.74, 0.98, 1.24, 1.46, 1.62, 1.68, 1.84, 1.96, 1.98, 1.98))
    workload, _ = workload_of(ConvSpec.conv(2, 256, 128, 1), (1, 256, 28, 28), "float32")
    direct = Plan.parse("algorithm=direct_simd oc_tile=4 pixel_tile=16 vector=8 "
                        "loop_order=pixel_outer threads=2")
    gemm = Plan.parse("algorithm=implicit_gemm oc_tile=16 pixel_tile=6 vector=8 "
                      "loop_order=pixel_outer threads=2")

    def cost(plan, model):
        return estimate(plan, workload, target, model)[0]

    assert cost(direct, base) == pytest.approx(cost(gemm, base), rel=0.05)
    assert cost(gemm, measured) == pytest.approx(cost(gemm, base), rel=0.01)
    assert cost(direct, measured) > 1.1 * cost(gemm, measured)


# AMD EPYC, family 26 (Zen 5), 2 cores of a VM: `convgen machine` on 2026-12-02
ZEN5 = {"clock_hz": 3.655e9, "fma_per_cycle": 2.0, "broadcast_fma_per_cycle": 1.83,
        "fma_latency": 4.0, "fma_chain_rates": [0.25, 0.5, 0.75, 1.0, 1.23, 1.5, 1.6, 1.99,
                                                1.99, 1.99, 1.99, 1.98, 1.99, 1.97, 1.97, 1.97],
        "fp_ops_per_cycle": 3.2, "loads_per_cycle": 1.95, "vector_load_cost": 0.98,
        "l1_bytes_per_cycle": 118.0, "l2_bytes_per_cycle": 62.7, "l2_tile_bytes_per_cycle": 46.4,
        "l3_bytes_per_cycle": 29.5, "dram_bytes_per_s": 30.8e9, "dram_total_bytes_per_s": 53.9e9,
        "l2_latency": 16.8, "l3_latency": 453.0, "dram_latency": 762.0,
        "l2_misses_in_flight": 9.75, "l3_misses_in_flight": 48.0, "dram_misses_in_flight": 26.8,
        "parallel_overhead_s": 1.2e-6}


@pytest.mark.skipif(TARGET.isa != "avx512", reason="the two classes compared are AVX-512 ones")
def test_winograd_s_transforms_are_priced_at_the_measured_add_and_fma_mix(measured_here,
                                                                        monkeypatch):
    """inception_3x3 of the public suite (96 -> 96, 3x3 at 35x35), 2 threads, on the AMD
    Zen 5 class as measured (two FMA units, 48 KiB L1d, 1 MiB L2) and on the same machine
    with the adds sharing the FMA units, as on Intel's cores: 2 adds and FMAs a cycle mixed
    against the 3.2 measured. The transforms cost less where the adds have pipes of their
    own, and there F(4,3) Winograd ranks first (0.38 ms against implicit GEMM's 0.47, head
    to head on Zen 5)."""
    from convgen.core.spec import ConvSpec, workload_of
    from convgen.cpu.cost import estimate
    from convgen.cpu.planner import choose
    from convgen.target import host
    from convgen.target import machine as target_machine

    workload, _ = workload_of(ConvSpec.conv(2, 96, 96, 3, padding=1), (1, 96, 35, 35),
                              "float32")
    monkeypatch.setattr(host, "caches", lambda: host.Caches(48 << 10, 1 << 20, 32 << 20))
    target_machine.default_machine.cache_clear()
    chosen, models = {}, {}
    for name, mix in (("shared", 2.0), ("own", 3.2)):
        identity = {**host.identity(), "cpu_model": f"test CPU, adds on {name} units"}
        monkeypatch.setattr(host, "identity", lambda identity=identity: identity)
        machine.forget()
        fields = {**ZEN5, "fp_ops_per_cycle": mix}
        models[name] = machine.current(TARGET, lambda isa, fields=fields: dict(fields))
        assert models[name].fp_ops_per_cycle == mix
        chosen[name] = choose(workload, TARGET, threads=2)
    target_machine.default_machine.cache_clear()
    assert not chosen["shared"].algorithm.startswith("winograd")
    assert chosen["own"].algorithm == "winograd4"
    for mine, other in (("shared", "own"), ("own", "shared")):
        assert estimate(chosen[mine], workload, TARGET, models[mine])[0] < \
            estimate(chosen[other], workload, TARGET, models[mine])[0]


def test_winograd_on_16_registers_keeps_the_calibrated_transform_rate():
    """On AVX2's 16 registers Winograd's transforms spill, and the rough count was
    calibrated there at 2 operations a cycle: a measured mix above 2 leaves the price as it
    was (Zen 5 capped to AVX2 measures 2.6-2.9, and priced so c64_35 moved to a Winograd
    plan that ran 1.10x implicit GEMM's time). On AVX-512's 32 the mix prices them."""
    import dataclasses

    from convgen.core.spec import ConvSpec, workload_of
    from convgen.cpu.cost import estimate
    from convgen.cpu.plan import Plan
    from convgen.target.machine import default_machine

    workload, _ = workload_of(ConvSpec.conv(2, 64, 64, 3, padding=1), (1, 64, 35, 35),
                              "float32")
    for name, vector, moves in (("x86-64-v3", 8, False), ("x86-64-v4", 16, True)):
        target = get_target(name)
        plan = Plan("winograd4", 4, 2 * vector, vector, "pixel_outer", 1)
        base = default_machine(target.isa_row)
        priced = [estimate(plan, workload, target,
                           dataclasses.replace(base, fp_ops_per_cycle=mix))[0]
                  for mix in (2.0, 3.2)]
        assert (priced[1] < priced[0]) == moves, name
