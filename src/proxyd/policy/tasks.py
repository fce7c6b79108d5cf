"""The rules of the task queue and its payloads: who submits, reads, cancels, matches, reports
on a task, and which pilot gets a payload's proxy or token (I2).

`decide` calls these as the handlers of the task and payload operations, after the
invariants (bans, limited peers, pilots' own restrictions) have been applied.
"""

from __future__ import annotations

from ..config import PolicyConfig
from ..patterns import any_matches
from ..principal import Principal, PrincipalKind
from .model import LOCAL_OPERATOR, Assignment, CredentialFacts, Decision, Operation, Request


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, rule, reason)


def wrong_instance(a: Assignment) -> Decision:
    return _deny(
        "payload.wrong_instance",
        f"task {a.task_id} (attempt {a.attempt}) is assigned to another instance of this "
        "pilot: the assignment secret of its match is missing or wrong (or an earlier "
        "attempt's)",
    )


def payload(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if principal.kind is not PrincipalKind.PILOT:
        return _deny("payload.not_pilot", "payload proxies are handed only to pilots")
    a = request.assignment
    if a is None or a.pilot != principal.identity:
        return _deny("payload.not_assigned", "this task is not assigned to the requesting pilot")
    if credential is None:
        return _deny("credential.not_found", "the task's credential does not exist")
    if a.owner != credential.owner or a.credential_name != credential.name:
        return _deny("payload.not_assigned", "this task is not assigned to the requesting pilot")
    if not a.instance_ok:
        return wrong_instance(a)
    if not a.live:
        return _deny(
            "payload.assignment_ended", f"task {a.task_id} is no longer running on this pilot"
        )
    return Decision(
        True, "payload.assigned", f"payload of task {a.task_id}, attempt {a.attempt}", limited=True
    )


def task_submit(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if principal.kind not in (PrincipalKind.USER, PrincipalKind.HOST):
        return _deny("task.not_owner", "tasks are submitted by users (or services) for themselves")
    if request.owner != principal.identity:
        return _deny("task.not_owner", "a task can only be submitted by its owner")
    if credential is None or credential.owner != principal.identity:
        return _deny(
            "task.credential_missing",
            f'no credential "{request.name}" of yours is stored under username '
            f'"{request.username}"; delegate one first (proxy-init --store)',
        )
    if request.fqans and not all(f in request.held_fqans for f in request.fqans):
        missing = [f for f in request.fqans if f not in request.held_fqans]
        return _deny("voms.fqan_not_held", f"the owner does not hold: {', '.join(missing)}")
    limits = _task_limits(request)
    if limits is not None:
        return limits
    return Decision(True, "task.owner", "the owner submits its own task", limited=False)


def _task_limits(request: Request) -> Decision | None:
    """[taskqueue.limits] at submission: the priority range of the task's FQANs, and the
    owner's queue (the running limits are the matcher's)."""
    if request.priority is not None and request.priority_range is not None:
        low, high = request.priority_range
        if not low <= request.priority <= high:
            return _deny(
                "task.priority_not_allowed",
                f"priority {request.priority} is outside {low}..{high}, the range "
                "[taskqueue.limits] priority allows for the task's FQANs",
            )
    if (
        request.queued is not None
        and request.max_queued is not None
        and request.queued >= request.max_queued
    ):
        return _deny(
            "task.owner_queue_full",
            f"the owner has {request.queued} tasks queued, the most [taskqueue.limits] "
            f"max_queued_per_owner allows is {request.max_queued}",
        )
    return None


def task_read(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if request.owner is not None and request.owner == principal.identity:
        return Decision(True, "task.owner", "the owner reads its own tasks", limited=False)
    if any_matches((*config.admins, *config.auditors), principal.identity, principal.fqans):
        return Decision(True, "task.admins", "listed in admins or auditors", limited=False)
    return _deny("task.not_owner", "only the owner, admins and auditors may read these tasks")


def task_cancel(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    # Auditors read tasks but must not change them; a limited proxy (a payload
    # of the owner's) must not cancel (or reschedule) the owner's other work.
    verb = "reschedule" if request.operation is Operation.TASK_RESCHEDULE else "cancel"
    if principal.limited:
        return _deny("task.limited", f"a limited proxy may not {verb} tasks")
    if request.owner is not None and request.owner == principal.identity:
        return Decision(True, "task.owner", f"the owner may {verb} its own task", limited=False)
    if principal.kind is PrincipalKind.OPERATOR:  # `proxyd admin reschedule` on the server
        return LOCAL_OPERATOR
    if any_matches(config.admins, principal.identity, principal.fqans):
        return Decision(True, "task.admins", "listed in admins", limited=False)
    return _deny("task.not_owner", f"only the owner and admins may {verb} a task")


def task_match(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if principal.kind is not PrincipalKind.PILOT:
        return _deny("task.not_pilot", "only pilots match tasks")
    # I5: a pilot bound to sites ([taskqueue] pilot_sites) cannot claim another one.
    if request.allowed_sites is not None and request.site not in request.allowed_sites:
        allowed = ", ".join(sorted(request.allowed_sites)) or "none"
        return _deny(
            "task.site_not_allowed",
            f'this pilot may claim only the sites {allowed}, not "{request.site}"',
        )
    return Decision(True, "task.pilot", "a pilot asks for work", limited=True)


def task_update(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    a = request.assignment
    if principal.kind is not PrincipalKind.PILOT or a is None or a.pilot != principal.identity:
        return _deny("task.not_assigned", "only the pilot running a task reports on it")
    if not a.instance_ok:
        return wrong_instance(a)
    if not a.active:
        return _deny(
            "payload.assignment_ended", f"task {a.task_id} is no longer running on this pilot"
        )
    if request.state_conflict is not None:
        return _deny("task.state_conflict", request.state_conflict)
    return Decision(True, "task.assigned_pilot", f"the pilot of task {a.task_id}", limited=True)
