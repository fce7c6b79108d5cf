"""Brute-force protection for passphrases: failures lock a key out with exponential back-off.

Two keys are counted for every failed passphrase: the credential (so a
distributed guesser is slowed on one target) and the peer address (so one
guesser is slowed across targets, including usernames that do not exist).
After `free_failures` failures a key is locked for `base` seconds, doubling
with each further failure up to `cap`; a success clears the credential's
count. State is per process: with several workers or instances an attacker
gets at most that many times the attempts, still exponentially slowed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class FailureLimiter:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        base: float = 2.0,
        cap: float = 3600.0,
        forget_after: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self.free_failures = free_failures
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def locked(self, keys: Iterable[Hashable]) -> float:
        """Seconds until the longest lock-out among `keys` ends (0: not locked)."""
        now = self.clock()
        with self._lock:
            waits = [e.locked_until - now for k in keys if (e := self._entries.get(k)) is not None]
        return max([0.0, *waits])

    def failure(self, keys: Iterable[Hashable]) -> bool:
        """Count a failure; True when this failure started (or extended) a lock-out."""
        now = self.clock()
        locked = False
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._prune(now)
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or now - entry.last > self.forget_after:
                    entry = self._entries[key] = _Entry()
                entry.failures += 1
                entry.last = now
                over = entry.failures - self.free_failures
                if over > 0:
                    entry.locked_until = now + min(self.cap, self.base * 2 ** (over - 1))
                    locked = True
        return locked

    def success(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        stale = [
            k
            for k, e in self._entries.items()
            if now - e.last > self.forget_after and e.locked_until < now
        ]
        for k in stale:
            del self._entries[k]
        if len(self._entries) >= self.max_entries:  # still full: forget the oldest half
            for k, _ in sorted(self._entries.items(), key=lambda kv: kv[1].last)[
                : self.max_entries // 2
            ]:
                del self._entries[k]
