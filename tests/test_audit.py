"""The hash-chained audit log: appends, tamper detection, queries, export, concurrency."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import Connection, Engine, Table, delete, func, select, text, update

from proxyd.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditLog,
    AuditWriteError,
    canonical,
    chain_hash,
)
from proxyd.store import AuditRow, make_engine, migrate
from proxyd.store.batching import LeaderBatcher
from proxyd.store.db import write_transaction
from tests import store_fixtures

engine = store_fixtures.engine  # the fixture: every test taking `engine` runs per backend

T0 = dt.datetime(2025, 11, 25, 12, 0, tzinfo=dt.UTC)
WMS = "/DC=org/DC=example/CN=wms.example.org"
PILOT = "/DC=org/DC=example/CN=pilot"
OWNERS = ["/DC=org/DC=example/CN=Alice", "/DC=org/DC=example/CN=Bob"]
EVENTS = cast(Table, AuditRow.__table__)


def make_event(i: int) -> AuditEvent:
    """Event i of a deterministic mix: two actors, two owners, every fifth one denied."""
    denied = i % 5 == 0
    return AuditEvent(
        time=T0 + dt.timedelta(minutes=i),
        actor_dn=WMS if i % 2 else PILOT,
        actor_kind="host" if i % 2 else "pilot",
        peer=f"192.0.2.{i % 250}",
        operation="retrieve" if i % 3 else "store",
        rule="deny.not_a_retriever" if denied else "allow.trusted_retriever",
        decision="deny" if denied else "allow",
        owner_dn=OWNERS[i % 2],
        credential_name="default",
        serial=None if denied else str(1000 + i),
        lifetime_s=None if denied else 3600,
        fqans=("/atlas/Role=NULL/Capability=NULL", "/atlas/prod/Role=pilot/Capability=NULL"),
        detail=f"event {i} \u2013 caf\u00e9",
    )


def fill(log: AuditLog, n: int = 50) -> None:
    log.append_many(make_event(i) for i in range(1, n + 1))


def test_append_and_verify(engine: Engine) -> None:
    log = AuditLog(engine)
    assert log.verify().ok
    stored = [log.append(make_event(i)) for i in range(1, 51)]
    assert [s.seq for s in stored] == list(range(1, 51))
    assert stored[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(stored):
        assert after.prev_hash == before.hash
        assert after.hash == chain_hash(before.hash, canonical(after.seq, after.event))
    report = log.verify(batch=7)
    assert (report.ok, report.checked, report.first_bad_seq, report.reason) == (
        True,
        50,
        None,
        None,
    )
    assert log.query(limit=1)[0] == stored[-1]  # read back identically, time included


def _delete(seq: int) -> Callable[[Connection], None]:
    def tamper(conn: Connection) -> None:
        conn.execute(delete(EVENTS).where(EVENTS.c.seq == seq))

    return tamper


def _edit(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET actor_dn = '/CN=Mallory' WHERE seq = 17"))


def _edit_and_rehash(conn: Connection) -> None:
    row = conn.execute(select(EVENTS).where(EVENTS.c.seq == 17)).one()
    forged = AuditEvent(**{**_event_fields(row), "actor_dn": "/CN=Mallory"})
    new_hash = chain_hash(row.prev_hash, canonical(17, forged))
    conn.execute(
        update(EVENTS).where(EVENTS.c.seq == 17).values(actor_dn="/CN=Mallory", hash=new_hash)
    )


def _swap(conn: Connection) -> None:
    a, b = (conn.execute(select(EVENTS).where(EVENTS.c.seq == s)).one()._asdict() for s in (10, 20))
    for seq, source in ((10, b), (20, a)):
        values = {k: v for k, v in source.items() if k != "seq"}
        conn.execute(update(EVENTS).where(EVENTS.c.seq == seq).values(values))


def _rewind_head(conn: Connection) -> None:
    row = conn.execute(select(EVENTS).where(EVENTS.c.seq == 48)).one()
    conn.execute(text("UPDATE audit_head SET last_seq = 48, last_hash = :h"), {"h": row.hash})


def _event_fields(row: Any) -> dict[str, Any]:
    fields: dict[str, Any] = row._asdict()
    for key in ("seq", "prev_hash", "hash"):
        fields.pop(key)
    fields["fqans"] = tuple(fields["fqans"])
    return fields


# kind: (tampering, first bad seq, reason, rows verified before it)
TAMPERING = {
    "delete_middle": (_delete(25), 26, "row 26: previous-hash link broken (row 25 missing)", 24),
    "edit_middle": (_edit, 17, "row 17: stored hash does not match its contents", 16),
    "edit_and_rehash": (
        _edit_and_rehash,
        18,
        "row 18: previous-hash link broken (row 17 missing or changed)",
        17,
    ),
    "swap": (_swap, 10, "row 10: stored hash does not match its contents", 9),
    "delete_last": (_delete(50), 50, "audit head says seq 50 but the last row is 49", 49),
    "rewind_head": (
        _rewind_head,
        49,
        "row 49 is beyond the audit head (seq 48): it was added without going through "
        "the append point",
        48,
    ),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_verify_detects_tampering(engine: Engine, kind: str) -> None:
    tamper, bad_seq, reason, checked = TAMPERING[kind]
    log = AuditLog(engine)
    fill(log)
    with engine.begin() as conn:
        tamper(conn)
    report = log.verify(batch=8)
    assert (report.ok, report.first_bad_seq, report.reason, report.checked) == (
        False,
        bad_seq,
        reason,
        checked,
    )


def test_query_filters(engine: Engine) -> None:
    log = AuditLog(engine)
    fill(log)
    by_wms = log.query(actor=WMS, limit=1000)
    assert len(by_wms) == 25 and all(s.event.actor_dn == WMS for s in by_wms)
    assert [s.seq for s in by_wms] == sorted((s.seq for s in by_wms), reverse=True)
    denied = log.query(owner=OWNERS[1], decision="deny", limit=1000)
    assert {s.seq for s in denied} == {i for i in range(1, 51) if i % 10 == 5}
    assert [s.seq for s in log.query(serial="1007")] == [7]
    assert [s.seq for s in log.query(rule="deny.not_a_retriever", operation="store")] == [
        45,
        30,
        15,
    ]
    window = log.query(
        since=T0 + dt.timedelta(minutes=10), until=T0 + dt.timedelta(minutes=20), limit=1000
    )
    assert [s.seq for s in window] == list(range(19, 9, -1))
    # A zone other than UTC selects the same instants.
    cet = dt.timezone(dt.timedelta(hours=1))
    assert log.query(since=(T0 + dt.timedelta(minutes=49)).astimezone(cet))[0].seq == 50
    with pytest.raises(ValueError, match="timezone-aware"):
        log.query(since=dt.datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="'allow' or 'deny'"):
        log.query(decision="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize("newest_first", [True, False])
def test_query_keyset_pagination(engine: Engine, newest_first: bool) -> None:
    log = AuditLog(engine)
    fill(log)
    seen: list[int] = []
    after: int | None = None
    while page := log.query(limit=7, after_seq=after, newest_first=newest_first):
        assert len(page) <= 7
        seen += [s.seq for s in page]
        after = page[-1].seq
    assert seen == sorted(range(1, 51), reverse=newest_first)
    mallory = log.query(actor="/CN=Mallory", limit=5)
    assert mallory == []


def test_export_jsonl(engine: Engine) -> None:
    log = AuditLog(engine)
    fill(log)
    out = io.StringIO()
    assert log.export_jsonl(out) == 50
    lines = out.getvalue().splitlines()
    assert len(lines) == 50
    prev = GENESIS_HASH
    for seq, line in enumerate(lines, start=1):
        doc = json.loads(line)
        assert doc["seq"] == seq and doc["prev_hash"] == prev
        # An auditor re-hashes a line without proxyd: drop the two hashes, dump canonically.
        body = {k: v for k, v in doc.items() if k not in ("prev_hash", "hash")}
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(bytes.fromhex(prev) + canon.encode()).hexdigest() == doc["hash"]
        assert doc["time"].endswith("Z") and isinstance(doc["fqans"], list)
        prev = doc["hash"]
    denied = io.StringIO()
    assert log.export_jsonl(denied, decision="deny", owner=OWNERS[0]) == 5
    assert [json.loads(x)["seq"] for x in denied.getvalue().splitlines()] == [10, 20, 30, 40, 50]


def _failed_writes() -> float:
    return REGISTRY.get_sample_value("proxyd_audit_write_failures_total") or 0.0


def test_append_failure_raises_audit_write_error(engine: Engine) -> None:
    log = AuditLog(engine)
    log.append(make_event(1))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_head"))
    before = _failed_writes()
    with pytest.raises(AuditWriteError, match="audit_head row is missing"):
        log.append(make_event(2))
    with (
        pytest.raises(AuditWriteError, match="audit_head row is missing"),
        write_transaction(engine) as conn,
    ):
        log.append(make_event(2), conn=conn)
    assert _failed_writes() == before + 2  # operators are alerted on this counter
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_events"))
        conn.execute(text("INSERT INTO audit_head VALUES (1, 1, :h)"), {"h": "0" * 64})
    with pytest.raises(AuditWriteError, match="could not be written") as info:
        log.append(make_event(2))
    assert "audit_events" in str(info.value) and "INSERT" not in str(info.value)


def test_append_many_is_all_or_nothing(engine: Engine) -> None:
    log = AuditLog(engine)
    fill(log, 3)
    # seq 4 already exists, so the batch fails and leaves neither rows nor head behind.
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_head SET last_seq = 2"))
    with pytest.raises(AuditWriteError):
        log.append_many([make_event(4), make_event(5)])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EVENTS)).scalar() == 3
        assert conn.execute(text("SELECT last_seq FROM audit_head")).scalar() == 2


def test_threads_keep_one_chain(engine: Engine) -> None:
    log = AuditLog(engine)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                log.append(make_event(n * 100 + i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    report = log.verify()
    assert report.ok and report.checked == 100, report


def _append_worker(url: str, worker: int, count: int, start: Any) -> None:
    """Runs in a spawned process: its own engine, its own connections."""
    eng = make_engine(url)
    try:
        log = AuditLog(eng)
        start.wait(60)
        for i in range(count):
            log.append(make_event(worker * 1000 + i))
    finally:
        eng.dispose()


@pytest.mark.parametrize("backend", store_fixtures.BACKENDS)
def test_processes_keep_one_chain(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    url = store_fixtures.database_url(request, backend, tmp_path)
    eng = make_engine(url)
    migrate(eng)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_worker, args=(url, n, 200, start)) for n in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
    try:
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        report = AuditLog(eng).verify(batch=128)
        assert report.ok and report.checked == 800, report
        with eng.connect() as conn:
            seqs = conn.execute(select(EVENTS.c.seq).order_by(EVENTS.c.seq)).scalars().all()
            details = set(conn.execute(select(EVENTS.c.detail)).scalars())
        assert seqs == list(range(1, 801))
        assert details == {make_event(n * 1000 + i).detail for n in range(4) for i in range(200)}
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        eng.dispose()


# --------------------------------------------------------------------------- values

_text = st.text(max_size=20)
_opt_text = st.none() | _text
_events = st.builds(
    AuditEvent,
    time=st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5, minutes=-30))]),
    ),
    actor_dn=_text,
    actor_kind=st.sampled_from(["user", "host", "pilot"]),
    peer=_text,
    operation=_text,
    rule=_text,
    decision=st.sampled_from(["allow", "deny"]),
    owner_dn=_opt_text,
    credential_name=_opt_text,
    serial=st.none() | st.integers(min_value=0, max_value=2**160).map(str),
    lifetime_s=st.none() | st.integers(min_value=0, max_value=2**31),
    fqans=st.lists(_text, max_size=3).map(tuple),
    detail=_opt_text,
)


@given(_events, st.integers(min_value=1, max_value=2**40))
def test_canonical_is_deterministic(event: AuditEvent, seq: int) -> None:
    first = canonical(seq, event)
    assert first == canonical(seq, AuditEvent(**{**event.__dict__}))
    assert json.loads(first)["seq"] == seq
    assert first != canonical(seq + 1, event)


@given(_events, _events)
def test_distinct_events_have_distinct_canonical_bytes(a: AuditEvent, b: AuditEvent) -> None:
    assert (canonical(7, a) == canonical(7, b)) == (a == b)


def test_event_validation() -> None:
    fields = make_event(1).__dict__
    with pytest.raises(ValueError, match="'allow' or 'deny'"):
        AuditEvent(**{**fields, "decision": "maybe"})
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditEvent(**{**fields, "time": dt.datetime(2025, 1, 1)})
    with pytest.raises(ValueError, match="decimal text"):
        AuditEvent(**{**fields, "serial": "0x1f"})
    with pytest.raises(ValueError, match="non-negative"):
        AuditEvent(**{**fields, "lifetime_s": -1})
    listed = AuditEvent(**{**fields, "fqans": ["/atlas"]})
    assert listed.fqans == ("/atlas",)
    shifted = AuditEvent(**{**fields, "time": T0.astimezone(dt.timezone(dt.timedelta(hours=9)))})
    assert shifted.time.tzinfo is dt.UTC and shifted.time == T0
    assert AuditEvent(**{**fields, "time": T0}).time == T0
    default = AuditEvent(**{k: v for k, v in fields.items() if k != "time"})
    assert default.time.tzinfo is dt.UTC


# --------------------------------------------------------------------------- group commit


def _commits(engine: Engine) -> list[int]:
    """A list that grows by one per committed transaction of `engine`."""
    from sqlalchemy import event

    seen: list[int] = []
    event.listen(engine, "commit", lambda conn: seen.append(1))
    return seen


@contextlib.contextmanager
def _commit_in_flight(group: LeaderBatcher[Any, Any]) -> Iterator[None]:
    """While this is open, a leader is (as far as the batcher knows) running a batch."""
    with group._changed:
        assert not group._leading
        group._leading = True
    try:
        yield
    finally:
        with group._changed:
            group._leading = False
            group._changed.notify_all()


def _append_while_the_writer_is_busy(
    log: AuditLog, events: list[AuditEvent]
) -> tuple[list[Any], list[BaseException | None]]:
    """Each event appended by its own thread, all queued while another write is in progress."""
    results: list[Any] = [None] * len(events)
    errors: list[BaseException | None] = [None] * len(events)

    def work(i: int) -> None:
        try:
            results[i] = log.append(events[i])
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(events))]
    batcher = log._group._batcher
    with _commit_in_flight(batcher):  # the fsync of another request
        for t in threads:
            t.start()
        for _ in range(500):
            if len(batcher._queue) == len(events):
                break
            threading.Event().wait(0.01)
        assert len(batcher._queue) == len(events)
    for t in threads:
        t.join(timeout=60)
    return results, errors


def test_concurrent_appends_share_one_transaction(engine: Engine) -> None:
    """Group commit: events queued during a write are committed together, each caller gets its own."""
    log = AuditLog(engine)
    log.append(make_event(1))
    commits = _commits(engine)
    events = [make_event(i) for i in range(2, 10)]
    results, errors = _append_while_the_writer_is_busy(log, events)
    assert errors == [None] * len(events)
    assert len(commits) == 1
    assert sorted(r.seq for r in results) == list(range(2, 10))
    assert all(r.event == e for r, e in zip(results, events, strict=True))
    report = log.verify()
    assert report.ok and report.checked == 9, report


def test_appends_under_concurrent_load_share_transactions(engine: Engine) -> None:
    """Busy threads appending in a loop share commits; each caller still gets its own events.

    A follower whose events a leader committed must not have to take a turn
    as writer to find out: when it had to, the turns made almost every batch
    a batch of one (1.1 callers per commit with 16 threads on PostgreSQL).
    """
    log = AuditLog(engine)
    commits = _commits(engine)
    per_thread, threads = 30, 8
    results: list[list[Any]] = [[] for _ in range(threads)]

    def work(i: int) -> None:
        for n in range(per_thread):
            results[i].append(log.append(make_event(i * per_thread + n)))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    total = per_thread * threads
    assert sorted(r.seq for rs in results for r in rs) == list(range(1, total + 1))
    assert all(
        r.event == make_event(i * per_thread + n)
        for i, rs in enumerate(results)
        for n, r in enumerate(rs)
    )
    assert len(commits) <= total // 3, f"{len(commits)} commits for {total} appends"
    report = log.verify()
    assert report.ok and report.checked == total, report


def test_a_lone_caller_does_not_wait_to_gather(engine: Engine) -> None:
    """Without concurrent callers a commit starts at once: the gathering wait is for load."""
    log = AuditLog(engine, gather_s=30.0)
    for i in range(3):
        t0 = time.monotonic()
        log.append(make_event(i))
        assert time.monotonic() - t0 < 10, "a lone append waited for company"


def _refuse_detail(engine: Engine, detail: str) -> None:
    """A database that refuses one event: what a constraint or a full table does to one insert."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON audit_events "
                f"WHEN NEW.detail = '{detail}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.detail = '{detail}' THEN RAISE EXCEPTION 'refused by test'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON audit_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )


