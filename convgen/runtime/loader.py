"""Load a verified shared library into this process and look up its symbols.

Kept apart from the kernels so how native code gets mapped (memfd, temp copy, flags,
fallbacks) is one module's job. Libraries are opened with the C library's own ``dlopen``
and symbols found with ``dlsym``, so a kernel's exported names (each with its own prefix)
need no per-name declaration: the caller casts a symbol to its function type
(``function``), declared once per type.

The bytes are mapped from a private copy, so nothing done to the cache file later --
rewritten, truncated, replaced -- can change or crash a loaded kernel. Where that copy
lives is tried in order, because each place fails somewhere:

1. an anonymous memory file (``memfd_create``), opened as ``/proc/self/fd/N``: needs no
   directory at all, so it works where /tmp is mounted noexec or $HOME is read-only;
2. a private 0700 directory under the cache root (``load/``), which holds kernels anyway;
3. a private directory under TMPDIR.

dlopen identifies a library it has loaded by the path string first: a second dlopen of
the same string returns the first library, whatever the file now holds. fd numbers are
reused, so every path we hand to dlopen is made unique in this process (see
``_unique_fd_path``), or the second kernel loaded would silently run the first one's code.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import threading
from pathlib import Path

import cffi

from .cache import check_private, checked_root

FFI = cffi.FFI()
FFI.cdef("void *dlopen(const char *file, int mode); void *dlsym(void *handle, const char *name);"
         " char *dlerror(void);")
_DL = FFI.dlopen(None)   # the C library (glibc 2.34 and later has dlopen in libc itself)
if not hasattr(_DL, "dlsym"):   # pragma: no cover - older glibc keeps it in libdl
    _DL = FFI.dlopen("libdl.so.2")
_TYPES: set[str] = set()
_LOCK = threading.Lock()
_SERIAL = itertools.count(1)   # makes every path given to dlopen unique in this process
# RTLD_NODELETE keeps each kernel (and the OpenMP runtime it links) mapped until the
# process ends: unloading libgomp at exit while its worker threads still spin would crash.
_FLAGS = FFI.RTLD_NOW | FFI.RTLD_NODELETE


class LoadError(OSError):
    """No way of mapping a compiled kernel worked; the message lists each attempt."""


def declare_type(name: str, declaration: str) -> None:
    """cdef a function-pointer typedef once per process (``typedef int (*NAME)(...);``)."""
    with _LOCK:
        if name not in _TYPES:
            FFI.cdef(declaration)
            _TYPES.add(name)


def function(symbol, type_name: str):
    """A symbol's address as a callable of a declared function-pointer type."""
    return FFI.cast(type_name, symbol)


def load(library: bytes, names: tuple[str, ...]):
    """dlopen a private copy of verified library bytes; return the addresses of the symbols
    named, in order (``function`` makes them callable). A missing symbol is a LoadError.

    Tries each way of mapping in turn (module docstring).
    """
    failures = []
    for method, where in ((_load_from_memfd, "from an anonymous memory file (memfd)"),
                          (_load_from_cache_dir, "from a private directory in the cache"),
                          (_load_from_tmpdir, "from a private directory under TMPDIR")):
        try:
            handle = method(library)
        except (OSError, AttributeError) as exc:   # AttributeError: no os.memfd_create here
            failures.append(f"{where}: {exc}")
            continue
        return tuple(_symbol(handle, name) for name in names)
    raise LoadError("convgen could not load a compiled kernel:\n  " + "\n  ".join(failures))


def _dlopen(path: str):
    handle = _DL.dlopen(path.encode(), _FLAGS)
    if handle == FFI.NULL:
        raise OSError(f"dlopen {path}: {_dlerror()}")
    return handle


def _symbol(handle, name: str):
    _DL.dlerror()   # clear
    address = _DL.dlsym(handle, name.encode())
    if address == FFI.NULL:
        raise LoadError(f"the compiled library has no symbol {name!r}: {_dlerror()}")
    return address


def _dlerror() -> str:
    text = _DL.dlerror()
    return FFI.string(text).decode(errors="replace") if text != FFI.NULL else "unknown error"


def _load_from_memfd(library: bytes):
    fd = os.memfd_create("convgen-kernel", os.MFD_CLOEXEC)
    try:
        _write_all(fd, library)
        return _dlopen(_unique_fd_path(fd, next(_SERIAL)))
    finally:
        os.close(fd)   # the mapping keeps the memory alive


def _unique_fd_path(fd: int, serial: int) -> str:
    """``/proc/self/fd/N``, spelled differently for every serial number.

    Each bit of ``serial`` adds an empty path component ("//") or a "." one ("/./")
    before N: the kernel resolves every spelling to the same fd, and dlopen, which
    compares strings, sees a name it has never loaded.
    """
    bits = "".join("/." if bit == "1" else "/" for bit in format(serial, "b"))
    return f"/proc/self/fd{bits}/{fd}"


def _load_from_cache_dir(library: bytes):
    directory = checked_root() / "load"
    directory.mkdir(mode=0o700, exist_ok=True)
    check_private(directory, follow_symlinks=False)
    return _load_copy(library, directory)


def _load_from_tmpdir(library: bytes):
    directory = Path(tempfile.mkdtemp(prefix="convgen-load-"))   # 0700, new every time
    try:
        return _load_copy(library, directory)
    finally:
        os.rmdir(directory)


def _load_copy(library: bytes, directory: Path):
    # mkstemp names are unique among existing files; the serial keeps them unique among
    # the files this process has loaded and unlinked already.
    fd, path = tempfile.mkstemp(prefix=f"convgen-{os.getpid()}-{next(_SERIAL)}-",
                                suffix=".so", dir=directory)
    try:
        _write_all(fd, library)
        os.close(fd)
        fd = -1
        return _dlopen(path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
