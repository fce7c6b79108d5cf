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

Appends of concurrent requests are committed together (group commit): while
one thread of a process writes, the events that other threads of the same
process submit meanwhile wait, and the next writer chains all of them in
one transaction; under concurrent load that writer first waits up to
`GATHER_S` for as many callers as the last batch had. Every caller still
returns only once *its* events are committed, and gets AuditWriteError if
they are not (I6).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Row,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from proxyd.metrics import AUDIT_WRITE_FAILURES
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
# How long a group commit under concurrent load waits for more callers (see _GroupCommit).
GATHER_S = 0.001

_EVENTS = cast(Table, AuditRow.__table__)
_HEAD = cast(Table, AuditHeadRow.__table__)
_T = _EVENTS.c
_H = _HEAD.c


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


class _NotCommitted(Exception):
    """A batch failed before its commit began, so none of it can be in the database."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Slot:
    """One caller's events on their way into a group commit."""

    __slots__ = ("done", "error", "events", "stored")

    def __init__(self, events: list[AuditEvent]) -> None:
        self.events = events
        self.stored: list[StoredEvent] = []
        self.error: BaseException | None = None
        self.done = False


class _GroupCommit:
    """Leader-based group commit: no thread of its own, and no waiting when there is no load.

    A caller queues its slot. If no commit is under way it becomes the
    leader: it takes everything queued so far and commits it in one
    transaction; otherwise it sleeps until a leader has committed its slot
    or the leader's place is free. Events that arrive while a transaction
    commits (the fsync) therefore share the next one. Under concurrent load
    the leader first waits up to `gather_s` for more callers, so that one
    head lock and one fsync serve many. Each slot stays all or nothing. A
    batch of several slots that failed before its commit (an event the
    database refuses) is retried slot by slot, so one unwritable event fails
    only its own request; a failure during the commit itself fails every
    slot of the batch, since whether it was written cannot be known (no
    duplicates).
    """

    def __init__(
        self,
        write: Callable[[list[AuditEvent]], list[StoredEvent]],
        *,
        gather_s: float = 0.0,
        max_batch: int = 256,
    ) -> None:
        # A gathering leader stops waiting once as many callers as last time have queued
        # (at most max_batch); a batch takes the whole queue.
        self._write = write
        self._queue: list[_Slot] = []
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # followers: a batch was committed
        self._gathering = threading.Condition(lock)  # the leader: another caller queued
        self._leading = False
        self._gather_s = gather_s
        self._max_batch = max_batch
        self._last = 1  # callers the last batch served: how many to expect under this load

    def submit(self, events: list[AuditEvent]) -> list[StoredEvent]:
        slot = _Slot(events)
        with self._changed:
            self._queue.append(slot)
            if self._leading and len(self._queue) >= self._expected():
                self._gathering.notify()  # a gathering leader need not wait longer
            while not slot.done and self._leading:
                self._changed.wait()
            if slot.done:
                return self._outcome(slot)
            self._leading = True
            if self._last > 1 and self._gather_s > 0:
                self._gathering.wait_for(
                    lambda: len(self._queue) >= self._expected(), self._gather_s
                )
            batch, self._queue = self._queue, []  # all of it: the leader's own slot is in it
        try:
            self._commit(batch)
        finally:
            with self._changed:
                self._leading = False
                self._last = len(batch)
                self._changed.notify_all()
        return self._outcome(slot)

    def _expected(self) -> int:
        return min(self._last, self._max_batch)

    @staticmethod
    def _outcome(slot: _Slot) -> list[StoredEvent]:
        if slot.error is not None:
            raise _write_error(slot.error)
        return slot.stored

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            try:
                self._commit_together(batch)
            except Exception as exc:
                if len(batch) == 1 or not isinstance(exc, _NotCommitted):
                    for slot in batch:
                        slot.error = exc
                else:
                    for slot in batch:
                        try:
                            self._commit_together([slot])
                        except Exception as one:
                            slot.error = one
        except BaseException as exc:  # e.g. KeyboardInterrupt: fail those not yet written
            for slot in batch:
                if not slot.stored and slot.error is None:
                    slot.error = exc
            raise
        finally:
            for slot in batch:
                slot.done = True

    def _commit_together(self, slots: list[_Slot]) -> None:
        stored = self._write([e for slot in slots for e in slot.events])
        start = 0
        for slot in slots:
            slot.stored = stored[start : start + len(slot.events)]
            start += len(slot.events)


def _write_error(exc: BaseException) -> AuditWriteError:
    """A fresh AuditWriteError for one caller (an exception object is not shared between threads).

    Counted once per failed caller: each is a request refused for want of its audit event.
    """
    AUDIT_WRITE_FAILURES.inc()
    if isinstance(exc, _NotCommitted):
        exc = exc.cause
    if isinstance(exc, AuditWriteError):
        message = str(exc)
    else:  # SQLAlchemy's or the driver's error: its first line, never the statement
        message = (
            f"the audit event could not be written ({_db_reason(exc)}); "
            "the request it records must fail"
        )
    error = AuditWriteError(message)
    error.__cause__ = exc
    return error


