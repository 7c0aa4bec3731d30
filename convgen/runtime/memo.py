"""The one kind of in-process table convgen keeps: a value built once per key, thread-safe.

Lookups take no lock (a dict read is atomic); a miss builds outside the lock, so two
threads may build the same value at once, and the first one stored is the one everybody
gets (builds are deterministic: the other copy is only wasted work). Kernels compile
under the disk cache's per-key lock anyway, so a race costs a second load, not a compile.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    def __init__(self, name: str):
        self.name = name
        self._items: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        return self._items.get(key)

    def get_or_build(self, key: Hashable, build: Callable[[], V]) -> V:
        found = self._items.get(key)
        if found is None:
            value = build()
            with self._lock:
                found = self._items.setdefault(key, value)
        return found

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
