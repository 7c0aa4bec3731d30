"""Load a verified shared library into this process and look up one function.

Kept apart from the kernel so how native code gets mapped (temp copy, flags, fallbacks)
is one module's job.
"""
from __future__ import annotations

import os
import tempfile
import threading

import cffi

FFI = cffi.FFI()
_DECLARED: set[str] = set()
_LOCK = threading.Lock()


def declare(signature: str, name: str) -> None:
    """cdef a function once per process (cffi refuses a second identical cdef of a name)."""
    with _LOCK:
        if name not in _DECLARED:
            FFI.cdef(signature)
            _DECLARED.add(name)


def load(library: bytes, names: tuple[str, ...]):
    """dlopen a private copy of verified library bytes, then unlink it (the mapping stays).

    Loading a copy means nothing done to the cache file later -- rewritten, truncated,
    replaced -- can change or crash a kernel this process has loaded. RTLD_NODELETE keeps
    it (and the OpenMP runtime it links) mapped until the process ends: unloading libgomp
    at exit while its worker threads still spin would crash the interpreter.
    Returns the functions named, in order (each must have been declared).
    """
    fd, path = tempfile.mkstemp(prefix="convgen-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(library)
        handle = FFI.dlopen(path, FFI.RTLD_NOW | FFI.RTLD_NODELETE)
    finally:
        os.unlink(path)
    return tuple(getattr(handle, name) for name in names)
