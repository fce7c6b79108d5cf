"""[taskqueue.limits] in the matcher, on every backend: owners, sites, groups at a site.

Issue 20 item 1: "a user at the cap gets nothing while another user's task
waits; a site at its running limit gets no work". Limits count active
tasks (matched or running); a slot comes back when the attempt ends.
"""

from __future__ import annotations

import datetime as dt

from proxyd.tasklimits import SiteLimits, TaskLimits
from proxyd.taskqueue import Accounting, TaskFilter, TaskState
from tests.taskqueue.conftest import MakeHarness
from tests.taskqueue.support import PILOT, owner_dn, pilot, spec

ACC = Accounting(cpu_s=1.0, wall_s=2.0, exit_code=0)


def test_an_owner_at_the_cap_gets_nothing_while_another_owners_task_waits(
    make_harness: MakeHarness,
) -> None:
    q = make_harness(limits=TaskLimits(max_running_per_owner=1)).queue
    a1, a2 = q.submit_many([spec("alice", priority=9), spec("alice", priority=9)])
    b1 = q.submit(spec("bob", priority=0)).id
    first = q.match(pilot())
    assert first is not None and first.id == a1
    # alice's second task outranks bob's, but alice is at her cap: bob's runs.
    second = q.match(pilot())
    assert second is not None and second.id == b1
    assert q.match(pilot()) is None  # alice capped, bob has nothing queued
    assert q.get(a2) is not None and q.get(a2).state is TaskState.WAITING  # type: ignore[union-attr]
    q.start(a1, PILOT)
    q.complete(a1, PILOT, ACC)  # the slot comes back with the end of the attempt
    third = q.match(pilot())
    assert third is not None and third.id == a2


def test_a_site_at_its_running_limit_gets_no_work(make_harness: MakeHarness) -> None:
    limits = TaskLimits(sites={"site-a": SiteLimits(max_running=1)})
    q = make_harness(limits=limits).queue
    t1, t2 = q.submit_many([spec("alice"), spec("bob")])
    got = q.match(pilot("SITE-A"))
    assert got is not None and got.id == t1
    assert q.match(pilot("Site-A")) is None  # full, in any spelling
    other = q.match(pilot("SITE-B"))  # no limit there
    assert other is not None and other.id == t2
    q.fail(t1, PILOT, "lost")  # no max_attempts: failed for good, the slot is free
    q.submit(spec("carol"))
    again = q.match(pilot("SITE-A"))
    assert again is not None and again.spec.owner == owner_dn("carol")


def test_a_group_at_its_limit_at_a_site_leaves_room_for_other_groups(
    make_harness: MakeHarness,
) -> None:
    at_a = SiteLimits(max_running_per_group={"/dteam/analysis": 1})
    q = make_harness(limits=TaskLimits(sites={"site-a": at_a})).queue
    an1, an2 = q.submit_many([spec("alice", group="/dteam/analysis", priority=5)] * 2)
    plain = q.submit(spec("bob", priority=0)).id
    assert [q.match(pilot("site-a")).id for _ in range(2)] == [an1, plain]  # type: ignore[union-attr]
    assert q.match(pilot("site-a")) is None
    elsewhere = q.match(pilot("site-b"))
    assert elsewhere is not None and elsewhere.id == an2


def test_a_stalled_attempt_gives_its_slot_back(make_harness: MakeHarness) -> None:
    h = make_harness(limits=TaskLimits(max_running_per_owner=1))
    q = h.queue
    t1, t2 = q.submit_many([spec("alice"), spec("alice")])
    assert q.match(pilot()).id == t1  # type: ignore[union-attr]
    assert q.match(pilot()) is None
    h.clock.advance(3600)
    assert q.mark_stalled(dt.timedelta(minutes=30)) == [t1]
    got = q.match(pilot())
    assert got is not None and got.id == t2


def test_no_limits_limit_nothing(make_harness: MakeHarness) -> None:
    q = make_harness(limits=TaskLimits()).queue
    q.submit_many([spec("alice")] * 5)
    assert sum(q.match(pilot()) is not None for _ in range(6)) == 5
    assert q.count(TaskFilter(owner=owner_dn("alice"), states=frozenset({TaskState.MATCHED}))) == 5
