"""I6 for every queue change, and decided events.

"Effect and its audit event in one transaction, or neither; a failed audit
write fails the request and leaves no effect": each operation of the SQL
queue, with an audit sink that refuses its events, raises AuditWriteError
and changes nothing. Decided events (the policy's decision that led to a
call) are appended with the change, first, in the order given.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, func, select, text

from proxyd.audit import AuditEvent, AuditLog, AuditWriteError, StoredEvent
from proxyd.store import make_engine, migrate
from proxyd.store.models import AuditHeadRow, AuditRow
from proxyd.tasklimits import SiteLimits, TaskLimits
from proxyd.taskqueue import Accounting, TaskState
from proxyd.taskqueue.base import named_task
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.taskqueue.sql.matcher import MatchRequest
from tests.store_fixtures import engine  # noqa: F401 - the fixture, per backend
from tests.taskqueue.support import PILOT, Clock, ListAudit, owner_dn, pilot, spec

ADMIN = owner_dn("admin")
CLOSED = "SITE-CLOSED"  # masked: a pilot there gets nothing
BANNED = owner_dn("banned")
ACC = Accounting(cpu_s=5.0, wall_s=6.0, exit_code=0)
_TABLES = ("tasks", "fair_share", "task_accounting", "site_mask", "bans", "audit_events")


def decision(n: int) -> AuditEvent:
    """A decision's event, as the edge would pass it in `decided`."""
    return AuditEvent(
        actor_dn=ADMIN,
        actor_kind="operator",
        peer="192.0.2.1",
        operation="task_test",
        rule=f"test.decided.{n}",
        decision="allow",
    )


@dataclasses.dataclass
class Scene:
    """A queue with a task in each state an operation needs, made through the audited queue."""

    clock: Clock
    queued: int
    matched: int
    running: int
    failed: int

    @classmethod
    def make(cls, engine: Engine) -> Scene:  # noqa: F811
        clock = Clock()
        q = SqlTaskQueue(engine, clock=clock, match_batch=1)
        running, matched, failed = q.submit_many([spec(priority=p) for p in (3, 2, 1)])
        for task_id in (running, matched, failed):
            got = q.match(pilot(pilot_id=f"p{task_id}"))
            assert got is not None and got.id == task_id
        q.start(running, PILOT)
        q.fail(failed, PILOT, "it broke")
        queued = q.submit(spec("bob")).id
        q.ban_owner(BANNED, by=ADMIN)
        q.set_site_mask(CLOSED, True, by=ADMIN)
        return cls(clock, queued, matched, running, failed)


Op = Callable[[SqlTaskQueue, Scene, Sequence[AuditEvent]], object]
# name: (the call, the operations of the queue's own events when it succeeds)
OPS: dict[str, tuple[Op, tuple[str, ...]]] = {
    "submit": (lambda q, s, d: q.submit(spec("carol"), decided=d), ()),
    "submit_many": (lambda q, s, d: q.submit_many([spec("carol")] * 2, decided=d), ()),
    "match": (lambda q, s, d: q.match(pilot(pilot_id="p9"), decided=d), ("task.match",)),
    "match (none)": (lambda q, s, d: q.match(pilot(CLOSED), decided=d), ()),
    "start": (lambda q, s, d: q.start(s.matched, PILOT, decided=d), ()),
    "heartbeat": (lambda q, s, d: q.heartbeat(s.running, PILOT, decided=d), ()),
    "complete": (lambda q, s, d: q.complete(s.running, PILOT, ACC, decided=d), ("task.complete",)),
    "fail": (lambda q, s, d: q.fail(s.matched, PILOT, "lost", decided=d), ("task.fail",)),
    "reschedule": (
        lambda q, s, d: q.reschedule(s.failed, by=ADMIN, decided=d),
        ("task.reschedule",),
    ),
    "cancel": (lambda q, s, d: q.cancel(s.queued, by=ADMIN, decided=d), ("task.cancel",)),
    "mark_stalled": (
        lambda q, s, d: q.mark_stalled(dt.timedelta(seconds=-3600), decided=d),
        ("task.stall", "task.stall"),
    ),
    "set_site_mask": (
        lambda q, s, d: q.set_site_mask("SITE-B", True, by=ADMIN, decided=d),
        ("site.mask",),
    ),
    "ban_owner": (
        lambda q, s, d: q.ban_owner(owner_dn("eve"), by=ADMIN, decided=d),
        ("owner.ban",),
    ),
    "unban_owner": (lambda q, s, d: q.unban_owner(BANNED, by=ADMIN, decided=d), ("owner.unban",)),
}


