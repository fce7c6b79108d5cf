"""Unsealed private keys of master-key sealed credentials, kept for a few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

from voms_ext.cache import BoundedCache


class UnsealedKeyCache:
    """Recently unsealed private keys of *master-key* sealed credentials, for a few seconds.

    A trusted retriever fetches proxies of the same credentials many times a
    second. Unsealing is cheap, but a freshly loaded RSA key pays OpenSSL's
    per-key set-up (Montgomery contexts, blinding) on its first signature,
    which costs more than the signature itself; a key object kept for a few
    seconds signs at the bare RSA cost.

    Only keys the server can open on its own are ever put here (callers must
    not put passphrase-sealed or client-encrypted keys: those open only with
    their passphrase, and that proof is asked for on every use). An entry is
    bound to the exact sealed bytes it came from, so a credential stored
    anew, re-wrapped or destroyed never gets an old key (the old entry is
    dropped when other bytes ask for it); it expires `ttl` seconds after it
    was unsealed, whatever its use, and at most `maxsize` keys are held.
    Expired entries are dropped at the next use of the cache. A `ttl` or
    `maxsize` below one keeps nothing.
    """

    def __init__(
        self, ttl: float = 10.0, maxsize: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._keeps = ttl > 0 and maxsize >= 1
        # (username, name) -> (the sealed bytes it was opened from, the key object)
        self._entries: BoundedCache[tuple[str, str], tuple[bytes, object]] = BoundedCache(
            max(maxsize, 1), ttl=ttl if ttl > 0 else 1.0, clock=clock
        )

    def __repr__(self) -> str:
        return f"UnsealedKeyCache(ttl={self.ttl}, maxsize={self.maxsize})"  # never the keys (I7)

    def get(self, username: str, name: str, sealed: bytes) -> object | None:
        entry = self._entries.get((username, name), lambda e: e[0] == sealed)
        return None if entry is None else entry[1]

    def put(self, username: str, name: str, sealed: bytes, key: object) -> None:
        if self._keeps:
            self._entries.put((username, name), (sealed, key))

    def discard(self, username: str, name: str) -> None:
        self._entries.pop((username, name))

    def clear(self) -> None:
        self._entries.clear()
