"""The SQL backend beyond the contract: fair share, the bounded scan, audit failures, concurrency."""

from __future__ import annotations

import multiprocessing
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select

from proxyd.audit import AuditEvent, AuditLog, AuditWriteError
from proxyd.store import make_engine, migrate
from proxyd.store.batching import Retry
from proxyd.store.models import AuditHeadRow, FairShareRow, TaskRow
from proxyd.taskqueue import Accounting, FairShare, TaskState, load_taskqueue
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.taskqueue.sql.matcher import MatchRequest
from tests.store_fixtures import engine  # noqa: F401 - the fixture, per backend
from tests.taskqueue.support import PILOT, Clock, owner_dn, pilot, spec


def drain(queue: SqlTaskQueue, **offers: object) -> list[tuple[str, int, int]]:
    """(owner, priority, id) of every task one pilot gets, in order."""
    out = []
    while (task := queue.match(pilot(**offers))) is not None:  # type: ignore[arg-type]
        out.append((task.spec.owner, task.spec.priority, task.id))
    return out


def test_fair_share_three_owners_thirty_tasks(engine: Engine) -> None:  # noqa: F811
    """Priority first; within a priority the owner with the least usage; each owner in order."""
    q = SqlTaskQueue(engine, clock=Clock())
    plan = {
        "alice": [2] * 5 + [0] * 5,
        "bob": [1] * 10,
        "carol": [2] * 3 + [0] * 7,
    }
    for (
        name,
        priorities,
    ) in plan.items():  # alice's tasks all first: submission order is not fairness
        q.submit_many([spec(name, priority=p) for p in priorities])
    order = drain(q)
    assert len(order) == 30 and len({i for _, _, i in order}) == 30
    assert [p for _, p, _ in order] == sorted((p for _, p, _ in order), reverse=True)
    matched: Counter[str] = Counter()
    remaining = Counter((owner_dn(n), p) for n, ps in plan.items() for p in ps)
    for owner, priority, _ in order:
        contenders = [o for (o, p), n in remaining.items() if p == priority and n > 0]
        assert matched[owner] == min(matched[o] for o in contenders), (owner, matched)
        matched[owner] += 1
        remaining[(owner, priority)] -= 1
    for name in plan:
        for p in set(plan[name]):
            ids = [i for o, pr, i in order if o == owner_dn(name) and pr == p]
            assert ids == sorted(ids)
    top = [o for o, p, _ in order if p == 2]
    assert top[:6] == [
        owner_dn(n) for n in ("alice", "carol") * 3
    ]  # alternate while both have some


def test_finished_usage_counts_and_decays(engine: Engine) -> None:  # noqa: F811
    clock = Clock()
    q = SqlTaskQueue(engine, clock=clock, fair_share=FairShare(half_life=_hours(1)))
    first = q.submit(spec("alice", max_wall_s=3600))
    q.match(pilot())
    q.start(first.id, PILOT)
    q.complete(first.id, PILOT, Accounting(cpu_s=9000, wall_s=10000))
    q.submit_many([spec("alice", max_wall_s=3600) for _ in range(3)])
    q.submit_many([spec("bob", max_wall_s=3600) for _ in range(4)])
    owners = [o for o, _, _ in drain(q)]
    # bob is charged 3600 s per match: 0, 3600, 7200 stay below alice's 10000 s
    assert owners[:3] == [owner_dn("bob")] * 3 and owners[3] == owner_dn("alice")
    usage = _usage(engine)
    assert usage[("/dteam", owner_dn("alice"))] == (10000.0, 3 * 3600)

    clock.advance(10 * 3600)  # ten half-lives: alice's past is forgotten
    q.submit_many([spec("alice", max_wall_s=60), spec("carol", max_wall_s=60)])
    for task_id in [t.id for t in q.query(_active())]:
        q.reschedule(task_id)  # free everybody's reservations; adds observed wall time
    q.submit_many([spec("dave", max_wall_s=60)])
    got = drain(q)
    assert {o for o, _, _ in got[:3]} == {owner_dn(n) for n in ("alice", "carol", "dave")}


