"""The TaskQueue contract: every backend passes these, the SQL one and the in-memory example."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from proxyd.audit import AuditEvent
from proxyd.taskqueue import (
    Accounting,
    InvalidTask,
    NotAssigned,
    TaskFilter,
    TaskQueue,
    TaskState,
    TaskStateError,
    UnknownTask,
)
from tests.taskqueue.support import OTHER_PILOT, PILOT, Harness, owner_dn, pilot, spec

ACC = Accounting(cpu_s=50.0, wall_s=60.0, max_rss_kb=2048, exit_code=0)


def drain(queue: TaskQueue, **offers: object) -> list[int]:
    ids = []
    while (task := queue.match(pilot(**offers))) is not None:  # type: ignore[arg-type]
        ids.append(task.id)
    return ids


class TestContract:
    def test_is_a_task_queue(self, harness: Harness) -> None:
        assert isinstance(harness.queue, TaskQueue)

    def test_submit_get_query(self, harness: Harness) -> None:
        q = harness.queue
        a = q.submit(spec("alice", priority=3, sites_allowed=frozenset({"SITE-A"})))
        ids = q.submit_many([spec("bob"), spec("bob", group="/dteam/analysis")])
        assert len(ids) == 2 and a.id not in ids and ids[0] < ids[1]
        got = q.get(a.id)
        assert got is not None and got == a
        assert got.state is TaskState.WAITING and got.attempts == 0 and got.pilot is None
        assert got.spec.requirements.sites_allowed == {"site-a"}  # normalise_site
        assert got.submitted_at == harness.clock.now
        assert q.get(10**6) is None
        assert [t.id for t in q.query(TaskFilter(owner=owner_dn("bob")))] == ids
        assert [t.id for t in q.query(TaskFilter(group="/dteam/analysis"))] == ids[1:]
        assert [t.id for t in q.query(TaskFilter(limit=1, after_id=a.id))] == ids[:1]
        assert q.query(TaskFilter(states=frozenset({TaskState.RUNNING}))) == []

    def test_priority_then_submission_order(self, harness: Harness) -> None:
        q = harness.queue
        low, high1, high2 = q.submit_many([spec(priority=0), spec(priority=5), spec(priority=5)])
        assert drain(q) == [high1, high2, low]

    def test_life_cycle_done(self, harness: Harness) -> None:
        q, clock = harness.queue, harness.clock
        t = q.submit(spec())
        clock.advance(10)
        m = q.match(pilot(pilot_id="p-42"))
        assert m is not None and m.id == t.id and m.state is TaskState.MATCHED
        assert (m.pilot, m.pilot_id, m.site, m.attempts) == (PILOT, "p-42", "site-a", 1)
        assert m.matched_at == clock.now and m.started_at is None
        clock.advance(5)
        assert q.heartbeat(t.id, PILOT).state is TaskState.MATCHED
        r = q.start(t.id, PILOT)
        assert r.state is TaskState.RUNNING and r.started_at == clock.now
        clock.advance(60)
        hb = q.heartbeat(t.id, PILOT)
        assert hb.state is TaskState.RUNNING and hb.heartbeat_at == clock.now
        d = q.complete(t.id, PILOT, ACC)
        assert d.state is TaskState.DONE and d.finished_at == clock.now and d.pilot == PILOT
        with pytest.raises(TaskStateError) as err:
            q.heartbeat(t.id, PILOT)
        assert (err.value.state, err.value.event.value) == (TaskState.DONE, "heartbeat")
        assert "'done'" in str(err.value) and "'heartbeat'" in str(err.value)
        [match] = harness.events("task.match")
        [done] = harness.events("task.complete")
        assert (match.rule, match.decision, match.actor_dn, match.actor_kind) == (
            "queue.fair_share",
            "allow",
            PILOT,
            "pilot",
        )
        assert match.owner_dn == owner_dn("alice") and match.fqans == ("/dteam",)
        assert (done.rule, done.owner_dn) == ("queue.pilot_report", owner_dn("alice"))

    def test_only_the_assigned_pilot_reports(self, harness: Harness) -> None:
        q = harness.queue
        t = q.submit(spec())
        assert q.match(pilot()) is not None
        for call in (
            lambda: q.start(t.id, OTHER_PILOT),
            lambda: q.heartbeat(t.id, OTHER_PILOT),
            lambda: q.complete(t.id, OTHER_PILOT, ACC),
            lambda: q.fail(t.id, OTHER_PILOT, "nope"),
        ):
            with pytest.raises(NotAssigned, match="not assigned to"):
                call()
        with pytest.raises(UnknownTask):
            q.heartbeat(10**6, PILOT)
        with pytest.raises(TaskStateError):  # complete needs start first
            q.complete(t.id, PILOT, ACC)
        assert q.get(t.id).state is TaskState.MATCHED  # type: ignore[union-attr]

    def test_fail_reschedule_match_again(self, harness: Harness) -> None:
        q = harness.queue
        t = q.submit(spec())
        q.match(pilot())
        q.start(t.id, PILOT)
        f = q.fail(t.id, PILOT, "payload exited 3", ACC)
        assert f.state is TaskState.FAILED and f.reason == "payload exited 3"
        assert drain(q) == []
        r = q.reschedule(t.id, by=owner_dn("admin"), reason="retry")
        assert r.state is TaskState.RESCHEDULED and r.pilot is None and r.site is None
        assert q.assignment(t.id) is None
        m = q.match(pilot(dn=OTHER_PILOT, site="SITE-B"))
        assert m is not None and m.id == t.id and m.attempts == 2 and m.pilot == OTHER_PILOT
        with pytest.raises(NotAssigned):
            q.heartbeat(t.id, PILOT)  # the first pilot lost it
        [fail] = harness.events("task.fail")
        [resched] = harness.events("task.reschedule")
        assert fail.rule == "queue.pilot_report" and "payload exited 3" in (fail.detail or "")
        assert (resched.rule, resched.actor_dn, resched.actor_kind) == (
            "queue.request",
            owner_dn("admin"),
            "operator",
        )

    def test_cancel(self, harness: Harness) -> None:
        q = harness.queue
        waiting, running = q.submit_many([spec(priority=0), spec(priority=1)])
        assert q.match(pilot()).id == running  # type: ignore[union-attr]
        q.start(running, PILOT)
        assert q.cancel(waiting, by=owner_dn("alice")).state is TaskState.CANCELLED
        assert q.cancel(running, reason="user request").state is TaskState.CANCELLED
        with pytest.raises(TaskStateError, match="'cancelled' cannot 'heartbeat'"):
            q.heartbeat(running, PILOT)  # how the pilot learns: stop
        with pytest.raises(TaskStateError):
            q.cancel(waiting)
        with pytest.raises(TaskStateError):
            q.reschedule(waiting)
        assert drain(q) == []
        assert q.assignment(running).live is False  # type: ignore[union-attr]
        assert len(harness.events("task.cancel")) == 2

    @pytest.mark.parametrize(
        ("requirements", "offers", "fits"),
        [
            ({}, {}, True),
            ({"sites_allowed": frozenset({"SITE-A", "SITE-C"})}, {}, True),
            ({"sites_allowed": frozenset({"SITE-B"})}, {}, False),
            ({"sites_banned": frozenset({"SITE-A"})}, {}, False),
            ({"platform": "EL9-x86_64"}, {}, True),
            ({"platform": "EL8-x86_64"}, {}, False),
            ({"tags": frozenset({"cvmfs"})}, {"tags": frozenset({"cvmfs", "gpu"})}, True),
            ({"tags": frozenset({"cvmfs", "gpu"})}, {}, False),
            ({"cpu_time": 86400}, {}, True),
            ({"cpu_time": 86401}, {}, False),
            ({"memory_mb": 4096}, {}, True),
            ({"memory_mb": 8000}, {}, False),
        ],
    )
    def test_requirements(
        self,
        harness: Harness,
        requirements: dict[str, object],
        offers: dict[str, object],
        fits: bool,
    ) -> None:
        q = harness.queue
        picky = q.submit(spec(priority=9, **requirements))
        plain = q.submit(spec(priority=0))
        expected = [picky.id, plain.id] if fits else [plain.id]
        assert drain(q, **offers) == expected
        assert q.get(picky.id).state is (  # type: ignore[union-attr]
            TaskState.MATCHED if fits else TaskState.WAITING
        )

    def test_site_mask_takes_effect_at_once(self, harness: Harness) -> None:
        q = harness.queue
        ids = q.submit_many([spec() for _ in range(3)])
        q.set_site_mask("SITE-A", True, by=owner_dn("admin"), reason="downtime")
        assert q.masked_sites() == {"site-a"}
        assert q.match(pilot("SITE-A")) is None
        assert q.match(pilot("SITE-B")).id == ids[0]  # type: ignore[union-attr]
        q.set_site_mask("SITE-A", False, by=owner_dn("admin"))
        assert q.masked_sites() == frozenset()
        assert q.match(pilot("SITE-A")).id == ids[1]  # type: ignore[union-attr]
        masks, unmasks = harness.events("site.mask"), harness.events("site.unmask")
        assert len(masks) == 1 and len(unmasks) == 1
        assert (masks[0].rule, masks[0].decision, masks[0].actor_dn) == (
            "queue.request",
            "allow",
            owner_dn("admin"),
        )
        assert "site-a" in (masks[0].detail or "") and "downtime" in (masks[0].detail or "")

    def test_owner_ban_takes_effect_at_once(self, harness: Harness) -> None:
        q = harness.queue
        mallory = q.submit(spec("mallory", priority=9))
        alice = q.submit(spec("alice"))
        q.ban_owner(owner_dn("mallory"), by=owner_dn("admin"), reason="compromised")
        assert drain(q) == [alice.id]
        assert q.get(mallory.id).state is TaskState.WAITING  # type: ignore[union-attr]
        assert q.unban_owner(owner_dn("mallory"), by=owner_dn("admin")) is True
        assert q.unban_owner(owner_dn("mallory"), by=owner_dn("admin")) is False
        assert drain(q) == [mallory.id]
        [ban] = harness.events("owner.ban")
        unbans = harness.events("owner.unban")
        assert (ban.owner_dn, ban.rule, ban.actor_dn) == (
            owner_dn("mallory"),
            "queue.request",
            owner_dn("admin"),
        )
        # The second unban lifted nothing: nothing recorded (the caller records its refusal).
        assert len(unbans) == 1 and unbans[0].owner_dn == owner_dn("mallory")

    def test_owner_ban_patterns(self, harness: Harness) -> None:
        q = harness.queue
        q.submit_many([spec("mallory"), spec("mallet")])
        q.ban_owner(owner_dn("mall*"), by=owner_dn("admin"))
        assert drain(q) == []

    def test_assignment(self, harness: Harness) -> None:
        q, clock = harness.queue, harness.clock
        t = q.submit(spec(max_wall_s=3600))
        assert q.assignment(t.id) is None and q.assignment(10**6) is None
        q.match(pilot())
        a = q.assignment(t.id)
        assert a is not None and (a.pilot, a.task_id, a.owner, a.credential_name) == (
            PILOT,
            t.id,
            owner_dn("alice"),
            "default",
        )
        assert a.live and a.time_left == dt.timedelta(hours=1)
        clock.advance(100)
        q.start(t.id, PILOT)
        clock.advance(600)
        a = q.assignment(t.id)  # the budget runs from the match, not from the start
        assert a is not None and a.live and a.time_left == dt.timedelta(seconds=2900)
        clock.advance(2900)
        assert q.assignment(t.id).live is False  # type: ignore[union-attr]  # out of wall time
        clock.advance(-2900)
        q.complete(t.id, PILOT, ACC)
        a = q.assignment(t.id)
        assert a is not None and a.pilot == PILOT and not a.live

    def test_the_running_payloads_log_tail_then_the_attempts(self, harness: Harness) -> None:
        """Issue 20: the owner peeks at a running payload (the last heartbeat's tail); once the
        attempt ends, the tail its pilot reported with the end is what stays."""
        q = harness.queue
        task = q.submit(spec())
        assert q.log_tail(task.id) is None
        q.match(pilot())
        q.start(task.id, PILOT)
        q.heartbeat(task.id, PILOT, log_tail="event 1\n")
        assert q.log_tail(task.id) == "event 1\n"
        q.heartbeat(task.id, PILOT)  # a beat without output keeps the last one
        q.heartbeat(task.id, PILOT, log_tail="event 1\nevent 2\x00\n")
        assert q.log_tail(task.id) == "event 1\nevent 2\ufffd\n"  # NUL: what a database stores
        q.complete(task.id, PILOT, Accounting(cpu_s=1, wall_s=2, log_tail="all 10 events\n"))
        assert q.log_tail(task.id) == "all 10 events\n"

    def test_stalled_sweep(self, harness: Harness) -> None:
        q, clock = harness.queue, harness.clock
        quiet, chatty, late = q.submit_many([spec(), spec(), spec()])
        for _ in range(3):
            q.match(pilot())
        q.start(chatty, PILOT)
        q.start(late, PILOT)
        clock.advance(600)
        q.heartbeat(chatty, PILOT)
        clock.advance(300)
        assert q.mark_stalled(dt.timedelta(minutes=10)) == [quiet, late]
        assert q.get(quiet).state is TaskState.STALLED  # type: ignore[union-attr]
        assert q.get(chatty).state is TaskState.RUNNING  # type: ignore[union-attr]
        assert q.assignment(quiet).live is False  # type: ignore[union-attr]
        with pytest.raises(TaskStateError):
            q.heartbeat(quiet, PILOT)  # a stalled pilot does not come back to life
        assert q.complete(late, PILOT, ACC).state is TaskState.DONE  # but may report the end
        assert q.reschedule(quiet).state is TaskState.RESCHEDULED
        assert q.mark_stalled(dt.timedelta(minutes=10)) == []
        stalls = harness.events("task.stall")
        assert len(stalls) == 2 and {e.rule for e in stalls} == {"queue.heartbeat_timeout"}
        assert {e.actor_kind for e in stalls} == {"system"}

    def test_accounting(self, harness: Harness) -> None:
        q, clock = harness.queue, harness.clock
        a1, a2, b1 = q.submit_many(
            [
                spec("alice", sites_allowed=frozenset({"SITE-A"})),
                spec("alice", sites_allowed=frozenset({"SITE-B"})),
                spec("bob", group="/dteam/x", sites_allowed=frozenset({"SITE-C"})),
            ]
        )
        for task_id, site in ((a1, "SITE-A"), (a2, "SITE-B"), (b1, "SITE-C")):
            assert q.match(pilot(site)).id == task_id  # type: ignore[union-attr]
            q.start(task_id, PILOT)
        q.complete(a1, PILOT, Accounting(10.0, 20.0, 1000, 0))
        clock.advance(3600)
        q.fail(a2, PILOT, "segfault", Accounting(1.0, 2.0, 5000, 139))
        q.complete(b1, PILOT, Accounting(100.0, 200.0, 300, 0))
        by_owner = {t.key: t for t in q.accounting("owner")}
        alice = by_owner[owner_dn("alice")]
        assert (alice.attempts, alice.failed, alice.cpu_s, alice.wall_s, alice.max_rss_kb) == (
            2,
            1,
            11.0,
            22.0,
            5000,
        )
        assert [(t.key, t.attempts) for t in q.accounting("site")] == [
            ("site-a", 1),
            ("site-b", 1),
            ("site-c", 1),
        ]
        assert [t.key for t in q.accounting("group")] == ["/dteam", "/dteam/x"]
        later = q.accounting("owner", since=harness.clock.now)
        assert {t.key: t.attempts for t in later} == {owner_dn("alice"): 1, owner_dn("bob"): 1}
        assert q.accounting("owner", site="SITE-B")[0].wall_s == 2.0
        assert q.accounting("owner", until=harness.clock.now)[0].attempts == 1

    def test_fair_share_between_owners(self, harness: Harness) -> None:
        q = harness.queue
        q.submit_many([spec("alice") for _ in range(4)] + [spec("bob") for _ in range(4)])
        owners = [q.get(i).spec.owner for i in drain(q)]  # type: ignore[union-attr]
        assert owners == [owner_dn("alice"), owner_dn("bob")] * 4

    def test_decided_events_go_with_the_change(self, harness: Harness) -> None:
        """The policy's decision, passed as `decided`, is appended with the change (also a
        change that found nothing to do), and not when the call raises."""
        q = harness.queue

        def decision(rule: str) -> AuditEvent:
            return AuditEvent(
                actor_dn=owner_dn("admin"),
                actor_kind="operator",
                peer="",
                operation="test_decided",
                rule=rule,
                decision="allow",
            )

        t = q.submit(spec(platform="EL9-x86_64"), decided=[decision("submit")])
        assert q.match(pilot(platform="EL7-x86_64"), decided=[decision("nothing")]) is None
        assert q.cancel(t.id, decided=[decision("cancel")]).state is TaskState.CANCELLED
        with pytest.raises(TaskStateError):
            q.cancel(t.id, decided=[decision("refused")])
        assert not q.unban_owner(
            owner_dn("nobody"), by=owner_dn("admin"), decided=[decision("unban")]
        )
        assert [e.rule for e in harness.events("test_decided")] == [
            "submit",
            "nothing",
            "cancel",
        ]  # an unban that lifts nothing appends nothing: the caller records its refusal


# --- issue 15 -------------------------------------------------------------------------------------


def test_a_match_hands_out_a_secret_once_and_keeps_only_its_digest(harness: Harness) -> None:
    """Payloads are bound to one pilot instance: a sibling sharing the DN lacks the secret."""
    q = harness.queue
    t = q.submit(spec())
    m = q.match(pilot())
    assert m is not None and m.assignment_secret is not None
    secret = m.assignment_secret
    stored = q.get(t.id)
    assert stored is not None and stored.assignment_secret is None  # never read back
    assert stored.secret_digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(m)
    assert q.assignment(t.id, secret).instance_ok is True  # type: ignore[union-attr]
    assert q.assignment(t.id, secret[:-1]).instance_ok is False  # type: ignore[union-attr]
    assert q.assignment(t.id).instance_ok is False  # type: ignore[union-attr]
    for s in q.query(TaskFilter()):
        assert s.assignment_secret is None
    # Queued again and matched again: the earlier attempt's secret is dead.
    q.reschedule(t.id, reason="operator")
    assert q.get(t.id).secret_digest is None  # type: ignore[union-attr]
    again = q.match(pilot(pilot_id="pilot-2"))
    assert again is not None and again.assignment_secret not in (None, secret)
    assert q.assignment(t.id, secret).instance_ok is False  # type: ignore[union-attr]
    assert q.assignment(t.id, again.assignment_secret).instance_ok is True  # type: ignore[union-attr]


def test_the_wall_time_budget_runs_from_the_match(harness: Harness) -> None:
    """Finding 2 (I2/I4): a pilot that never starts cannot keep its assignment alive with
    heartbeats; once max_wall_s has passed since the match, the assignment is over."""
    q, clock = harness.queue, harness.clock
    t = q.submit(spec(max_wall_s=600))
    m = q.match(pilot())
    assert m is not None
    lefts = []
    for _ in range(5):
        clock.advance(119)
        assert q.heartbeat(t.id, PILOT).state is TaskState.MATCHED
        a = q.assignment(t.id, m.assignment_secret)
        assert a is not None
        lefts.append(a.time_left.total_seconds())
    assert lefts == [481, 362, 243, 124, 5]
    clock.advance(5)
    a = q.assignment(t.id, m.assignment_secret)
    assert a is not None and a.time_left == dt.timedelta(0) and a.live is False


def test_site_names_are_one_spelling_everywhere(harness: Harness) -> None:
    """Finding 4 (I5): masks, requirements, matching and accounting fold case and spaces."""
    q = harness.queue
    picky, plain = q.submit_many([spec(priority=5, sites_allowed=frozenset({"Site-B"})), spec()])
    q.set_site_mask("SITE-A", True, by=owner_dn("admin"), reason="downtime")
    assert q.masked_sites() == {"site-a"}
    for spelling in ("site-a", " SITE-A", "Site-A\n", "ＳＩＴＥ-Ａ"):
        assert q.match(pilot(spelling)) is None, spelling
    m = q.match(pilot("site-b "))
    assert m is not None and m.id == picky and m.site == "site-b"
    q.set_site_mask(" site-A ", False, by=owner_dn("admin"))
    assert q.masked_sites() == frozenset()
    assert q.match(pilot("SITE-A")).id == plain  # type: ignore[union-attr]
    q.start(picky, PILOT)
    q.complete(picky, PILOT, ACC)
    assert [t.key for t in q.accounting("site")] == ["site-b"]
    assert q.accounting("owner", site="SITE-B")[0].attempts == 1
    assert [t.id for t in q.query(TaskFilter(site="SITE-B"))] == [picky]
    with pytest.raises(InvalidTask, match="control or formatting"):
        q.set_site_mask("SITE-A\nSITE-B", True, by=owner_dn("admin"))
