"""The tamper-evident issuance log (ARCHITECTURE: `audit`; invariant I6).

Each row carries ``hash = sha256(bytes.fromhex(prev_hash) + canonical(seq,
event))``, starting from 64 zeros. Editing, deleting or reordering rows
breaks the chain, and `verify` names the first row where it breaks. The
seq is inside the hashed bytes, so a row moved to another position no
longer matches its hash; the `audit_head` row records the last seq and
hash, so cutting rows off the end is noticed too.

Exported JSON lines are self-checking: drop ``prev_hash`` and ``hash`` from
a line, dump the rest with sorted keys and no whitespace, and that is the
`canonical` form an auditor can re-hash without this code.

The chain proves the log was not changed *after* the fact by someone
without a copy of it; keep exported heads elsewhere to detect a rewrite of
the whole chain.

Modules: `events` (the values and their hashing), `append` (the append
path, with group commit), `verify` (walking the chain), `query` (pages and
export filters), `rows` (the tables), `log` (`AuditLog`, which ties them
together).
"""

from __future__ import annotations

from .append import GATHER_S
from .events import (
    GENESIS_HASH,
    AuditError,
    AuditEvent,
    AuditWriteError,
    Decision,
    StoredEvent,
    VerifyReport,
    canonical,
    chain_hash,
)
from .log import AuditLog

__all__ = [
    "GATHER_S",
    "GENESIS_HASH",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditWriteError",
    "Decision",
    "StoredEvent",
    "VerifyReport",
    "canonical",
    "chain_hash",
]
