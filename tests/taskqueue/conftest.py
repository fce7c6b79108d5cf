"""Fixtures: the same contract runs on the in-memory example and on the SQL backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from proxyd.audit import AuditEvent, AuditLog
from proxyd.store import make_engine, migrate
from proxyd.taskqueue.sql import SqlTaskQueue
from tests.store_fixtures import database_url
from tests.taskqueue.memory import MemoryTaskQueue
from tests.taskqueue.support import Clock, Harness, ListAudit

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

MakeHarness = Callable[..., Harness]


def _harness(name: str, engine: Engine | None, options: dict[str, Any]) -> Harness:
    clock = Clock()
    if engine is None:
        sink = ListAudit()
        queue = MemoryTaskQueue(audit=sink, clock=clock, **options)
        return Harness(
            "memory", queue, clock, lambda op: [e for e in sink.events if e.operation == op]
        )
    audit = AuditLog(engine)

    def events(op: str) -> list[AuditEvent]:
        return [s.event for s in audit.query(operation=op, newest_first=False, limit=10000)]

    return Harness(name, SqlTaskQueue(engine, clock=clock, **options), clock, events)


@pytest.fixture(params=BACKENDS)
def make_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeHarness]:
    """A queue of each backend, made with the options given (limits, max_attempts, ...);
    one database per test."""
    engine = None
    if request.param != "memory":
        engine = make_engine(database_url(request, request.param, tmp_path))
        migrate(engine)
    try:
        yield lambda **options: _harness(request.param, engine, options)
    finally:
        if engine is not None:
            engine.dispose()


@pytest.fixture
def harness(make_harness: MakeHarness) -> Harness:
    return make_harness()
