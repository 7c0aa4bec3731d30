"""Measuring this machine for the cost model: generated micro-benchmarks, run once.

``measure(isa)`` compiles ``templates/bench/machine.c.j2`` for the host ISA (through the
kernel cache, like any kernel) and times, on one core: the clock (a chain of dependent
integer adds: one per cycle on every x86-64 core), full-width FMA throughput and latency,
the FMA rate of 1, 2, ... independent chains, the rate of adds and FMAs mixed, broadcast
and vector load throughput from L1, and the bytes per cycle one core streams from L1, L2,
L3 and DRAM, plus DRAM with every core reading, and the latency of a load no prefetcher
saw coming from L2, L3 and DRAM (a pointer chase) and how many of them one core overlaps;
with every core, what a parallel region (one fork/join of the thread team, workers awake)
costs; and the rate of the two scalar gather kernels as generated (each compiled for a
reference layer). About a second in all.
Returns None where it cannot measure (not x86-64, no compiler): the model then keeps the
ISA row's defaults.
"""
from __future__ import annotations

import hashlib
import platform
import time

from .._version import __version__
from ..core.codegen import environment
from ..core.toolchain import CompileError
from ..runtime import cache, loader
from ..target import cpu_target, host
from ..target.isa import Isa
from .compile import compile_shared, compiler_identity, flags

loader.declare_type("cg_rate_fn", "typedef double (*cg_rate_fn)(long iterations);")
loader.declare_type("cg_load_fn", "typedef double (*cg_load_fn)(long iterations, int b);")
loader.declare_type("cg_tile_fn", "typedef double (*cg_tile_fn)(long n, size_t steps);")
loader.declare_type("cg_latency_fn", "typedef double (*cg_latency_fn)(size_t bytes, long n);")
loader.declare_type("cg_fork_join_fn", "typedef double (*cg_fork_join_fn)(long n, int threads);")
loader.declare_type("cg_stream_fn",
                    "typedef double (*cg_stream_fn)(size_t bytes, int sweeps, int threads);")
_FUNCTIONS = {"cg_clock_hz": "cg_rate_fn", "cg_fma_rate": "cg_rate_fn",
              "cg_fp_mix_rate": "cg_rate_fn",
              "cg_broadcast_fma_rate": "cg_rate_fn", "cg_l2_tile_rate": "cg_tile_fn",
              "cg_fma_chain_seconds": "cg_rate_fn", "cg_fma_chain_rate": "cg_load_fn",
              "cg_load_rate": "cg_load_fn",
              "cg_stream_rate": "cg_stream_fn", "cg_load_latency": "cg_latency_fn",
              "cg_overlapped_load_seconds": "cg_latency_fn",
              "cg_fork_join_seconds": "cg_fork_join_fn"}


# Chains the misses-in-flight benchmark walks at once: more than any x86-64 core keeps in
# flight, and so the most misses it can show overlapped.
_OVERLAP_CHAINS = 48


