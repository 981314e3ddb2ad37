"""A bounded, process-wide cache of live scorers, each holding a warm sandbox pool.

Why: building a scorer starts sandbox workers and loads expected outputs (seconds), while RL steps and
evaluations score with the same settings over and over. Callers get the same live scorer back for the same
key; at most ``limit`` stay alive (the least recently used one is closed to make room) and all are closed at
exit.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar


class _Closable(Protocol):
    def close(self) -> Any: ...


T = TypeVar("T", bound=_Closable)


class WarmCache(Generic[T]):
    """LRU of live objects with a ``close()``; thread-safe; closed at interpreter exit."""

    def __init__(self, limit: int = 4) -> None:
        if limit < 1:
            raise ValueError(f"a warm cache holds at least one scorer, got limit={limit}")
        self.limit = limit
        self._live: dict[Hashable, T] = {}
        self._lock = threading.Lock()
        atexit.register(self.close_all)

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The live object for ``key``, built by ``build()`` on first use (under the lock: built once)."""
        with self._lock:
            if key in self._live:
                self._live[key] = self._live.pop(key)  # most recently used last
            else:
                while len(self._live) >= self.limit:
                    self._live.pop(next(iter(self._live))).close()
                self._live[key] = build()
            return self._live[key]

    def close_all(self) -> None:
        """Close every live object (their sandbox workers stop) and forget them."""
        with self._lock:
            for obj in self._live.values():
                obj.close()
            self._live.clear()
