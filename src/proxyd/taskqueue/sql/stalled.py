"""The stalled sweep: matched or running tasks whose pilot went silent are marked stalled.

The sweep counts from the last heartbeat (the match sets one). It skips
rows a pilot is reporting on right now (SKIP LOCKED on PostgreSQL: the
report wins), releases the stalled attempts' reservations and charges the
wall time observed up to their last heartbeat, and appends a `task.stall`
event per task in the same write transaction (`writer.Writer.audit`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, update

from ...audit import AuditEvent
from ..base import RULE_TIMEOUT, queue_event
from ..fairshare import FairShare
from ..model import ACTIVE, SYSTEM_ACTOR, TaskState
from .rows import task_of
from .statements import TASKS, T
from .usage import charge, wall
from .writer import Writer


def mark_stalled(
    writer: Writer,
    fair: FairShare,
    now: dt.datetime,
    heartbeat_timeout: dt.timedelta,
    decided: Sequence[AuditEvent] = (),
) -> list[int]:
    """Mark the tasks silent for longer than `heartbeat_timeout` stalled; their ids."""
    limit = now - heartbeat_timeout
    reason = f"no heartbeat for more than {int(heartbeat_timeout.total_seconds())} s"
    with writer.transaction() as conn:
        rows = conn.execute(
            select(TASKS)
            .where(T.state.in_([s.value for s in ACTIVE]), T.heartbeat_at < limit)
            .order_by(T.id)
            .with_for_update(skip_locked=True)  # a pilot reporting right now wins
        ).all()
        stalled = [task_of(r) for r in rows]
        if stalled:
            conn.execute(
                update(TASKS)
                .where(T.id.in_([t.id for t in stalled]))
                .values(state=TaskState.STALLED.value, reason=reason)
            )
            charge(conn, fair, [(t, wall(t, None, t.heartbeat_at or now)) for t in stalled], now)
        events = [
            queue_event(
                "task.stall",
                RULE_TIMEOUT,
                SYSTEM_ACTOR,
                task=t,
                detail=f"task {t.id} stalled on pilot {t.pilot_id} at site {t.site}: {reason}",
            )
            for t in stalled
        ]
        writer.audit(conn, [*decided, *events])
    return [t.id for t in stalled]
