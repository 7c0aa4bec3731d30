"""A precompiled <immintrin.h> for gcc, kept in the cache directory.

gcc takes about 0.1 s to parse <immintrin.h>: a third to a half of compiling a typical
kernel (0.17-0.3 s on a 2026 Xeon), and the whole of what a tuning sweep or the test
suite can win on its compiles. A kernel whose sources include it is compiled with
``-include <pch>/cg_immintrin.h``; gcc loads ``cg_immintrin.h.gch`` beside it, and the
kernel's own include then finds the header's guard set. The library is the same byte for
byte (tests/test_pch.py; a build with debug info takes none, as its debug info would
record the PCH's), so the PCH is in no kernel's key. It has a key of its own, the
compiler and the exact flags: gcc uses a PCH only where the flags agree with the ones it
was built with, and otherwise parses the header as if none were there.

A PCH is 20-30 MB. The cache keeps the ``KEEP`` most recently used ones, outside its size
cap (``CONVGEN_CACHE_MAX_BYTES`` bounds the kernels), and builds none where that cap is
under ``MIN_CAP_BYTES``: a user who keeps the cache that small wants the disk more than
the 0.1 s.

The first compile that wants a PCH does not wait for it: it starts the build (0.4 s) in a
thread and compiles without, as every compile does until the PCH is there. Anything wrong
with the PCH costs speed, never a kernel: if it cannot be built the kernels compile
without it, and a compile that fails with it is retried without it (and the PCH
removed) before any error reaches the caller.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from .._version import __version__
from ..core import toolchain
from ..core.codegen import environment
from ..runtime import cache

HEADER_NAME = "cg_immintrin.h"
KEEP = 4                          # PCHs kept: one per compiler and flag set in use
MIN_CAP_BYTES = 256 << 20
_INCLUDES_IT = re.compile(r"^[ \t]*#[ \t]*include[ \t]*<immintrin\.h>", re.MULTILINE)
_VERIFIED: dict[Path, tuple[int, int]] = {}   # a .gch checked this process: (size, mtime)
_BUILDS: dict[Path, threading.Thread] = {}     # the PCH builds this process started
_BUILDS_LOCK = threading.Lock()


def include_args(source: str, compiler: str, flags: tuple[str, ...]) -> tuple[str, ...]:
    """The options that make ``compiler`` read the PCH for a kernel of text ``source``:
    none where it is not gcc, the source does not include <immintrin.h>, the build keeps
    debug info, or the PCH cannot be had."""
    cap = cache.max_bytes()
    if not _INCLUDES_IT.search(source) or (cap is not None and cap < MIN_CAP_BYTES):
        return ()
    if "-g" in flags:   # debug info (the sanitizer builds') would record the PCH's own
        return ()
    if not is_gcc(compiler):
        return ()
    try:
        header = _ensure(compiler, flags)
    except OSError:
        return ()
    return ("-include", str(header)) if header else ()


def is_gcc(compiler: str) -> bool:
    version = toolchain.version_of(compiler)
    return "Free Software Foundation" in version and "clang" not in version.lower()


def forget(header: str | Path) -> None:
    """Remove the PCH of ``header`` (one that a compile failed with)."""
    directory = Path(header).parent
    _VERIFIED.pop(directory / f"{HEADER_NAME}.gch", None)
    cache.remove(directory)


def wait() -> None:
    """Wait for the PCH builds this process started (the interpreter also waits for them
    at exit, so that a short-lived process still leaves its PCH for the next)."""
    with _BUILDS_LOCK:
        running = list(_BUILDS.values())
    for thread in running:
        thread.join()


def _ensure(compiler: str, flags: tuple[str, ...]) -> Path | None:
    """The PCH's header; None while it is missing or damaged, its build then started in the
    background (0.4 s: the compile that finds it missing does not wait for it)."""
    text = _header_text()
    parts = {"convgen": __version__, "compiler": toolchain.identity(compiler),
             "flags": list(flags), "header": text,
             "native": list(toolchain.native_expansion(compiler, flags))}
    final = cache.checked_root() / "pch" / cache.key_of(parts)[:32]
    if not (final.exists() and _intact(final)):
        _start_build(final, text, compiler, flags, parts)
        return None
    cache.mark_used(final)
    return final / HEADER_NAME


def _start_build(final: Path, *args) -> None:
    """One build per PCH at a time in this process, in a thread of its own (not a daemon:
    the interpreter finishes it before exiting)."""
    with _BUILDS_LOCK:
        running = _BUILDS.get(final)
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=_build_quietly, args=(final, *args),
                                  name="convgen-pch")
        _BUILDS[final] = thread
        thread.start()


def _build_quietly(final: Path, *args) -> None:
    try:
        _build(final, *args)
        _prune(final.parent)
    except (OSError, toolchain.CompileError):
        pass   # kernels compile without it; the next one that finds it missing tries again


def _build(final: Path, text: str, compiler: str, flags: tuple[str, ...],
           parts: dict) -> None:
    """Build in a private temp directory and rename it into place: no compile ever sees a
    half-written PCH, and of two processes building at once the first to finish wins."""
    tmp = Path(tempfile.mkdtemp(prefix="pch-", dir=final.parent.parent / "tmp"))
    try:
        header = tmp / HEADER_NAME
        header.write_text(text)
        command = [compiler, *flags, "-x", "c-header", str(header), "-o", f"{header}.gch"]
        toolchain.run_compiler(command, header)
        meta = {"gch_sha256": cache.file_sha256(Path(f"{header}.gch")), "parts": parts}
        (tmp / cache.META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path) -> None:
    """Keep the KEEP most recently used PCHs (another compiler, an old convgen, a target
    no longer built for: theirs go)."""
    for stale in sorted(cache.live_dirs(root), key=cache.last_use, reverse=True)[KEEP:]:
        cache.remove(stale)


def _intact(final: Path) -> bool:
    """gcc trusts a PCH as it trusts itself: check it against the hash recorded when it
    was built (once per process, and again whenever the file changes); a damaged one is
    removed."""
    gch = final / f"{HEADER_NAME}.gch"
    try:
        found = gch.stat()
        stamp = (found.st_size, found.st_mtime_ns)
        if _VERIFIED.get(gch) == stamp:
            return True
        meta = json.loads((final / cache.META_NAME).read_text())
        if isinstance(meta, dict) and cache.file_sha256(gch) == meta.get("gch_sha256"):
            _VERIFIED[gch] = stamp
            return True
    except (OSError, ValueError):    # ValueError: unreadable meta
        pass
    forget(final / HEADER_NAME)
    return False


@functools.cache
def _header_text() -> str:
    return environment().get_template(f"cpu/{HEADER_NAME}.j2").render()
