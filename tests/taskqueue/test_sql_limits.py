"""The SQL backend's limits beyond the contract: concurrent pilots, the `fair_share.running`
counts, and migration 0008 (on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, func, insert, select

from proxyd.audit import AuditLog
from proxyd.store import make_engine, migrate
from proxyd.store.db import alembic_config, write_transaction
from proxyd.store.models import FairShareRow, TaskRow
from proxyd.tasklimits import SiteLimits, TaskLimits
from proxyd.taskqueue import Accounting, TaskFilter, TaskState
from proxyd.taskqueue.sql import SqlTaskQueue
from tests import store_fixtures
from tests.store_fixtures import BACKENDS, database_url
from tests.taskqueue.support import PILOT, Clock, owner_dn, pilot, spec
from tests.taskqueue.test_migration_0005 import _task

engine = store_fixtures.engine  # the fixture: every test taking `engine` runs per backend


def _running(engine: Engine) -> dict[str, int]:
    """fair_share.running per owner, and the active tasks per owner, as the tables say."""
    with engine.connect() as conn:
        counted = conn.execute(
            select(FairShareRow.owner_dn, func.sum(FairShareRow.running)).group_by(
                FairShareRow.owner_dn
            )
        ).all()
        active = conn.execute(
            select(TaskRow.owner_dn, func.count())
            .where(TaskRow.state.in_(["matched", "running"]))
            .group_by(TaskRow.owner_dn)
        ).all()
    kept = {o: int(n) for o, n in counted if n}
    assert kept == {o: int(n) for o, n in active}, "fair_share.running drifted"
    return kept


def test_pilots_sharing_a_queue_stop_at_every_owners_cap(engine: Engine) -> None:
    """Threads on one queue object (batches): each owner gets exactly its cap, every task
    once, one event each."""
    q = SqlTaskQueue(engine, match_batch=8, limits=TaskLimits(max_running_per_owner=3))
    q.submit_many([spec(f"user{i % 7}", priority=i % 3) for i in range(140)])
    got: list[int] = []
    errors: list[str] = []

    def run(k: int) -> None:
        caps = pilot(pilot_id=f"pilot-{k}")
        try:
            while (task := q.match(caps)) is not None:
                got.append(task.id)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(got) == len(set(got)) == 21
    assert _running(engine) == {owner_dn(f"user{i}"): 3 for i in range(7)}
    report = AuditLog(engine).verify()
    assert report.ok and report.checked == 21


def test_pilots_with_their_own_connections_never_share_a_task(
    engine: Engine,
) -> None:
    """Each pilot its own queue and connection: a limit read at the same moment by several
    may be passed by those few, but no task is matched twice and the counts stay true."""
    limits = TaskLimits(sites={"site-a": SiteLimits(max_running=10)})
    SqlTaskQueue(engine).submit_many([spec(f"user{i % 4}") for i in range(60)])
    got: list[int] = []
    errors: list[str] = []

    def run(k: int) -> None:
        q = SqlTaskQueue(engine, limits=limits, match_batch=1)
        try:
            while (task := q.match(pilot("site-a", pilot_id=f"p{k}"))) is not None:
                got.append(task.id)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(got) == len(set(got)) and 10 <= len(got) <= 13
    assert sum(_running(engine).values()) == len(got)


def test_every_end_of_an_attempt_gives_the_count_back(engine: Engine) -> None:
    clock = Clock()
    q = SqlTaskQueue(engine, clock=clock, limits=TaskLimits(max_running_per_owner=10))
    ids = q.submit_many([spec("alice") for _ in range(5)])
    for _ in ids:
        q.match(pilot())
    assert _running(engine) == {owner_dn("alice"): 5}
    q.start(ids[0], PILOT)
    q.complete(ids[0], PILOT, Accounting(cpu_s=1, wall_s=1))
    q.fail(ids[1], PILOT, "lost")
    q.reschedule(ids[2], by=owner_dn("alice"))
    q.cancel(ids[3], by=owner_dn("alice"))
    assert _running(engine) == {owner_dn("alice"): 1}
    clock.advance(7200)
    assert q.mark_stalled(dt.timedelta(minutes=30)) == [ids[4]]
    assert _running(engine) == {}
    assert q.count(TaskFilter(states=frozenset({TaskState.WAITING, TaskState.RESCHEDULED}))) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_0008_counts_the_active_tasks_of_every_pair(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    eng = make_engine(database_url(request, backend, tmp_path))
    try:
        cfg = alembic_config()
        with write_transaction(eng) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0007")
        alice, bob = owner_dn("alice"), owner_dn("bob")
        with write_transaction(eng) as conn:
            conn.execute(
                insert(TaskRow.__table__),
                [
                    _task(1001, state="matched", site="site-a", pilot_dn="/CN=p", attempts=1),
                    _task(1002, state="running", site="site-a", pilot_dn="/CN=p", attempts=1),
                    _task(1003, state="done", site="site-a", pilot_dn="/CN=p", attempts=1),
                    _task(1004, owner_dn=bob),
                ],
            )
            for owner in (alice, bob):
                conn.execute(
                    insert(FairShareRow.__table__).values(
                        group_name="/dteam", owner_dn=owner, used_s=0.0, used_at=dt.datetime(
                            2030, 1, 1, tzinfo=dt.UTC), reserved_s=7200 if owner == alice else 0,
                    )
                )  # fmt: skip
        migrate(eng)
        assert _running(eng) == {alice: 2}
        q = SqlTaskQueue(eng, limits=TaskLimits(max_running_per_owner=2), clock=Clock())
        q.submit(spec("alice"))
        got = q.match(pilot())
        assert got is not None and got.spec.owner == bob  # alice is at her cap already
        assert q.match(pilot()) is None
        assert Counter(t.state for t in q.query(TaskFilter())) == {
            TaskState.MATCHED: 2,
            TaskState.RUNNING: 1,
            TaskState.DONE: 1,
            TaskState.WAITING: 1,
        }
    finally:
        eng.dispose()