class RefusingSink:
    """An audit sink in another store that refuses every event."""

    def append_many(self, events: Iterable[AuditEvent]) -> None:
        raise AuditWriteError("the audit event could not be written (test)")


class RefusingLog(AuditLog):
    """This database's audit log, refusing every event (it joins the queue's transactions)."""

    def append_many(
        self, events: Iterable[AuditEvent], *, conn: Connection | None = None
    ) -> list[StoredEvent]:
        raise AuditWriteError("the audit event could not be written (test)")


def _snapshot(eng: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with eng.connect() as conn:
        return {
            t: sorted(
                (tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}")).all()),  # noqa: S608
                key=repr,
            )
            for t in _TABLES
        }


def _refusing_queue(mode: str, eng: Engine, clock: Clock, **options: Any) -> SqlTaskQueue:
    if mode == "another store":
        return SqlTaskQueue(eng, audit=RefusingSink(), clock=clock, **options)
    if mode == "this database, refusing":
        return SqlTaskQueue(eng, audit=RefusingLog(eng), clock=clock, **options)
    with eng.begin() as conn:  # this database, its append point gone
        conn.execute(delete(AuditHeadRow))
    return SqlTaskQueue(eng, clock=clock, **options)


# Issue 20: retries (a failed or stalled attempt queued again in the change's transaction)
# and the running counts of the limits are effects like any other.
RETRYING = {
    "max_attempts": 3,
    "limits": TaskLimits(max_running_per_owner=10, sites={"site-a": SiteLimits(10)}),
}


@pytest.mark.parametrize("options", [{}, RETRYING], ids=["plain", "retries and limits"])
@pytest.mark.parametrize(
    "mode", ["another store", "this database, refusing", "this database, no audit head"]
)
def test_a_change_whose_events_cannot_be_written_has_no_effect(
    engine: Engine,  # noqa: F811
    mode: str,
    options: dict[str, Any],
) -> None:
    scene = Scene.make(engine)
    before = _snapshot(engine)
    q = _refusing_queue(mode, engine, scene.clock, **options)
    for name, (op, own) in OPS.items():
        for decided in ((), (decision(1),)):
            if not own and not decided:
                continue  # nothing to append: nothing to refuse
            with pytest.raises(AuditWriteError):
                op(q, scene, decided)
            assert _snapshot(engine) == before, f"{name} (decided: {len(decided)}) left an effect"
    after = SqlTaskQueue(engine, clock=scene.clock).get(scene.matched)
    assert after is not None and after.state is TaskState.MATCHED


def test_a_batch_whose_events_cannot_be_written_matches_nobody(engine: Engine) -> None:  # noqa: F811
    scene = Scene.make(engine)
    SqlTaskQueue(engine, clock=scene.clock).submit_many([spec("dave"), spec("erin")])
    before = _snapshot(engine)
    q = SqlTaskQueue(engine, audit=RefusingSink(), clock=scene.clock)
    requests = [MatchRequest(pilot(pilot_id=f"b{n}"), (decision(n),)) for n in range(3)]
    with pytest.raises(AuditWriteError):
        q._matcher.match_batch(requests)
    assert _snapshot(engine) == before


def test_an_audit_log_on_another_engine_of_this_database_joins(tmp_path: Path) -> None:
    """Two spellings of one SQLite file are one database: the log joins the queue's
    transactions (a log written apart would wait on the queue's write lock)."""
    (tmp_path / "db").mkdir(mode=0o700)
    first = make_engine(f"sqlite:///{tmp_path / 'db' / 'q.db'}")
    second = make_engine(f"sqlite:///{tmp_path / 'db' / '..' / 'db' / 'q.db'}")
    try:
        migrate(first)
        q = SqlTaskQueue(first, audit=AuditLog(second), match_batch=1)
        q.submit(spec())
        assert q.match(pilot()) is not None
        assert [e.event.operation for e in AuditLog(first).query()] == ["task.match"]
    finally:
        first.dispose()
        second.dispose()


def _appended(log: AuditLog, after: int) -> list[AuditEvent]:
    return [s.event for s in log.query(after_seq=after, newest_first=False, limit=1000)]


def _head(eng: Engine) -> int:
    with eng.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(AuditRow.seq), 0))).scalar_one())


