"""The default task queue: SQLAlchemy Core on SQLite or PostgreSQL (backend name "sql").

Every change is one write transaction (`store.db.write_transaction`):
``BEGIN IMMEDIATE`` on SQLite, so one writer at a time; READ COMMITTED
with row locks on PostgreSQL, where matching locks its candidates with
``FOR UPDATE SKIP LOCKED``, so concurrent pilots never see, let alone
claim, the same task. Where the dialects differ, the method says what it
does: `_lock_candidates` (one LATERAL statement, or a query per owner),
`_claim` (one data-modifying CTE, or two statements), `_dialect_insert`
(ON CONFLICT).

Matching (see docs/taskqueue.md): the site mask and site bans first, then
the owners not banned, then for every (group, owner) the first few queued
tasks in priority-then-submission order that meet the pilot's platform,
CPU and memory (in SQL), then sites and tags (in Python), paging further
only where needed; the best head by `fairshare.match_key` is claimed.

Audit events are written after the change commits; when that write fails
the error reaches the caller (I6) and a match is taken back, so no pilot
holds a task whose match is not in the log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from ..audit import AuditEvent, AuditLog, AuditWriteError
from ..config import Config
from ..patterns import any_dn_matches
from ..policy import Assignment
from ..store.db import make_engine, migrate, require_proxyd_engine, write_transaction
from ..store.models import (
    QUEUED_STATES,
    BanRow,
    FairShareRow,
    SiteMaskRow,
    TaskAccountingRow,
    TaskRow,
)
from .base import (
    RULE_MATCH,
    RULE_PILOT_REPORT,
    RULE_REQUEST,
    RULE_TIMEOUT,
    AccountingKey,
    AuditSink,
    queue_event,
)
from .fairshare import FairShare, PairUsage, match_key, ranking
from .model import (
    ACTIVE,
    SYSTEM_ACTOR,
    Accounting,
    AccountingTotal,
    NotAssigned,
    Payload,
    PilotCapabilities,
    Requirements,
    Task,
    TaskEvent,
    TaskFilter,
    TaskSpec,
    TaskState,
    UnknownTask,
    assignment_of,
    next_state,
)

__all__ = ["SqlTaskQueue"]

log = logging.getLogger("proxyd.taskqueue")

T = TaskRow.__table__.c
A = TaskAccountingRow.__table__.c
M = SiteMaskRow.__table__.c
F = FairShareRow.__table__.c
B = BanRow.__table__.c
_TASKS = cast(Table, TaskRow.__table__)
_ACCOUNTING = cast(Table, TaskAccountingRow.__table__)
_MASK = cast(Table, SiteMaskRow.__table__)
_SHARES = cast(Table, FairShareRow.__table__)
_BANS = cast(Table, BanRow.__table__)

_FIRST_PAGE = (2**31 - 1, 0)  # a keyset before every task: priorities are far smaller
_CANDIDATE_COLUMNS = (
    T.id,
    T.group_name,
    T.owner_dn,
    T.priority,
    T.state,
    # As JSON text: most tasks have no site or tag rules, and "[]" needs no parsing.
    cast_(T.sites_allowed, Text).label("sites_allowed"),
    cast_(T.sites_banned, Text).label("sites_banned"),
    cast_(T.tags, Text).label("tags"),
    T.max_wall_s,
)
_CLEARED = {"pilot_dn": None, "pilot_id": None, "site": None, "ce": None}
_CLEARED_TIMES = {"matched_at": None, "started_at": None, "heartbeat_at": None}


_USAGE_COLUMNS = (F.group_name, F.owner_dn, F.used_s, F.used_at, F.reserved_s)
_NO_USAGE = tuple(null().cast(c.type) for c in _USAGE_COLUMNS[1:])

# The predicate of the partial index ix_tasks_queue, spelt with literals: neither PostgreSQL
# (generic plans) nor SQLite can use a partial index for a predicate with bound parameters.
_QUEUED = T.state.in_([literal_column(f"'{s}'") for s in QUEUED_STATES])


def _page(group: Any, owner: Any, after_priority: Any, after_id: Any) -> Select[Any]:
    """Queued tasks of one (group, owner) after a keyset, in matching order, that fit the
    pilot's platform, CPU time and memory (sites and tags are checked in `_fits`)."""
    return (
        select(*_CANDIDATE_COLUMNS)
        .where(
            _QUEUED,
            T.group_name == group,
            T.owner_dn == owner,
            or_(T.priority < after_priority, and_(T.priority == after_priority, T.id > after_id)),
            or_(T.platform.is_(None), T.platform == bindparam("b_platform")),
            T.cpu_time_s <= bindparam("b_cpu"),
            T.memory_mb <= bindparam("b_memory"),
        )
        .order_by(T.priority.desc(), T.id)
        .limit(bindparam("b_limit", type_=Integer))
    )


