"""The stalled sweep: matched or running tasks whose pilot went silent are marked stalled.

The sweep counts from the last heartbeat (the match sets one). It skips
rows a pilot is reporting on right now (SKIP LOCKED on PostgreSQL: the
report wins), releases the stalled attempts' reservations and charges the
wall time observed up to their last heartbeat, and appends a `task.stall`
event per task in the same write transaction (`writer.Writer.audit`).

With `max_attempts` (`model.retry_outcome`) a stalled task does not stay
stalled: in the same transaction it is queued again (`task.reschedule`,
`queue.retry`) while it has attempts left, and failed for good on its last
attempt (`task.fail`, `queue.max_attempts`). Either way its pilot loses it,
and the secret of the attempt is dead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, update

from ...audit import AuditEvent
from ..base import RULE_LAST_ATTEMPT, RULE_TIMEOUT, queue_event
from ..fairshare import FairShare
from ..model import ACTIVE, SYSTEM_ACTOR, Task, TaskState, retry_outcome
from .rows import task_of
from .statements import CLEARED, CLEARED_TIMES, TASKS, T
from .transitions import retry_event
from .usage import charge, wall
from .writer import Writer


def mark_stalled(
    writer: Writer,
    fair: FairShare,
    now: dt.datetime,
    heartbeat_timeout: dt.timedelta,
    decided: Sequence[AuditEvent] = (),
    max_attempts: int | None = None,
) -> list[int]:
    """Mark the tasks silent for longer than `heartbeat_timeout` stalled (then queue them
    again or fail them, with `max_attempts`); their ids."""
    limit = now - heartbeat_timeout
    silence = f"no heartbeat for more than {int(heartbeat_timeout.total_seconds())} s"
    with writer.transaction() as conn:
        rows = conn.execute(
            select(TASKS)
            .where(T.state.in_([s.value for s in ACTIVE]), T.heartbeat_at < limit)
            .order_by(T.id)
            .with_for_update(skip_locked=True)  # a pilot reporting right now wins
        ).all()
        stalled = [task_of(r) for r in rows]
        events: list[AuditEvent] = []
        for t in stalled:
            outcome = retry_outcome(t.attempts, max_attempts)
            of = f"attempt {t.attempts} of {max_attempts}"
            values: dict[str, object]
            if outcome is TaskState.RESCHEDULED:
                reason = f"{of} stalled: {silence}; queued again"
                values = {**CLEARED, **CLEARED_TIMES, "finished_at": None}
            elif outcome is TaskState.FAILED:
                reason = f"{of} stalled: {silence} (no attempts left)"
                values = {"finished_at": now}
            else:
                reason, values = silence, {}
            state = outcome or TaskState.STALLED
            after = task_of(
                conn.execute(
                    update(TASKS)
                    .where(T.id == t.id)
                    .values(state=state.value, reason=reason, **values)
                    .returning(*TASKS.c)
                ).one()
            )
            events += _events(t, after, silence)
        if stalled:
            charge(conn, fair, [(t, wall(t, None, t.heartbeat_at or now)) for t in stalled], now)
        writer.audit(conn, [*decided, *events])
    return [t.id for t in stalled]


def _events(before: Task, after: Task, silence: str) -> list[AuditEvent]:
    """task.stall, then what became of the task (queued again, or failed for good)."""
    events = [
        queue_event(
            "task.stall",
            RULE_TIMEOUT,
            SYSTEM_ACTOR,
            task=before,
            detail=f"task {before.id} stalled on pilot {before.pilot_id} at site {before.site}: "
            f"{silence}",
        )
    ]
    if after.state is TaskState.RESCHEDULED:
        events.append(retry_event(after, TaskState.STALLED))
    elif after.state is TaskState.FAILED:
        detail = f"task {after.id} stalled -> failed: {after.reason}"
        events.append(
            queue_event("task.fail", RULE_LAST_ATTEMPT, SYSTEM_ACTOR, task=after, detail=detail)
        )
    return events
