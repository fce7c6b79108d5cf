"""Reading the log back: filtered pages of events, and their export as JSON lines."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, select

from .events import DECISIONS
from .rows import EVENTS

_T = EVENTS.c


def page_query(
    *,
    actor: str | None,
    owner: str | None,
    serial: str | None,
    decision: str | None,
    rule: str | None,
    operation: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    after_seq: int | None,
    newest_first: bool,
    task: int | None = None,
) -> Select[Any]:
    """The SELECT of one page of `AuditLog.query` (arguments as documented there)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    conditions = _filters(actor, owner, serial, decision, rule, operation, since, until)
    if task is not None:
        conditions.append(task_condition(task))
    if after_seq is not None:
        conditions.append(_T.seq < after_seq if newest_first else _T.seq > after_seq)
    return (
        select(*_T)
        .where(*conditions)
        .order_by(_T.seq.desc() if newest_first else _T.seq.asc())
        .limit(limit)
    )


def _filters(
    actor: str | None,
    owner: str | None,
    serial: str | None,
    decision: str | None,
    rule: str | None,
    operation: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[ColumnElement[bool]]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"{name} must be a timezone-aware datetime")
    if decision is not None and decision not in DECISIONS:
        raise ValueError(f"decision must be 'allow' or 'deny', not {decision!r}")
    equal: Sequence[tuple[Any, str | None]] = (
        (_T.actor_dn, actor),
        (_T.owner_dn, owner),
        (_T.serial, serial),
        (_T.decision, decision),
        (_T.rule, rule),
        (_T.operation, operation),
    )
    conditions: list[ColumnElement[bool]] = [col == v for col, v in equal if v is not None]
    if since is not None:
        conditions.append(_T.time >= since)
    if until is not None:
        conditions.append(_T.time < until)
    return conditions


def task_condition(task: int) -> ColumnElement[bool]:
    """Events about task `task`: every event the task queue and its payloads write names the
    task first in its detail ("task 12", "task 12: start", "task 12 (limited)", "task 12 to
    pilot ...")."""
    if not isinstance(task, int) or isinstance(task, bool) or task < 1:
        raise ValueError(f"task must be a task id (a positive integer), not {task!r}")
    name = f"task {task}"
    return or_(_T.detail == name, _T.detail.like(f"{name} %"), _T.detail.like(f"{name}:%"))
