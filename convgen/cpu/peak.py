"""The machine's measured float32 FMA peak, from a generated micro-benchmark.

The benchmark table quotes every layer as a percentage of this number, so it is
measured on the machine (same compiler, same flags, same threads), not looked up.
"""
from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable

from .._version import __version__
from ..core.codegen import environment
from ..runtime import cache, loader
from ..target import cpu_target
from .compile import compile_shared, compiler_identity, flags

_NAME = "convgen_fma_peak"
loader.declare_type("cg_peak_fn", "typedef double (*cg_peak_fn)(long iterations, int threads);")


def _library():
    target = cpu_target("cpu")
    vector = max(1, target.vector_bytes // 4)
    # independent FMA chains, as many as leave registers for the operands: the latency x
    # throughput product is 8 on a two-FMA core, and 8 chains in 16 registers fell short
    chains = target.isa_row.registers - 4
    source = environment().get_template("bench/fma_peak.c.j2").render(
        version=__version__, vector=vector, chains=chains)
    parts = {"convgen": __version__, "bench": "fma_peak", "target": target.name,
             "features": target.cpu_features, "compiler": compiler_identity(),
             "flags": flags(target), "source_sha256": hashlib.sha256(source.encode()).hexdigest()}
    key = cache.key_of(parts)
    library = cache.get_or_build(key, (("fma_peak.c", source),),
                                 lambda paths, lib: compile_shared(paths, lib, target), parts)
    (symbol,) = loader.load(library, (_NAME,))
    return loader.function(symbol, "cg_peak_fn")


def fma_peak_gflops(threads: int, iterations: int = 20_000_000, repeats: int = 5) -> float:
    """The median of ``repeats`` runs of ``threads`` threads each doing ``iterations`` rounds.
    (The best of them, as before, let one fast run set the scale: on the Intel VM 15 runs
    spread over 325-358 GFLOP/s on 2 threads, and one table's best was 401.)"""
    run = _library()
    run(1000, threads)   # wake the threads
    return statistics.median(run(iterations, threads) for _ in range(repeats))


def fma_peak_probe(threads: int, seconds: float = 1e-3) -> Callable[[], float]:
    """A short run of the peak benchmark, about ``seconds`` long, as a function that returns
    its GFLOP/s. bench/compare.py interleaves it with a layer's timed calls, so that the
    layer's share of the peak is against the peak the machine had meanwhile: a shared VM's
    moved from 212 to 301 GFLOP/s on 2 threads within a minute, its kernels with it."""
    run = _library()
    run(1000, threads)   # wake the threads
    probe = 100_000
    start = time.perf_counter()
    run(probe, threads)
    iterations = max(1000, round(probe * seconds / (time.perf_counter() - start)))
    return lambda: run(iterations, threads)