# The statements of the matching path, built once (building is what costs in SQLAlchemy).
_PAGE_ONE_PAIR = _page(
    bindparam("b_group"), bindparam("b_owner"), bindparam("b_ap"), bindparam("b_aid")
)
_PAIRS = (
    func.unnest(
        bindparam("b_groups", type_=pg.ARRAY(String)),
        bindparam("b_owners", type_=pg.ARRAY(String)),
        bindparam("b_aps", type_=pg.ARRAY(Integer)),
        bindparam("b_aids", type_=pg.ARRAY(Integer)),
    )
    .table_valued("g", "o", "ap", "aid")
    .render_derived(name="pairs")
)
_LOCKED_PAGE = (
    _page(_PAIRS.c.g, _PAIRS.c.o, _PAIRS.c.ap, _PAIRS.c.aid)
    .with_for_update(skip_locked=True, of=_TASKS)
    .lateral("candidates")
)
_PAGE_EVERY_PAIR_LOCKED = select(*_LOCKED_PAGE.c).select_from(_PAIRS.join(_LOCKED_PAGE, true()))
# What matching reads before the candidates, in one round trip: every (group, owner) with
# its usage, the owner and site ban patterns, and whether the pilot's site is masked.
_SITUATION = union_all(
    select(literal("pair", String).label("kind"), *_USAGE_COLUMNS),
    select(B.kind, B.pattern, *_NO_USAGE).where(B.kind.in_(("user", "site"))),
    select(literal("mask", String), M.site, *_NO_USAGE).where(
        M.site == bindparam("b_site"), M.masked.is_(True)
    ),
)
_CLAIM = (
    update(_TASKS)
    .where(T.id == bindparam("b_id"), T.state.in_(QUEUED_STATES))
    .values(
        state=TaskState.MATCHED.value,
        pilot_dn=bindparam("b_pilot_dn"),
        pilot_id=bindparam("b_pilot_id"),
        site=bindparam("b_site"),
        ce=bindparam("b_ce"),
        matched_at=bindparam("b_now"),
        started_at=None,
        heartbeat_at=bindparam("b_now"),
        finished_at=None,
        attempts=T.attempts + 1,
        reason=None,
    )
    .returning(*_TASKS.c)
)
_RESERVE = (
    update(_SHARES)
    .where(F.group_name == bindparam("b_group"), F.owner_dn == bindparam("b_owner"))
    .values(reserved_s=F.reserved_s + bindparam("b_wall", type_=Integer))
)
# PostgreSQL claims and reserves in one statement (a data-modifying CTE); SQLite in two.
_CLAIMED = _CLAIM.cte("claimed")
_CLAIM_AND_RESERVE = select(*_CLAIMED.c).add_cte(_RESERVE.cte("reserved"))

