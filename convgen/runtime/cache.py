"""The on-disk kernel cache: one directory per key, published atomically, private to its user.

Layout under the cache root (``CONVGEN_CACHE_DIR``, default ``~/.cache/convgen``)::

    kernels/<key[:2]>/<key>/kernel.c      the generated source (a kernel may have several
                                          files: a Winograd kernel's exact fallback.c)
                           /kernel.so     the compiled library
                           /meta.json     the key, what went into it, and the library's sha256
                                          (its mtime records the entry's last use, for LRU)
    tmp/                                  entries being built (renamed into kernels/ when whole)
    locks/<key>.lock                      held (flock) while one process compiles that key
    failed/<key>/                         the sources of a kernel that failed to compile
    pch/<key>/cg_immintrin.h(.gch)        gcc's precompiled <immintrin.h> for one compiler
             /meta.json                   and flag set (``cpu/pch.py``): speed only; outside
                                          the cap, a few kept, none under a small cap
    stats.json                            hit/miss counts since the cache was last cleared

Rules, because what is loaded from here runs as native code in the caller's process:

- The root and its subdirectories must be owned by this user and writable by no one else;
  a root convgen creates is 0700. Anything else is refused with ``CacheError``: we never
  load from, nor silently chmod, a directory someone else could write into.
- An entry is built in ``tmp/`` and renamed into place in one step, so no reader ever sees
  a half-written entry and a compile killed midway leaves only a stray ``tmp/`` folder.
- An entry is used only if its recorded key and the sha256 of its library match; one that
  does not is discarded with a warning and rebuilt.
- ``get_or_build`` compiles a key at most once across processes: it takes the key's file
  lock, looks again, and builds only if the entry is still missing. The kernel releases a
  flock when its holder dies, so a killed compile never blocks the next one.
- After each publish the least recently used entries are evicted until the cache fits in
  ``CONVGEN_CACHE_MAX_BYTES`` (default 2 GiB; ``0`` or ``none``: no limit).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

LIBRARY_NAME, META_NAME = "kernel.so", "meta.json"
STATS_NAME = "stats.json"
PRIVATE_SUBDIRS = ("kernels", "tmp", "locks", "pch")
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
LOCK_TIMEOUT_S = 600.0       # a compile still holding the lock after this is presumed hung
STALE_TMP_S = 3600.0         # a temp build this old belongs to a process that died


class CacheError(PermissionError):
    """The cache directory is not safe to load native code from (owner, mode, type)."""


@dataclass
class Stats:
    """Per-process counters: how each kernel request was served."""

    compiles: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    discarded: int = 0
    evicted: int = 0


STATS = Stats()


# -- where the cache is, and whether it is safe ----------------------------------------------
def cache_root() -> Path:
    """The cache root: CONVGEN_CACHE_DIR (a relative one made absolute the first time it is
    seen, so a later ``os.chdir`` does not move the cache), else the user cache dir."""
    env = os.environ.get("CONVGEN_CACHE_DIR")
    if env:
        return _absolute(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return _absolute(os.path.join(base, "convgen"))


_ABSOLUTE: dict[str, Path] = {}   # the setting as written -> where it pointed when first seen


def _absolute(text: str) -> Path:
    found = _ABSOLUTE.get(text)
    if found is None:
        found = _ABSOLUTE[text] = Path(os.path.abspath(os.path.expanduser(text)))
    return found


def checked_root() -> Path:
    """The cache root with its subdirectories, created 0700 where missing, checked private."""
    root = cache_root()
    _check_not_a_file(root)
    _private_dir(root, follow_symlinks=True)   # the root itself may be a link to elsewhere
    for sub in PRIVATE_SUBDIRS:
        _private_dir(root / sub, follow_symlinks=False)
    return root


def _check_not_a_file(root: Path) -> None:
    """Refuse a root that is, or lies under, something other than a directory, saying so
    (pathlib would raise a bare FileExistsError / NotADirectoryError)."""
    for path in (root, *root.parents):
        try:
            mode = os.stat(path).st_mode   # one stat: another thread may be creating it
        except (FileNotFoundError, NotADirectoryError):   # (a file above: found further up)
            continue
        if stat.S_ISDIR(mode):
            return
        what = "a file" if stat.S_ISREG(mode) else "not a directory"
        where = f"is {what}" if path == root else f"lies under {path}, which is {what}"
        raise CacheError(f"convgen: cannot use the cache directory {root}: it {where}; set "
                         f"CONVGEN_CACHE_DIR to a directory of your own (convgen creates it "
                         f"if missing), or move {path} out of the way")


def _private_dir(path: Path, follow_symlinks: bool) -> None:
    """Create ``path`` as 0700, or check that the existing one is ours and not shared."""
    if not path.exists() and not path.is_symlink():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)    # ours, just made: the umask may have left it narrower
            return
        except FileExistsError:      # another process made it first: check theirs
            pass
        except PermissionError as exc:
            raise CacheError(f"convgen: cannot create the cache directory {path}: {exc.strerror}"
                             f"; set CONVGEN_CACHE_DIR to a directory you may write") from exc
    check_private(path, follow_symlinks)


def check_private(path: Path, follow_symlinks: bool = True) -> None:
    """Refuse (``CacheError``) a directory another user owns or others may write into."""
    info = os.stat(path, follow_symlinks=follow_symlinks)
    fix = (f"make it private (chown $USER {path}; chmod 700 {path}) or set CONVGEN_CACHE_DIR "
           f"to a directory of your own")
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"convgen: refusing the cache directory {path}: it is not a directory "
                         f"(a cache subdirectory must not be a symlink); remove it (convgen "
                         f"makes a new one) or set CONVGEN_CACHE_DIR to a directory of your own")
    if info.st_uid != os.geteuid():
        raise CacheError(f"convgen: refusing the cache directory {path}: it is owned by uid "
                         f"{info.st_uid}, not by this user (uid {os.geteuid()}), and convgen "
                         f"loads native code from it; {fix}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"convgen: refusing the cache directory {path}: it is writable by "
                         f"group or others (mode {stat.S_IMODE(info.st_mode):04o}), and convgen "
                         f"loads native code from it; {fix}")


def max_bytes() -> int | None:
    """The size cap from CONVGEN_CACHE_MAX_BYTES (bytes, or with a K/M/G/T suffix); None: no cap."""
    text = os.environ.get("CONVGEN_CACHE_MAX_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if text.lower() in ("0", "none", "unlimited"):
        return None
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", text.lower())
    if not match:
        raise ValueError(f"CONVGEN_CACHE_MAX_BYTES must be a size in bytes (e.g. 2147483648 or "
                         f"2G), or 0 / 'none' for no limit; got {text!r}")
    return int(match[1]) * 1024 ** " kmgt".index(match[2] or " ")


# -- keys and entries -------------------------------------------------------------------------
def key_of(parts: dict) -> str:
    """sha256 of the canonical JSON of everything that changes the binary."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_dir(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "kernels" / key[:2] / key


