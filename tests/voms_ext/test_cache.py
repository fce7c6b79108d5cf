"""BoundedCache: the bound, LRU or time-to-live order, the `valid` check, and threads."""

from __future__ import annotations

import threading

import pytest

from voms_ext.cache import BoundedCache


def test_least_recently_used_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2
    cache.pop("a")
    cache.pop("missing")
    assert cache.get("a") is None and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_with_ttl_an_entry_expires_after_its_put_whatever_its_use() -> None:
    now = [100.0]
    cache: BoundedCache[str, str] = BoundedCache(3, ttl=10, clock=lambda: now[0])
    cache.put("a", "A")
    now[0] += 6
    cache.put("b", "B")
    assert cache.get("a") == "A"  # used, but that does not extend its life
    now[0] += 4
    assert cache.get("a") is None and cache.get("b") == "B"
    assert len(cache) == 1  # dropped at the access, not only when asked for
    cache.put("b", "B2")  # a new put starts a new lifetime
    now[0] += 9
    assert cache.get("b") == "B2"


def test_with_ttl_the_oldest_put_makes_room_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2, ttl=60, clock=lambda: 0.0)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # no reordering: "a" still expires first
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, 2, 3)


def test_an_entry_valid_refuses_is_dropped() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)
    cache.put("a", 5)
    assert cache.get("a", lambda v: v > 1) == 5
    assert cache.get("a", lambda v: v > 9) is None
    assert cache.get("a") is None and len(cache) == 0


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        BoundedCache(0)
    with pytest.raises(ValueError, match="ttl"):
        BoundedCache(1, ttl=0)


def test_threads_share_it_within_the_bound() -> None:
    cache: BoundedCache[int, int] = BoundedCache(64)
    wrong: list[tuple[int, int | None]] = []

    def work(offset: int) -> None:
        for i in range(2000):
            key = (offset + i) % 100
            cache.put(key, key * 2)
            value = cache.get(key)
            if value is not None and value != key * 2:
                wrong.append((key, value))

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert wrong == []
    assert len(cache) <= 64
