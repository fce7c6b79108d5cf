"""`AuditLog`: the chain in one database, as the rest of proxyd uses it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TextIO

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from proxyd.store.db import require_proxyd_engine, snapshot_transaction

from .append import GATHER_S, GroupCommit, append_joined
from .events import AuditError, AuditEvent, Decision, StoredEvent, VerifyReport
from .query import page_query
from .rows import HEAD, db_reason, row_stored
from .verify import walk_chain

_EXPORT_PAGE = 1000
_H = HEAD.c


class AuditLog:
    """The audit chain in the database behind `engine` (from `proxyd.store.make_engine`).

    Any number of writers -- threads, processes, proxyd instances -- keep a
    single chain, because each append reads and advances the `audit_head`
    row inside one write transaction that holds it exclusively. The threads
    of one process share those transactions (group commit, see `append`).
    """

    def __init__(self, engine: Engine, *, gather_s: float = GATHER_S) -> None:
        require_proxyd_engine(engine)  # fail at startup, not at the first audited request
        self._engine = engine
        self._group = GroupCommit(engine, gather_s=gather_s)

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
        return append_joined(conn, events)

    def verify(self, batch: int = 10000) -> VerifyReport:
        """Recompute the chain row by row, `batch` rows at a time, on one snapshot."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        try:
            with snapshot_transaction(self._engine) as conn:
                return walk_chain(conn, batch)
        except SQLAlchemyError as exc:
            raise AuditError(f"the audit log could not be read ({db_reason(exc)})") from exc

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
        task: int | None = None,
    ) -> list[StoredEvent]:
        """Matching events, one page of at most `limit`.

        `since` is inclusive and `until` exclusive. For the next page pass
        the last seq of this one as `after_seq`: it continues in the same
        direction (older when `newest_first`), so pages never overlap or
        skip rows that were appended meanwhile.
        """
        stmt = page_query(
            actor=actor,
            owner=owner,
            serial=serial,
            decision=decision,
            rule=rule,
            operation=operation,
            since=since,
            until=until,
            limit=limit,
            after_seq=after_seq,
            newest_first=newest_first,
            task=task,
        )
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise AuditError(f"the audit log could not be read ({db_reason(exc)})") from exc
        return [row_stored(row) for row in rows]

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
        task: int | None = None,
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
                task=task,
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