def test_group_shares(engine: Engine) -> None:  # noqa: F811
    shares = FairShare(shares={"/dteam/prod": 2.0, "/dteam/analysis": 1.0})
    q = SqlTaskQueue(engine, fair_share=shares, clock=Clock())
    q.submit_many([spec("alice", group="/dteam/analysis") for _ in range(30)])
    q.submit_many([spec("bob", group="/dteam/prod") for _ in range(30)])
    prod = analysis = 0
    for _ in range(30):
        task = q.match(pilot())
        assert task is not None
        prod += task.spec.group == "/dteam/prod"
        analysis += task.spec.group == "/dteam/analysis"
        assert abs(prod - 2 * analysis) <= 2
    assert (prod, analysis) == (20, 10)


def test_bounded_scan_pages_past_tasks_that_do_not_fit(engine: Engine) -> None:  # noqa: F811
    elsewhere = [spec("alice", priority=5, sites_allowed=frozenset({"SITE-B"})) for _ in range(5)]
    q = SqlTaskQueue(engine, page_size=2, max_pages=4, clock=Clock())
    q.submit_many(elsewhere)
    fits = q.submit(spec("alice", priority=5))
    low = q.submit(spec("bob", priority=1))
    assert [i for _, _, i in drain(q, site="SITE-A")] == [fits.id, low.id]

    short = SqlTaskQueue(engine, page_size=2, max_pages=1, clock=Clock())
    later = short.submit(spec("alice", priority=5))
    assert short.match(pilot("SITE-A")) is None  # five unfit tasks ahead, one page: bounded
    assert [i for _, _, i in drain(q, site="SITE-A")] == [later.id]


def test_sites_banned_in_the_bans_table_get_no_work(engine: Engine) -> None:  # noqa: F811
    from proxyd.store import BanRow, session_factory

    q = SqlTaskQueue(engine, clock=Clock())
    q.submit(spec())
    with session_factory(engine).begin() as session:
        session.add(BanRow(kind="site", pattern="SITE-*", reason="test", created_by="me"))
    assert q.match(pilot("SITE-A")) is None
    assert q.match(pilot("OTHER")) is not None


def test_static_banned_dns_apply(engine: Engine) -> None:  # noqa: F811
    q = SqlTaskQueue(engine, banned_dns=(owner_dn("mallory"),), clock=Clock())
    q.submit(spec("mallory"))
    assert q.match(pilot()) is None


class _FailingAudit:
    def append_many(self, events: Iterable[AuditEvent]) -> None:
        raise AuditWriteError("the audit event could not be written (test)")


def test_unaudited_match_is_taken_back(engine: Engine) -> None:  # noqa: F811
    """A match whose event another sink refuses does not happen: the sink is written before
    the claim commits, so there is nothing left to take back (docs/architecture.md, I6)."""
    q = SqlTaskQueue(engine, audit=_FailingAudit(), clock=Clock())
    task = q.submit(spec())
    with pytest.raises(AuditWriteError):
        q.match(pilot())
    back = q.get(task.id)
    assert back is not None and back.state is TaskState.WAITING
    assert back.attempts == 0 and back.pilot is None
    assert _usage(engine)[("/dteam", owner_dn("alice"))] == (0.0, 0)
    assert SqlTaskQueue(engine, clock=Clock()).match(pilot()) is not None  # and can be matched


def test_load_taskqueue_sql(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'q.db'}"
    q = load_taskqueue("sql", url)  # opens and migrates
    assert isinstance(q, SqlTaskQueue)
    assert q.submit(spec()).state is TaskState.WAITING
    eng = make_engine(url)
    try:
        assert isinstance(load_taskqueue("sql", eng, page_size=8), SqlTaskQueue)
    finally:
        eng.dispose()


# --- matches in batches: threads that share one queue (as a proxyd worker's requests do) ------


def _mixed_specs() -> list[Any]:
    """Tasks of four owners in two groups, three priorities, with site, tag and platform needs."""
    out = []
    for i in range(48):
        needs: dict[str, Any] = {}
        if i % 5 == 1:
            needs["sites_allowed"] = frozenset({"SITE-B"})
        elif i % 7 == 2:
            needs["tags"] = frozenset({"gpu"})
        elif i % 11 == 3:
            needs["platform"] = "EL8-x86_64"
        owner = ("alice", "bob", "carol", "dave")[i % 4]
        group = "/dteam/prod" if owner in ("alice", "bob") else "/dteam"
        out.append(spec(owner, priority=i % 3, group=group, max_wall_s=600 * (1 + i % 4), **needs))
    return out