def test_an_unwritable_event_fails_only_its_own_request(engine: Engine) -> None:
    """I6 per request: the refused event's caller gets AuditWriteError, the others are committed."""
    log = AuditLog(engine)
    _refuse_detail(engine, "poison")
    events = [make_event(i) for i in range(1, 7)]
    events[2] = dataclasses.replace(events[2], detail="poison")
    results, errors = _append_while_the_writer_is_busy(log, events)
    assert isinstance(errors[2], AuditWriteError) and "refused by test" in str(errors[2])
    assert [e for i, e in enumerate(errors) if i != 2] == [None] * 5
    assert sorted(r.seq for i, r in enumerate(results) if i != 2) == [1, 2, 3, 4, 5]
    report = log.verify()
    assert report.ok and report.checked == 5, report
    assert "poison" not in {s.event.detail for s in log.query(limit=10)}


def test_a_failed_commit_fails_every_request_of_the_batch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the commit itself fails nobody can know what was written: all callers fail (I6)."""
    log = AuditLog(engine)
    calls: list[int] = []

    def write(events: list[AuditEvent]) -> list[Any]:
        calls.append(len(events))
        raise RuntimeError("the disk went away during COMMIT")

    monkeypatch.setattr(log._group, "_write", write)
    events = [make_event(i) for i in range(4)]
    _, errors = _append_while_the_writer_is_busy(log, events)
    assert calls == [4]  # not retried one by one: it may have been written
    assert all(isinstance(e, AuditWriteError) for e in errors)
    assert all("disk went away" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 4  # one exception object per caller
