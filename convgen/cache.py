"""The on-disk kernel cache: one directory per key, published atomically.

Layout under the cache root (``CONVGEN_CACHE_DIR``, default ``~/.cache/convgen``)::

    kernels/<key[:2]>/<key>/kernel.c      the generated source
                           /kernel.so     the compiled library
                           /meta.json     the key, what went into it, and the library's sha256
    tmp/                                  entries being built (renamed into kernels/ when whole)
    failed/<key>.c                        the source of a kernel that failed to compile

An entry is built in ``tmp/`` and renamed into place in one step, so no reader ever sees
a half-written entry and a compile killed midway leaves only a stray ``tmp/`` folder.
An entry whose recorded key or content hash does not match is discarded and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

SOURCE_NAME, LIBRARY_NAME, META_NAME = "kernel.c", "kernel.so", "meta.json"


@dataclass
class Stats:
    """Per-process counters: how each kernel request was served."""

    compiles: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    discarded: int = 0


STATS = Stats()


def cache_root() -> Path:
    env = os.environ.get("CONVGEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convgen"


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


def _ensure_root(root: Path) -> None:
    for sub in ("kernels", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)


def fetch(key: str) -> bytes | None:
    """The verified library bytes of the entry for ``key``; a damaged entry is discarded.

    Callers load these bytes (never the file in the cache), so an entry changed after
    this check, or while loaded, can never be what runs.
    """
    entry = entry_dir(key)
    if not entry.exists():
        return None
    library, problem = _verified_library(entry, key)
    if problem is None:
        return library
    warnings.warn(f"convgen: discarding damaged cache entry {entry}: {problem}; rebuilding",
                  RuntimeWarning, stacklevel=3)
    STATS.discarded += 1
    _remove(entry)
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


def _remove(entry: Path) -> None:
    # Rename first so a concurrent reader never sees a half-deleted directory.
    trash = entry.with_name(f".{entry.name}.trash-{os.getpid()}")
    try:
        os.rename(entry, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def publish(key: str, source: str, build, key_parts: dict) -> Path:
    """Build an entry in a private temp dir with ``build(source_path, library_path)``, then
    rename it into place. If another process published the same key first, keep theirs."""
    root = cache_root()
    _ensure_root(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key[:16]}-", dir=root / "tmp"))
    try:
        source_path, library_path = tmp / SOURCE_NAME, tmp / LIBRARY_NAME
        source_path.write_text(source)
        try:
            build(source_path, library_path)
        except Exception as exc:
            _keep_failed_source(root, key, source, exc)
            raise
        meta = {"key": key, "library_sha256": file_sha256(library_path), "parts": key_parts}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        final = entry_dir(key, root)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.rename(tmp, final)
        except OSError:
            if fetch(key) is None:   # the entry in the way is damaged: replace it
                os.rename(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keep_failed_source(root: Path, key: str, source: str, exc: Exception) -> None:
    """Keep a failed kernel's source where the user can read it, and say where in the error."""
    failed = root / "failed"
    failed.mkdir(exist_ok=True, mode=0o700)
    kept = failed / f"{key}.c"
    kept.write_text(source)
    if hasattr(exc, "source_path"):
        exc.source_path = kept


def entries(root: Path | None = None) -> list[Path]:
    base = (root or cache_root()) / "kernels"
    if not base.is_dir():
        return []
    return [p for p in base.glob("*/*") if p.is_dir() and not p.name.startswith(".")]


def info() -> dict:
    root = cache_root()
    found = entries(root)
    size = sum(f.stat().st_size for e in found for f in e.iterdir() if f.is_file())
    return {"root": str(root), "entries": len(found), "bytes": size,
            "this_process": {"compiles": STATS.compiles, "disk_hits": STATS.disk_hits,
                             "memory_hits": STATS.memory_hits, "discarded": STATS.discarded}}


def clear() -> int:
    """Remove every entry (and stray temp builds); return how many entries were removed."""
    root = cache_root()
    found = entries(root)
    for entry in found:
        _remove(entry)
    for stray in ("tmp", "failed"):
        shutil.rmtree(root / stray, ignore_errors=True)
    return len(found)
