"""Appending to the chain: one write transaction per batch of concurrent callers (group commit).

Appends of concurrent requests are committed together: while one thread of
a process writes, the events that other threads of the same process submit
meanwhile wait, and the next writer chains all of them in one transaction;
under concurrent load that writer first waits up to `GATHER_S` for as many
callers as the last batch had (`store.batching.LeaderBatcher`). Every
caller still returns only once *its* events are committed, and gets
AuditWriteError if they are not (I6).

Each caller's events stay all or nothing. A batch of several callers that
failed before its commit (an event the database refuses) is retried caller
by caller, so one unwritable event fails only its own request; a failure
during the commit itself fails every caller of the batch, since whether it
was written cannot be known (no duplicates).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Dialect, Engine, bindparam, insert, select, update

from proxyd.metrics import AUDIT_WRITE_FAILURES
from proxyd.store.batching import BatchAborted, Failed, LeaderBatcher
from proxyd.store.db import write_transaction
from proxyd.store.driver import DriverStatement, PerDialect, connection_cursor

from .events import AuditEvent, AuditWriteError, StoredEvent, canonical, chain_hash
from .rows import EVENTS, HEAD, db_reason, row_values

# How long a group commit under concurrent load waits for more callers.
GATHER_S = 0.001
# The most callers one transaction serves.
MAX_BATCH = 256

_H = HEAD.c


class _NotCommitted(Exception):
    """A batch failed before its commit began, so none of it can be in the database."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _AppendSQL:
    """The append statements in one dialect's SQL and parameter style."""

    def __init__(self, dialect: Dialect) -> None:
        # PostgreSQL: FOR UPDATE blocks other appenders on this row until commit.
        # SQLite: no FOR UPDATE; BEGIN IMMEDIATE already holds the database write lock.
        self.head = DriverStatement(
            select(_H.last_seq, _H.last_hash).where(_H.id == 1).with_for_update(),
            dialect,
            literal_binds=True,
        )
        self.insert = DriverStatement(insert(EVENTS), dialect)
        self.advance = DriverStatement(
            update(HEAD)
            .where(_H.id == bindparam("head"))
            .values(last_seq=bindparam("seq"), last_hash=bindparam("hash")),
            dialect,
        )


_APPEND_SQL = PerDialect(_AppendSQL)


def _append_in(conn: Connection, events: Sequence[AuditEvent]) -> list[StoredEvent]:
    """Chain `events` onto the head inside the caller's write transaction on `conn`.

    The three statements go to the driver's cursor on the same connection (so
    in the same transaction): SQLAlchemy's per-statement machinery cost more
    than the statements themselves on the request hot path.
    """
    sql = _APPEND_SQL(conn.dialect)
    with connection_cursor(conn) as cursor:
        head = sql.head.run(cursor)
        if not head:
            raise AuditWriteError(
                "the audit_head row is missing: the database was not migrated, "
                "or the append point was deleted"
            )
        seq, prev = int(head[0][0]), str(head[0][1])
        stored: list[StoredEvent] = []
        for event in events:
            seq += 1
            digest = chain_hash(prev, canonical(seq, event))
            stored.append(StoredEvent(seq, event, prev, digest))
            prev = digest
        sql.insert.run_many(cursor, [row_values(s) for s in stored])
        sql.advance.run(cursor, {"seq": seq, "hash": prev, "head": 1})
    return stored


def append_joined(conn: Connection, events: Sequence[AuditEvent]) -> list[StoredEvent]:
    """Append inside the caller's open write transaction; AuditWriteError if that fails."""
    try:
        return _append_in(conn, events)
    except Exception as exc:  # ours or the driver's: the caller rolls back
        raise write_error(exc) from exc


def write_error(exc: BaseException) -> AuditWriteError:
    """A fresh AuditWriteError for one caller (an exception object is not shared between threads).

    Counted once per failed caller: each is a request refused for want of its audit event.
    """
    AUDIT_WRITE_FAILURES.inc()
    if isinstance(exc, BatchAborted) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, _NotCommitted):
        exc = exc.cause
    if isinstance(exc, AuditWriteError):
        message = str(exc)
    else:  # SQLAlchemy's or the driver's error: its first line, never the statement
        message = (
            f"the audit event could not be written ({db_reason(exc)}); "
            "the request it records must fail"
        )
    error = AuditWriteError(message)
    error.__cause__ = exc
    return error


class GroupCommit:
    """The appends of this process's threads, batched into shared write transactions."""

    def __init__(self, engine: Engine, *, gather_s: float = GATHER_S) -> None:
        self._engine = engine
        self._batcher: LeaderBatcher[list[AuditEvent], list[StoredEvent]] = LeaderBatcher(
            self._commit, gather_s=gather_s, max_batch=MAX_BATCH
        )

    def submit(self, events: list[AuditEvent]) -> list[StoredEvent]:
        """`events` appended, all or none, once committed; AuditWriteError otherwise."""
        try:
            return self._batcher.submit(events)
        except Exception as exc:
            raise write_error(exc) from exc

    def _write(self, events: list[AuditEvent]) -> list[StoredEvent]:
        with write_transaction(self._engine) as conn:
            try:
                return _append_in(conn, events)
            except Exception as exc:  # rolled back on the way out: nothing was written
                raise _NotCommitted(exc) from exc

    def _commit(self, batch: Sequence[list[AuditEvent]]) -> Sequence[list[StoredEvent] | Failed]:
        try:
            return self._commit_together(batch)
        except _NotCommitted:
            if len(batch) == 1:
                raise
        outcomes: list[list[StoredEvent] | Failed] = []
        for events in batch:  # so that one refused event fails only its own caller
            try:
                outcomes.extend(self._commit_together([events]))
            except Exception as exc:
                outcomes.append(Failed(exc))
        return outcomes

    def _commit_together(self, batch: Sequence[list[AuditEvent]]) -> list[list[StoredEvent]]:
        stored = self._write([e for events in batch for e in events])
        out, start = [], 0
        for events in batch:
            out.append(stored[start : start + len(events)])
            start += len(events)
        return out
