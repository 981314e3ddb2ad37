"""The warm-scorer cache: the same key gives the same live scorer, and making room closes the least recently
used."""

from __future__ import annotations

import pytest

from rewards.warm import WarmCache


class Pool:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_same_key_reuses_the_live_object_and_the_least_recently_used_is_closed_first() -> None:
    cache: WarmCache[Pool] = WarmCache(limit=2)
    a = cache.get("a", lambda: Pool("a"))
    assert cache.get("a", lambda: Pool("a2")) is a
    b = cache.get("b", lambda: Pool("b"))
    cache.get("a", lambda: Pool("a3"))  # a is now the most recently used
    c = cache.get("c", lambda: Pool("c"))
    assert b.closed and not a.closed and not c.closed
    assert cache.get("b", lambda: Pool("b2")).name == "b2"  # rebuilt, and a (now least recent) made room
    assert a.closed
    cache.close_all()
    assert c.closed


def test_a_cache_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WarmCache(limit=0)
