"""Task-queue and pilot routes of the HTTPS API. Thin: parse, call TaskService, serialise."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..taskqueue.model import (
    LOG_TAIL_MAX,
    REASON_MAX,
    Accounting,
    InvalidTask,
    Payload,
    PilotCapabilities,
    Requirements,
    Task,
    TaskFilter,
    TaskQueueError,
    TaskSpec,
    TaskState,
    UnknownTask,
    free_text,
)
from ..tasks import TaskConflict, TaskService
from .models import (
    FAIL_REASON,
    PILOT_ID,
    TASK_SECONDS,
    CompleteReport,
    FailReport,
    Heartbeat,
    OwnerBan,
    PilotOffer,
    PresentSecret,
    Reschedule,
    SiteMask,
    TaskCredential,
    TaskProxyRequest,
    TaskRequirements,
    TaskSubmission,
)
from .openapi import ApiRoute
from .problems import Problem
from .util import load_csr, pem_chain, principal_of, read_body

TASKS = web.AppKey("tasks", TaskService)
MAX_LOG_TAIL = LOG_TAIL_MAX
# The assignment secret a pilot got with its match (`assignment_secret` in the match answer)
# travels in this JSON body field of proxy, start, heartbeat, complete and fail.
SECRET_FIELD = "assignment_secret"  # noqa: S105 - a field name
_ID_MAX = 2**63 - 1
R = TypeVar("R")
T = TypeVar("T")


async def _call(fn: Callable[..., R], *args: Any) -> R:
    """Run a TaskService call in a thread; queue refusals become problem details, never 500."""
    try:
        return await asyncio.to_thread(fn, *args)
    except TaskConflict as exc:
        raise Problem(409, exc.message, exc.rule) from None
    except UnknownTask as exc:
        raise Problem(404, str(exc), "task.not_found") from None
    except (InvalidTask, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None


def _service(request: web.Request) -> TaskService:
    service = request.app.get(TASKS)
    if service is None:
        raise Problem(404, "the task queue is not enabled on this server")
    return service


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def task_json(task: Task) -> dict[str, Any]:
    spec = task.spec
    return {
        "id": task.id,
        "state": task.state.value,
        "owner": spec.owner,
        "vo": spec.vo,
        "group": spec.group,
        "fqans": list(spec.fqans),
        "credential": {"username": spec.credential_username, "name": spec.credential_name},
        "priority": spec.priority,
        "payload": {
            "command": spec.payload.command,
            "args": list(spec.payload.args),
            "input_files": list(spec.payload.input_files),
        },
        "requirements": {
            "sites_allowed": sorted(spec.requirements.sites_allowed),
            "sites_banned": sorted(spec.requirements.sites_banned),
            "platform": spec.requirements.platform,
            "tags": sorted(spec.requirements.tags),
            "cpu_time": spec.requirements.cpu_time,
            "memory_mb": spec.requirements.memory_mb,
        },
        "max_wall_s": spec.max_wall_s,
        "max_cpu_s": spec.max_cpu_s,
        "attempts": task.attempts,
        "pilot": task.pilot,
        "site": task.site,
        "submitted_at": _iso(task.submitted_at),
        "matched_at": _iso(task.matched_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "reason": task.reason,
    }


def _or(value: T | None, default: T) -> T:
    """A field's default for a field left out or null (0 and "" are values, not absence)."""
    return default if value is None else value