def live_dirs(base: Path) -> list[Path]:
    """The directories in ``base``, less those being removed (``remove`` hides them first)."""
    if not base.is_dir():
        return []
    return [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]


def entries(root: Path | None = None) -> list[Path]:
    base = (root or cache_root()) / "kernels"
    if not base.is_dir():
        return []
    return [p for p in base.glob("*/*") if p.is_dir() and not p.name.startswith(".")]


# -- reading ----------------------------------------------------------------------------------
def fetch(key: str) -> bytes | None:
    """The verified library bytes of the entry for ``key``; a damaged entry is discarded.

    Callers load these bytes (never the file in the cache), so an entry changed after
    this check, or while loaded, can never be what runs.
    """
    return _fetch(checked_root(), key)


def _fetch(root: Path, key: str) -> bytes | None:
    entry = entry_dir(key, root)
    if not entry.exists():
        return None
    library, problem = _verified_library(entry, key)
    if problem is None:
        mark_used(entry)
        return library
    if not entry.exists():   # evicted or replaced by another process while we read it
        return None
    warnings.warn(f"convgen: discarding damaged cache entry {entry}: {problem}; rebuilding",
                  RuntimeWarning, stacklevel=3)
    STATS.discarded += 1
    _record(root, discarded=1)
    remove(entry)
    return None


