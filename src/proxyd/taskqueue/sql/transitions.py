"""The life cycle: one event on one task, checked against `model.TRANSITIONS`, audited with it.

A pilot's reports (start, heartbeat, complete, fail) and an operator's or
owner's requests (reschedule, cancel) each lock the task's row, check the
step with `model.next_state`, write the new state, settle the fair-share
usage of an attempt that ended and its accounting, and append the audit
event in the same write transaction (`writer.Writer.audit`). Start and
heartbeat are progress, not decisions: they have no event of their own.

With `max_attempts`, a failed attempt is followed at once, in the same
transaction, by its retry (`model.retry_outcome`): the task is queued again
(rescheduled, by proxyd, `queue.retry`) while it has attempts left; the
failure of its last attempt is final.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from ...audit import AuditEvent
from ..base import RULE_PILOT_REPORT, RULE_REQUEST, RULE_RETRY, queue_event
from ..fairshare import FairShare
from ..model import (
    ACTIVE,
    LOG_TAIL_MAX,
    SYSTEM_ACTOR,
    Accounting,
    NotAssigned,
    Task,
    TaskEvent,
    TaskState,
    UnknownTask,
    free_text,
    next_state,
    retry_outcome,
)
from .rows import task_of
from .statements import ACCOUNTING, CLEARED, CLEARED_TIMES, TASKS, T
from .usage import charge, wall
from .writer import Writer


class LifeCycle:
    """Life-cycle events of `SqlTaskQueue` (see the module docstring)."""

    def __init__(
        self,
        writer: Writer,
        fair: FairShare,
        clock: Callable[[], dt.datetime],
        max_attempts: int | None = None,
    ) -> None:
        self._writer = writer
        self._fair = fair
        self._clock = clock
        self._max_attempts = max_attempts

    def apply(
        self,
        task_id: int,
        event: TaskEvent,
        *,
        pilot: str | None = None,
        by: str | None = None,
        accounting: Accounting | None = None,
        reason: str | None = None,
        decided: Sequence[AuditEvent] = (),
        log_tail: str | None = None,
    ) -> Task:
        """One life-cycle event on one task; `decided` and its own event commit with it."""
        now = self._clock()
        with self._writer.transaction() as conn:
            row = conn.execute(select(TASKS).where(T.id == task_id).with_for_update()).one_or_none()
            if row is None:
                raise UnknownTask(task_id)
            before = task_of(row)
            if pilot is not None and before.pilot != pilot:
                raise NotAssigned(task_id, pilot, before.pilot)
            state = next_state(before.state, event, task_id)
            retry = retry_outcome(before.attempts, self._max_attempts)
            if event is not TaskEvent.FAIL or state is not TaskState.FAILED:
                retry = None
            if retry is not None and reason is not None:
                of = f"attempt {before.attempts} of {self._max_attempts}"
                requeued = retry is TaskState.RESCHEDULED
                reason = f"{of} failed: {reason}" + (
                    "; queued again" if requeued else " (no attempts left)"
                )
            final = TaskState.RESCHEDULED if retry is TaskState.RESCHEDULED else state
            changes: dict[str, Any] = {"state": final.value}
            if event is TaskEvent.START:
                changes.update(started_at=now, heartbeat_at=now)
            elif event is TaskEvent.HEARTBEAT:
                changes["heartbeat_at"] = now
                if log_tail is not None:
                    changes["live_log"] = free_text(log_tail, LOG_TAIL_MAX)
            if final not in ACTIVE:
                changes["live_log"] = None  # the attempt's accounting keeps its final tail
            if final in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED):
                changes["finished_at"] = now
            if final is TaskState.RESCHEDULED:
                changes.update(**CLEARED, **CLEARED_TIMES, finished_at=None)
            if reason is not None:
                changes["reason"] = free_text(reason[:4000], 4000)
            after = task_of(
                conn.execute(
                    update(TASKS).where(T.id == task_id).values(**changes).returning(*TASKS.c)
                ).one()
            )
            if before.state in ACTIVE and state not in ACTIVE:
                charge(conn, self._fair, [(before, wall(before, accounting, now))], now)
            if accounting is not None and before.pilot is not None:
                _record_accounting(conn, before, state, accounting, now)
            shown = after if final is state else dataclasses.replace(after, state=state)
            own = _transition_event(before, shown, event, pilot=pilot, by=by, accounting=accounting)
            if final is not state:
                own.append(retry_event(after, state))
            self._writer.audit(conn, [*decided, *own])
        return after


def _transition_event(
    before: Task,
    after: Task,
    event: TaskEvent,
    *,
    pilot: str | None,
    by: str | None,
    accounting: Accounting | None,
) -> list[AuditEvent]:
    """The audit event of a step ([] for progress: start and heartbeat)."""
    if event in (TaskEvent.START, TaskEvent.HEARTBEAT):
        return []
    detail = f"task {after.id} {before.state.value} -> {after.state.value}"
    if before.pilot is not None and pilot is None:
        detail += f" (was on pilot {before.pilot_id} at site {before.site})"
    if after.reason:
        detail += f": {after.reason}"
    if accounting is not None:
        detail += (
            f"; exit {accounting.exit_code}, cpu {accounting.cpu_s:.0f} s, "
            f"wall {accounting.wall_s:.0f} s"
        )
    operation = f"task.{event.value}"
    if pilot is not None:
        return [
            queue_event(
                operation, RULE_PILOT_REPORT, pilot, actor_kind="pilot", task=after, detail=detail
            )
        ]
    return [queue_event(operation, RULE_REQUEST, by or SYSTEM_ACTOR, task=after, detail=detail)]


def retry_event(task: Task, was: TaskState) -> AuditEvent:
    """proxyd queued `task` again after its attempt ended `was` (stalled or failed)."""
    detail = f"task {task.id} {was.value} -> {task.state.value}: {task.reason}"
    return queue_event("task.reschedule", RULE_RETRY, SYSTEM_ACTOR, task=task, detail=detail)


def _record_accounting(
    conn: Connection, task: Task, outcome: TaskState, accounting: Accounting, now: dt.datetime
) -> None:
    conn.execute(
        insert(ACCOUNTING).values(
            task_id=task.id,
            attempt=task.attempts,
            owner_dn=task.spec.owner,
            vo=task.spec.vo,
            group_name=task.spec.group,
            site=task.site or "",
            pilot_dn=task.pilot or "",
            outcome=outcome.value,
            cpu_s=accounting.cpu_s,
            wall_s=accounting.wall_s,
            max_rss_kb=accounting.max_rss_kb,
            exit_code=accounting.exit_code,
            log_tail=accounting.log_tail or None,
            finished_at=now,
        )
    )