async def submit_task(request: web.Request) -> web.Response:
    body = await read_body(request, TaskSubmission)
    principal = principal_of(request)
    credential = body.credential or TaskCredential()
    req = body.requirements or TaskRequirements()
    try:
        spec = TaskSpec(
            owner=principal.identity,
            vo=_or(body.vo, ""),
            group=_or(body.group, ""),
            credential_username=_or(credential.username, principal.identity),
            credential_name=_or(credential.name, "default"),
            fqans=tuple(body.fqans or ()),
            priority=_or(body.priority, 0),
            requirements=Requirements(
                sites_allowed=frozenset(req.sites_allowed or ()),
                sites_banned=frozenset(req.sites_banned or ()),
                platform=req.platform,
                tags=frozenset(req.tags or ()),
                cpu_time=_or(req.cpu_time, 0),
                memory_mb=_or(req.memory_mb, 0),
            ),
            payload=Payload(
                command=body.payload.command,
                args=tuple(body.payload.args or ()),
                input_files=tuple(body.payload.input_files or ()),
            ),
            max_wall_s=_or(body.max_wall_s, TASK_SECONDS),
            max_cpu_s=_or(body.max_cpu_s, TASK_SECONDS),
        )
    except (ValueError, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None
    task = await _call(_service(request).submit, principal, spec)
    return web.json_response(task_json(task), status=201)


async def list_tasks(request: web.Request) -> web.Response:

    principal = principal_of(request)
    q = request.query
    try:
        states = frozenset(TaskState(s) for s in q.getall("state", []))
        limit = int(q.get("limit", "100"))
        after = int(q["after"]) if q.get("after") else None
    except ValueError:
        raise Problem(400, "'state' must be a task state, 'limit' and 'after' integers") from None
    if not 1 <= limit <= 1000:
        raise Problem(400, "'limit' must be from 1 to 1000")
    if after is not None and not 0 <= after <= _ID_MAX:
        raise Problem(400, f"'after' must be a task id from 0 to {_ID_MAX}")
    owner = q.get("owner", principal.identity)
    try:
        filters = TaskFilter(
            owner=owner or None, states=states, site=q.get("site"), after_id=after, limit=limit
        )
    except (ValueError, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None
    tasks = await _call(_service(request).tasks, principal, filters)
    return web.json_response(
        {
            "tasks": [task_json(t) for t in tasks],
            "next": tasks[-1].id if len(tasks) == limit else None,
        }
    )


def _task_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 0 < int(text) <= _ID_MAX:
        raise Problem(404, "no such task")
    return int(text)


async def get_task(request: web.Request) -> web.Response:

    task = await _call(_service(request).task, principal_of(request), _task_id(request))
    return web.json_response(task_json(task))


async def task_log(request: web.Request) -> web.Response:
    tail = await _call(_service(request).log_tail, principal_of(request), _task_id(request))
    return web.json_response({"id": _task_id(request), "log_tail": tail})


async def cancel_task(request: web.Request) -> web.Response:

    task = await _call(_service(request).cancel, principal_of(request), _task_id(request))
    return web.json_response(task_json(task))


async def reschedule_task(request: web.Request) -> web.Response:
    body = await read_body(request, Reschedule, optional=True)
    task = await _call(
        _service(request).reschedule,
        principal_of(request),
        _task_id(request),
        free_text(_or(body.reason, ""), 1000),
    )
    return web.json_response(task_json(task))


async def match_task(request: web.Request) -> web.Response:
    body = await read_body(request, PilotOffer)
    principal = principal_of(request)
    try:
        caps = PilotCapabilities(
            pilot_dn=principal.identity,
            pilot_id=_or(body.pilot_id, PILOT_ID),
            site=_or(body.site, ""),
            ce=_or(body.ce, ""),
            platform=_or(body.platform, ""),
            tags=frozenset(body.tags or ()),
            cpu_time_left=_or(body.cpu_time_left, 0),
            memory_mb=_or(body.memory_mb, 0),
        )
    except (ValueError, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None
    task = await _call(_service(request).match, principal, caps)
    if task is None:
        return web.Response(status=204)
    # The secret goes to this pilot instance, once; proxyd keeps only its digest.
    return web.json_response({**task_json(task), SECRET_FIELD: task.assignment_secret})


async def task_proxy(request: web.Request) -> web.Response:
    body = await read_body(request, TaskProxyRequest)
    issued = await _call(
        _service(request).payload_proxy,
        principal_of(request),
        _task_id(request),
        load_csr(body.csr),
        body.assignment_secret,
    )
    return web.json_response(
        {
            "chain": pem_chain(issued.certificates),
            "serial": str(issued.proxy.serial_number),
            "not_after": _iso(issued.proxy.not_valid_after_utc),
        }
    )


async def start_task(request: web.Request) -> web.Response:
    body = await read_body(request, PresentSecret, optional=True)
    task = await _call(
        _service(request).start, principal_of(request), _task_id(request), body.assignment_secret
    )
    return web.json_response(task_json(task))


async def heartbeat_task(request: web.Request) -> web.Response:
    body = await read_body(request, Heartbeat, optional=True)
    task = await _call(
        _service(request).heartbeat,
        principal_of(request),
        _task_id(request),
        body.assignment_secret,
        body.log_tail,
    )
    return web.json_response(task_json(task))


def _accounting(body: CompleteReport) -> Accounting:
    """A pilot's accounting report; every number bounded (400 naming the field and bound)."""
    try:
        return Accounting(
            cpu_s=_or(body.cpu_s, 0.0),
            wall_s=_or(body.wall_s, 0.0),
            max_rss_kb=_or(body.max_rss_kb, 0),
            exit_code=body.exit_code,
            log_tail=_or(body.log_tail, ""),
        )
    except (ValueError, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None


async def complete_task(request: web.Request) -> web.Response:
    body = await read_body(request, CompleteReport)
    task = await _call(
        _service(request).complete,
        principal_of(request),
        _task_id(request),
        _accounting(body),
        body.assignment_secret,
    )
    return web.json_response(task_json(task))


async def fail_task(request: web.Request) -> web.Response:
    body = await read_body(request, FailReport)
    measured = body.wall_s is not None or body.cpu_s is not None
    task = await _call(
        _service(request).fail,
        principal_of(request),
        _task_id(request),
        free_text(_or(body.reason, FAIL_REASON), REASON_MAX),
        _accounting(body) if measured else None,
        body.assignment_secret,
    )
    return web.json_response(task_json(task))


async def mask_site(request: web.Request) -> web.Response:
    body = await read_body(request, SiteMask)
    site = await _call(
        _service(request).mask_site,
        principal_of(request),
        request.match_info["site"],
        body.masked,
        _or(body.reason, ""),
    )
    return web.json_response({"site": site, "masked": body.masked})


async def ban_owner(request: web.Request) -> web.Response:
    body = await read_body(request, OwnerBan)
    await _call(
        _service(request).ban_owner,
        principal_of(request),
        body.dn,
        body.banned,
        _or(body.reason, ""),
    )
    return web.json_response({"dn": body.dn, "banned": body.banned})


async def accounting(request: web.Request) -> web.Response:

    totals = await _call(
        _service(request).accounting, principal_of(request), request.query.get("by", "owner")
    )
    return web.json_response({"totals": [dataclasses.asdict(t) for t in totals]})


_TASK_PROPERTIES = {"id": {"type": "integer"}, "state": {"type": "string"}}
_TASK = {"type": "object", "properties": _TASK_PROPERTIES}
_MATCHED = {
    "type": "object",
    "properties": {
        **_TASK_PROPERTIES,
        SECRET_FIELD: {
            "type": "string",
            "description": "given once, to this pilot instance: send it with every later call",
        },
    },
}
_ID = (("id", "task id"),)

TASK_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "POST",
        "/v1/tasks",
        submit_task,
        "Submit a task (as its owner)",
        status=201,
        response=_TASK,
        body=TaskSubmission,
    ),
    ApiRoute(
        "GET",
        "/v1/tasks",
        list_tasks,
        "List tasks (own; all for admins and auditors)",
        query=(
            ("owner", "default: the caller"),
            ("state", "repeatable"),
            ("site", ""),
            ("limit", ""),
            ("after", ""),
        ),
    ),
    ApiRoute("GET", "/v1/tasks/{id}", get_task, "One task", response=_TASK),
    ApiRoute("DELETE", "/v1/tasks/{id}", cancel_task, "Cancel a task", response=_TASK),
    ApiRoute("GET", "/v1/tasks/{id}/log", task_log, "The log tail of the latest attempt"),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/reschedule",
        reschedule_task,
        "Queue a task again (its owner or admins)",
        response=_TASK,
        body=Reschedule,
        body_optional=True,
    ),
    ApiRoute(
        "POST",
        "/v1/pilot/match",
        match_task,
        "A pilot asks for the best matching task (204: none)",
        response=_MATCHED,
        body=PilotOffer,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/proxy",
        task_proxy,
        "The limited payload proxy of a task (its pilot instance only)",
        body=TaskProxyRequest,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/start",
        start_task,
        "The pilot starts the payload",
        response=_TASK,
        body=PresentSecret,
        body_optional=True,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/heartbeat",
        heartbeat_task,
        "The pilot is alive (with the running payload's log tail, for GET .../log)",
        response=_TASK,
        body=Heartbeat,
        body_optional=True,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/complete",
        complete_task,
        "The payload finished: accounting",
        response=_TASK,
        body=CompleteReport,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/fail",
        fail_task,
        "The payload failed",
        response=_TASK,
        body=FailReport,
    ),
    ApiRoute(
        "PUT",
        "/v1/admin/sites/{site}",
        mask_site,
        "Mask or unmask a site (admins)",
        body=SiteMask,
    ),
    ApiRoute(
        "PUT",
        "/v1/admin/bans",
        ban_owner,
        "Ban or unban a task owner (admins)",
        body=OwnerBan,
    ),
    ApiRoute(
        "GET",
        "/v1/accounting",
        accounting,
        "Accounting totals by owner, group or site (auditors)",
        query=(("by", "owner, group or site"),),
    ),
]
