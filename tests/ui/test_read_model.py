"""The dashboard's SQL (proxyd.store.dashboard) on SQLite and PostgreSQL: UTC days, states, pilots.

On PostgreSQL the session runs in Pacific/Auckland (UTC+13 in November), so
an event at 23:59:59 UTC falls on the next *local* day: the chart must
still count it on its UTC day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from proxyd.audit import AuditEvent, AuditLog
from proxyd.store.dashboard import (
    DayCounts,
    daily_counts,
    recent_tasks,
    task_states,
    tasks_by_pilot,
)
from proxyd.store.db import make_engine, migrate
from proxyd.taskqueue import Accounting, Payload, PilotCapabilities, TaskSpec, load_taskqueue

D1 = dt.date(2026, 11, 20)
D2 = D1 + dt.timedelta(days=1)
UTC = dt.UTC


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        tmp_path.chmod(0o700)
        url = f"sqlite:///{tmp_path / 'proxyd.db'}"
    else:
        url = request.getfixturevalue("postgres_url") + "?options=-c%20timezone%3DPacific/Auckland"
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


def _event(when: dt.datetime, decision: str, serial: str | None = None) -> AuditEvent:
    return AuditEvent(
        time=when,
        actor_dn="/CN=wms",
        actor_kind="host",
        peer="127.0.0.1",
        operation="retrieve",
        rule="retrieve.trusted" if decision == "allow" else "retrieve.not_trusted",
        decision=decision,  # type: ignore[arg-type]
        serial=serial,
    )


def test_daily_counts_are_per_utc_day(engine: Engine) -> None:
    at = dt.datetime.combine
    AuditLog(engine).append_many(
        [
            _event(at(D1 - dt.timedelta(days=1), dt.time(12), UTC), "deny"),  # before `since`
            _event(at(D1, dt.time(23, 59, 59), UTC), "deny"),
            _event(at(D2, dt.time(0, 0, 1), UTC), "allow", serial="17"),
            _event(at(D2, dt.time(12), UTC), "allow"),  # allowed, but nothing was signed
            _event(at(D2, dt.time(13), UTC), "deny"),
        ]
    )
    with engine.connect() as conn:
        counts = daily_counts(conn, at(D1, dt.time(), UTC))
    assert counts == {D1: DayCounts(issued=0, denied=1), D2: DayCounts(issued=1, denied=1)}


def test_task_views(engine: Engine) -> None:
    queue = load_taskqueue("sql", engine, audit=AuditLog(engine))
    spec = TaskSpec(
        owner="/CN=alice",
        vo="dteam",
        group="/dteam",
        credential_username="alice",
        credential_name="default",
        payload=Payload("/bin/true"),
    )
    ids = [queue.submit(spec).id for _ in range(4)]
    at_a = PilotCapabilities("/CN=pilot", "job-1", "SITE-A")
    first = queue.match(at_a)
    second = queue.match(PilotCapabilities("/CN=pilot", "job-2", "SITE-B"))
    assert first is not None and second is not None
    queue.start(first.id, "/CN=pilot")
    queue.complete(first.id, "/CN=pilot", Accounting(cpu_s=5.0, wall_s=10.0))

    with engine.connect() as conn:
        states = task_states(conn)
        recent = recent_tasks(conn, limit=3)
        pilots = tasks_by_pilot(conn)
    assert states == {"done": 1, "matched": 1, "waiting": 2}
    assert [r.id for r in recent] == sorted(ids, reverse=True)[:3]
    assert recent[0].owner_dn == "/CN=alice" and recent[0].state == "waiting"
    assert [(p.pilot, p.site, dict(p.per_state), p.total) for p in pilots] == [
        ("/CN=pilot", "site-a", {"done": 1}, 1),  # normalise_site: case folded
        ("/CN=pilot", "site-b", {"matched": 1}, 1),
    ]
    for p in pilots:
        assert p.last_match is not None and p.last_match.tzinfo is not None
        assert abs(p.last_match - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)
