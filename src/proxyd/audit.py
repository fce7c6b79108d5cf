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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO, cast

from sqlalchemy import ColumnElement, Connection, Engine, Row, insert, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from proxyd.store.db import require_proxyd_engine, snapshot_transaction, write_transaction
from proxyd.store.models import AuditHeadRow, AuditRow

__all__ = [
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

GENESIS_HASH = "0" * 64
Decision = Literal["allow", "deny"]
_DECISIONS: frozenset[str] = frozenset({"allow", "deny"})
_SERIAL = re.compile(r"0|[1-9][0-9]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EXPORT_PAGE = 1000

_T = AuditRow.__table__.c
_H = AuditHeadRow.__table__.c


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
        if self.decision not in _DECISIONS:
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


def _event_doc(seq: int, event: AuditEvent) -> dict[str, Any]:
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
    return _dumps(_event_doc(seq, event)).encode("utf-8")


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
        return {**_event_doc(self.seq, self.event), "prev_hash": self.prev_hash, "hash": self.hash}

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


class AuditLog:
    """The audit chain in the database behind `engine` (from `proxyd.store.make_engine`).

    Any number of writers -- threads, processes, proxyd instances -- keep a
    single chain, because each append reads and advances the `audit_head`
    row inside one write transaction that holds it exclusively.
    """

    def __init__(self, engine: Engine) -> None:
        require_proxyd_engine(engine)  # fail at startup, not at the first audited request
        self._engine = engine

    def append(self, event: AuditEvent) -> StoredEvent:
        """Append one event; raises AuditWriteError if it is not durably in the chain."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[StoredEvent]:
        """Append events in order, all or none, in one transaction."""
        events = list(events)
        if not events:
            return []
        try:
            with write_transaction(self._engine) as conn:
                # PostgreSQL: FOR UPDATE blocks other appenders on this row
                # until commit. SQLite: ignored, BEGIN IMMEDIATE already holds
                # the database write lock.
                head = conn.execute(
                    select(_H.last_seq, _H.last_hash).where(_H.id == 1).with_for_update()
                ).one_or_none()
                if head is None:
                    raise AuditWriteError(
                        "the audit_head row is missing: the database was not migrated, "
                        "or the append point was deleted"
                    )
                seq, prev = int(head.last_seq), str(head.last_hash)
                stored: list[StoredEvent] = []
                for event in events:
                    seq += 1
                    digest = chain_hash(prev, canonical(seq, event))
                    stored.append(StoredEvent(seq, event, prev, digest))
                    prev = digest
                conn.execute(insert(AuditRow), [_row_values(s) for s in stored])
                conn.execute(
                    update(AuditHeadRow).where(_H.id == 1).values(last_seq=seq, last_hash=prev)
                )
        except SQLAlchemyError as exc:
            raise AuditWriteError(
                f"the audit event could not be written ({_db_reason(exc)}); "
                "the request it records must fail"
            ) from exc
        return stored

    def verify(self, batch: int = 10000) -> VerifyReport:
        """Recompute the chain row by row, `batch` rows at a time, on one snapshot."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        try:
            with snapshot_transaction(self._engine) as conn:
                return _walk_chain(conn, batch)
        except SQLAlchemyError as exc:
            raise AuditError(f"the audit log could not be read ({_db_reason(exc)})") from exc

    def query(
        self,
        *,
        actor: str | None = None,
        owner: str | None = None,
        serial: str | None = None,
        decision: Decision | None = None,
        rule: str | None = None,
        operation: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        after_seq: int | None = None,
        newest_first: bool = True,
    ) -> list[StoredEvent]:
        """Matching events, one page of at most `limit`.

        `since` is inclusive and `until` exclusive. For the next page pass
        the last seq of this one as `after_seq`: it continues in the same
        direction (older when `newest_first`), so pages never overlap or
        skip rows that were appended meanwhile.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        conditions = _filters(actor, owner, serial, decision, rule, operation, since, until)
        if after_seq is not None:
            conditions.append(_T.seq < after_seq if newest_first else _T.seq > after_seq)
        stmt = (
            select(*_T)
            .where(*conditions)
            .order_by(_T.seq.desc() if newest_first else _T.seq.asc())
            .limit(limit)
        )
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise AuditError(f"the audit log could not be read ({_db_reason(exc)})") from exc
        return [_row_stored(row) for row in rows]

    def export_jsonl(
        self,
        fh: TextIO,
        *,
        actor: str | None = None,
        owner: str | None = None,
        serial: str | None = None,
        decision: Decision | None = None,
        rule: str | None = None,
        operation: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> int:
        """Write matching events oldest first, one JSON object per line; returns the count."""
        count, after = 0, 0
        while True:
            page = self.query(
                actor=actor,
                owner=owner,
                serial=serial,
                decision=decision,
                rule=rule,
                operation=operation,
                since=since,
                until=until,
                limit=_EXPORT_PAGE,
                after_seq=after,
                newest_first=False,
            )
            for stored in page:
                fh.write(stored.to_json() + "\n")
            count += len(page)
            if len(page) < _EXPORT_PAGE:
                return count
            after = page[-1].seq


def _walk_chain(conn: Connection, batch: int) -> VerifyReport:
    checked, last, prev = 0, 0, GENESIS_HASH

    def bad(seq: int | None, reason: str) -> VerifyReport:
        return VerifyReport(False, checked, seq, reason)

    head = conn.execute(select(_H.last_seq, _H.last_hash).where(_H.id == 1)).one_or_none()
    if head is None:
        return bad(None, "the audit_head row is missing")
    head_seq, head_hash = int(head.last_seq), str(head.last_hash)
    while rows := conn.execute(
        select(*_T).where(_T.seq > last).order_by(_T.seq).limit(batch)
    ).all():
        for row in rows:
            seq = int(row.seq)
            if seq > head_seq:
                return bad(
                    seq,
                    f"row {seq} is beyond the audit head (seq {head_seq}): it was "
                    "added without going through the append point",
                )
            if seq != last + 1:
                missing = f"row {last + 1}" if seq == last + 2 else f"rows {last + 1}..{seq - 1}"
                return bad(seq, f"row {seq}: previous-hash link broken ({missing} missing)")
            try:
                recomputed = chain_hash(str(row.prev_hash), canonical(seq, _row_event(row)))
            except (ValueError, TypeError) as exc:
                return bad(seq, f"row {seq}: contents are not a valid audit event ({exc})")
            if recomputed != row.hash:
                return bad(seq, f"row {seq}: stored hash does not match its contents")
            if row.prev_hash != prev:
                if seq == 1:
                    return bad(1, "row 1: does not start from the genesis hash")
                return bad(
                    seq, f"row {seq}: previous-hash link broken (row {seq - 1} missing or changed)"
                )
            checked, last, prev = checked + 1, seq, str(row.hash)
    if last != head_seq:
        return bad(last + 1, f"audit head says seq {head_seq} but the last row is {last}")
    if head_hash != prev:
        if last == 0:
            return bad(None, "audit head hash is not the genesis hash, but the log is empty")
        return bad(last, f"audit head hash does not match row {last}")
    return VerifyReport(True, checked)


def _filters(
    actor: str | None,
    owner: str | None,
    serial: str | None,
    decision: str | None,
    rule: str | None,
    operation: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[ColumnElement[bool]]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"{name} must be a timezone-aware datetime")
    if decision is not None and decision not in _DECISIONS:
        raise ValueError(f"decision must be 'allow' or 'deny', not {decision!r}")
    equal: Sequence[tuple[Any, str | None]] = (
        (_T.actor_dn, actor),
        (_T.owner_dn, owner),
        (_T.serial, serial),
        (_T.decision, decision),
        (_T.rule, rule),
        (_T.operation, operation),
    )
    conditions: list[ColumnElement[bool]] = [col == v for col, v in equal if v is not None]
    if since is not None:
        conditions.append(_T.time >= since)
    if until is not None:
        conditions.append(_T.time < until)
    return conditions


def _row_values(stored: StoredEvent) -> dict[str, Any]:
    e = stored.event
    return {
        "seq": stored.seq,
        "time": e.time,
        "actor_dn": e.actor_dn,
        "actor_kind": e.actor_kind,
        "peer": e.peer,
        "operation": e.operation,
        "owner_dn": e.owner_dn,
        "credential_name": e.credential_name,
        "rule": e.rule,
        "decision": e.decision,
        "serial": e.serial,
        "lifetime_s": e.lifetime_s,
        "fqans": list(e.fqans),
        "detail": e.detail,
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
    }


def _row_event(row: Row[Any]) -> AuditEvent:
    fqans = row.fqans
    if not isinstance(fqans, list):
        raise TypeError("fqans is not a JSON list")
    return AuditEvent(
        time=row.time,
        actor_dn=row.actor_dn,
        actor_kind=row.actor_kind,
        peer=row.peer,
        operation=row.operation,
        rule=row.rule,
        decision=cast(Decision, row.decision),
        owner_dn=row.owner_dn,
        credential_name=row.credential_name,
        serial=row.serial,
        lifetime_s=row.lifetime_s,
        fqans=tuple(fqans),
        detail=row.detail,
    )


def _row_stored(row: Row[Any]) -> StoredEvent:
    try:
        event = _row_event(row)
    except (ValueError, TypeError) as exc:
        raise AuditError(
            f"audit row {row.seq} is not a valid event ({exc}); run verify to locate tampering"
        ) from None
    return StoredEvent(int(row.seq), event, str(row.prev_hash), str(row.hash))


def _db_reason(exc: SQLAlchemyError) -> str:
    """The driver's one-line reason, not the statement and its parameters."""
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