Pair = tuple[str, str]  # (group, owner)
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
        clock: Clock = _utcnow,
    ) -> None:
        require_proxyd_engine(engine)
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be at least 1")
        self._engine = engine
        self._audit: AuditSink = audit if audit is not None else AuditLog(engine)
        self._fair = fair_share or FairShare()
        self._static_bans = tuple(banned_dns)
        self._page_size = page_size
        self._max_pages = max_pages
        self._clock = clock

    @classmethod
    def from_source(cls, source: Engine | Config | URL | str, **options: Any) -> SqlTaskQueue:
        """The `load_taskqueue("sql", source)` factory: an engine as is, or a config or URL
        (then the database is opened and migrated, and a config's banned DNs apply)."""
        if isinstance(source, Engine):
            return cls(source, **options)
        if isinstance(source, Config):
            options.setdefault("banned_dns", source.policy.banned_dns)
            source = source.server.database
        engine = make_engine(source)
        migrate(engine)
        return cls(engine, **options)

    def _log(self, *events: AuditEvent) -> None:
        """Append queue events to the audit log, all or none (AuditWriteError otherwise)."""
        self._audit.append_many(events)

    # --- submitting -----------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> Task:
        now = self._clock()
        [task_id] = self._insert([spec], now)
        return Task(id=task_id, spec=spec, state=TaskState.WAITING, submitted_at=now)

    def submit_many(self, specs: Sequence[TaskSpec]) -> list[int]:
        return self._insert(specs, self._clock()) if specs else []

    def _insert(self, specs: Sequence[TaskSpec], now: dt.datetime) -> list[int]:
        for spec in specs:
            if not isinstance(spec, TaskSpec):
                raise TypeError(f"submit takes TaskSpec values, not {type(spec).__name__}")
        rows = [
            {**_spec_values(s), "state": "waiting", "attempts": 0, "submitted_at": now}
            for s in specs
        ]
        with write_transaction(self._engine) as conn:
            _ensure_pairs(conn, {(s.group, s.owner) for s in specs}, now)
            result = conn.execute(
                insert(_TASKS).returning(T.id, sort_by_parameter_order=True), rows
            )
            return list(result.scalars())

    # --- matching --------------------------------------------------------------------------------

    def match(self, capabilities: PilotCapabilities) -> Task | None:
        caps = capabilities
        now = self._clock()
        with write_transaction(self._engine) as conn:
            usages, owner_bans, site_closed = self._situation(conn, caps.site, now)
            if site_closed:
                return None
            ranks = ranking(usages, self._fair)
            pairs = [(u.group, u.owner) for u in usages if not any_dn_matches(owner_bans, u.owner)]
            best = self._best_candidate(conn, pairs, ranks, caps)
            if best is None:
                return None
            claimed = self._claim(
                conn,
                {
                    "b_id": best.id,
                    "b_pilot_dn": caps.pilot_dn,
                    "b_pilot_id": caps.pilot_id,
                    "b_site": caps.site,
                    "b_ce": caps.ce or None,
                    "b_now": now,
                    "b_group": best.group_name,
                    "b_owner": best.owner_dn,
                    "b_wall": best.max_wall_s,
                },
            )
        task = _task(claimed)
        try:
            self._log(
                queue_event(
                    "task.match",
                    RULE_MATCH,
                    caps.pilot_dn,
                    actor_kind="pilot",
                    task=task,
                    detail=(
                        f"task {task.id} to pilot {caps.pilot_id} at site {caps.site}"
                        f"{' ce ' + caps.ce if caps.ce else ''}; priority {task.spec.priority}, "
                        f"attempt {task.attempts}"
                    ),
                )
            )
        except AuditWriteError:
            self._unclaim(task, TaskState(best.state))
            raise
        return task

    def _situation(
        self, conn: Connection, site: str, now: dt.datetime
    ) -> tuple[list[PairUsage], tuple[str, ...], bool]:
        """(usage per pair, owner ban patterns, whether `site` is masked or banned)."""
        usages: list[PairUsage] = []
        owners: list[str] = list(self._static_bans)
        sites: list[str] = []
        masked = False
        for kind, name, owner, used, at, reserved in conn.execute(_SITUATION, {"b_site": site}):
            if kind == "pair":
                usages.append(PairUsage(name, owner, self._fair.decay(used, at, now), reserved))
            elif kind == "user":
                owners.append(name)
            elif kind == "site":
                sites.append(name)
            else:
                masked = True
        return usages, tuple(owners), masked or any_dn_matches(sites, site)

    def _best_candidate(
        self,
        conn: Connection,
        pairs: Iterable[Pair],
        ranks: Mapping[Pair, tuple[float, float]],
        caps: PilotCapabilities,
    ) -> Row[Any] | None:
        """The queued task with the smallest match key that `caps` can run, locked; or None.

        Each (group, owner) is read in its own priority-then-id order, a
        page at a time; its first task that fits is its best. A pair is read
        further only while it could still beat the best found so far.
        """
        keysets: dict[Pair, tuple[int, int]] = dict.fromkeys(pairs, _FIRST_PAGE)
        best: Row[Any] | None = None
        best_key: tuple[int, float, float, int] | None = None
        for _ in range(self._max_pages):
            if not keysets:
                break
            by_pair: dict[Pair, list[Row[Any]]] = defaultdict(list)
            for row in self._lock_candidates(conn, keysets, caps):
                by_pair[(row.group_name, row.owner_dn)].append(row)
            further: dict[Pair, tuple[int, int]] = {}
            for pair in keysets:
                page = sorted(by_pair.get(pair, ()), key=lambda r: (-r.priority, r.id))
                head = next((r for r in page if _fits(r, caps)), None)
                if head is not None:
                    key = match_key(head.priority, pair[0], pair[1], head.id, ranks)
                    if best_key is None or key < best_key:
                        best, best_key = head, key
                elif len(page) == self._page_size:
                    further[pair] = (page[-1].priority, page[-1].id)
            keysets = {p: k for p, k in further.items() if best is None or k[0] >= best.priority}
        if keysets:
            log.info("match: candidate scan stopped after %d pages per owner", self._max_pages)
        return best

    def _lock_candidates(
        self, conn: Connection, keysets: Mapping[Pair, tuple[int, int]], caps: PilotCapabilities
    ) -> list[Row[Any]]:
        """The next page of queued tasks per (group, owner) after its keyset, locked for us.

        PostgreSQL: one statement, a LATERAL subquery per pair with ``FOR
        UPDATE SKIP LOCKED``, so rows another pilot is looking at are
        skipped, not waited for. SQLite: one query per pair; ``BEGIN
        IMMEDIATE`` already made this transaction the only writer.
        """
        limits = {
            "b_platform": caps.platform,
            "b_cpu": caps.cpu_time_left,
            "b_memory": caps.memory_mb,
            "b_limit": self._page_size,
        }
        if conn.dialect.name == "postgresql":
            pairs = list(keysets.items())
            params = {
                "b_groups": [g for (g, _), _ in pairs],
                "b_owners": [o for (_, o), _ in pairs],
                "b_aps": [ap for _, (ap, _) in pairs],
                "b_aids": [aid for _, (_, aid) in pairs],
            }
            return list(conn.execute(_PAGE_EVERY_PAIR_LOCKED, {**params, **limits}).all())
        rows: list[Row[Any]] = []
        for (g, o), (ap, aid) in keysets.items():
            params = {"b_group": g, "b_owner": o, "b_ap": ap, "b_aid": aid}
            rows.extend(conn.execute(_PAGE_ONE_PAIR, {**params, **limits}).all())
        return rows

    def _claim(self, conn: Connection, params: dict[str, Any]) -> Row[Any]:
        """Mark the locked candidate matched and add its wall time to its owner's reservation."""
        if conn.dialect.name == "postgresql":
            return conn.execute(_CLAIM_AND_RESERVE, params).one()
        claimed = conn.execute(_CLAIM, params).one()
        conn.execute(_RESERVE, params)
        return claimed

    def _unclaim(self, task: Task, previous: TaskState) -> None:
        """Take back a match whose audit event could not be written (best effort)."""
        try:
            with write_transaction(self._engine) as conn:
                result = conn.execute(
                    update(_TASKS)
                    .where(
                        T.id == task.id,
                        T.state == TaskState.MATCHED.value,
                        T.pilot_dn == task.pilot,
                        T.attempts == task.attempts,
                    )
                    .values(
                        state=previous.value,
                        attempts=T.attempts - 1,
                        **_CLEARED,
                        **_CLEARED_TIMES,
                    )
                )
                if result.rowcount:
                    self._charge(conn, [(task, 0.0)], self._clock())
        except SQLAlchemyError:
            log.exception("task %d: the unaudited match could not be taken back", task.id)

    # --- pilot reports ------------------------------------------------------------------------

    def start(self, task_id: int, pilot: str) -> Task:
        return self._apply(task_id, TaskEvent.START, pilot=pilot)

    def heartbeat(self, task_id: int, pilot: str) -> Task:
        return self._apply(task_id, TaskEvent.HEARTBEAT, pilot=pilot)

    def complete(self, task_id: int, pilot: str, accounting: Accounting) -> Task:
        if not isinstance(accounting, Accounting):
            raise TypeError("complete needs an Accounting")
        return self._apply(task_id, TaskEvent.COMPLETE, pilot=pilot, accounting=accounting)

    def fail(
        self, task_id: int, pilot: str, reason: str, accounting: Accounting | None = None
    ) -> Task:
        return self._apply(
            task_id, TaskEvent.FAIL, pilot=pilot, accounting=accounting, reason=reason
        )

    # --- operator actions -----------------------------------------------------------------------

    def reschedule(self, task_id: int, *, by: str = SYSTEM_ACTOR, reason: str = "") -> Task:
        return self._apply(task_id, TaskEvent.RESCHEDULE, by=by, reason=reason or None)

    def cancel(self, task_id: int, *, by: str = SYSTEM_ACTOR, reason: str = "") -> Task:
        return self._apply(task_id, TaskEvent.CANCEL, by=by, reason=reason or None)

    def _apply(
        self,
        task_id: int,
        event: TaskEvent,
        *,
        pilot: str | None = None,
        by: str | None = None,
        accounting: Accounting | None = None,
        reason: str | None = None,
    ) -> Task:
        """One life-cycle event on one task, checked against the transition table."""
        now = self._clock()
        with write_transaction(self._engine) as conn:
            row = conn.execute(
                select(_TASKS).where(T.id == task_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownTask(task_id)
            before = _task(row)
            if pilot is not None and before.pilot != pilot:
                raise NotAssigned(task_id, pilot, before.pilot)
            state = next_state(before.state, event, task_id)
            changes: dict[str, Any] = {"state": state.value}
            if event is TaskEvent.START:
                changes.update(started_at=now, heartbeat_at=now)
            elif event is TaskEvent.HEARTBEAT:
                changes["heartbeat_at"] = now
            if state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED):
                changes["finished_at"] = now
            if state is TaskState.RESCHEDULED:
                changes.update(**_CLEARED, **_CLEARED_TIMES, finished_at=None)
            if reason is not None:
                changes["reason"] = reason[:4000]
            after = _task(
                conn.execute(
                    update(_TASKS).where(T.id == task_id).values(**changes).returning(*_TASKS.c)
                ).one()
            )
            if before.state in ACTIVE and state not in ACTIVE:
                self._charge(conn, [(before, _wall(before, accounting, now))], now)
            if accounting is not None and before.pilot is not None:
                _record_accounting(conn, before, state, accounting, now)
        self._audit_transition(before, after, event, pilot=pilot, by=by, accounting=accounting)
        return after

    def _audit_transition(
        self,
        before: Task,
        after: Task,
        event: TaskEvent,
        *,
        pilot: str | None,
        by: str | None,
        accounting: Accounting | None,
    ) -> None:
        if event in (TaskEvent.START, TaskEvent.HEARTBEAT):
            return  # progress, not a decision: not audited
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
        if pilot is not None:
            event_ = queue_event(
                f"task.{event.value}",
                RULE_PILOT_REPORT,
                pilot,
                actor_kind="pilot",
                task=after,
                detail=detail,
            )
        else:
            event_ = queue_event(
                f"task.{event.value}", RULE_REQUEST, by or SYSTEM_ACTOR, task=after, detail=detail
            )
        self._log(event_)

    def _charge(
        self, conn: Connection, ended: Sequence[tuple[Task, float]], now: dt.datetime
    ) -> None:
        """Tasks left matched/running: release their reservations, add the wall time they used."""
        per_pair: dict[Pair, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for task, wall_s in ended:
            totals = per_pair[(task.spec.group, task.spec.owner)]
            totals[0] += task.spec.max_wall_s
            totals[1] += wall_s
        for (group, owner), (release, used) in sorted(per_pair.items()):  # one lock order
            row = conn.execute(
                select(F.used_s, F.used_at, F.reserved_s)
                .where(F.group_name == group, F.owner_dn == owner)
                .with_for_update()
            ).one_or_none()
            if row is None:
                _ensure_pairs(conn, {(group, owner)}, now)
                row = conn.execute(
                    select(F.used_s, F.used_at, F.reserved_s).where(
                        F.group_name == group, F.owner_dn == owner
                    )
                ).one()
            conn.execute(
                update(_SHARES)
                .where(F.group_name == group, F.owner_dn == owner)
                .values(
                    used_s=self._fair.decay(row.used_s, row.used_at, now) + used,
                    used_at=now,
                    reserved_s=max(0, int(row.reserved_s - release)),
                )
            )

    # --- the stalled sweep --------------------------------------------------------------------

    def mark_stalled(self, heartbeat_timeout: dt.timedelta) -> list[int]:
        now = self._clock()
        limit = now - heartbeat_timeout
        reason = f"no heartbeat for more than {int(heartbeat_timeout.total_seconds())} s"
        with write_transaction(self._engine) as conn:
            rows = conn.execute(
                select(_TASKS)
                .where(T.state.in_([s.value for s in ACTIVE]), T.heartbeat_at < limit)
                .order_by(T.id)
                .with_for_update(skip_locked=True)  # a pilot reporting right now wins
            ).all()
            if not rows:
                return []
            stalled = [_task(r) for r in rows]
            conn.execute(
                update(_TASKS)
                .where(T.id.in_([t.id for t in stalled]))
                .values(state=TaskState.STALLED.value, reason=reason)
            )
            self._charge(conn, [(t, _wall(t, None, t.heartbeat_at or now)) for t in stalled], now)
        self._log(
            *[
                queue_event(
                    "task.stall",
                    RULE_TIMEOUT,
                    SYSTEM_ACTOR,
                    task=t,
                    detail=f"task {t.id} stalled on pilot {t.pilot_id} at site {t.site}: {reason}",
                )
                for t in stalled
            ]
        )
        return [t.id for t in stalled]

    # --- reading ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(_TASKS).where(T.id == task_id)).one_or_none()
        return _task(row) if row is not None else None

    def query(self, filters: TaskFilter) -> list[Task]:
        f = filters
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
        stmt = select(_TASKS).where(*conditions).order_by(T.id).limit(f.limit)
        with self._engine.connect() as conn:
            return [_task(r) for r in conn.execute(stmt).all()]

    def assignment(self, task_id: int) -> Assignment | None:
        task = self.get(task_id)
        return assignment_of(task, self._clock()) if task is not None else None

    def log_tail(self, task_id: int) -> str | None:
        """The log tail its pilot reported for the task's latest finished attempt."""
        with self._engine.connect() as conn:
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

    # --- site mask and owner bans -----------------------------------------------------------------

    def set_site_mask(self, site: str, masked: bool, by: str, reason: str = "") -> None:
        if not isinstance(site, str) or not site or len(site) > 255:
            raise ValueError("a site name is a non-empty string of at most 255 characters")
        now = self._clock()
        row = {"site": site, "masked": bool(masked), "reason": reason, "changed_by": by}
        with write_transaction(self._engine) as conn:
            stmt = _dialect_insert(conn)(_MASK).values(**row, changed_at=now)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["site"],
                    set_={**{k: stmt.excluded[k] for k in row if k != "site"}, "changed_at": now},
                )
            )
        self._log(
            queue_event(
                "site.mask" if masked else "site.unmask",
                RULE_REQUEST,
                by,
                detail=f"site {site} {'masked' if masked else 'unmasked'}"
                + (f": {reason}" if reason else ""),
            )
        )

    def masked_sites(self) -> frozenset[str]:
        with self._engine.connect() as conn:
            return frozenset(conn.execute(select(M.site).where(M.masked.is_(True))).scalars())

    def ban_owner(self, dn: str, by: str, reason: str = "") -> None:
        if not isinstance(dn, str) or not dn or len(dn) > 1024:
            raise ValueError("an owner ban is a DN pattern of at most 1024 characters")
        with write_transaction(self._engine) as conn:
            conn.execute(
                _dialect_insert(conn)(_BANS)
                .values(
                    kind="user",
                    pattern=dn,
                    reason=reason or "banned from the task queue",
                    created_at=self._clock(),
                    created_by=by,
                )
                .on_conflict_do_nothing(index_elements=["kind", "pattern"])
            )
        self._log(
            _owner_event(
                "owner.ban", by, dn, f"owner {dn} banned" + (f": {reason}" if reason else "")
            )
        )

    def unban_owner(self, dn: str, by: str) -> bool:
        with write_transaction(self._engine) as conn:
            removed = conn.execute(delete(_BANS).where(B.kind == "user", B.pattern == dn)).rowcount
        self._log(
            _owner_event(
                "owner.unban", by, dn, f"owner {dn} {'unbanned' if removed else 'was not banned'}"
            )
        )
        return bool(removed)