def _own(name: str, result: object) -> list[str]:
    """The operations of the queue's own events for what `OPS[name]` did."""
    if name == "mark_stalled":
        assert isinstance(result, list)
        return ["task.stall"] * len(result)
    return list(OPS[name][1])


def _as_committed(name: str, result: object, decided: tuple[AuditEvent, ...]) -> list[AuditEvent]:
    """The decided events as the queue commits them: a submission and a match name their
    task first in the detail (`named_task`), for `proxyd-audit query --task`."""
    if name in ("submit", "match") and result is not None:
        return named_task(decided, result.id)  # type: ignore[attr-defined]
    return list(decided)


def test_decided_events_commit_first_with_the_change(engine: Engine) -> None:  # noqa: F811
    """This database's log: the decided events, in order, then the queue's own, one chain."""
    scene = Scene.make(engine)
    log = AuditLog(engine)
    q = SqlTaskQueue(engine, audit=log, clock=scene.clock)
    for name, (op, _) in OPS.items():
        start = _head(engine)
        decided = (decision(1), decision(2))
        result = op(q, scene, decided)
        got = _appended(log, start)
        assert got[:2] == _as_committed(name, result, decided), name
        assert [e.operation for e in got[2:]] == _own(name, result), name
    assert log.verify().ok


def test_decided_events_go_to_another_sink_first(engine: Engine) -> None:  # noqa: F811
    """Another sink gets the same: decided first, then the queue's own."""
    scene = Scene.make(engine)
    sink = ListAudit()
    q = SqlTaskQueue(engine, audit=sink, clock=scene.clock)
    for name, (op, _) in OPS.items():
        sink.events.clear()
        decided = (decision(1), decision(2))
        result = op(q, scene, decided)
        assert sink.events[:2] == _as_committed(name, result, decided), name
        assert [e.operation for e in sink.events[2:]] == _own(name, result), name


def test_a_batch_appends_each_requests_decided_events_before_its_match(
    engine: Engine,  # noqa: F811
) -> None:
    scene = Scene.make(engine)
    log = AuditLog(engine)
    SqlTaskQueue(engine, clock=scene.clock).submit_many([spec("dave")])
    q = SqlTaskQueue(engine, audit=log, clock=scene.clock)
    start = _head(engine)
    requests = [
        MatchRequest(pilot(pilot_id="b0"), (decision(0),)),
        MatchRequest(pilot(CLOSED, pilot_id="b1"), (decision(1),)),  # gets nothing
        MatchRequest(pilot(pilot_id="b2"), (decision(2),)),
    ]
    outcomes = q._matcher.match_batch(requests)
    assert outcomes[1] is None and all(o is not None for o in (outcomes[0], outcomes[2]))
    got = [(e.operation, e.rule) for e in _appended(log, start)]
    assert got == [
        ("task_test", "test.decided.0"),
        ("task.match", "queue.fair_share"),
        ("task_test", "test.decided.1"),
        ("task_test", "test.decided.2"),
        ("task.match", "queue.fair_share"),
    ]


def test_an_unban_that_lifts_nothing_appends_nothing(engine: Engine) -> None:  # noqa: F811
    """Not a change: neither the decided events nor an `owner.unban` record are written;
    the caller (TaskService) records its refusal, `admin.not_banned`, instead."""
    scene = Scene.make(engine)
    log = AuditLog(engine)
    q = SqlTaskQueue(engine, audit=log, clock=scene.clock)
    start = _head(engine)
    assert q.unban_owner(owner_dn("nobody"), by=ADMIN, decided=(decision(1),)) is False
    assert _appended(log, start) == []
