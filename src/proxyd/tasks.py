"""Task-queue operations as the edges see them: every one decided by policy and audited.

The queue backend (`proxyd.taskqueue`) keeps tasks; this module decides
who may submit, match, report on and read them, and hands payload proxies
out through the Repository (I2: only the matched pilot instance, only while
live, only limited).

An allow is recorded only for an action that is allowed to happen: a pilot
report that the task's life cycle refuses (complete before start, ...) is
refused by policy (`task.state_conflict`); a cancel of a finished task is
decided by policy for who asks, then recorded as a `task.state_conflict`
refusal, with no allow. When the state changes between the decision and
the action (another request won the race), the refusal is recorded after
the allow. Such refusals answer 409 (`TaskConflict`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from cryptography import x509

from voms_ext import normalise_fqan

from . import policy
from .audit import AuditEvent
from .core.gate import Gate
from .core.tokens import IssuedToken
from .issuer import IssuedProxy
from .policy import Assignment, Decision, Operation
from .principal import Principal
from .repository import BadRequest, Denied, NotFound, Repository, RepositoryError
from .taskqueue.base import TaskQueue, load_taskqueue
from .taskqueue.fairshare import FairShare
from .taskqueue.model import (
    QUEUED,
    TRANSITIONS,
    Accounting,
    AccountingTotal,
    InvalidTask,
    NotAssigned,
    PilotCapabilities,
    Task,
    TaskEvent,
    TaskFilter,
    TaskSpec,
    TaskStateError,
    UnknownTask,
    free_text,
    normalise_site,
    text_field,
)

T = TypeVar("T")
STATE_CONFLICT = "task.state_conflict"


class TaskConflict(RepositoryError):
    """A life-cycle event the task's current state does not allow (HTTP 409); the message
    names the state and the events it allows."""

    code = "conflict"


class _PresentedSecret:
    """The queue as `Repository.payload_proxy` reads it for one request: the assignment
    carries whether the asking pilot presented the task's assignment secret."""

    def __init__(self, queue: TaskQueue, secret: str | None) -> None:
        self._queue = queue
        self._secret = secret

    def get(self, task_id: int) -> Task | None:
        return self._queue.get(task_id)

    def assignment(self, task_id: int, secret: str | None = None) -> Assignment | None:
        return self._queue.assignment(task_id, self._secret)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class TaskService:
    def __init__(self, repo: Repository, queue: TaskQueue) -> None:
        self.repo = repo
        self.queue = queue
        self.gate = repo.gate

    # --- owners ---------------------------------------------------------------------------

    def submit(self, principal: Principal, spec: TaskSpec) -> Task:
        limit = int(self.repo.config.taskqueue.max_wall_time.total_seconds())
        if spec.max_wall_s > limit:
            raise BadRequest(
                f"TaskSpec.max_wall_s: must be at most {limit} s (the server's [taskqueue] "
                f"max_wall_time), not {spec.max_wall_s}"
            )
        fqans = tuple(normalise_fqan(f) for f in spec.fqans)
        aa = self.repo.authorities.get(spec.vo)
        held = aa.held_fqans(spec.owner) if aa is not None else ()
        if spec.vo in self.repo.upstreams:
            held = fqans  # the VO's own server decides when the payload proxy is made
        facts = self.repo.stored_facts(spec.credential_username, spec.credential_name)
        limits = self.repo.config.taskqueue.limits
        queued = None
        if limits.max_queued_per_owner is not None:  # judged by policy, like the priority
            queued = self.queue.count(TaskFilter(owner=spec.owner, states=QUEUED))
        request = policy.Request(
            Operation.TASK_SUBMIT,
            owner=spec.owner,
            name=spec.credential_name,
            username=spec.credential_username,
            fqans=fqans,
            held_fqans=held,
            priority=spec.priority,
            priority_range=limits.priority_range(fqans),
            queued=queued,
            max_queued=limits.max_queued_per_owner,
        )
        decision = self.gate.decide(principal, request, facts, name=spec.credential_name)
        allow = self.gate.event(
            principal, Operation.TASK_SUBMIT, decision, owner=spec.owner, name=spec.credential_name
        )
        return self._committed(allow, self.queue.submit(spec, decided=[allow]))

    def tasks(self, principal: Principal, filters: TaskFilter) -> list[Task]:
        self.gate.read(principal, policy.Request(Operation.TASK_READ, owner=filters.owner))
        return self.queue.query(filters)

    def task(self, principal: Principal, task_id: int) -> Task:
        task = self.queue.get(task_id)
        owner = task.spec.owner if task is not None else None
        self.gate.read(principal, policy.Request(Operation.TASK_READ, owner=owner))
        if task is None:
            raise NotFound(f"no task {task_id}", "task.not_found")
        return task

    def log_tail(self, principal: Principal, task_id: int) -> str | None:
        self.task(principal, task_id)  # the owner, admins and auditors
        return self.queue.log_tail(task_id)

    def cancel(self, principal: Principal, task_id: int) -> Task:
        return self._request(principal, task_id, TaskEvent.CANCEL, "cancelled by request")

    def reschedule(self, principal: Principal, task_id: int, reason: str = "") -> Task:
        """Queue the task again (the owner or an admin): its pilot loses it, and the secret
        of the attempt is dead (payload proxies, reports). Outside `max_attempts`, which
        limits only what the queue does by itself."""
        why = f"rescheduled by request: {reason}" if reason else "rescheduled by request"
        return self._request(principal, task_id, TaskEvent.RESCHEDULE, free_text(why, 1000))

    def _request(self, principal: Principal, task_id: int, event: TaskEvent, reason: str) -> Task:
        """Cancel or reschedule: policy decides who asks, then the life cycle."""
        op = Operation.TASK_CANCEL if event is TaskEvent.CANCEL else Operation.TASK_RESCHEDULE
        task = self.queue.get(task_id)
        owner = task.spec.owner if task is not None else None
        decision = self.gate.decide(
            principal,
            policy.Request(op, owner=owner),
            None,
            name=None,
            detail=f"task {task_id}: {event.value}",
        )
        if task is None:
            raise self.gate.refuse(
                principal,
                op,
                Decision(False, "task.not_found", f"no task {task_id}"),
                owner=None,
                name=None,
                after_decision=True,
            )
        if event not in TRANSITIONS[task.state]:
            # E.g. a finished task: who asks was decided first; the life cycle refuses.
            conflict = str(TaskStateError(task.state, event, task.id))
            self._refuse(principal, op, task, conflict)
            raise TaskConflict(conflict, STATE_CONFLICT)
        allow = self._allowed(principal, op, decision, task, event.value)
        change = self.queue.cancel if event is TaskEvent.CANCEL else self.queue.reschedule
        return self._act(
            principal,
            op,
            task,
            lambda: self._committed(
                allow, change(task.id, by=principal.identity, reason=reason, decided=[allow])
            ),
        )

    # --- pilots ---------------------------------------------------------------------------

    def match(self, principal: Principal, capabilities: PilotCapabilities) -> Task | None:
        """The best task for this pilot, carrying its assignment secret (once), or None.

        A pilot whose DN is bound to sites ([taskqueue] pilot_sites) is refused any
        other site by policy (`task.site_not_allowed`).
        """
        request = policy.Request(
            Operation.TASK_MATCH,
            site=capabilities.site,  # normalised by PilotCapabilities
            allowed_sites=self.repo.config.taskqueue.sites_of(principal.identity),
        )
        decision = self.gate.decide(principal, request, None, name=None)
        allow = self.gate.event(principal, Operation.TASK_MATCH, decision, owner=None, name=None)
        # The pilot is who authenticated, whatever the request body says.
        caps = PilotCapabilities(
            pilot_dn=principal.identity,
            pilot_id=capabilities.pilot_id,
            site=capabilities.site,
            ce=capabilities.ce,
            platform=capabilities.platform,
            tags=capabilities.tags,
            cpu_time_left=capabilities.cpu_time_left,
            memory_mb=capabilities.memory_mb,
        )
        return self._committed(allow, self.queue.match(caps, decided=[allow]))

    def _report(
        self,
        principal: Principal,
        task_id: int,
        event: TaskEvent,
        secret: str | None,
        act: Callable[[Sequence[AuditEvent]], T],
    ) -> T:
        """A pilot's report on a task: policy decides with the assignment (this pilot
        instance, by its secret) and whether the task's state allows `event`; the queue
        commits the change with the allow event (`act(decided)`)."""
        task = self.queue.get(task_id)
        conflict = None
        if task is not None and event not in TRANSITIONS[task.state]:
            conflict = str(TaskStateError(task.state, event, task_id))
        request = policy.Request(
            Operation.TASK_UPDATE,
            assignment=self.queue.assignment(task_id, secret),
            state_conflict=conflict,
        )
        try:
            decision = self.gate.decide(
                principal, request, None, name=None, detail=f"task {task_id}: {event.value}"
            )
        except Denied as exc:
            if exc.rule == STATE_CONFLICT:
                raise TaskConflict(exc.message, STATE_CONFLICT) from None
            raise
        allow = self._allowed(principal, Operation.TASK_UPDATE, decision, task, event.value)
        return self._act(
            principal, Operation.TASK_UPDATE, task, lambda: self._committed(allow, act([allow]))
        )

    def _allowed(
        self,
        principal: Principal,
        op: Operation,
        decision: Decision,
        task: Task | None,
        what: str = "",
    ) -> AuditEvent:
        """The allow event a queue change commits with (I6); it names the task first, so
        `proxyd-audit query --task N` finds it."""
        return self.gate.event(
            principal,
            op,
            decision,
            owner=task.spec.owner if task is not None else None,
            name=task.spec.credential_name if task is not None else None,
            detail=(f"task {task.id}: {what}" if what else f"task {task.id}")
            if task is not None
            else None,
        )

    @staticmethod
    def _committed(allow: AuditEvent, result: T) -> T:
        """The queue committed `allow` with its change: count it in proxyd_decisions_total,
        as the gate counts the events it writes itself."""
        Gate.counted(allow)
        return result

    def _act(
        self, principal: Principal, op: Operation, task: Task | None, act: Callable[[], T]
    ) -> T:
        """Do what policy allowed; if the task changed meanwhile and the queue refuses,
        record the refusal (I6) and answer 409 (or 403 when the task is no longer this
        pilot's)."""
        try:
            return act()
        except TaskStateError as exc:
            self._refuse(principal, op, task, str(exc))
            raise TaskConflict(str(exc), STATE_CONFLICT) from None
        except (NotAssigned, UnknownTask) as exc:
            self._refuse(principal, op, task, str(exc), rule="task.not_assigned")
            raise Denied(str(exc), "task.not_assigned") from None

    def _refuse(
        self,
        principal: Principal,
        op: Operation,
        task: Task | None,
        reason: str,
        *,
        rule: str = STATE_CONFLICT,
    ) -> None:
        """Audit a refusal that the queue's state decided (raises AuditWriteError)."""
        self.gate.record(
            principal,
            op,
            Decision(False, rule, reason[:2000]),
            owner=task.spec.owner if task is not None else None,
            name=task.spec.credential_name if task is not None else None,
            detail=reason[:2000],
        )

    def start(self, principal: Principal, task_id: int, secret: str | None = None) -> Task:
        return self._report(
            principal,
            task_id,
            TaskEvent.START,
            secret,
            lambda decided: self.queue.start(task_id, principal.identity, decided=decided),
        )

    def heartbeat(
        self,
        principal: Principal,
        task_id: int,
        secret: str | None = None,
        log_tail: str | None = None,
    ) -> Task:
        """The pilot is alive; `log_tail`, the end of the running payload's output, is what its
        owner reads with `log_tail` until the attempt ends."""
        return self._report(
            principal,
            task_id,
            TaskEvent.HEARTBEAT,
            secret,
            lambda decided: self.queue.heartbeat(
                task_id, principal.identity, decided=decided, log_tail=log_tail
            ),
        )

    def complete(
        self,
        principal: Principal,
        task_id: int,
        accounting: Accounting,
        secret: str | None = None,
    ) -> Task:
        return self._report(
            principal,
            task_id,
            TaskEvent.COMPLETE,
            secret,
            lambda decided: self.queue.complete(
                task_id, principal.identity, accounting, decided=decided
            ),
        )

    def fail(
        self,
        principal: Principal,
        task_id: int,
        reason: str,
        accounting: Accounting | None,
        secret: str | None = None,
    ) -> Task:
        return self._report(
            principal,
            task_id,
            TaskEvent.FAIL,
            secret,
            lambda decided: self.queue.fail(
                task_id, principal.identity, reason, accounting, decided=decided
            ),
        )

    def payload_proxy(
        self,
        principal: Principal,
        task_id: int,
        csr: x509.CertificateSigningRequest,
        secret: str | None = None,
    ) -> IssuedProxy:
        """The limited payload proxy, for the pilot instance holding the task's secret."""
        queue = cast(TaskQueue, _PresentedSecret(self.queue, secret))
        return self.repo.payload_proxy(principal, task_id, csr, queue)

    def payload_token(
        self, principal: Principal, task_id: int, secret: str | None = None
    ) -> IssuedToken:
        """A WLCG token beside the payload proxy, for the pilot instance holding the secret."""
        queue = cast(TaskQueue, _PresentedSecret(self.queue, secret))
        return self.repo.payload_token(principal, task_id, queue)

    # --- operators ------------------------------------------------------------------------

    def mask_site(self, principal: Principal, site: str, masked: bool, reason: str = "") -> str:
        """Mask or unmask a site; the site's name as the queue spells it (normalise_site)."""
        try:
            site = normalise_site(site)
        except InvalidTask as exc:
            raise BadRequest(str(exc)) from None
        decision = self.gate.decide(principal, policy.Request(Operation.ADMIN), None, name=None)
        allow = self.gate.event(
            principal,
            Operation.ADMIN,
            decision,
            owner=None,
            name=None,
            detail=f"{'mask' if masked else 'unmask'} site {site}",
        )
        self.queue.set_site_mask(
            site, masked, by=principal.identity, reason=reason, decided=[allow]
        )
        Gate.counted(allow)
        return site

    def ban_owner(self, principal: Principal, dn: str, banned: bool, reason: str = "") -> None:
        try:
            text_field("dn", dn, length=1024, plain=True)
        except InvalidTask as exc:
            raise BadRequest(str(exc)) from None
        reason = free_text(reason[:1000], 1000)
        decision = self.gate.decide(principal, policy.Request(Operation.ADMIN), None, name=None)
        allow = self.gate.event(
            principal,
            Operation.ADMIN,
            decision,
            owner=dn,
            name=None,
            detail=f"{'ban' if banned else 'unban'} owner {dn}",
        )
        if banned:
            self.queue.ban_owner(dn, by=principal.identity, reason=reason, decided=[allow])
            Gate.counted(allow)
        elif self.queue.unban_owner(dn, by=principal.identity, decided=[allow]):
            Gate.counted(allow)
        else:
            raise self.gate.refuse(
                principal,
                Operation.ADMIN,
                Decision(False, "admin.not_banned", f'"{dn}" is not banned'),
                owner=dn,
                name=None,
                after_decision=True,
            )

    def accounting(
        self, principal: Principal, by: str, since: dt.datetime | None = None
    ) -> Sequence[AccountingTotal]:
        if by not in ("owner", "group", "site"):
            raise BadRequest("accounting is grouped by owner, group or site")
        self.gate.read(
            principal, policy.Request(Operation.AUDIT_READ), detail=f"accounting by {by}"
        )
        return self.queue.accounting(by, since=since)  # type: ignore[arg-type]


def open_task_service(repo: Repository) -> TaskService | None:
    """The task service of this server's configured queue backend; None when it has none.

    Raises TaskQueueError when the backend cannot be loaded.
    """
    tq = repo.config.taskqueue
    if tq.backend is None:
        return None
    options: dict[str, object] = {"audit": repo.audit}
    if tq.backend == "sql":
        options["fair_share"] = FairShare(shares=dict(tq.shares), half_life=tq.usage_half_life)
        options["limits"] = tq.limits
        options["max_attempts"] = tq.max_attempts
    return TaskService(repo, load_taskqueue(tq.backend, repo.engine, **options))
