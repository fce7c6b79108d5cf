"""The queue's write transactions, and the audit events that commit with them (I6).

I6: an action and its audit event are both durable, or neither is; an
event that cannot be written fails the request and leaves no effect. Every
change of the queue therefore ends its write transaction with
`Writer.audit`, which appends the events of the change:

- to this database's audit log (`AuditLog` on the queue's own engine or
  database, as in `proxyd serve`): inside the transaction, so the change
  and its events commit together or roll back together;
- to any other sink: before the change commits, so a refused append
  rolls the change back. (The other way round cannot be promised across
  two stores: should the commit itself fail after the sink took the
  events, they record a change that did not happen.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from ...audit import AuditEvent, AuditLog
from ...store.db import write_transaction
from ..base import AuditSink


def same_database(audit: AuditSink, engine: Engine) -> AuditLog | None:
    """`audit` if it is an audit log in `engine`'s database (so its events can join our
    transactions), else None."""
    if not isinstance(audit, AuditLog):
        return None
    if audit.engine is engine or _database(audit.engine.url) == _database(engine.url):
        return audit
    return None


def _database(url: URL) -> tuple[str, ...]:
    """Which database a URL names. SQLite: the file, however the path is spelt (two engines
    on one file must not be told apart: the other's write would wait on our write lock)."""
    path = url.database or ""
    on_disk = path not in ("", ":memory:") and not path.startswith("file:")
    if url.get_backend_name() == "sqlite" and on_disk:
        return ("sqlite", str(Path(path).resolve()))
    return (url.render_as_string(hide_password=False),)


class Writer:
    """Write transactions on the queue's database, audited as the module docstring says."""

    def __init__(self, engine: Engine, audit: AuditSink) -> None:
        self.engine = engine
        self.sink = audit
        self._joined = same_database(audit, engine)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """`store.db.write_transaction` on the queue's engine."""
        with write_transaction(self.engine) as conn:
            yield conn

    def audit(self, conn: Connection, events: Sequence[AuditEvent]) -> None:
        """Append `events`, in order, so that they commit with the transaction on `conn`;
        AuditWriteError (the caller's transaction then rolls back) if they cannot be.
        Call it last in the transaction."""
        if not events:
            return
        if self._joined is not None:
            self._joined.append_many(events, conn=conn)
        else:
            self.sink.append_many(events)

    def audit_alone(self, events: Sequence[AuditEvent]) -> None:
        """Append `events` that record no change of the queue (a decision that led to
        nothing, such as a match that found no task), in a transaction of their own."""
        if events:
            self.sink.append_many(events)
