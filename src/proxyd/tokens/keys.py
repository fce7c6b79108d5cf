"""proxyd's signing keys as a token issuer: ES256 keys in a directory, rotated, published.

The directory holds one `<kid>.pem` (0600) per key and `keys.json`, which
says which key is current, which is next, and when each older one was
retired. The *next* key is published before it signs anything: relying
parties cache key sets (scitokens-cpp for 10 minutes, without refetching on
an unknown `kid`), so a rotation makes current the key they have had since
the previous rotation, and a new next key starts its time in their caches.
A retired key stays in the published key set for `publish_for` after its
retirement (the longest a token it signed can live), so relying parties can
verify every token still valid. Workers notice a rotation by the change of
`keys.json` (checked at most once a second), without a restart.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from voms_ext.files import write_atomic

from ..sealing.keyring import exclusive_lock

ALGORITHM = "ES256"
INDEX = "keys.json"


class TokenKeyError(Exception):
    """The signing key directory cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class _Key:
    kid: str
    private: ec.EllipticCurvePrivateKey
    created: dt.datetime
    retired: dt.datetime | None


def _write_index(directory: Path, doc: Mapping[str, Any]) -> None:
    # Atomic: a worker reads the old index or the new one, whole.
    write_atomic(directory / INDEX, json.dumps(doc, indent=1, sort_keys=True).encode(), 0o600)


def _new_kid() -> str:
    return secrets.token_hex(8)


class TokenKeyring:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._current = ""
        self._next: str | None = None
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    @classmethod
    def load_or_create(cls, directory: Path, now: dt.datetime | None = None) -> TokenKeyring:
        ring = cls(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The workers of `serve --workers N` get here at once on first use: one makes the
        # keys, the others load them (unlocked, each made its own and all but one signed
        # with a key the index no longer published).
        with exclusive_lock(directory / INDEX):
            if not (directory / INDEX).exists():
                ring._write_new_key(now or dt.datetime.now(dt.UTC), retire=False)
            ring._load()
        return ring

    # --- files ----------------------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        path = self.directory / INDEX
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return {"current": None, "keys": {}}
        except (OSError, ValueError) as exc:
            raise TokenKeyError(f"{path}: not a token key index: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
            raise TokenKeyError(f"{path}: not a token key index (no 'keys' table)")
        return doc

    def _load(self) -> None:
        path = self.directory / INDEX
        doc = self._index()
        keys: dict[str, _Key] = {}
        for kid, meta in doc["keys"].items():
            pem_path = self.directory / f"{kid}.pem"
            try:
                key = serialization.load_pem_private_key(pem_path.read_bytes(), None)
            except (OSError, ValueError) as exc:
                raise TokenKeyError(
                    f"{pem_path}: cannot load the token signing key: {exc}"
                ) from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise TokenKeyError(f"{pem_path}: not an EC key")
            retired = meta.get("retired")
            keys[kid] = _Key(
                kid,
                key,
                dt.datetime.fromisoformat(meta["created"]),
                dt.datetime.fromisoformat(retired) if retired else None,
            )
        current = doc.get("current")
        upcoming = doc.get("next")
        if upcoming is not None and upcoming not in keys:
            raise TokenKeyError(f"{path}: the next key {upcoming!r} is not in the directory")
        if current not in keys:
            raise TokenKeyError(f"{path}: the current key {current!r} is not in the directory")
        st = path.stat()
        self._keys, self._current, self._stamp = keys, current, (st.st_mtime, st.st_ino)
        self._next = upcoming

    def _make_key(self, doc: dict[str, Any], now: dt.datetime) -> str:
        kid = _new_kid()
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(self.directory / f"{kid}.pem", pem, 0o600)
        doc["keys"][kid] = {"created": now.isoformat(), "retired": None}
        return kid

    def _write_new_key(self, now: dt.datetime, *, retire: bool) -> str:
        """Make the next key current (a new one if there is none) and a new next key."""
        doc = self._index()
        if retire and doc.get("current") in doc["keys"]:
            doc["keys"][doc["current"]]["retired"] = now.isoformat()
        upcoming = doc.get("next")
        doc["current"] = upcoming if upcoming in doc["keys"] else self._make_key(doc, now)
        doc["next"] = self._make_key(doc, now)
        _write_index(self.directory, doc)
        return str(doc["current"])

    def _refresh(self) -> None:
        """Reload if another process rotated the keys (at most one stat a second)."""
        mono = time.monotonic()
        if mono - self._checked < 1.0:
            return
        self._checked = mono
        try:
            st = (self.directory / INDEX).stat()
        except OSError:
            return
        if (st.st_mtime, st.st_ino) != self._stamp:
            self._load()

    # --- use ------------------------------------------------------------------------------------

    def rotate(self, now: dt.datetime) -> str:
        """Make a new current key; the old one is retired now (still published a while)."""
        with self._lock, exclusive_lock(self.directory / INDEX):
            kid = self._write_new_key(now, retire=True)
            self._load()
            return kid

    def prune(self, now: dt.datetime, publish_for: dt.timedelta) -> list[str]:
        """Delete retired keys no token they signed can still need; their kids."""
        with self._lock:
            doc = self._index()
            gone = [
                kid
                for kid, meta in doc["keys"].items()
                if meta.get("retired")
                and dt.datetime.fromisoformat(meta["retired"]) + publish_for < now
            ]
            for kid in gone:
                del doc["keys"][kid]
            if gone:
                _write_index(self.directory, doc)
                for kid in gone:
                    (self.directory / f"{kid}.pem").unlink(missing_ok=True)
                self._load()
            return gone

    @property
    def current_kid(self) -> str:
        with self._lock:
            self._refresh()
            return self._current

    def sign(self, claims: Mapping[str, Any]) -> str:
        with self._lock:
            self._refresh()
            key = self._keys[self._current]
        return jwt.encode(
            dict(claims), key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"}
        )

    def jwks(self, now: dt.datetime, publish_for: dt.timedelta) -> dict[str, Any]:
        """The published key set: the current key, the next one, and those retired within
        `publish_for`."""
        with self._lock:
            self._refresh()
            keys = list(self._keys.values())
            current, upcoming = self._current, self._next
        rank = {current: 0, upcoming: 1}
        out = []
        for k in sorted(keys, key=lambda k: (rank.get(k.kid, 2), -k.created.timestamp())):
            if k.retired is not None and k.retired + publish_for < now:
                continue
            jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(k.private.public_key()))
            jwk.update({"kid": k.kid, "alg": ALGORITHM, "use": "sig"})
            out.append(jwk)
        return {"keys": out}