# --- rows and values -------------------------------------------------------------------------------


def _spec_values(spec: TaskSpec) -> dict[str, Any]:
    r, p = spec.requirements, spec.payload
    return {
        "owner_dn": spec.owner,
        "vo": spec.vo,
        "group_name": spec.group,
        "fqans": list(spec.fqans),
        "credential_username": spec.credential_username,
        "credential_name": spec.credential_name,
        "priority": spec.priority,
        "sites_allowed": sorted(r.sites_allowed),
        "sites_banned": sorted(r.sites_banned),
        "platform": r.platform,
        "tags": sorted(r.tags),
        "cpu_time_s": r.cpu_time,
        "memory_mb": r.memory_mb,
        "command": p.command,
        "args": list(p.args),
        "input_files": list(p.input_files),
        "max_wall_s": spec.max_wall_s,
        "max_cpu_s": spec.max_cpu_s,
    }


def _task(row: Row[Any]) -> Task:
    m = row._mapping
    spec = TaskSpec(
        owner=m["owner_dn"],
        vo=m["vo"],
        group=m["group_name"],
        fqans=tuple(m["fqans"]),
        credential_username=m["credential_username"],
        credential_name=m["credential_name"],
        priority=m["priority"],
        requirements=Requirements(
            sites_allowed=frozenset(m["sites_allowed"]),
            sites_banned=frozenset(m["sites_banned"]),
            platform=m["platform"],
            tags=frozenset(m["tags"]),
            cpu_time=m["cpu_time_s"],
            memory_mb=m["memory_mb"],
        ),
        payload=Payload(m["command"], tuple(m["args"]), tuple(m["input_files"])),
        max_wall_s=m["max_wall_s"],
        max_cpu_s=m["max_cpu_s"],
    )
    return Task(
        id=m["id"],
        spec=spec,
        state=TaskState(m["state"]),
        submitted_at=m["submitted_at"],
        attempts=m["attempts"],
        pilot=m["pilot_dn"],
        pilot_id=m["pilot_id"],
        site=m["site"],
        ce=m["ce"],
        matched_at=m["matched_at"],
        started_at=m["started_at"],
        heartbeat_at=m["heartbeat_at"],
        finished_at=m["finished_at"],
        reason=m["reason"],
    )


