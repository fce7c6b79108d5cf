"""`SqlTaskQueue`: the task queue in proxyd's database, on SQLite or PostgreSQL.

It puts the package's parts together: `matcher` (matching, in batches),
`transitions` (the life cycle), `stalled` (the sweep), `sites` (the site
mask) and, here, submission, owner bans (`store.bans`) and the reads.
Every change is one write transaction that ends with its audit events
(`writer`, I6), after the events of the decision that led to it
(`decided`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, insert, select
from sqlalchemy.engine import URL

from ...audit import AuditEvent, AuditLog
from ...config import Config
from ...policy import Assignment
from ...store.bans import add_ban, remove_ban
from ...store.db import make_engine, migrate, require_proxyd_engine
from ...tasklimits import TaskLimits
from ..base import RULE_REQUEST, AccountingKey, AuditSink, named_task, queue_event
from ..fairshare import FairShare
from ..model import (
    SYSTEM_ACTOR,
    Accounting,
    AccountingTotal,
    PilotCapabilities,
    Task,
    TaskEvent,
    TaskFilter,
    TaskSpec,
    TaskState,
    assignment_of,
    normalise_site,
)
from . import sites, stalled
from .matcher import Matcher
from .rows import spec_values, task_of
from .statements import TASKS, A, T
from .transitions import LifeCycle
from .usage import ensure_pairs
from .writer import Writer

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SqlTaskQueue:
    """The task queue in proxyd's database (tables of migration 0002, bans in `bans`).

    `audit` receives one event per match, completion, failure, stall,
    reschedule, cancellation, site mask and ban change (default: the
    audit log in the same database). `banned_dns` adds static owner bans
    (the config's `policy.banned_dns`) to the runtime ones. `page_size`
    and `max_pages` bound the candidate scan per (group, owner).
    `match_batch` is the most matches one transaction serves when threads
    ask at the same moment (1: every match alone). `limits` are the running
    limits the matcher honours (`[taskqueue.limits]`); with `max_attempts`, a
    stalled or failed task is queued again until it has been matched that
    many times, then failed (None: the queue reschedules nothing by itself).
    """

    name = "sql"

    def __init__(
        self,
        engine: Engine,
        *,
        audit: AuditSink | None = None,
        fair_share: FairShare | None = None,
        banned_dns: Sequence[str] = (),
        page_size: int = 2,
        max_pages: int = 16,
        match_batch: int = 32,
        clock: Clock = _utcnow,
        limits: TaskLimits | None = None,
        max_attempts: int | None = None,
    ) -> None:
        require_proxyd_engine(engine)
        if page_size < 1 or max_pages < 1 or match_batch < 1:
            raise ValueError("page_size, max_pages and match_batch must be at least 1")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        self._max_attempts = max_attempts
        self._engine = engine
        self._writer = Writer(engine, audit if audit is not None else AuditLog(engine))
        self._fair = fair_share or FairShare()
        self._clock = clock
        self._matcher = Matcher(
            self._writer,
            self._fair,
            banned_dns,
            page_size=page_size,
            max_pages=max_pages,
            match_batch=match_batch,
            clock=clock,
            limits=limits,
        )
        self._life = LifeCycle(self._writer, self._fair, clock, max_attempts)

    @classmethod
    def from_source(cls, source: Engine | Config | URL | str, **options: Any) -> SqlTaskQueue:
        """The `load_taskqueue("sql", source)` factory: an engine as is, or a config or URL
        (then the database is opened and migrated, and a config's banned DNs, limits and
        max_attempts apply)."""
        if isinstance(source, Engine):
            return cls(source, **options)
        if isinstance(source, Config):
            options.setdefault("banned_dns", source.policy.banned_dns)
            options.setdefault("limits", source.taskqueue.limits)
            options.setdefault("max_attempts", source.taskqueue.max_attempts)
            source = source.server.database
        engine = make_engine(source)
        migrate(engine)
        return cls(engine, **options)

    # --- submitting -----------------------------------------------------------------------------

    def submit(self, spec: TaskSpec, *, decided: Sequence[AuditEvent] = ()) -> Task:
        """Queue a task; `decided` names it (`named_task`), inserted in one transaction."""
        now = self._clock()
        [task_id] = self._insert([spec], now, decided)
        return Task(id=task_id, spec=spec, state=TaskState.WAITING, submitted_at=now)

    def submit_many(
        self, specs: Sequence[TaskSpec], *, decided: Sequence[AuditEvent] = ()
    ) -> list[int]:
        if not specs:
            self._writer.audit_alone(decided)
            return []
        return self._insert(specs, self._clock(), decided)

    def _insert(
        self, specs: Sequence[TaskSpec], now: dt.datetime, decided: Sequence[AuditEvent]
    ) -> list[int]:
        for spec in specs:
            if not isinstance(spec, TaskSpec):
                raise TypeError(f"submit takes TaskSpec values, not {type(spec).__name__}")
        rows = [
            {**spec_values(s), "state": "waiting", "attempts": 0, "submitted_at": now}
            for s in specs
        ]
        with self._writer.transaction() as conn:
            ensure_pairs(conn, {(s.group, s.owner) for s in specs}, now)
            result = conn.execute(insert(TASKS).returning(T.id, sort_by_parameter_order=True), rows)
            ids = list(result.scalars())
            if len(ids) == 1:
                decided = named_task(decided, ids[0])
            self._writer.audit(conn, decided)
        return ids

    # --- matching and the life cycle ---------------------------------------------------------

    def match(
        self, capabilities: PilotCapabilities, *, decided: Sequence[AuditEvent] = ()
    ) -> Task | None:
        """Claim the best task `capabilities` can run, and audit it; None if there is none
        (`matcher`). The claim, `decided` and the `task.match` event commit together."""
        return self._matcher.match(capabilities, decided)

    def start(self, task_id: int, pilot: str, *, decided: Sequence[AuditEvent] = ()) -> Task:
        return self._life.apply(task_id, TaskEvent.START, pilot=pilot, decided=decided)

    def heartbeat(
        self,
        task_id: int,
        pilot: str,
        *,
        decided: Sequence[AuditEvent] = (),
        log_tail: str | None = None,
    ) -> Task:
        return self._life.apply(
            task_id, TaskEvent.HEARTBEAT, pilot=pilot, decided=decided, log_tail=log_tail
        )

    def complete(
        self,
        task_id: int,
        pilot: str,
        accounting: Accounting,
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        if not isinstance(accounting, Accounting):
            raise TypeError("complete needs an Accounting")
        return self._life.apply(
            task_id, TaskEvent.COMPLETE, pilot=pilot, accounting=accounting, decided=decided
        )

    def fail(
        self,
        task_id: int,
        pilot: str,
        reason: str,
        accounting: Accounting | None = None,
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        return self._life.apply(
            task_id,
            TaskEvent.FAIL,
            pilot=pilot,
            accounting=accounting,
            reason=reason,
            decided=decided,
        )

    def reschedule(
        self,
        task_id: int,
        *,
        by: str = SYSTEM_ACTOR,
        reason: str = "",
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        return self._life.apply(
            task_id, TaskEvent.RESCHEDULE, by=by, reason=reason or None, decided=decided
        )

    def cancel(
        self,
        task_id: int,
        *,
        by: str = SYSTEM_ACTOR,
        reason: str = "",
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        return self._life.apply(
            task_id, TaskEvent.CANCEL, by=by, reason=reason or None, decided=decided
        )

    def mark_stalled(
        self, heartbeat_timeout: dt.timedelta, *, decided: Sequence[AuditEvent] = ()
    ) -> list[int]:
        return stalled.mark_stalled(
            self._writer, self._fair, self._clock(), heartbeat_timeout, decided, self._max_attempts
        )

    # --- site mask and owner bans -------------------------------------------------------------

    def set_site_mask(
        self,
        site: str,
        masked: bool,
        by: str,
        reason: str = "",
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> None:
        sites.set_site_mask(self._writer, self._clock(), site, masked, by, reason, decided)

    def masked_sites(self) -> frozenset[str]:
        return sites.masked_sites(self._engine)

    def ban_owner(
        self, dn: str, by: str, reason: str = "", *, decided: Sequence[AuditEvent] = ()
    ) -> None:
        detail = f"owner {dn} banned" + (f": {reason}" if reason else "")
        with self._writer.transaction() as conn:
            # ValueError for a pattern the table cannot hold, before anything is written.
            add_ban(conn, "user", dn, by, reason or "banned from the task queue", now=self._clock())
            self._writer.audit(conn, [*decided, _owner_event("owner.ban", by, dn, detail)])

    def unban_owner(self, dn: str, by: str, *, decided: Sequence[AuditEvent] = ()) -> bool:
        with self._writer.transaction() as conn:
            removed = remove_ban(conn, "user", dn)
            if removed:  # nothing to lift: nothing is recorded, the caller records its refusal
                detail = f"owner {dn} unbanned"
                self._writer.audit(conn, [*decided, _owner_event("owner.unban", by, dn, detail)])
        return removed

    # --- reading ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(TASKS).where(T.id == task_id)).one_or_none()
        return task_of(row) if row is not None else None

    def query(self, filters: TaskFilter) -> list[Task]:
        stmt = select(TASKS).where(*_conditions(filters)).order_by(T.id).limit(filters.limit)
        with self._engine.connect() as conn:
            return [task_of(r) for r in conn.execute(stmt).all()]

    def count(self, filters: TaskFilter) -> int:
        with self._engine.connect() as conn:
            stmt = select(func.count()).select_from(TASKS).where(*_conditions(filters))
            return int(conn.execute(stmt).scalar_one())

    def assignment(self, task_id: int, secret: str | None = None) -> Assignment | None:
        task = self.get(task_id)
        return assignment_of(task, self._clock(), secret) if task is not None else None

    def log_tail(self, task_id: int) -> str | None:
        """The running attempt's log tail (from its last heartbeat), else the one its pilot
        reported for the task's latest finished attempt."""
        with self._engine.connect() as conn:
            live = conn.execute(select(T.live_log).where(T.id == task_id)).scalar_one_or_none()
            if live is not None:
                return str(live)
            row = conn.execute(
                select(A.log_tail).where(A.task_id == task_id).order_by(A.attempt.desc()).limit(1)
            ).first()
        return row[0] if row is not None else None

    def accounting(
        self,
        by: AccountingKey,
        *,
        owner: str | None = None,
        group: str | None = None,
        site: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[AccountingTotal]:
        keys = {"owner": A.owner_dn, "group": A.group_name, "site": A.site}
        if by not in keys:
            raise ValueError(f"accounting is summed by owner, group or site, not {by!r}")
        key = keys[by]
        if site is not None:
            site = normalise_site(site)
        conditions: list[ColumnElement[bool]] = [
            column == value
            for column, value in ((A.owner_dn, owner), (A.group_name, group), (A.site, site))
            if value is not None
        ]
        if since is not None:
            conditions.append(A.finished_at >= since)
        if until is not None:
            conditions.append(A.finished_at < until)
        stmt = (
            select(
                key,
                func.count(),
                func.sum(case((A.outcome == "failed", 1), else_=0)),
                func.coalesce(func.sum(A.cpu_s), 0.0),
                func.coalesce(func.sum(A.wall_s), 0.0),
                func.coalesce(func.max(A.max_rss_kb), 0),
            )
            .where(*conditions)
            .group_by(key)
            .order_by(key)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            AccountingTotal(k, int(n), int(failed or 0), float(cpu), float(wall), int(rss))
            for k, n, failed, cpu, wall, rss in rows
        ]


def _conditions(f: TaskFilter) -> list[ColumnElement[bool]]:
    """The WHERE of `query` and `count`: every given field of the filter."""
    conditions: list[ColumnElement[bool]] = [
        column == value
        for column, value in (
            (T.owner_dn, f.owner),
            (T.group_name, f.group),
            (T.vo, f.vo),
            (T.site, f.site),
            (T.pilot_dn, f.pilot),
        )
        if value is not None
    ]
    if f.states:
        conditions.append(T.state.in_(sorted(s.value for s in f.states)))
    if f.after_id is not None:
        conditions.append(T.id > f.after_id)
    return conditions


def _owner_event(operation: str, by: str, dn: str, detail: str) -> AuditEvent:
    event = queue_event(operation, RULE_REQUEST, by, detail=detail)
    return dataclasses.replace(event, owner_dn=dn)
