"""Private keys at rest (ARCHITECTURE: `sealing`; invariant I7).

Every private key is encrypted under its own random data key, so one
leaked data key exposes one credential and rotating the master key only
re-wraps 32-byte data keys instead of re-encrypting every private key.
The data key is wrapped by the server master key, by an argon2id key
derived from the owner's passphrase, or by both. A record wrapped only by
a passphrase cannot be opened by the server on its own: that is the point
of storing a credential with a passphrase.

Nothing secret (key bytes, data keys, passphrases) ever appears in an
exception message, a repr or a log line.

Modules: `crypto` (seal, unseal, re-wrap), `record` (the sealed-key
format), `keyring` (the master keyring file), `cache` (unsealed keys kept
for a few seconds), `errors`.
"""

from __future__ import annotations

from .cache import UnsealedKeyCache
from .crypto import change_passphrase, dummy_unseal_cost, rewrap, seal, unseal
from .errors import SealingError, WrongPassphrase
from .keyring import MasterKeyring
from .record import (
    DEFAULT_MEMORY_KIB,
    DEFAULT_PARALLELISM,
    DEFAULT_TIME_COST,
    MasterWrap,
    PassphraseWrap,
    SealedKey,
)

__all__ = [
    "DEFAULT_MEMORY_KIB",
    "DEFAULT_PARALLELISM",
    "DEFAULT_TIME_COST",
    "MasterKeyring",
    "MasterWrap",
    "PassphraseWrap",
    "SealedKey",
    "SealingError",
    "UnsealedKeyCache",
    "WrongPassphrase",
    "change_passphrase",
    "dummy_unseal_cost",
    "rewrap",
    "seal",
    "unseal",
]
