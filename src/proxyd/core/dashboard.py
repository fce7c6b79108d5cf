"""The auditor dashboard's read model: what each page shows, decided and audited first.

Every method makes exactly one policy decision, `audit_read` (the
`policy.auditors` patterns), before it reads anything, so a page view is
one audited event (I6) whether it is allowed or refused, and the HTTPS
edge's check that a success followed a decision holds. A refusal raises
the core's error for it (Denied, naming the rule).

Input is validated after the decision, as TaskService.accounting does, so
a refused principal learns nothing from a 400 and is always audited.

The aggregates no other module answers are SQL in `proxyd.store.dashboard`;
the rest comes from the audit log, the Repository and the task queue.
Methods block (database): the edge runs them in a thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from .. import policy
from ..audit import AuditError, Decision, StoredEvent, VerifyReport
from ..policy import Operation
from ..principal import Principal
from ..store.dashboard import (
    DayCounts,
    PilotLoad,
    TaskSummary,
    daily_counts,
    recent_tasks,
    task_states,
    tasks_by_pilot,
)
from ..store.db import snapshot_transaction
from ..store.members import Member, list_members
from ..taskqueue.model import AccountingTotal, TaskState
from .errors import BadPassphrase, BadRequest, Denied, NotFound, RepositoryError
from .values import CredentialInfo

if TYPE_CHECKING:  # both are built on the core: the types only, no import cycle
    from ..repository import Repository
    from ..tasks import TaskService

__all__ = [
    "CHART_DAYS",
    "INVENTORY_LIMIT",
    "LOG_PAGE",
    "LOG_PAGE_MAX",
    "RECENT_TASKS",
    "AccountingView",
    "BadPassphrase",
    "BadRequest",
    "Dashboard",
    "DayCounts",
    "Denied",
    "Inventory",
    "LogFilters",
    "LogPage",
    "MembersView",
    "NotFound",
    "Overview",
    "PilotLoad",
    "PilotsView",
    "RepositoryError",
    "TaskSummary",
    "TasksView",
]

CHART_DAYS = 30
LOG_PAGE = 50
LOG_PAGE_MAX = 500
INVENTORY_LIMIT = 1000
RECENT_TASKS = 25
MAX_FILTER = 1024


# --- the log's filters -------------------------------------------------------------------


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if len(value) > MAX_FILTER or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest(f"filter {name!r}: at most {MAX_FILTER} characters, no control characters")
    return value


def _when(query: Mapping[str, str], name: str) -> dt.datetime | None:
    """An ISO 8601 date or time; without a zone it is UTC."""
    value = _text(query, name)
    if value is None:
        return None
    text = value.replace(" ", "T")
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(text)
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"filter {name!r}: {value!r} is not a date or time such as 2026-01-31 "
            "or 2026-01-31T12:00Z"
        ) from None


def _int(
    query: Mapping[str, str], name: str, default: int | None, low: int, high: int
) -> int | None:
    value = query.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise BadRequest(f"{name!r} must be a whole number from {low} to {high}")
    return number


def iso(t: dt.datetime | None) -> str | None:
    """A UTC time as the filter form shows it and links carry it (microseconds kept, if any)."""
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t is not None else None


@dataclasses.dataclass(frozen=True)
class LogFilters:
    """The issuance log's filters, from query parameters; `params` is the way back."""

    actor: str | None = None
    owner: str | None = None
    decision: Decision | None = None
    rule: str | None = None
    operation: str | None = None
    serial: str | None = None
    task: int | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = LOG_PAGE
    after: int | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> LogFilters:
        """The filters of a query; BadRequest (a 400, with a message for the auditor) if unusable."""
        decision = _text(query, "decision")
        if decision is not None and decision not in ("allow", "deny"):
            raise BadRequest("filter 'decision' must be allow or deny")
        filters = cls(
            actor=_text(query, "actor"),
            owner=_text(query, "owner"),
            decision=cast("Decision | None", decision),
            rule=_text(query, "rule"),
            operation=_text(query, "operation"),
            serial=_text(query, "serial"),
            task=_int(query, "task", None, 1, 2**62),
            since=_when(query, "since"),
            until=_when(query, "until"),
            limit=_int(query, "limit", LOG_PAGE, 1, LOG_PAGE_MAX) or LOG_PAGE,
            after=_int(query, "after", None, 1, 2**62),
        )
        since, until = filters.since, filters.until
        if since is not None and until is not None and since >= until:
            raise BadRequest("'since' must be before 'until'")
        return filters

    def params(self, **changes: object) -> dict[str, object]:
        """The filters as query parameters (as typed into the form), with changes."""
        values: dict[str, object] = {
            "actor": self.actor,
            "owner": self.owner,
            "decision": self.decision,
            "rule": self.rule,
            "operation": self.operation,
            "serial": self.serial,
            "task": self.task,
            "since": iso(self.since),
            "until": iso(self.until),
            "limit": self.limit if self.limit != LOG_PAGE else None,
            "after": self.after,
        }
        values.update(changes)
        return values


# --- what the pages show -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Overview:
    """The audit chain's verification and the last CHART_DAYS UTC days, oldest first."""

    report: VerifyReport
    bad_row: StoredEvent | None  # the first bad row as stored, when it can be read
    bad_error: str | None  # why it cannot
    days: tuple[tuple[dt.date, DayCounts], ...]


@dataclasses.dataclass(frozen=True)
class LogPage:
    filters: LogFilters
    events: tuple[StoredEvent, ...]  # newest first, at most filters.limit
    more: bool  # older events match too