class AuditLog:
    """The audit chain in the database behind `engine` (from `proxyd.store.make_engine`).

    Any number of writers -- threads, processes, proxyd instances -- keep a
    single chain, because each append reads and advances the `audit_head`
    row inside one write transaction that holds it exclusively. The threads
    of one process share those transactions (group commit, see the module
    docstring).
    """

    def __init__(self, engine: Engine, *, gather_s: float = GATHER_S) -> None:
        require_proxyd_engine(engine)  # fail at startup, not at the first audited request
        self._engine = engine
        self._group = _GroupCommit(self._write, gather_s=gather_s)

    @property
    def engine(self) -> Engine:
        """The database of this chain: a `write_transaction` on it can take events (`conn=`)."""
        return self._engine

    def readiness(self) -> str | None:
        """None when the database answers and the chain head exists; else the problem."""
        try:
            with self._engine.connect() as conn:
                head = conn.execute(select(_H.last_seq).where(_H.id == 1)).first()
        except SQLAlchemyError as exc:
            return f"the database does not answer: {type(exc).__name__}: {exc}".splitlines()[0]
        if head is None:
            return "the audit_head row is missing: audit events cannot be appended"
        return None

    def append(self, event: AuditEvent, *, conn: Connection | None = None) -> StoredEvent:
        """Append one event; raises AuditWriteError if it is not durably in the chain.

        With `conn`, the event joins that open write transaction (see
        `append_many`).
        """
        return self.append_many([event], conn=conn)[0]

    def append_many(
        self, events: Iterable[AuditEvent], *, conn: Connection | None = None
    ) -> list[StoredEvent]:
        """Append events in order, all or none; returns once they are committed.

        Without `conn` the events are committed in a write transaction of
        this log, possibly together with the events of other threads (group
        commit), never split. With `conn` -- a connection inside a
        `write_transaction` -- they commit or roll back together with what
        the caller wrote there, so an action and its audit event are either
        both durable or both absent (I6).
        """
        events = list(events)
        if not events:
            return []
        if conn is None:
            return self._group.submit(events)
        try:
            return _append_in(conn, events)
        except Exception as exc:  # ours or the driver's: the caller rolls back
            raise _write_error(exc) from exc

    def _write(self, events: list[AuditEvent]) -> list[StoredEvent]:
        with write_transaction(self._engine) as conn:
            try:
                return _append_in(conn, events)
            except Exception as exc:  # rolled back on the way out: nothing was written
                raise _NotCommitted(exc) from exc

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


def _append_in(conn: Connection, events: list[AuditEvent]) -> list[StoredEvent]:
    """Chain `events` onto the head inside the caller's write transaction on `conn`.

    The three statements go to the driver's cursor on the same connection (so
    in the same transaction), as SQLAlchemy compiled them for this dialect and
    with its type conversions: SQLAlchemy's per-statement machinery cost more
    than the statements themselves on the request hot path.
    """
    sql = _DriverSQL.of(conn.dialect)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        # PostgreSQL: FOR UPDATE blocks other appenders on this row until commit.
        # SQLite: no FOR UPDATE; BEGIN IMMEDIATE already holds the database write lock.
        cursor.execute(sql.head)
        head = cursor.fetchone()
        if head is None:
            raise AuditWriteError(
                "the audit_head row is missing: the database was not migrated, "
                "or the append point was deleted"
            )
        seq, prev = int(head[0]), str(head[1])
        stored: list[StoredEvent] = []
        for event in events:
            seq += 1
            digest = chain_hash(prev, canonical(seq, event))
            stored.append(StoredEvent(seq, event, prev, digest))
            prev = digest
        rows = [sql.insert_params(_row_values(s)) for s in stored]
        if len(rows) == 1:  # psycopg runs executemany as a pipeline: a round trip more
            cursor.execute(sql.insert, rows[0])
        else:
            cursor.executemany(sql.insert, rows)
        cursor.execute(sql.advance, sql.advance_params({"seq": seq, "hash": prev, "head": 1}))
    finally:
        cursor.close()
    return stored


class _DriverSQL:
    """The append statements in one dialect's SQL and parameter style, compiled once."""

    def __init__(self, dialect: Dialect) -> None:
        self.head = (
            select(_H.last_seq, _H.last_hash)
            .where(_H.id == 1)
            .with_for_update()
            .compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            .string
        )
        insert_sql = insert(_EVENTS).compile(dialect=dialect)
        advance_sql = (
            update(_HEAD)
            .where(_H.id == bindparam("head"))
            .values(last_seq=bindparam("seq"), last_hash=bindparam("hash"))
            .compile(dialect=dialect)
        )
        self.insert, self.advance = insert_sql.string, advance_sql.string
        self._positional = bool(dialect.positional)
        self._insert_order = tuple(insert_sql.positiontup or _T.keys())
        self._advance_order = tuple(advance_sql.positiontup or ("seq", "hash", "head"))
        # The bind conversions SQLAlchemy applies (UTC datetimes, JSON, ...).
        self._convert = {
            c.name: proc
            for c in _EVENTS.c
            if (proc := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    @classmethod
    def of(cls, dialect: Dialect) -> _DriverSQL:
        with _DRIVER_SQL_LOCK:
            sql = _DRIVER_SQL.get(dialect)
            if sql is None:
                sql = _DRIVER_SQL[dialect] = cls(dialect)
            return sql

    def insert_params(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        for name, convert in self._convert.items():
            values[name] = convert(values[name])
        return [values[n] for n in self._insert_order] if self._positional else values

    def advance_params(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        return [values[n] for n in self._advance_order] if self._positional else values


_DRIVER_SQL: weakref.WeakKeyDictionary[Dialect, _DriverSQL] = weakref.WeakKeyDictionary()
_DRIVER_SQL_LOCK = threading.Lock()


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


def _db_reason(exc: BaseException) -> str:
    """The driver's one-line reason, not the statement and its parameters."""
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
