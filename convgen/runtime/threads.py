"""How many threads a kernel runs with by default, and what convgen did about OpenMP
(``threading_status``, public as ``convgen.threading_status()``)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from ..target import host
from . import openmp


def default_threads() -> int:
    """CONVGEN_NUM_THREADS, else every core this process may run on.

    More threads than cores is allowed (the user asked) but warned about: OpenMP threads
    that share a core wait on each other at every barrier.
    """
    threads, source = _requested()
    cores = host.usable_cores()
    if source == "CONVGEN_NUM_THREADS" and threads > cores:
        _warn_oversubscribed(threads, cores)
    return threads


def _requested() -> tuple[int, str]:
    """(threads, where the number came from)."""
    env = os.environ.get("CONVGEN_NUM_THREADS", "").strip()
    if not env:
        return host.usable_cores(), "usable cores"
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"CONVGEN_NUM_THREADS must be a positive integer, got {env!r}")
    return int(env), "CONVGEN_NUM_THREADS"


_WARNED: set[tuple[int, int]] = set()


def _warn_oversubscribed(threads: int, cores: int) -> None:
    if (threads, cores) not in _WARNED:
        _WARNED.add((threads, cores))
        warnings.warn(f"CONVGEN_NUM_THREADS={threads} exceeds the {cores} core(s) this process "
                      f"may run on: the kernels will oversubscribe them and run slower; set it "
                      f"to {cores} or less", RuntimeWarning, stacklevel=3)


@dataclass(frozen=True)
class ThreadingStatus:
    """How convgen's CPU kernels use threads in this process.

    ``threads``: the OpenMP threads a kernel compiled now plans for (layers too small to
    share run on one); ``source``: "CONVGEN_NUM_THREADS" or "usable cores";
    ``usable_cores``: the cores this process may run on (its affinity mask);
    ``openmp``: what convgen did to OpenMP's wait policy at import -- "GOMP_SPINCOUNT=3000000"
    (idle workers spin longer, so calls in quick succession do not wait for them to wake),
    "user settings kept" (OMP_WAIT_POLICY or GOMP_SPINCOUNT was set), or that an OpenMP
    runtime (torch's, say) was already loaded, so nothing could be changed;
    ``wait_policy`` and ``spin_count``: OMP_WAIT_POLICY and GOMP_SPINCOUNT as set now.
    """

    threads: int
    source: str
    usable_cores: int
    openmp: str
    wait_policy: str | None
    spin_count: str | None

    @property
    def oversubscribed(self) -> bool:
        return self.threads > self.usable_cores

    def __str__(self) -> str:
        note = "  (more threads than cores: slower)" if self.oversubscribed else ""
        return (f"threads: {self.threads} (from {self.source}){note}\n"
                f"usable cores: {self.usable_cores}\n"
                f"OpenMP, at import: {self.openmp}\n"
                f"OMP_WAIT_POLICY={self.wait_policy} GOMP_SPINCOUNT={self.spin_count}")


def threading_status() -> ThreadingStatus:
    """The thread count kernels use, the usable cores, and what convgen did to OpenMP."""
    threads, source = _requested()
    return ThreadingStatus(threads, source, host.usable_cores(), openmp.STATUS,
                           os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
