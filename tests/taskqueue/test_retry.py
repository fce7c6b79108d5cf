"""Rescheduling, on every backend (issue 20 item 2): a stalled or failed task is queued again
up to `max_attempts`, then failed with the reason; each step audited; the secret of an
earlier attempt is dead for the next one."""

from __future__ import annotations

import datetime as dt

from proxyd.taskqueue import Accounting, TaskState
from tests.taskqueue.conftest import MakeHarness
from tests.taskqueue.support import PILOT, owner_dn, pilot, spec

TIMEOUT = dt.timedelta(minutes=30)


def test_the_third_stall_fails_the_task(make_harness: MakeHarness) -> None:
    h = make_harness(max_attempts=3)
    q = h.queue
    task_id = q.submit(spec()).id
    for attempt in (1, 2, 3):
        m = q.match(pilot())
        assert m is not None and (m.id, m.attempts) == (task_id, attempt)
        q.start(task_id, PILOT)
        h.clock.advance(TIMEOUT.total_seconds() + 1)
        assert q.mark_stalled(TIMEOUT) == [task_id]
        t = q.get(task_id)
        assert t is not None and t.reason is not None
        if attempt < 3:
            assert t.state is TaskState.RESCHEDULED and t.pilot is None
            assert f"attempt {attempt} of 3 stalled" in t.reason and "queued again" in t.reason
        else:
            assert t.state is TaskState.FAILED and t.finished_at == h.clock.now
            assert "attempt 3 of 3 stalled" in t.reason and "no attempts left" in t.reason
    assert q.match(pilot()) is None
    assert [e.rule for e in h.events("task.stall")] == ["queue.heartbeat_timeout"] * 3
    retries = h.events("task.reschedule")
    assert [(e.rule, e.actor_dn, e.actor_kind) for e in retries] == [
        ("queue.retry", "<proxyd>", "system")
    ] * 2
    [final] = h.events("task.fail")
    assert (final.rule, final.owner_dn) == ("queue.max_attempts", owner_dn("alice"))


def test_a_failed_attempt_is_queued_again_and_its_secret_is_dead(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(max_attempts=2)
    q = h.queue
    task_id = q.submit(spec()).id
    first = q.match(pilot())
    assert first is not None and first.assignment_secret is not None
    old = first.assignment_secret
    q.start(task_id, PILOT)
    after = q.fail(task_id, PILOT, "worker node lost", Accounting(cpu_s=1.0, wall_s=5.0))
    assert after.state is TaskState.RESCHEDULED and after.attempts == 1
    assert after.reason == "attempt 1 of 2 failed: worker node lost; queued again"
    assert q.assignment(task_id, old) is None  # no pilot holds it now
    # The attempt's accounting says how it ended: failed.
    [total] = q.accounting("owner")
    assert (total.attempts, total.failed) == (1, 1)
    second = q.match(pilot())  # the same pilot DN gets attempt 2
    assert second is not None and second.attempts == 2
    held = q.assignment(task_id, old)
    assert held is not None and held.attempt == 2 and held.live and not held.instance_ok
    fresh = q.assignment(task_id, second.assignment_secret)
    assert fresh is not None and fresh.instance_ok
    last = q.fail(task_id, PILOT, "again")
    assert last.state is TaskState.FAILED
    assert last.reason == "attempt 2 of 2 failed: again (no attempts left)"
    assert [e.rule for e in h.events("task.fail")] == ["queue.pilot_report"] * 2
    assert [e.rule for e in h.events("task.reschedule")] == ["queue.retry"]


def test_an_explicit_reschedule_gives_one_more_attempt(make_harness: MakeHarness) -> None:
    h = make_harness(max_attempts=1)
    q = h.queue
    task_id = q.submit(spec()).id
    q.match(pilot())
    assert q.fail(task_id, PILOT, "bad input").state is TaskState.FAILED
    again = q.reschedule(task_id, by=owner_dn("alice"), reason="input fixed")
    assert again.state is TaskState.RESCHEDULED
    m = q.match(pilot())
    assert m is not None and m.attempts == 2
    [asked] = h.events("task.reschedule")
    assert (asked.rule, asked.actor_dn) == ("queue.request", owner_dn("alice"))


def test_without_max_attempts_a_stalled_task_stays_stalled(make_harness: MakeHarness) -> None:
    h = make_harness()
    q = h.queue
    task_id = q.submit(spec()).id
    q.match(pilot())
    h.clock.advance(TIMEOUT.total_seconds() + 1)
    assert q.mark_stalled(TIMEOUT) == [task_id]
    assert q.get(task_id).state is TaskState.STALLED  # type: ignore[union-attr]
    assert h.events("task.reschedule") == []