def _verified_library(entry: Path, key: str) -> tuple[bytes | None, str | None]:
    try:
        meta = json.loads((entry / META_NAME).read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable {META_NAME} ({exc})"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None, "its recorded key differs"
    try:
        library = (entry / LIBRARY_NAME).read_bytes()
    except OSError as exc:
        return None, f"unreadable {LIBRARY_NAME} ({exc})"
    if hashlib.sha256(library).hexdigest() != meta.get("library_sha256"):
        return None, f"{LIBRARY_NAME} does not match its recorded hash"
    return library, None


def mark_used(entry: Path) -> None:
    """The meta file's mtime is the entry's (or a PCH's) last use: what LRU eviction sorts by."""
    with contextlib.suppress(OSError):
        os.utime(entry / META_NAME)


def remove(entry: Path) -> None:
    # Rename first so a concurrent reader never sees a half-deleted directory.
    trash = entry.with_name(f".{entry.name}.trash-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(entry, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# -- building ---------------------------------------------------------------------------------
def get_or_build(key: str, sources: tuple[tuple[str, str], ...], build, key_parts: dict) -> bytes:
    """The verified library for ``key``: from the cache, else built once across processes.

    ``sources`` are (file name, text) pairs, the main source first; ``build(paths,
    library_path)`` compiles the written files into the library.

    The key's lock is held only around "look again, else build and publish", never while
    the caller loads the bytes.
    """
    root = checked_root()
    max_bytes()   # a malformed cap is reported now, not after a compile
    library = _fetch(root, key)
    if library is not None:
        return _hit(root, library)
    with _key_lock(root, key):
        library = _fetch(root, key)   # built by the process we waited for?
        if library is not None:
            return _hit(root, library)
        STATS.compiles += 1
        _record(root, misses=1)
        _, library = _publish(root, key, sources, build, key_parts)
    _after_publish(root, key)
    return library


def _hit(root: Path, library: bytes) -> bytes:
    STATS.disk_hits += 1
    _record(root, hits=1)
    return library


def publish(key: str, sources: tuple[tuple[str, str], ...], build, key_parts: dict) -> Path:
    """Build an entry in a private temp dir with ``build(source_paths, library_path)``, then
    rename it into place. If another process published the same key first, keep theirs.
    (Takes no lock: ``get_or_build`` is the compile-once path.)"""
    root = checked_root()
    final, _ = _publish(root, key, sources, build, key_parts)
    _after_publish(root, key)
    return final


def _publish(root: Path, key: str, sources, build, key_parts: dict) -> tuple[Path, bytes]:
    """Build and publish; return the entry and the library bytes exactly as hashed."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{key[:16]}-", dir=root / "tmp"))
    try:
        library_path = tmp / LIBRARY_NAME
        paths = []
        for name, text in sources:
            paths.append(tmp / _file_name(name))
            paths[-1].write_text(text)
        try:
            build(paths, library_path)
        except Exception as exc:
            _keep_failed_sources(root, key, sources, exc)
            raise
        library = library_path.read_bytes()
        meta = {"key": key, "library_sha256": hashlib.sha256(library).hexdigest(),
                "parts": key_parts}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        final = entry_dir(key, root)
        final.parent.mkdir(exist_ok=True, mode=0o700)
        try:
            os.rename(tmp, final)
        except OSError:
            if _fetch(root, key) is None:   # the entry in the way was damaged (and is gone)
                os.rename(tmp, final)
        return final, library
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_name(name: str) -> str:
    """A source's file name, refused if it could leave the entry's directory."""
    if not name or "/" in name or name in (".", "..") or name in (LIBRARY_NAME, META_NAME):
        raise ValueError(f"a generated source's file name must be a plain name, got {name!r}")
    return name


def _keep_failed_sources(root: Path, key: str, sources, exc: Exception) -> None:
    """Keep a failed kernel's sources where the user can read them, and say where in the
    error (the main source's path)."""
    (root / "failed").mkdir(exist_ok=True, mode=0o700)
    failed = root / "failed" / key
    failed.mkdir(exist_ok=True, mode=0o700)
    for name, text in sources:
        (failed / _file_name(name)).write_text(text)
    if hasattr(exc, "source_path"):
        exc.source_path = failed / _file_name(sources[0][0])


def _after_publish(root: Path, key: str) -> None:
    """Housekeeping that must never fail a build: stale temp builds, then the size cap."""
    try:
        _sweep_stale_builds(root)
        evict(root, keep=key)
    except OSError as exc:
        warnings.warn(f"convgen: cache housekeeping in {root} failed: {exc}", RuntimeWarning,
                      stacklevel=3)


def _sweep_stale_builds(root: Path) -> None:
    cutoff = time.time() - STALE_TMP_S
    for stray in (root / "tmp").iterdir():
        with contextlib.suppress(OSError):
            if stray.lstat().st_mtime < cutoff:
                shutil.rmtree(stray, ignore_errors=True)


# -- locks ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _key_lock(root: Path, key: str):
    """Hold ``locks/<key>.lock`` (flock, exclusive) for the duration of the block.

    flock belongs to the open file, so threads of one process exclude each other too, and
    the kernel drops it when the holder dies. A holder stuck past LOCK_TIMEOUT_S is
    presumed hung: we warn and go on unlocked (publication is atomic either way).
    """
    path = root / "locks" / f"{key}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if not _acquire(fd, LOCK_TIMEOUT_S):
            warnings.warn(f"convgen: {path} has been held for {LOCK_TIMEOUT_S:.0f} s; "
                          f"compiling without waiting for it", RuntimeWarning, stacklevel=4)
        yield
    finally:
        os.close(fd)   # releases the lock


def _acquire(fd: int, timeout_s: float) -> bool:
    # Polling (not a blocking flock) so that a hung holder cannot stall us forever.
    deadline, pause = time.monotonic() + timeout_s, 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


@contextlib.contextmanager
def _try_lock(path: Path):
    """Yield True holding ``path``'s flock, or False at once if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove_lock_if_free(path: Path) -> None:
    # Unlinking a lock someone waits on could let two processes compile one key: harmless
    # (publication is atomic), so this only skips locks that are held right now.
    if not path.exists():
        return
    with contextlib.suppress(OSError), _try_lock(path) as free:
        if free:
            os.unlink(path)


# -- the size cap -----------------------------------------------------------------------------
def evict(root: Path | None = None, keep: str | None = None) -> int:
    """Remove least recently used entries until the cache fits its cap; never ``keep``.

    One process evicts at a time; one that finds another evicting skips (the other will
    bring the cache under the cap). Returns how many entries were removed.
    """
    root = root or checked_root()
    cap = max_bytes()
    if cap is None:
        return 0
    with _try_lock(root / "locks" / "evict.lock") as ours:
        if not ours:
            return 0
        sized = [(last_use(e), _entry_bytes(e), e) for e in entries(root)]
        total = sum(size for _, size, _ in sized)
        removed = 0
        for _, size, entry in sorted(sized, key=lambda item: item[0]):
            if total <= cap:
                break
            if entry.name == keep:
                continue
            remove(entry)
            _remove_lock_if_free(root / "locks" / f"{entry.name}.lock")
            total -= size
            removed += 1
    if removed:
        STATS.evicted += removed
        _record(root, evicted=removed)
    return removed


def last_use(entry: Path) -> float:
    try:
        return (entry / META_NAME).stat().st_mtime
    except OSError:
        return 0.0   # an entry without meta is damaged: first to go


def _entry_bytes(entry: Path) -> int:
    total = 0
    with contextlib.suppress(OSError), os.scandir(entry) as found:
        for item in found:
            with contextlib.suppress(OSError):
                total += item.stat(follow_symlinks=False).st_size
    return total


# -- persistent counts ------------------------------------------------------------------------
COUNTS = ("hits", "misses", "discarded", "evicted")


def _record(root: Path, **deltas: int) -> None:
    """Add to the counts in stats.json (under a lock). Counts are advisory: never fail a call."""
    try:
        with _held(root / "locks" / "stats.lock"):
            counts = _read_counts(root)
            for name, delta in deltas.items():
                counts[name] += delta
            tmp = root / f".{STATS_NAME}.{os.getpid()}"
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, root / STATS_NAME)
    except OSError:
        pass


@contextlib.contextmanager
def _held(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # held for microseconds by any holder
        yield
    finally:
        os.close(fd)


def _read_counts(root: Path) -> dict[str, int]:
    counts = dict.fromkeys(COUNTS, 0)
    try:
        stored = json.loads((root / STATS_NAME).read_text())
    except (OSError, ValueError):
        return counts    # missing or damaged: start again from zero
    if isinstance(stored, dict):
        for name in COUNTS:
            if isinstance(stored.get(name), int):
                counts[name] = stored[name]
    return counts


# -- inspection and clearing ------------------------------------------------------------------
def info() -> dict:
    """Where the cache is, what it holds (kernels; gcc's precompiled headers apart), its cap,
    and how requests were served."""
    root = checked_root()
    found = entries(root)
    headers = live_dirs(root / "pch")
    return {"root": str(root), "entries": len(found),
            "bytes": sum(_entry_bytes(e) for e in found), "max_bytes": max_bytes(),
            "precompiled_headers": len(headers),
            "precompiled_header_bytes": sum(_entry_bytes(p) for p in headers),
            **_read_counts(root),
            "this_process": {"compiles": STATS.compiles, "disk_hits": STATS.disk_hits,
                             "memory_hits": STATS.memory_hits, "discarded": STATS.discarded,
                             "evicted": STATS.evicted}}


def clear() -> int:
    """Remove every entry, stray temp build, failed source, precompiled header, free lock
    and the counts; return how many entries were removed."""
    root = checked_root()
    found = entries(root)
    for entry in found:
        remove(entry)
    for stray in ("tmp", "failed", "pch"):
        shutil.rmtree(root / stray, ignore_errors=True)
    for lock in (root / "locks").glob("*.lock"):
        _remove_lock_if_free(lock)
    with contextlib.suppress(OSError):
        (root / STATS_NAME).unlink()
    return len(found)