def _pilots(n: int) -> list[Any]:
    return [
        pilot(
            "SITE-B" if k % 3 == 0 else "SITE-A",
            pilot_id=f"pilot-{k}",
            tags=frozenset({"cvmfs", "gpu"} if k % 4 == 0 else {"cvmfs"}),
        )
        for k in range(n)
    ]


@contextmanager
def _twin(source: Engine, tmp_path: Path) -> Iterator[Engine]:
    """A second database with the same contents as `source`'s (SQLite: a copy of the file;
    PostgreSQL: CREATE DATABASE ... TEMPLATE)."""
    url = source.url
    source.dispose()
    if url.get_backend_name() == "sqlite":
        twin_path = tmp_path / "twin" / "proxyd.db"
        twin_path.parent.mkdir(mode=0o700)
        shutil.copy(str(url.database), twin_path)
        twin = make_engine(f"sqlite:///{twin_path}")
        try:
            yield twin
        finally:
            twin.dispose()
        return
    import psycopg

    name, twin_name = str(url.database), f"{url.database}_twin"
    admin_url = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{twin_name}" TEMPLATE "{name}"')
    twin = make_engine(url.set(database=twin_name))
    try:
        yield twin
    finally:
        twin.dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{twin_name}" WITH (FORCE)')


def test_a_batch_matches_as_the_same_requests_one_by_one(
    engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """One transaction for many pilots changes nothing about who gets what."""
    SqlTaskQueue(engine, clock=Clock()).submit_many(_mixed_specs())
    pilots = _pilots(60)
    with _twin(engine, tmp_path) as twin:
        one_by_one = SqlTaskQueue(engine, clock=Clock())
        expected = [(c.pilot_id, _id(one_by_one.match(c))) for c in pilots]
        batched = SqlTaskQueue(twin, clock=Clock())
        outcomes = batched._matcher.match_batch([MatchRequest(c) for c in pilots])
        assert not any(isinstance(o, Retry) for o in outcomes)
        got = [(c.pilot_id, _id(o)) for c, o in zip(pilots, outcomes, strict=True)]
        assert got == expected
        assert sum(1 for _, i in got if i is None) > 0  # some pilots found nothing they can run
        assert _usage(twin) == _usage(engine)  # the same reservations
        events = [e.event.detail for e in AuditLog(twin).query(operation="task.match", limit=100)]
        assert len(events) == sum(1 for _, i in got if i is not None)
        assert AuditLog(twin).verify().ok


def _id(task: Any) -> int | None:
    return None if task is None else int(task.id)


def test_a_batch_whose_audit_fails_matches_nobody(engine: Engine) -> None:  # noqa: F811
    """The batch is one transaction: no event, no match, for any pilot in it (I6)."""
    q = SqlTaskQueue(engine, clock=Clock())
    q.submit_many([spec("alice"), spec("bob"), spec("carol")])
    with engine.begin() as conn:
        conn.execute(delete(AuditHeadRow))
    with pytest.raises(AuditWriteError):
        q._matcher.match_batch([MatchRequest(c) for c in _pilots(3)])
    with pytest.raises(AuditWriteError):
        q.match(pilot())  # alone too
    with engine.connect() as conn:
        states = conn.execute(select(TaskRow.state, TaskRow.attempts)).all()
    assert sorted(states) == [("waiting", 0)] * 3
    assert set(_usage(engine).values()) == {(0.0, 0)}


def test_pilots_sharing_a_queue(engine: Engine) -> None:  # noqa: F811
    """Threads on one queue object: matched in batches, every task once, one event each."""
    q = SqlTaskQueue(engine, match_batch=8)
    tasks = 400
    q.submit_many([spec(f"user{i % 7}", priority=i % 3) for i in range(tasks)])
    got: dict[str, list[int]] = {}
    errors: list[str] = []

    def run(k: int) -> None:
        caps = pilot(pilot_id=f"pilot-{k}")
        mine = got.setdefault(caps.pilot_id, [])
        try:
            while (task := q.match(caps)) is not None:
                mine.append(task.id)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    ids = [i for mine in got.values() for i in mine]
    assert len(ids) == len(set(ids)) == tasks
    assert sum(1 for mine in got.values() if mine) >= 6  # the work was shared
    with engine.connect() as conn:
        states = dict(
            conn.execute(select(TaskRow.state, func.count()).group_by(TaskRow.state)).all()
        )
        attempts = conn.execute(select(func.max(TaskRow.attempts))).scalar()
    assert states == {"matched": tasks} and attempts == 1
    report = AuditLog(engine).verify()
    assert report.ok and report.checked == tasks


# --- concurrency: many pilots, each its own connection ------------------------------------------


def _pilot_process(url: str, first: int, count: int, start: Any, out: Any) -> None:
    """`count` pilots as threads of one forked process, each with its own engine (connection)."""
    engines = [make_engine(url) for _ in range(count)]
    got: dict[int, list[int]] = {first + n: [] for n in range(count)}
    errors: list[str] = []

    def run(n: int) -> None:
        try:
            q = SqlTaskQueue(engines[n])
            caps = pilot(pilot_id=f"pilot-{first + n}")
            while (task := q.match(caps)) is not None:
                got[first + n].append(task.id)
        except BaseException as exc:  # reported to the parent
            errors.append(f"pilot {first + n}: {exc!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    start.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    out.put((got, errors))


def _pilots_drain(url: str, *, pilots: int, processes: int, tasks: int, owners: int) -> None:
    setup = make_engine(url)
    migrate(setup)
    specs = [spec(f"user{i % owners}", priority=i % 3) for i in range(tasks)]
    t0 = time.perf_counter()
    SqlTaskQueue(setup).submit_many(specs)
    inserted = time.perf_counter() - t0
    setup.dispose()  # no connection crosses the fork

    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    per = pilots // processes
    workers = [
        ctx.Process(target=_pilot_process, args=(url, n * per, per, start, out))
        for n in range(processes)
    ]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=300) for _ in workers]
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join(timeout=30)
    got = {pid: ids for per_process, _ in results for pid, ids in per_process.items()}
    errors = [e for _, errs in results for e in errs]
    assert not errors, errors[:3]
    ids = [i for per_pilot in got.values() for i in per_pilot]
    assert len(got) == pilots
    assert len(ids) == len(set(ids)) == tasks  # nobody got a task twice; every task matched
    assert sum(1 for per_pilot in got.values() if per_pilot) > pilots // 2  # the work was shared
    try:
        with setup.connect() as conn:
            states = dict(
                conn.execute(select(TaskRow.state, func.count()).group_by(TaskRow.state)).all()
            )
            attempts = conn.execute(select(func.max(TaskRow.attempts))).scalar()
        assert states == {"matched": tasks} and attempts == 1
        report = AuditLog(setup).verify()
        assert report.ok and report.checked == tasks  # one task.match event each, one chain
    finally:
        setup.dispose()
    counts = sorted(len(v) for v in got.values())
    print(
        f"\n{pilots} pilots ({processes} processes) matched {tasks} tasks in {elapsed:.1f} s: "
        f"{tasks / elapsed:.0f} matches/s (bulk insert {inserted:.2f} s; "
        f"per pilot {counts[0]}..{counts[-1]})"
    )
    # No time limit here: speed is measured by bench.scale, not asserted in tests.


def test_eight_pilots_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'q.db'}"
    _pilots_drain(url, pilots=8, processes=2, tasks=500, owners=5)


@pytest.mark.postgres
def test_fifty_pilots_on_postgres(postgres_url: str) -> None:
    _pilots_drain(postgres_url, pilots=50, processes=10, tasks=10_000, owners=10)


# --- helpers ---------------------------------------------------------------------------------------


def _hours(n: float):  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.timedelta(hours=n)


def _active():  # type: ignore[no-untyped-def]
    from proxyd.taskqueue import TaskFilter

    return TaskFilter(states=frozenset({TaskState.MATCHED, TaskState.RUNNING}), limit=1000)


def _usage(eng: Engine) -> dict[tuple[str, str], tuple[float, int]]:
    with eng.connect() as conn:
        rows = conn.execute(
            select(
                FairShareRow.group_name,
                FairShareRow.owner_dn,
                FairShareRow.used_s,
                FairShareRow.reserved_s,
            )
        ).all()
    return {(g, o): (round(u, 3), r) for g, o, u, r in rows}


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before
