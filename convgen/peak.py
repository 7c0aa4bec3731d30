"""The machine's measured float32 FMA peak, from a generated micro-benchmark.

The benchmark table quotes every layer as a percentage of this number, so it is
measured on the machine (same compiler, same flags, same threads), not looked up.
"""
from __future__ import annotations

import hashlib

from . import __version__, cache, loader
from .compiler import compile_shared, compiler_identity, flags
from .render import environment
from .target import get_target

_NAME = "convgen_fma_peak"


def _library():
    target = get_target("cpu")
    vector = target.vector_bytes // 4
    chains = 16 if target.isa == "avx512" else 12
    source = environment().get_template("bench/fma_peak.c.j2").render(
        version=__version__, vector=vector, chains=chains)
    parts = {"convgen": __version__, "bench": "fma_peak", "target": target.name,
             "features": target.cpu_features, "compiler": compiler_identity(),
             "flags": flags(target), "source_sha256": hashlib.sha256(source.encode()).hexdigest()}
    key = cache.key_of(parts)
    library = cache.get_or_build(key, source, lambda src, lib: compile_shared(src, lib, target),
                                 parts)
    loader.declare(f"double {_NAME}(long iterations, int threads);", _NAME)
    (function,) = loader.load(library, (_NAME,))
    return function


def fma_peak_gflops(threads: int, iterations: int = 20_000_000, repeats: int = 5) -> float:
    """The best of ``repeats`` runs of ``threads`` threads each doing ``iterations`` rounds."""
    run = _library()
    run(1000, threads)   # wake the threads
    return max(run(iterations, threads) for _ in range(repeats))