@dataclasses.dataclass(frozen=True)
class Inventory:
    credentials: tuple[CredentialInfo, ...]
    limit: int
    as_of: dt.datetime  # what "expired" is measured against


@dataclasses.dataclass(frozen=True)
class MembersView:
    """Every VO served, in name order, with its members (by DN) as the database has them now."""

    vos: tuple[tuple[str, tuple[Member, ...]], ...]


@dataclasses.dataclass(frozen=True)
class TasksView:
    note: str | None  # why there is nothing to show (no SQL queue); else None
    states: tuple[tuple[str, int], ...] = ()  # every TaskState, in life-cycle order
    recent: tuple[TaskSummary, ...] = ()
    recent_limit: int = RECENT_TASKS

    @property
    def total(self) -> int:
        return sum(n for _, n in self.states)


@dataclasses.dataclass(frozen=True)
class PilotsView:
    note: str | None
    pilots: tuple[PilotLoad, ...] = ()
    sites: tuple[AccountingTotal, ...] = ()
    masked: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class AccountingView:
    note: str | None
    by: str = "owner"
    totals: tuple[AccountingTotal, ...] = ()


class Dashboard:
    """The read model of /ui/: one decided, audited read per method (page)."""

    def __init__(self, repo: Repository, tasks: TaskService | None = None) -> None:
        self._repo = repo
        self._tasks = tasks

    def _decide(self, principal: Principal) -> None:
        self._repo.authorize(principal, policy.Request(Operation.AUDIT_READ), name=None)

    def _queue_note(self) -> str | None:
        if self._tasks is None:
            return "The task queue is not enabled on this server."
        backend = self._repo.config.taskqueue.backend
        if backend != "sql":
            # The aggregates are SQL over the built-in queue's tables; another backend has none.
            return (
                "This page reads the built-in SQL task queue; this server uses the "
                f"{backend!r} backend."
            )
        return None

    def overview(self, principal: Principal) -> Overview:
        self._decide(principal)
        report = self._repo.audit.verify()
        today = dt.datetime.now(dt.UTC).date()
        first = today - dt.timedelta(days=CHART_DAYS - 1)
        since = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        with snapshot_transaction(self._repo.engine) as conn:
            counts = daily_counts(conn, since)
        bad_row, bad_error = None, None
        if report.first_bad_seq is not None:
            try:
                rows = self._repo.audit.query(after_seq=report.first_bad_seq + 1, limit=1)
                bad_row = rows[0] if rows and rows[0].seq == report.first_bad_seq else None
            except AuditError as exc:  # the row may be too damaged to load
                bad_error = str(exc)
        days = tuple(
            (day, counts.get(day, DayCounts()))
            for day in (first + dt.timedelta(days=i) for i in range(CHART_DAYS))
        )
        return Overview(report, bad_row, bad_error, days)

    def log(self, principal: Principal, query: Mapping[str, str]) -> LogPage:
        """One page of the issuance log, newest first, filtered by `query` (the URL's)."""
        self._decide(principal)
        f = LogFilters.parse(query)
        events = self._repo.audit.query(
            actor=f.actor,
            owner=f.owner,
            serial=f.serial,
            decision=f.decision,
            rule=f.rule,
            operation=f.operation,
            since=f.since,
            until=f.until,
            task=f.task,
            limit=f.limit + 1,  # one more tells whether there is an older page
            after_seq=f.after,
        )
        return LogPage(f, tuple(events[: f.limit]), len(events) > f.limit)

    def credentials(self, principal: Principal, limit: int = INVENTORY_LIMIT) -> Inventory:
        # Repository.inventory is the core's audit_read of the credential table: it makes the
        # same one decision first, so deciding here as well would audit the view twice.
        creds = self._repo.inventory(principal, limit=limit)
        return Inventory(tuple(creds), limit, dt.datetime.now(dt.UTC))

    def members(self, principal: Principal) -> MembersView:
        """The members of each VO of proxyd's attribute authority (`proxyd admin vo`)."""
        self._decide(principal)
        with snapshot_transaction(self._repo.engine) as conn:
            members = list_members(conn)
        served = sorted(self._repo.authorities)
        return MembersView(tuple((vo, tuple(m for m in members if m.vo == vo)) for vo in served))

    def tasks(self, principal: Principal) -> TasksView:
        self._decide(principal)
        note = self._queue_note()
        if note is not None:
            return TasksView(note)
        with snapshot_transaction(self._repo.engine) as conn:  # the counts match the list
            states = task_states(conn)
            recent = recent_tasks(conn, RECENT_TASKS)
        return TasksView(
            None, tuple((s.value, states.get(s.value, 0)) for s in TaskState), tuple(recent)
        )

    def pilots(self, principal: Principal) -> PilotsView:
        self._decide(principal)
        note = self._queue_note()
        if note is not None or self._tasks is None:
            return PilotsView(note)
        queue = self._tasks.queue
        with snapshot_transaction(self._repo.engine) as conn:
            pilots = tasks_by_pilot(conn)
        return PilotsView(
            None, tuple(pilots), tuple(queue.accounting("site")), queue.masked_sites()
        )

    def accounting(self, principal: Principal, by: str) -> AccountingView:
        if self._tasks is None:
            self._decide(principal)
            return AccountingView("The task queue is not enabled on this server.", by)
        # TaskService.accounting decides (audit_read) before it reads, and refuses a bad `by`.
        totals = self._tasks.accounting(principal, by)
        return AccountingView(None, by, tuple(totals))
