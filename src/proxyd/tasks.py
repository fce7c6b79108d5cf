"""Task-queue operations as the edges see them: every one decided by policy and audited.

The queue backend (`proxyd.taskqueue`) keeps tasks; this module decides
who may submit, match, report on and read them, and hands payload proxies
out through the Repository (I2: only the matched pilot, only while live,
only limited).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from voms_ext import normalise_fqan

from . import policy
from .issuer import IssuedProxy
from .policy import Operation
from .principal import Principal
from .repository import BadRequest, NotFound, Repository
from .taskqueue.base import TaskQueue
from .taskqueue.model import (
    Accounting,
    AccountingTotal,
    PilotCapabilities,
    Task,
    TaskFilter,
    TaskSpec,
)


class TaskService:
    def __init__(self, repo: Repository, queue: TaskQueue) -> None:
        self.repo = repo
        self.queue = queue

    # --- owners ---------------------------------------------------------------------------

    def submit(self, principal: Principal, spec: TaskSpec) -> Task:
        fqans = tuple(normalise_fqan(f) for f in spec.fqans)
        aa = self.repo.authorities.get(spec.vo)
        held = aa.held_fqans(spec.owner) if aa is not None else ()
        request = policy.Request(
            Operation.TASK_SUBMIT,
            owner=spec.owner,
            name=spec.credential_name,
            fqans=fqans,
            held_fqans=held,
        )
        self.repo.authorize(principal, request, name=spec.credential_name)
        owner_of = self.repo.credential_owner(spec.credential_username, spec.credential_name)
        if owner_of != spec.owner:
            raise BadRequest(
                f'no credential "{spec.credential_name}" of yours is stored under username '
                f'"{spec.credential_username}"; delegate one first (proxy-init --store)'
            )
        return self.queue.submit(spec)

    def tasks(self, principal: Principal, filters: TaskFilter) -> list[Task]:
        self.repo.authorize(principal, policy.Request(Operation.TASK_READ, owner=filters.owner))
        return self.queue.query(filters)

    def task(self, principal: Principal, task_id: int) -> Task:
        task = self.queue.get(task_id)
        owner = task.spec.owner if task is not None else None
        self.repo.authorize(principal, policy.Request(Operation.TASK_READ, owner=owner))
        if task is None:
            raise NotFound(f"no task {task_id}", "task.not_found")
        return task

    def log_tail(self, principal: Principal, task_id: int) -> str | None:
        self.task(principal, task_id)  # the owner, admins and auditors
        return self.queue.log_tail(task_id)

    def cancel(self, principal: Principal, task_id: int) -> Task:
        task = self.queue.get(task_id)
        owner = task.spec.owner if task is not None else None
        self.repo.authorize(principal, policy.Request(Operation.TASK_CANCEL, owner=owner))
        if task is None:
            raise NotFound(f"no task {task_id}", "task.not_found")
        return self.queue.cancel(task.id, by=principal.identity, reason="cancelled by request")

    # --- pilots ---------------------------------------------------------------------------

    def match(self, principal: Principal, capabilities: PilotCapabilities) -> Task | None:
        self.repo.authorize(principal, policy.Request(Operation.TASK_MATCH))
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
        return self.queue.match(caps)

    def _as_assigned_pilot(self, principal: Principal, task_id: int) -> None:
        assignment = self.queue.assignment(task_id)
        request = policy.Request(Operation.TASK_UPDATE, assignment=assignment)
        self.repo.authorize(principal, request, name=None)

    def start(self, principal: Principal, task_id: int) -> Task:
        self._as_assigned_pilot(principal, task_id)
        return self.queue.start(task_id, principal.identity)

    def heartbeat(self, principal: Principal, task_id: int) -> Task:
        self._as_assigned_pilot(principal, task_id)
        return self.queue.heartbeat(task_id, principal.identity)

    def complete(self, principal: Principal, task_id: int, accounting: Accounting) -> Task:
        self._as_assigned_pilot(principal, task_id)
        return self.queue.complete(task_id, principal.identity, accounting)

    def fail(
        self, principal: Principal, task_id: int, reason: str, accounting: Accounting | None
    ) -> Task:
        self._as_assigned_pilot(principal, task_id)
        return self.queue.fail(task_id, principal.identity, reason, accounting)

    def payload_proxy(
        self, principal: Principal, task_id: int, csr: x509.CertificateSigningRequest
    ) -> IssuedProxy:
        return self.repo.payload_proxy(principal, task_id, csr, self.queue)

    # --- operators ------------------------------------------------------------------------

    def mask_site(self, principal: Principal, site: str, masked: bool, reason: str = "") -> None:
        self.repo.authorize(principal, policy.Request(Operation.ADMIN), name=None)
        self.queue.set_site_mask(site, masked, by=principal.identity, reason=reason)

    def ban_owner(self, principal: Principal, dn: str, banned: bool, reason: str = "") -> None:
        self.repo.authorize(principal, policy.Request(Operation.ADMIN), name=None)
        if banned:
            self.queue.ban_owner(dn, by=principal.identity, reason=reason)
        elif not self.queue.unban_owner(dn, by=principal.identity):
            raise NotFound(f'"{dn}" is not banned', "admin.not_banned")

    def accounting(
        self, principal: Principal, by: str, since: dt.datetime | None = None
    ) -> Sequence[AccountingTotal]:
        self.repo.authorize(principal, policy.Request(Operation.AUDIT_READ), name=None)
        if by not in ("owner", "group", "site"):
            raise BadRequest("accounting is grouped by owner, group or site")
        return self.queue.accounting(by, since=since)  # type: ignore[arg-type]
