"""A task queue in a dict: the smallest complete backend, and the example in docs/taskqueue.md.

It keeps everything in memory behind one lock, so it suits one process and
tests only. The shared pieces do the real work: `next_state` (life cycle),
`Requirements.unmet` (matching), `fairshare` (ranking), `assignment_of`
(the policy's view) and `queue_event` (audit). I6 as the protocol asks: each
change appends its events (the caller's `decided` first) under the lock and
before it is stored, so a refused append leaves no effect.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from proxyd.audit import AuditEvent
from proxyd.policy import Assignment, Bans
from proxyd.tasklimits import TaskLimits
from proxyd.taskqueue.base import (
    RULE_LAST_ATTEMPT,
    RULE_MATCH,
    RULE_PILOT_REPORT,
    RULE_REQUEST,
    RULE_RETRY,
    RULE_TIMEOUT,
    AccountingKey,
    AuditSink,
    named_task,
    queue_event,
)
from proxyd.taskqueue.fairshare import FairShare, PairUsage, match_key, ranking
from proxyd.taskqueue.model import (
    ACTIVE,
    LOG_TAIL_MAX,
    QUEUED,
    SYSTEM_ACTOR,
    Accounting,
    AccountingTotal,
    NotAssigned,
    PilotCapabilities,
    Task,
    TaskEvent,
    TaskFilter,
    TaskSpec,
    TaskState,
    UnknownTask,
    assignment_of,
    free_text,
    new_assignment_secret,
    next_state,
    normalise_site,
    retry_outcome,
)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MemoryTaskQueue:
    name = "memory"

    def __init__(
        self,
        source: Any = None,  # what load_taskqueue passes; nothing to open here
        *,
        audit: AuditSink | None = None,
        fair_share: FairShare | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        limits: TaskLimits | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self._limits = limits or TaskLimits()
        self._max_attempts = max_attempts
        self._live: dict[int, str] = {}  # task id -> its running payload's log tail
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._tasks: dict[int, Task] = {}
        self._used: dict[tuple[str, str], float] = {}  # wall seconds used, not decayed here
        self._accounting: list[tuple[Task, TaskState, Accounting, dt.datetime]] = []
        self._masked: set[str] = set()
        self._bans: set[str] = set()
        self._audit = audit
        self._fair = fair_share or FairShare()
        self._clock = clock

    def _log(self, *events: AuditEvent) -> None:
        if self._audit is not None and events:
            self._audit.append_many(events)

    def submit(self, spec: TaskSpec, *, decided: Sequence[AuditEvent] = ()) -> Task:
        [task_id] = self.submit_many([spec], decided=decided)
        return self._tasks[task_id]

    def submit_many(
        self, specs: Sequence[TaskSpec], *, decided: Sequence[AuditEvent] = ()
    ) -> list[int]:
        with self._lock:
            tasks = [Task(next(self._ids), s, TaskState.WAITING, self._clock()) for s in specs]
            self._log(*(named_task(decided, tasks[0].id) if len(tasks) == 1 else decided))
            self._tasks.update((t.id, t) for t in tasks)
        return [t.id for t in tasks]

    def match(
        self, capabilities: PilotCapabilities, *, decided: Sequence[AuditEvent] = ()
    ) -> Task | None:
        caps = capabilities
        with self._lock:
            if caps.site in self._masked:
                self._log(*decided)
                return None
            ranks = ranking(self._usages(), self._fair)
            bans = Bans(users=tuple(self._bans))  # the policy's evaluator, as every backend
            fits = [
                t
                for t in self._tasks.values()
                if t.state in QUEUED
                and not bans.matches(t.spec.owner)
                and not self._at_limit(t, caps.site)
                and t.spec.requirements.unmet(caps) is None
            ]
            if not fits:
                self._log(*decided)
                return None
            best = min(
                fits,
                key=lambda t: match_key(t.spec.priority, t.spec.group, t.spec.owner, t.id, ranks),
            )
            now = self._clock()
            secret, digest = new_assignment_secret()  # the pilot gets the secret, we the digest
            task = dataclasses.replace(
                best,
                state=next_state(best.state, TaskEvent.MATCH, best.id),
                pilot=caps.pilot_dn,
                pilot_id=caps.pilot_id,
                site=caps.site,
                ce=caps.ce or None,
                matched_at=now,
                heartbeat_at=now,
                attempts=best.attempts + 1,
                reason=None,
                secret_digest=digest,
            )
            event = queue_event(
                "task.match",
                RULE_MATCH,
                caps.pilot_dn,
                actor_kind="pilot",
                task=task,
                detail=f"task {task.id}",
            )
            self._log(*named_task(decided, task.id), event)
            self._tasks[task.id] = task
        return dataclasses.replace(task, assignment_secret=secret)

    def _at_limit(self, task: Task, site: str) -> bool:
        """Whether `[taskqueue.limits]` keep `task` from a pilot at `site` now."""
        limits = self._limits
        active = [t for t in self._tasks.values() if t.state in ACTIVE]
        cap = limits.max_running_per_owner
        if cap is not None and sum(t.spec.owner == task.spec.owner for t in active) >= cap:
            return True
        at_site = limits.sites.get(site)
        if at_site is None:
            return False
        groups: dict[str, int] = {}
        for t in active:
            if t.site == site:
                groups[t.spec.group] = groups.get(t.spec.group, 0) + 1
        return at_site.full(sum(groups.values())) or at_site.group_full(task.spec.group, groups)

    def _usages(self) -> list[PairUsage]:
        """Per (group, owner): wall seconds used, and max_wall_s of its active tasks."""
        reserved: dict[tuple[str, str], float] = {}
        for t in self._tasks.values():
            pair = (t.spec.group, t.spec.owner)
            reserved[pair] = reserved.get(pair, 0.0) + (
                t.spec.max_wall_s if t.state in ACTIVE else 0
            )
        return [PairUsage(g, o, self._used.get((g, o), 0.0), r) for (g, o), r in reserved.items()]

    def _apply(
        self,
        task_id: int,
        event: TaskEvent,
        *,
        pilot: str | None = None,
        by: str | None = None,
        reason: str | None = None,
        accounting: Accounting | None = None,
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        with self._lock:
            before = self._tasks.get(task_id)
            if before is None:
                raise UnknownTask(task_id)
            if pilot is not None and before.pilot != pilot:
                raise NotAssigned(task_id, pilot, before.pilot)
            now = self._clock()
            state = next_state(before.state, event, task_id)
            retry = None
            if event is TaskEvent.FAIL or event is TaskEvent.STALL:
                retry = retry_outcome(before.attempts, self._max_attempts)
            if retry is not None:
                of = f"attempt {before.attempts} of {self._max_attempts}"
                what = "stalled" if event is TaskEvent.STALL else "failed"
                why = f"{of} {what}: {reason}"
                reason = why + ("; queued again" if retry is TaskState.RESCHEDULED else "")
                if retry is TaskState.FAILED:
                    reason = why + " (no attempts left)"
            task = dataclasses.replace(before, state=state, reason=reason or before.reason)
            if event is TaskEvent.START:
                task = dataclasses.replace(task, started_at=now, heartbeat_at=now)
            if event is TaskEvent.HEARTBEAT:
                task = dataclasses.replace(task, heartbeat_at=now)
            if retry is not None:
                state = retry
                task = dataclasses.replace(task, state=state)
            if state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED):
                task = dataclasses.replace(task, finished_at=now)
            if state is TaskState.RESCHEDULED:
                task = dataclasses.replace(
                    task,
                    pilot=None,
                    pilot_id=None,
                    site=None,
                    ce=None,
                    matched_at=None,
                    started_at=None,
                    heartbeat_at=None,
                    finished_at=None,
                    secret_digest=None,  # the earlier attempt's secret is dead
                )
            events = list(decided)
            if event is TaskEvent.STALL:
                events.append(queue_event("task.stall", RULE_TIMEOUT, SYSTEM_ACTOR, task=before))
                if retry is TaskState.FAILED:
                    events.append(
                        queue_event("task.fail", RULE_LAST_ATTEMPT, SYSTEM_ACTOR, task=task)
                    )
            elif event not in (TaskEvent.START, TaskEvent.HEARTBEAT):
                rule, actor, kind = (
                    (RULE_PILOT_REPORT, pilot, "pilot") if pilot else (RULE_REQUEST, by, None)
                )
                detail = (
                    f"task {task_id} {before.state.value} -> {state.value}: {task.reason or ''}"
                )
                events.append(
                    queue_event(
                        f"task.{event.value}",
                        rule,
                        actor or SYSTEM_ACTOR,
                        actor_kind=kind,
                        task=task,
                        detail=detail,
                    )
                )
            if retry is TaskState.RESCHEDULED:  # proxyd queued the failed or stalled task again
                events.append(queue_event("task.reschedule", RULE_RETRY, SYSTEM_ACTOR, task=task))
            self._log(*events)
            if before.state in ACTIVE and state not in ACTIVE:
                pair = (before.spec.group, before.spec.owner)
                began = before.started_at or before.matched_at or now
                wall = accounting.wall_s if accounting else (now - began).total_seconds()
                self._used[pair] = self._used.get(pair, 0.0) + wall
            if accounting is not None:  # the attempt's outcome, whatever comes after it
                outcome = TaskState.FAILED if event is TaskEvent.FAIL else state
                self._accounting.append((before, outcome, accounting, now))
            self._tasks[task_id] = task
        return task

    def start(self, task_id: int, pilot: str, *, decided: Sequence[AuditEvent] = ()) -> Task:
        return self._apply(task_id, TaskEvent.START, pilot=pilot, decided=decided)

    def heartbeat(
        self,
        task_id: int,
        pilot: str,
        *,
        decided: Sequence[AuditEvent] = (),
        log_tail: str | None = None,
    ) -> Task:
        task = self._apply(task_id, TaskEvent.HEARTBEAT, pilot=pilot, decided=decided)
        if log_tail is not None:
            self._live[task_id] = free_text(log_tail, LOG_TAIL_MAX)
        return task

    def complete(
        self,
        task_id: int,
        pilot: str,
        accounting: Accounting,
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        return self._apply(
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
        return self._apply(
            task_id,
            TaskEvent.FAIL,
            pilot=pilot,
            reason=reason,
            accounting=accounting,
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
        return self._apply(task_id, TaskEvent.RESCHEDULE, by=by, reason=reason, decided=decided)

    def cancel(
        self,
        task_id: int,
        *,
        by: str = SYSTEM_ACTOR,
        reason: str = "",
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        return self._apply(task_id, TaskEvent.CANCEL, by=by, reason=reason, decided=decided)

    def get(self, task_id: int) -> Task | None:
        return self._tasks.get(task_id)

    def query(self, filters: TaskFilter) -> list[Task]:
        with self._lock:
            found = sorted(
                (t for t in self._tasks.values() if filters.matches(t)), key=lambda t: t.id
            )
        return found[: filters.limit]

    def count(self, filters: TaskFilter) -> int:
        with self._lock:
            return sum(filters.matches(t) for t in self._tasks.values())

    def assignment(self, task_id: int, secret: str | None = None) -> Assignment | None:
        task = self._tasks.get(task_id)
        return assignment_of(task, self._clock(), secret) if task is not None else None

    def set_site_mask(
        self,
        site: str,
        masked: bool,
        by: str,
        reason: str = "",
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> None:
        site = normalise_site(site)
        event = queue_event(
            "site.mask" if masked else "site.unmask",
            RULE_REQUEST,
            by,
            detail=f"site {site}: {reason}",
        )
        with self._lock:
            self._log(*decided, event)
            (self._masked.add if masked else self._masked.discard)(site)

    def masked_sites(self) -> frozenset[str]:
        return frozenset(self._masked)

    def ban_owner(
        self, dn: str, by: str, reason: str = "", *, decided: Sequence[AuditEvent] = ()
    ) -> None:
        event = queue_event("owner.ban", RULE_REQUEST, by, detail=f"owner {dn}: {reason}")
        with self._lock:
            self._log(*decided, dataclasses.replace(event, owner_dn=dn))
            self._bans.add(dn)

    def unban_owner(self, dn: str, by: str, *, decided: Sequence[AuditEvent] = ()) -> bool:
        event = queue_event("owner.unban", RULE_REQUEST, by, detail=f"owner {dn}")
        with self._lock:
            removed = dn in self._bans
            if removed:
                self._log(*decided, dataclasses.replace(event, owner_dn=dn))
            self._bans.discard(dn)
        return removed

    def mark_stalled(
        self, heartbeat_timeout: dt.timedelta, *, decided: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """One task at a time (an example, not atomic across tasks): `decided` goes with the
        first stall, or alone when nothing stalled."""
        limit = self._clock() - heartbeat_timeout
        silent = [
            t.id
            for t in list(self._tasks.values())
            if t.state in ACTIVE and t.heartbeat_at is not None and t.heartbeat_at < limit
        ]
        if not silent:
            self._log(*decided)
        silence = f"no heartbeat for more than {int(heartbeat_timeout.total_seconds())} s"
        for n, task_id in enumerate(silent):
            self._apply(task_id, TaskEvent.STALL, reason=silence, decided=decided if n == 0 else ())
        return silent

    def log_tail(self, task_id: int) -> str | None:
        task = self._tasks.get(task_id)
        if task is not None and task.state in ACTIVE and task_id in self._live:
            return self._live[task_id]
        tails = [acc.log_tail for task, _, acc, _ in self._accounting if task.id == task_id]
        return tails[-1] if tails else None

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
        totals: dict[str, list[Any]] = {}
        site = normalise_site(site) if site is not None else None
        for task, outcome, acc, at in self._accounting:
            values = {"owner": task.spec.owner, "group": task.spec.group, "site": task.site or ""}
            if (
                (owner is not None and values["owner"] != owner)
                or (group is not None and values["group"] != group)
                or (site is not None and values["site"] != site)
                or (since is not None and at < since)
                or (until is not None and at >= until)
            ):
                continue
            t = totals.setdefault(values[by], [0, 0, 0.0, 0.0, 0])
            t[0] += 1
            t[1] += outcome is TaskState.FAILED
            t[2] += acc.cpu_s
            t[3] += acc.wall_s
            t[4] = max(t[4], acc.max_rss_kb)
        return [AccountingTotal(k, *v) for k, v in sorted(totals.items())]
