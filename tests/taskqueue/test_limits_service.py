"""Limits and rescheduling through `TaskService` (policy decides, the gate audits): a priority
above the allowed range and a full queue are refused by rule; the pilot of an earlier
attempt gets nothing of the next one after the stalled sweep queued the task again."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from proxyd.repository import Denied
from proxyd.tasklimits import TaskLimits
from proxyd.taskqueue import TaskFilter, TaskState
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskConflict, TaskService
from tests.taskqueue.test_payload import ALICE, World, ids, task_of, world

__all__ = ["ids", "world"]  # the fixtures of test_payload, shared


def _limited(world: World, monkeypatch: pytest.MonkeyPatch, limits: TaskLimits) -> TaskService:
    config = world.repo.config
    taskqueue = dataclasses.replace(config.taskqueue, limits=limits)
    monkeypatch.setattr(world.repo, "config", dataclasses.replace(config, taskqueue=taskqueue))
    return world.service


def _denials(world: World, rule: str) -> list[str]:
    return [
        s.event.detail or ""
        for s in world.repo.audit.query(operation="task_submit", limit=100)
        if s.event.decision == "deny" and s.event.rule == rule
    ]


def test_a_priority_above_the_allowed_range_is_refused_by_rule(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = TaskLimits(priority={"/dteam": (0, 10), "/dteam/Role=production": (0, 100)})
    service = _limited(world, monkeypatch, limits)
    alice = world.who("alice")
    ok = service.submit(alice, dataclasses.replace(task_of(ALICE, "alice"), priority=10))
    assert ok.spec.priority == 10
    with pytest.raises(Denied) as err:
        service.submit(alice, dataclasses.replace(task_of(ALICE, "alice"), priority=11))
    assert err.value.rule == "task.priority_not_allowed"
    assert "priority 11 is outside 0..10" in err.value.message
    assert len(_denials(world, "task.priority_not_allowed")) == 1
    assert world.queue.count(TaskFilter(owner=ALICE)) == 1  # nothing queued


def test_an_owner_with_a_full_queue_is_refused_by_rule(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _limited(world, monkeypatch, TaskLimits(max_queued_per_owner=2))
    alice = world.who("alice")
    for _ in range(2):
        service.submit(alice, task_of(ALICE, "alice"))
    with pytest.raises(Denied) as err:
        service.submit(alice, task_of(ALICE, "alice"))
    assert err.value.rule == "task.owner_queue_full"
    world.match()  # one leaves the queue: room for one more
    service.submit(alice, task_of(ALICE, "alice"))
    assert len(_denials(world, "task.owner_queue_full")) == 1


def test_the_pilot_of_a_stalled_attempt_gets_nothing_of_the_next(world: World) -> None:
    queue = SqlTaskQueue(
        world.repo.engine, audit=world.repo.audit, clock=world.clock, max_attempts=3
    )
    world = dataclasses.replace(world, queue=queue)
    task = queue.submit(task_of(ALICE, "alice"))
    world.match()
    first = world.secrets[task.id]
    world.handoff("pilot", task.id, first)  # attempt 1's proxy
    world.clock.advance(3600 + 1)  # the pilot was killed: no more heartbeats
    assert queue.mark_stalled(dt.timedelta(hours=1)) == [task.id]
    assert queue.get(task.id).state is TaskState.RESCHEDULED  # type: ignore[union-attr]
    assert world.denied("pilot", task.id, first) == "payload.not_assigned"  # nobody holds it
    world.match()  # attempt 2, the same pilot DN
    second = world.secrets[task.id]
    with pytest.raises(Denied, match=r"attempt 2\)") as err:
        world.handoff("pilot", task.id, first)
    assert err.value.rule == "payload.wrong_instance"
    world.handoff("pilot", task.id, second)


def test_owners_and_admins_reschedule_others_do_not(world: World) -> None:
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    with pytest.raises(Denied) as err:
        world.service.reschedule(world.who("bob"), task.id)
    assert err.value.rule == "task.not_owner"
    again = world.service.reschedule(world.who("alice"), task.id, "input fixed")
    assert again.state is TaskState.RESCHEDULED
    assert again.reason == "rescheduled by request: input fixed"
    with pytest.raises(TaskConflict):  # queued already
        world.service.reschedule(world.who("alice"), task.id)
    [allow] = [
        s.event
        for s in world.repo.audit.query(operation="task_reschedule", limit=10)
        if s.event.decision == "allow"
    ]
    assert allow.rule == "task.owner"
    [done] = [s.event for s in world.repo.audit.query(operation="task.reschedule", limit=10)]
    assert (done.rule, done.actor_dn) == ("queue.request", ALICE)