def _library(isa: Isa) -> dict:
    target = cpu_target("cpu")
    source = environment().get_template("bench/machine.c.j2").render(
        version=__version__, isa=isa.name, vector_bytes=isa.vector_bytes,
        chains=isa.registers - 4, chain_table=_chain_table(isa), overlap_chains=_OVERLAP_CHAINS,
        mix_chains=min(8, (isa.registers - 2) // 2),
        bcast_rows=min(16, isa.registers - 4), bcast="vbroadcastss",
        reg="zmm" if isa.vector_bytes == 64 else "ymm")
    parts = {"convgen": __version__, "bench": "machine", "target": target.name,
             "features": target.cpu_features, "compiler": compiler_identity(),
             "flags": flags(target), "source_sha256": hashlib.sha256(source.encode()).hexdigest()}
    binary = cache.get_or_build(cache.key_of(parts), (("machine.c", source),),
                                lambda paths, lib: compile_shared(paths, lib, target), parts)
    symbols = loader.load(binary, tuple(_FUNCTIONS))
    return {name: loader.function(sym, _FUNCTIONS[name])
            for name, sym in zip(_FUNCTIONS, symbols)}


def _best(run, repeats: int = 3) -> float:
    return max(run() for _ in range(repeats))


class _CoreRates:
    """The in-core rates (the clock, FMA and load throughput), each the best of several
    rounds taken at different moments of the measurement. A neighbour on a shared VM's
    core slows them for a few hundred milliseconds at a time, so repeats back to back all
    land in the same slow spell: on the 105 MiB-L3 Xeon class, five models measured a
    minute apart read 1.33 to 1.77 full-width FMAs per cycle, and the 1.33 one planned
    inception_3x3 differently from the other four."""

    def __init__(self, f: dict):
        self._runs = {"clock": lambda: f["cg_clock_hz"](2_000_000),
                      "fma": lambda: f["cg_fma_rate"](400_000),
                      "fp_mix": lambda: f["cg_fp_mix_rate"](200_000),
                      "broadcast_fma": lambda: f["cg_broadcast_fma_rate"](4_000),
                      "broadcasts": lambda: f["cg_load_rate"](400_000, 1),
                      "vectors": lambda: f["cg_load_rate"](400_000, 0)}
        self.best = dict.fromkeys(self._runs, 0.0)

    def sample(self) -> None:
        """One round of every rate; each keeps its best so far."""
        for name, run in self._runs.items():
            self.best[name] = max(self.best[name], run())


def measure(isa: Isa) -> dict | None:
    """The measured constants of the machine model (``target.machine.Machine`` fields), or
    None where this host cannot be measured."""
    if platform.machine() not in ("x86_64", "AMD64") or isa.vector_bytes < 32:
        return None
    try:
        f = _library(isa)
    except (CompileError, OSError):
        return None
    started = time.perf_counter()
    core = _CoreRates(f)
    core.sample()    # three rounds: here, after the cache levels, at the end
    caches = host.caches()
    # the L3 a VM reports is often the whole socket's, shared with other guests: read a
    # slice of it, and beyond it as much as a second allows
    levels = {"l1": caches.l1d_bytes // 2, "l2": caches.l2_bytes // 2,
              "l3": max(caches.l2_bytes * 2, min(caches.l3_bytes // 8, 16 << 20)),
              "dram": 128 << 20}
    sweeps = {"l1": 4000, "l2": 100, "l3": 6, "dram": 1}
    # a tile's operands from L2 (x 8 pixels and w one vector per step, ~1/4 of L2 together)
    tile_steps = max(256, caches.l2_bytes // 4 // ((8 + isa.vector_bytes // 4) * 4))
    l2_tile = _best(lambda: f["cg_l2_tile_rate"](max(1, 2_000_000 // tile_steps), tile_steps), 2)
    rates = {level: _best(lambda b=size, s=sweeps[level]: f["cg_stream_rate"](b, s, 1),
                          1 if level == "dram" else 2)
             for level, size in levels.items()}
    all_cores = f["cg_stream_rate"](levels["dram"], 1, host.usable_cores())
    core.sample()
    # latency buffers small enough that TLB misses do not dominate, L3's large enough that
    # few of its lines hit in L2 (Intel Xeon, 2 MiB L2: a 4 MiB buffer measured 300 cycles
    # and 28-38 misses in flight, 16 MiB 400 cycles and 13, as 32 and 64 MiB did)
    chase_bytes = {"l2": levels["l2"],
                   "l3": max(4 << 20, min(8 * caches.l2_bytes, caches.l3_bytes // 2)),
                   "dram": 64 << 20}
    # (DRAM's once: building and walking its 64 MB cycle takes 0.2 s)
    chase = {level: min(f["cg_load_latency"](size, 30_000)
                        for _ in range(1 if level == "dram" else 2))
             for level, size in chase_bytes.items()}   # seconds, in cycles below
    # misses in flight: a level's latency over the time per line of many chains walked
    # through the same buffer at once (DRAM's once: building its 64 MB cycle is most of it)
    overlapped = {level: min(f["cg_overlapped_load_seconds"](size, 2_000)
                             for _ in range(1 if level == "dram" else 2))
                  for level, size in chase_bytes.items()}
    # (the two are timed apart: a neighbour that slows one and not the other can push the
    # ratio past the chains walked, which no core overlaps more of)
    in_flight = {f"{level}_misses_in_flight": min(_OVERLAP_CHAINS, chase[level] / seconds)
                 for level, seconds in overlapped.items() if seconds > 0}
    team = {}
    if host.usable_cores() > 1:   # one core: no team to fork (the model's default stays)
        team["parallel_overhead_s"] = min(
            f["cg_fork_join_seconds"](2_000, host.usable_cores()) for _ in range(3))
    core.sample()
    clock = core.best["clock"]
    # (per cycle of the best clock seen: a rate and the clock from different rounds are
    # both the unshared core's)
    fma, broadcast_fma = core.best["fma"] / clock, core.best["broadcast_fma"] / clock
    broadcasts, vectors = core.best["broadcasts"] / clock, core.best["vectors"] / clock
    latency = min(f["cg_fma_chain_seconds"](500_000) for _ in range(3)) * clock
    chain_rates = _chain_rates(f["cg_fma_chain_rate"], _chain_table(isa), clock)
    return {**team, **in_flight, **_gather_rates(), "clock_hz": clock, "fma_per_cycle": fma,
            "fma_latency": latency, "fma_chain_rates": chain_rates,
            "broadcast_fma_per_cycle": broadcast_fma, "l2_tile_bytes_per_cycle": l2_tile / clock,
            "fp_ops_per_cycle": core.best["fp_mix"] / clock,
            "loads_per_cycle": broadcasts, "vector_load_cost": broadcasts / vectors,
            "l1_bytes_per_cycle": rates["l1"] / clock, "l2_bytes_per_cycle": rates["l2"] / clock,
            "l3_bytes_per_cycle": rates["l3"] / clock, "dram_bytes_per_s": rates["dram"],
            "dram_total_bytes_per_s": all_cores,
            "l2_latency": chase["l2"] * clock, "l3_latency": chase["l3"] * clock,
            "dram_latency": chase["dram"] * clock,
            "measure_seconds": time.perf_counter() - started}


def _chain_table(isa: Isa) -> int:
    """Chain counts the FMA chain table measures: 1 to this (past 16 chains every core
    measured issues at its full rate)."""
    return min(16, isa.registers - 4)


def _chain_rates(run, most: int, clock: float, rounds: int = 5) -> list[float]:
    """FMAs per cycle of 1 to ``most`` independent chains, each the best of ``rounds``
    rounds over every count (a clock that shifts mid-way shifts every count alike)."""
    best = [0.0] * most
    for _ in range(rounds):
        for n in range(1, most + 1):
            best[n - 1] = max(best[n - 1], run(1_200_000 // n, n) / clock)
    return best


# The scalar gather kernels (the exact fallback) are no micro-benchmark's loop: each is timed
# as it is generated, on one thread, on a reference layer of a few hundred thousand MACs:
# field -> (algorithm, transposed, input shape; 16 -> 16 channels, 2-D).
_GATHER_REFERENCES = {"gather_macs_per_s": ("direct", False, (1, 16, 16, 16)),
                      "transposed_gather_macs_per_s": ("transposed_gather", True, (1, 16, 8, 8))}


def _gather_rates() -> dict:
    """MACs per second of each gather kernel on one thread; a rate that cannot be measured
    (no compiler) is left out, and the model keeps its default."""
    rates = {}
    for field, (algorithm, transposed, shape) in _GATHER_REFERENCES.items():
        try:
            rates[field] = _gather_rate(algorithm, transposed, shape)
        except (CompileError, OSError):
            continue
    return rates


def _gather_rate(algorithm: str, transposed: bool, shape: tuple[int, ...]) -> float:
    import numpy as np

    from ..core.spec import ConvSpec, workload_of
    from ..runtime.kernel import kernel_for
    from .build import BUILD
    from .canonical import planned
    from .kernel import Kernel
    from .plan import Plan, check_plan
    spec = (ConvSpec.conv_transpose(2, 16, 16, 4, stride=2, padding=1) if transposed
            else ConvSpec.conv(2, 16, 16, 3, padding=1))
    workload, _ = workload_of(spec, shape, "float32")
    # the plain build, whatever CONVGEN_SANITIZE says (the model is stored for every process)
    target = cpu_target("cpu")
    plan = Plan.parse(f"algorithm={algorithm} oc_tile=1 pixel_tile=1 vector=1 "
                      f"loop_order=oc_outer threads=1")
    check_plan(plan, planned(workload), target)
    # built as any kernel is, under a prefix of its own: not the kernel a user's request
    # for this layer and plan would get (that one can explain() its plan; this one cannot)
    kernel = kernel_for(BUILD, Kernel, workload, plan, target, prefix="cg_machine_gather")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    packed = kernel.prepack(rng.standard_normal(
        (16, 16, *spec.kernel_size)).astype(np.float32))
    bias, out = np.zeros(16, np.float32), np.empty(kernel.output_shape, np.float32)
    kernel(x, packed, bias, out=out)   # warm: pages touched, code in cache
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        kernel(x, packed, bias, out=out)
        seconds.append(time.perf_counter() - started)
    return kernel.workload.macs / min(seconds)