def _fits(row: Row[Any], caps: PilotCapabilities) -> bool:
    """The requirements `_page` left to Python (as `Requirements.unmet` words them)."""
    allowed = _names(row.sites_allowed)
    if allowed and caps.site not in allowed:
        return False
    if caps.site in _names(row.sites_banned):
        return False
    return caps.tags.issuperset(_names(row.tags))


def _names(text: str | None) -> list[str]:
    """A JSON list of names, read as text; the usual empty list costs no parsing."""
    return [] if text is None or text == "[]" else list(json.loads(text))


def _wall(task: Task, accounting: Accounting | None, end: dt.datetime) -> float:
    """The wall time an attempt used: as reported, else as observed since it started."""
    if accounting is not None:
        return accounting.wall_s
    began = task.started_at or task.matched_at
    return max((end - began).total_seconds(), 0.0) if began is not None else 0.0


def _record_accounting(
    conn: Connection, task: Task, outcome: TaskState, accounting: Accounting, now: dt.datetime
) -> None:
    conn.execute(
        insert(_ACCOUNTING).values(
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


def _dialect_insert(conn: Connection) -> Any:
    """INSERT with ON CONFLICT for this connection's dialect (both have the same API)."""
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def _ensure_pairs(conn: Connection, pairs: Iterable[Pair], now: dt.datetime) -> None:
    """A fair-share row for each (group, owner): matching reads the queue through them."""
    rows = [
        {"group_name": g, "owner_dn": o, "used_s": 0.0, "used_at": now, "reserved_s": 0}
        for g, o in sorted(set(pairs))
    ]
    if rows:
        conn.execute(
            _dialect_insert(conn)(_SHARES)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["group_name", "owner_dn"])
        )


def _owner_event(operation: str, by: str, dn: str, detail: str) -> AuditEvent:
    event = queue_event(operation, RULE_REQUEST, by, detail=detail)
    return dataclasses.replace(event, owner_dn=dn)
