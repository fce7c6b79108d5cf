"""Fixtures: the same contract runs on the in-memory example and on the SQL backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyd.audit import AuditEvent, AuditLog
from proxyd.store import make_engine, migrate
from proxyd.taskqueue.sql import SqlTaskQueue
from tests.store_fixtures import database_url
from tests.taskqueue.memory import MemoryTaskQueue
from tests.taskqueue.support import Clock, Harness, ListAudit

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    clock = Clock()
    if request.param == "memory":
        sink = ListAudit()
        queue = MemoryTaskQueue(audit=sink, clock=clock)
        yield Harness(
            "memory", queue, clock, lambda op: [e for e in sink.events if e.operation == op]
        )
        return
    engine = make_engine(database_url(request, request.param, tmp_path))
    migrate(engine)
    audit = AuditLog(engine)

    def events(op: str) -> list[AuditEvent]:
        return [s.event for s in audit.query(operation=op, newest_first=False, limit=10000)]

    try:
        yield Harness(request.param, SqlTaskQueue(engine, clock=clock), clock, events)
    finally:
        engine.dispose()
