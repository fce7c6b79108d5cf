"""The auditor dashboard's aggregates: read-only SELECTs over the audit and task tables.

Only what no other module already answers: issuances and denials per UTC
day, and tasks per state, per pilot and newest first. Each function takes a
Connection, so the caller chooses the transaction (one snapshot per page)
and these stay free of policy: `proxyd.core.dashboard` decides first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from .models import AuditRow, TaskRow

__all__ = [
    "DayCounts",
    "PilotLoad",
    "TaskSummary",
    "daily_counts",
    "recent_tasks",
    "task_states",
    "tasks_by_pilot",
]


@dataclasses.dataclass(frozen=True)
class DayCounts:
    """One UTC day of the audit log: certificates issued and decisions denied."""

    issued: int = 0
    denied: int = 0


@dataclasses.dataclass(frozen=True)
class TaskSummary:
    """A task as the dashboard lists it: no payload, no credential, no secret."""

    id: int
    state: str
    owner_dn: str
    group_name: str
    priority: int
    attempts: int
    pilot_dn: str | None
    pilot_id: str | None
    site: str | None
    submitted_at: dt.datetime | None
    finished_at: dt.datetime | None
    reason: str | None


@dataclasses.dataclass(frozen=True)
class PilotLoad:
    """The tasks one pilot DN holds or last held at one site, per state, and its last match."""

    pilot: str
    site: str
    per_state: Mapping[str, int]
    last_match: dt.datetime | None

    @property
    def total(self) -> int:
        return sum(self.per_state.values())


def _day_of(dialect: str) -> ColumnElement[Any] | None:
    """The UTC calendar day of an audit row, in SQL, per dialect (None: count in Python)."""
    if dialect == "sqlite":  # stored as naive UTC text
        return func.date(AuditRow.time)
    if dialect == "postgresql":  # timestamptz: the UTC day, not the session zone's
        return func.date(func.timezone(literal_column("'UTC'"), AuditRow.time))
    return None


def daily_counts(conn: Connection, since: dt.datetime) -> dict[dt.date, DayCounts]:
    """Per UTC day since `since` (days without events are absent).

    An issuance is an allowed decision that carries a serial (a proxy was
    signed); a denial is any denied decision.
    """
    issued = and_(AuditRow.decision == "allow", AuditRow.serial.is_not(None))
    denied = AuditRow.decision == "deny"
    day = _day_of(conn.dialect.name)
    if day is None:
        # Another backend: its date functions and zones are unknown, so fold in Python.
        tally: dict[dt.date, tuple[int, int]] = {}
        rows = conn.execute(select(AuditRow.time, issued, denied).where(AuditRow.time >= since))
        for t, i, d in rows:
            key = t.astimezone(dt.UTC).date()
            a, b = tally.get(key, (0, 0))
            tally[key] = (a + int(bool(i)), b + int(bool(d)))
        return {key: DayCounts(a, b) for key, (a, b) in tally.items()}
    stmt = (
        select(
            day.label("day"),
            func.sum(case((issued, 1), else_=0)),
            func.sum(case((denied, 1), else_=0)),
        )
        .where(AuditRow.time >= since)
        .group_by(day)
    )
    counts: dict[dt.date, DayCounts] = {}
    for when, i, d in conn.execute(stmt):
        # SQLite's date() is text; PostgreSQL's is a date.
        key = when if isinstance(when, dt.date) else dt.date.fromisoformat(str(when)[:10])
        counts[key] = DayCounts(int(i or 0), int(d or 0))
    return counts


def task_states(conn: Connection) -> dict[str, int]:
    """How many tasks of the SQL queue are in each state (states without tasks are absent)."""
    rows = conn.execute(select(TaskRow.state, func.count()).group_by(TaskRow.state))
    return {str(state): int(n) for state, n in rows}


def recent_tasks(conn: Connection, limit: int) -> list[TaskSummary]:
    """The newest `limit` tasks of the SQL queue, newest first."""
    fields = [f.name for f in dataclasses.fields(TaskSummary)]
    stmt = (
        select(*(getattr(TaskRow, name) for name in fields))
        .order_by(TaskRow.id.desc())
        .limit(max(1, limit))
    )
    return [TaskSummary(**dict(zip(fields, row, strict=True))) for row in conn.execute(stmt)]


def tasks_by_pilot(conn: Connection) -> list[PilotLoad]:
    """Tasks per (pilot DN, site) that holds or last held them, sorted by pilot then site."""
    stmt = (
        select(
            TaskRow.pilot_dn,
            TaskRow.site,
            TaskRow.state,
            func.count(),
            func.max(TaskRow.matched_at),
        )
        .where(TaskRow.pilot_dn.is_not(None))
        .group_by(TaskRow.pilot_dn, TaskRow.site, TaskRow.state)
    )
    grouped: dict[tuple[str, str], tuple[dict[str, int], dt.datetime | None]] = {}
    for pilot, site, state, n, last in conn.execute(stmt):
        key = (str(pilot), site or "")
        per_state, seen = grouped.get(key, ({}, None))
        per_state[str(state)] = int(n)
        matched = _as_utc(last)
        grouped[key] = (per_state, max((t for t in (seen, matched) if t), default=None))
    return [PilotLoad(p, s, per, last) for (p, s), (per, last) in sorted(grouped.items())]


def _as_utc(value: object) -> dt.datetime | None:
    # An aggregate bypasses UTCDateTime: SQLite hands back naive text, PostgreSQL its zone.
    if value is None:
        return None
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
