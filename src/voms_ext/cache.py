"""The one bounded, thread-safe cache of proxyd and voms_ext.

Its first use is a memo for pure functions of certificate bytes: parsing
and classifying a certificate is deterministic in its DER, so a result may
be reused for as long as the same bytes come back; only successes are
stored (a call that raises stores nothing). The bound keeps memory flat
whatever peers send: the least recently used entry goes first.

Entries that go stale have two forms. With `ttl`, every entry lives `ttl`
seconds from its `put`, whatever its use (unsealed keys). Entries then
leave in the order they came -- the oldest is both the next to expire and
the first to make room -- and expired ones are dropped at every access, so
nothing outlives its time in memory. An entry whose validity depends on
the value (a chain's validity window) is checked by the `valid` predicate
given to `get`, which drops the entry when it fails.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A map of at most `maxsize` entries, safe to share between threads.

    Without `ttl`, least recently used first out. With `ttl` (seconds of
    `clock`), first in, first out, and an entry expires `ttl` after its put.
    """

    def __init__(
        self,
        maxsize: int,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive seconds, not {ttl}")
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        # value, and when it expires (ttl caches only; insertion order is expiry order)
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, valid: Callable[[V], bool] | None = None) -> V | None:
        """The value for `key`; None if there is none, it expired, or `valid` refuses it.

        An entry `valid` refuses is dropped: it will not become valid again.
        `valid` runs under the cache's lock, so keep it a cheap test of the value.
        """
        with self._lock:
            if self.ttl is not None:
                self._expire(self._clock())
            entry = self._data.get(key)
            if entry is None:
                return None
            value = entry[0]
            if valid is not None and not valid(value):
                del self._data[key]
                return None
            if self.ttl is None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            expires = 0.0
            if self.ttl is not None:
                now = self._clock()
                self._expire(now)
                expires = now + self.ttl
                self._data.pop(key, None)  # a put starts a new lifetime at the end
            self._data[key] = (value, expires)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def _expire(self, now: float) -> None:
        data = self._data
        while data:
            _, expires = next(iter(data.values()))
            if expires > now:
                break
            data.popitem(last=False)
