"""How many threads a kernel runs with by default."""
from __future__ import annotations

import os
import warnings

from ..target import host


def default_threads() -> int:
    """CONVGEN_NUM_THREADS, else every core this process may run on.

    More threads than cores is allowed (the user asked) but warned about: OpenMP threads
    that share a core wait on each other at every barrier.
    """
    env = os.environ.get("CONVGEN_NUM_THREADS", "").strip()
    cores = host.usable_cores()
    if not env:
        return cores
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"CONVGEN_NUM_THREADS must be a positive integer, got {env!r}")
    if int(env) > cores:
        _warn_oversubscribed(int(env), cores)
    return int(env)


_WARNED: set[tuple[int, int]] = set()


def _warn_oversubscribed(threads: int, cores: int) -> None:
    if (threads, cores) not in _WARNED:
        _WARNED.add((threads, cores))
        warnings.warn(f"CONVGEN_NUM_THREADS={threads} exceeds the {cores} core(s) this process "
                      f"may run on: the kernels will oversubscribe them and run slower; set it "
                      f"to {cores} or less", RuntimeWarning, stacklevel=3)
