"""The `TaskQueue` protocol, and how a backend is found by name.

A backend is any object with the methods below. `load_taskqueue(name,
source, **options)` finds a factory by name and calls it with `source`
(an Engine, a proxyd `Config` or a database URL; what a backend accepts
is up to it) and the options. Names are looked up in this order:

1. factories registered in this process with `register_taskqueue`
   (tests, embedding applications);
2. the built-in backends (`"sql"`);
3. entry points of the group `proxyd.taskqueues` of installed packages,
   for example in a plugin's pyproject.toml::

       [project.entry-points."proxyd.taskqueues"]
       redis = "proxyd_redis.queue:RedisTaskQueue"

An entry point cannot shadow a built-in name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import importlib.metadata
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from ..audit import AuditEvent
from ..policy import Assignment
from .model import (
    SYSTEM_ACTOR,
    Accounting,
    AccountingTotal,
    PilotCapabilities,
    Task,
    TaskFilter,
    TaskQueueError,
    TaskSpec,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "RULE_LAST_ATTEMPT",
    "RULE_MATCH",
    "RULE_PILOT_REPORT",
    "RULE_REQUEST",
    "RULE_RETRY",
    "RULE_TIMEOUT",
    "AccountingKey",
    "AuditSink",
    "BackendNotFound",
    "TaskQueue",
    "TaskQueueFactory",
    "available_taskqueues",
    "load_taskqueue",
    "queue_event",
    "register_taskqueue",
    "unregister_taskqueue",
]

ENTRY_POINT_GROUP = "proxyd.taskqueues"
AccountingKey = Literal["owner", "group", "site"]

# Audit rule names of queue actions (stable: they are in the audit log).
RULE_MATCH = "queue.fair_share"  # task.match: the best eligible task by priority and fair share
RULE_PILOT_REPORT = "queue.pilot_report"  # task.complete, task.fail: the assigned pilot said so
RULE_TIMEOUT = "queue.heartbeat_timeout"  # task.stall: the stalled sweep
RULE_REQUEST = "queue.request"  # reschedule, cancel, site mask, owner ban: asked by `by`
RULE_RETRY = "queue.retry"  # task.reschedule by proxyd: stalled or failed, attempts left
RULE_LAST_ATTEMPT = "queue.max_attempts"  # task.fail by proxyd: stalled on its last attempt


class BackendNotFound(TaskQueueError, LookupError):
    """No task queue backend has the name asked for, or it could not be loaded."""


class AuditSink(Protocol):
    """Where queue events go: `proxyd.audit.AuditLog`, or anything with its `append_many`."""

    def append_many(self, events: Iterable[AuditEvent]) -> object: ...


@runtime_checkable
class TaskQueue(Protocol):
    """The pilot/task-queue core. Every method is safe to call from several threads.

    Pilots identify themselves by their authenticated DN (`pilot`); a
    report for a task that is not matched to that DN raises NotAssigned,
    an event that the task's state does not allow raises TaskStateError,
    an unknown task id raises UnknownTask.

    **Audit (I6).** Every change and its audit events are durable together
    or not at all: a change whose events cannot be appended raises
    AuditWriteError and has no effect (a backend appends them in the
    change's transaction, or before it commits the change).

    **Decided events.** Every method that changes the queue takes
    `decided`: the audit events of the policy decision that led to this
    call (the edge's allow, say). The queue appends them with the change,
    in the same transaction, in the given order and before its own events,
    so the decision and its effect commit together. They are appended
    whenever the call returns, even when it changed nothing (a match that
    found no task); `unban_owner` of a DN that was not banned appends
    nothing and returns False (the caller records its refusal); when the call
    raises, none of them is.
    """

    def submit(self, spec: TaskSpec, *, decided: Sequence[AuditEvent] = ()) -> Task:
        """Queue a task (state waiting). The `decided` events name the new task first in
        their detail (`named_task`), as every event about a task does."""
        ...

    def submit_many(
        self, specs: Sequence[TaskSpec], *, decided: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """Queue many tasks at once; their ids, in order."""
        ...

    def match(
        self, capabilities: PilotCapabilities, *, decided: Sequence[AuditEvent] = ()
    ) -> Task | None:
        """Claim the best eligible task for this pilot (state matched), or None.

        Audited as `task.match`. Two pilots never get the same task. Each match
        makes a fresh secret (`model.new_assignment_secret`): the returned Task
        carries it once in `assignment_secret`; the queue keeps only its digest
        (`Task.secret_digest`), until the task is queued again.
        """
        ...

    def start(self, task_id: int, pilot: str, *, decided: Sequence[AuditEvent] = ()) -> Task:
        """The pilot started the payload: matched → running. Not audited by itself
        (progress, not a decision): only `decided` is appended."""
        ...

    def heartbeat(
        self,
        task_id: int,
        pilot: str,
        *,
        decided: Sequence[AuditEvent] = (),
        log_tail: str | None = None,
    ) -> Task:
        """The pilot is alive and still on the task. Not audited by itself, as `start`.

        `log_tail`: the end of the running payload's output (at most LOG_TAIL_MAX
        characters, NUL replaced); `log_tail()` returns it while the
        attempt runs."""
        ...

    def complete(
        self,
        task_id: int,
        pilot: str,
        accounting: Accounting,
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        """The payload ended well: running → done. Audited as `task.complete`."""
        ...

    def fail(
        self,
        task_id: int,
        pilot: str,
        reason: str,
        accounting: Accounting | None = None,
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        """The payload or the pilot failed: → failed. Audited as `task.fail`. With
        `max_attempts`, a task with attempts left is queued again at once (rescheduled,
        audited as `task.reschedule` by proxyd, `RULE_RETRY`)."""
        ...

    def reschedule(
        self,
        task_id: int,
        *,
        by: str = SYSTEM_ACTOR,
        reason: str = "",
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        """Queue the task again (state rescheduled); its pilot loses it. Audited."""
        ...

    def cancel(
        self,
        task_id: int,
        *,
        by: str = SYSTEM_ACTOR,
        reason: str = "",
        decided: Sequence[AuditEvent] = (),
    ) -> Task:
        """Withdraw the task (state cancelled); its pilot loses it. Audited."""
        ...

    def get(self, task_id: int) -> Task | None: ...

    def query(self, filters: TaskFilter) -> list[Task]:
        """Tasks matching `filters`, in id order, one page of at most `filters.limit`."""
        ...

    def count(self, filters: TaskFilter) -> int:
        """How many tasks match `filters` (all of them: `limit` does not apply)."""
        ...

    def assignment(self, task_id: int, secret: str | None = None) -> Assignment | None:
        """Which pilot holds the task and for how long, and whether `secret` (what the
        asking pilot presented) is this attempt's assignment secret (`model.assignment_of`)."""
        ...

    def set_site_mask(
        self,
        site: str,
        masked: bool,
        by: str,
        reason: str = "",
        *,
        decided: Sequence[AuditEvent] = (),
    ) -> None:
        """Mask (no work at all) or unmask a site, effective at the next match. Audited.

        Site names are compared as `model.normalise_site` spells them (a bad name raises
        InvalidTask)."""
        ...

    def masked_sites(self) -> frozenset[str]: ...

    def ban_owner(
        self, dn: str, by: str, reason: str = "", *, decided: Sequence[AuditEvent] = ()
    ) -> None:
        """Ban an owner DN pattern: its tasks never match, its credentials are refused. Audited."""
        ...

    def unban_owner(self, dn: str, by: str, *, decided: Sequence[AuditEvent] = ()) -> bool:
        """Lift a ban; whether there was one. Audited (also when there was none)."""
        ...

    def mark_stalled(
        self, heartbeat_timeout: dt.timedelta, *, decided: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """Matched or running tasks silent for longer than the timeout → stalled, and with
        `max_attempts` (`model.retry_outcome`) at once queued again or, on the last
        attempt, failed. Audited; the ids of the tasks that stalled."""
        ...

    def log_tail(self, task_id: int) -> str | None:
        """The end of the payload output its pilot reported for the latest finished attempt."""
        ...

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
        """Reported accounting summed per owner, group or site (since inclusive, until not)."""
        ...


TaskQueueFactory = Callable[..., TaskQueue]

_BUILTIN = {"sql": "proxyd.taskqueue.sql:SqlTaskQueue.from_source"}
_registry: dict[str, TaskQueueFactory] = {}
_lock = threading.Lock()


def register_taskqueue(name: str, factory: TaskQueueFactory, *, replace: bool = False) -> None:
    """Make `factory(source, **options)` loadable as `name` in this process."""
    if not isinstance(name, str) or not name:
        raise ValueError("a task queue backend needs a non-empty name")
    with _lock:
        if not replace and (name in _registry or name in _BUILTIN):
            raise ValueError(
                f"a task queue backend named {name!r} exists; pass replace=True to replace it"
            )
        _registry[name] = factory


def unregister_taskqueue(name: str) -> None:
    with _lock:
        _registry.pop(name, None)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_taskqueues() -> list[str]:
    """Every loadable backend name: registered, built-in and installed."""
    with _lock:
        names = set(_registry)
    return sorted(names | set(_BUILTIN) | set(_entry_points()))


def _import(target: str) -> Any:
    module, _, attrs = target.partition(":")
    obj: Any = importlib.import_module(module)
    for attr in attrs.split(".") if attrs else ():
        obj = getattr(obj, attr)
    return obj


def load_taskqueue(name: str, source: Any, **options: Any) -> TaskQueue:
    """The task queue backend `name`, made from `source` (engine, config or URL) and options."""
    with _lock:
        factory = _registry.get(name)
    where = f"registered backend {name!r}"
    try:
        if factory is None and name in _BUILTIN:
            where = f"built-in backend {name!r}"
            factory = _import(_BUILTIN[name])
        if factory is None:
            entry = _entry_points().get(name)
            if entry is None:
                known = ", ".join(available_taskqueues())
                raise BackendNotFound(f"no task queue backend named {name!r} (known: {known})")
            where = f"entry point {entry.name} = {entry.value} ({ENTRY_POINT_GROUP})"
            factory = entry.load()
    except (ImportError, AttributeError) as exc:
        raise BackendNotFound(f"{where} cannot be loaded: {exc}") from exc
    queue = factory(source, **options)
    if not isinstance(queue, TaskQueue):
        raise BackendNotFound(f"{where} made a {type(queue).__name__}, which is not a TaskQueue")
    return queue


def queue_event(
    operation: str,
    rule: str,
    actor: str,
    *,
    task: Task | None = None,
    detail: str | None = None,
    actor_kind: str | None = None,
) -> AuditEvent:
    """The audit event of a queue action (decision allow: the action happened).

    The actor kind is "pilot" for pilot reports, "system" for proxyd's own
    sweeps and "operator" for the rest, unless given.
    """
    if actor_kind is None:
        actor_kind = "system" if actor == SYSTEM_ACTOR else "operator"
    return AuditEvent(
        actor_dn=actor,
        actor_kind=actor_kind,
        peer="",
        operation=operation,
        rule=rule,
        decision="allow",
        owner_dn=task.spec.owner if task is not None else None,
        credential_name=task.spec.credential_name if task is not None else None,
        fqans=task.spec.fqans if task is not None else (),
        detail=detail[:2000] if detail is not None else None,
    )


def named_task(events: Sequence[AuditEvent], task_id: int) -> list[AuditEvent]:
    """`events` with task `task_id` named first in their detail ("task 12", "task 12: ..."):
    the allow of a submission is decided before the task has an id, and `proxyd-audit
    query --task` finds a task's events by that name."""
    return [
        dataclasses.replace(
            e, detail=f"task {task_id}: {e.detail}" if e.detail else f"task {task_id}"
        )
        for e in events
    ]
