"""The jobs worker processes run: compile a candidate into the kernel cache, make the data.

``build`` renders and compiles a plan through the same steps as ``runtime.pipeline``
(generate -> key -> compile-once disk cache), without loading the library: a kernel that
would crash on loading must crash the measurement child, not a compile worker. Workers on
other machines (Dask) return the library's bytes too (``ship=True``), and the measuring
worker installs them in its own cache under the same key (``install``).
"""
from __future__ import annotations

import signal
import time

from ..backends import backend_for
from ..core.spec import Workload
from ..core.toolchain import CompileError
from ..runtime import cache, pipeline


def ignore_interrupts() -> None:
    """Pool initializer: Ctrl-C is for the tuner; its workers (and their compilers) go on
    until the tuner shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build(workload: Workload, plan, target, ship: bool = False) -> dict:
    """Compile ``plan`` into the cache. A dict: status ("ok" or "compile_error"), error,
    compile_s, and with ``ship`` what ``install`` needs on another machine."""
    start = time.perf_counter()
    backend = backend_for(target)
    try:
        _, sources, parts = pipeline.generate(backend, workload, plan, target)
        key = cache.key_of(parts)
        library = cache.get_or_build(key, sources,
                                     lambda paths, lib: backend.build(paths, lib, target), parts)
    except CompileError as exc:
        return {"status": "compile_error", "error": _first_lines(exc.compiler_output)
                or str(exc), "compile_s": time.perf_counter() - start}
    except Exception as exc:   # rendering refused the plan, the cache could not write ...
        return {"status": "compile_error", "error": f"{type(exc).__name__}: {exc}",
                "compile_s": time.perf_counter() - start}
    result = {"status": "ok", "key": key, "compile_s": time.perf_counter() - start}
    if ship:
        result.update(sources=sources, parts=parts, library=library)
    return result


def install(built: dict) -> None:
    """Put a library built elsewhere into this machine's cache (a no-op where it is)."""
    def write(paths, library_path):
        library_path.write_bytes(built["library"])
    cache.get_or_build(built["key"], built["sources"], write, built["parts"])


def _first_lines(text: str, limit: int = 600) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines
    return " | ".join(errors[:4])[:limit]


def make_data_files(workload: Workload, seed: int, directory: str) -> str:
    """The layer's input, weights and float64 reference, saved for the measurement child."""
    from pathlib import Path

    from .measure import make_data, save_data
    save_data(make_data(workload, seed), Path(directory))
    return directory
