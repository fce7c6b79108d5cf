"""What the audit chain holds: events, their canonical bytes and hashes, and verify's verdict."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

GENESIS_HASH = "0" * 64
Decision = Literal["allow", "deny"]
DECISIONS: frozenset[str] = frozenset({"allow", "deny"})
_SERIAL = re.compile(r"0|[1-9][0-9]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditError(Exception):
    """The audit log cannot be read or written as asked."""


class AuditWriteError(AuditError):
    """An event could not be appended; the request it records must fail (I6)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One decision: who asked for what, from where, which rule decided, and the outcome."""

    time: dt.datetime = field(default_factory=_utcnow)
    actor_dn: str
    actor_kind: str
    peer: str
    operation: str
    rule: str
    decision: Decision
    owner_dn: str | None = None
    credential_name: str | None = None
    serial: str | None = None
    lifetime_s: int | None = None
    fqans: tuple[str, ...] = ()
    detail: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.time, dt.datetime) or self.time.utcoffset() is None:
            raise ValueError(f"audit event time must be a timezone-aware datetime: {self.time!r}")
        object.__setattr__(self, "time", self.time.astimezone(dt.UTC))
        if self.decision not in DECISIONS:
            raise ValueError(f"audit decision must be 'allow' or 'deny', not {self.decision!r}")
        for name in ("actor_dn", "actor_kind", "peer", "operation", "rule"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"audit event {name} must be a str")
        for name in ("owner_dn", "credential_name", "detail"):
            if not isinstance(getattr(self, name), str | None):
                raise TypeError(f"audit event {name} must be a str or None")
        if self.serial is not None and (
            not isinstance(self.serial, str) or not _SERIAL.fullmatch(self.serial)
        ):
            raise ValueError(
                f"audit serial must be decimal text such as str(cert.serial_number), "
                f"not {self.serial!r}"
            )
        if self.lifetime_s is not None and (
            type(self.lifetime_s) is not int or self.lifetime_s < 0
        ):
            raise ValueError(
                f"audit lifetime_s must be a non-negative int, not {self.lifetime_s!r}"
            )
        fqans = tuple(self.fqans)
        if not all(isinstance(f, str) for f in fqans):
            raise TypeError("audit event fqans must be strings")
        object.__setattr__(self, "fqans", fqans)


def event_doc(seq: int, event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": event.time.astimezone(dt.UTC).replace(tzinfo=None).isoformat("T", "microseconds")
        + "Z",
        "actor_dn": event.actor_dn,
        "actor_kind": event.actor_kind,
        "peer": event.peer,
        "operation": event.operation,
        "owner_dn": event.owner_dn,
        "credential_name": event.credential_name,
        "rule": event.rule,
        "decision": event.decision,
        "serial": event.serial,
        "lifetime_s": event.lifetime_s,
        "fqans": list(event.fqans),
        "detail": event.detail,
    }


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(seq: int, event: AuditEvent) -> bytes:
    """The exact bytes that are hashed for row `seq`; the seq is in them so moves show."""
    if type(seq) is not int or seq < 1:
        raise ValueError(f"audit seq must be a positive int, not {seq!r}")
    return _dumps(event_doc(seq, event)).encode("utf-8")


def chain_hash(prev_hash: str, canonical_bytes: bytes) -> str:
    """sha256(prev_hash bytes || canonical bytes), as 64 lowercase hex digits."""
    if not _HEX64.fullmatch(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex digits")
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes).hexdigest()


@dataclass(frozen=True)
class StoredEvent:
    """An event as it sits in the chain."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {**event_doc(self.seq, self.event), "prev_hash": self.prev_hash, "hash": self.hash}

    def to_json(self) -> str:
        """One compact JSON object (a line of `export_jsonl`)."""
        return _dumps(self.to_dict())


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `AuditLog.verify`.

    `first_bad_seq` is the first stored row at which the chain breaks, or,
    when rows are missing at the end, the first missing seq. `checked`
    counts the rows that verified before that.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
