"""The back half of the pipeline, one copy for every backend: render -> key -> cache -> load.

A backend supplies four things (``Backend``): what besides the workload, plan and target
changes its binary (compiler identity, flags, template digest), how to render sources
under a symbol prefix, how to build them into a shared library, and which symbols the
library exports. Everything else -- the cache key, the compile-once disk cache, the
private load and the in-process memo -- happens here, the same way for C and CUDA.

Every exported symbol of a kernel carries its prefix: the caller may name it (an AOT build
names each layer's), else it comes from the key, so no two kernels ever share a symbol.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._version import __version__
from ..core import epilogue
from ..core.names import check_c_identifier
from ..core.spec import Workload
from ..target import Target
from . import cache, loader
from .memo import Memo

Sources = tuple[tuple[str, str], ...]   # (file name, text), the main source first


class Backend(Protocol):
    name: str
    fuses_epilogues: bool   # can it render a workload's epilogue into its stores?

    def toolchain_parts(self, target: Target) -> dict:
        """Compiler identities, flags and template digests: what changes the binary
        besides the workload, plan and target."""

    def render(self, workload: Workload, plan, target: Target, prefix: str) -> Sources:
        """The kernel's sources, every exported symbol starting with ``prefix``."""

    def build(self, paths: list[Path], library_path: Path, target: Target) -> None:
        """Compile the written sources into a shared library (CompileError if it fails)."""

    def symbols(self, prefix: str) -> tuple[str, ...]:
        """The exported symbols the kernel class needs, in the order it wants them."""


@dataclass(frozen=True)
class Library:
    """A loaded kernel library: its key, prefix, sources and symbol addresses."""

    key: str
    prefix: str
    sources: Sources
    symbols: Mapping[str, object] = dataclasses.field(hash=False, compare=False)

    @property
    def source(self) -> str:
        """The main source's text."""
        return self.sources[0][1]


_LIBRARIES: Memo[Library] = Memo("libraries")


def key_parts(backend: Backend, workload: Workload, plan, target: Target) -> dict:
    """Everything that changes the binary except the prefix and the rendered text."""
    return {"convgen": __version__, "backend": backend.name,
            "spec": dataclasses.asdict(workload.spec), "input_shape": workload.input_shape,
            "dtype": workload.dtype,
            "epilogue": [dataclasses.astuple(step) for step in workload.epilogue],
            "plan": str(plan), "target": dataclasses.asdict(target),
            **backend.toolchain_parts(target)}


def default_prefix(parts: dict) -> str:
    """A kernel's symbol prefix when the caller names none: from its key's parts."""
    return f"cg_{cache.key_of(parts)[:16]}"


def generate(backend: Backend, workload: Workload, plan, target: Target,
             prefix: str | None = None) -> tuple[str, Sources, dict]:
    """Render without building: (prefix, sources, the cache key's parts)."""
    if workload.epilogue and not backend.fuses_epilogues:
        raise ValueError(f"the {backend.name} backend cannot fuse an epilogue "
                         f"({epilogue.describe(workload.epilogue)}) into its kernels")
    parts = key_parts(backend, workload, plan, target)
    prefix = check_c_identifier(prefix) if prefix is not None else default_prefix(parts)
    sources = backend.render(workload, plan, target, prefix)
    digest = hashlib.sha256()
    for name, text in sources:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return prefix, sources, {**parts, "prefix": prefix, "sources_sha256": digest.hexdigest()}


def library(backend: Backend, workload: Workload, plan, target: Target,
            prefix: str | None = None) -> Library:
    """The loaded library of one kernel: from memory, the disk cache, or compiled once."""
    memo = (backend.name, workload, plan, target, prefix)
    found = _LIBRARIES.get(memo)
    if found is not None:
        cache.STATS.memory_hits += 1
        return found
    return _LIBRARIES.get_or_build(memo, lambda: _load(backend, workload, plan, target, prefix))


def _load(backend: Backend, workload: Workload, plan, target: Target, prefix) -> Library:
    prefix, sources, parts = generate(backend, workload, plan, target, prefix)
    key = cache.key_of(parts)
    binary = cache.get_or_build(key, sources,
                                lambda paths, lib: backend.build(paths, lib, target), parts)
    names = backend.symbols(prefix)
    addresses = loader.load(binary, names)
    return Library(key, prefix, sources, dict(zip(names, addresses)))


def forget_loaded() -> None:
    """Drop the in-process memo (tests: the next request goes to the disk cache)."""
    _LIBRARIES.clear()
