"""Task-queue and pilot routes of the HTTPS API. Thin: parse, call TaskService, serialise."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..taskqueue.model import (
    LIST_MAX,
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
from .openapi import ApiRoute
from .problems import Problem
from .util import blocking, json_body, load_csr, pem_chain, principal_of

TASKS = web.AppKey("tasks", TaskService)
MAX_LOG_TAIL = LOG_TAIL_MAX
# The assignment secret a pilot got with its match (`assignment_secret` in the match answer)
# travels in this JSON body field of proxy, start, heartbeat, complete and fail.
SECRET_FIELD = "assignment_secret"  # noqa: S105 - a field name
_SECRET_MAX = 256
_ID_MAX = 2**63 - 1
R = TypeVar("R")


async def _call(fn: Callable[..., R], *args: Any) -> R:
    """Run a TaskService call in a thread; queue refusals become problem details, never 500."""
    try:
        return await blocking(fn, *args)
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


def _get(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Problem(400, f"field {name!r} has the wrong type")
    return value


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = _get(body, name, list, [])
    if not all(isinstance(v, str) for v in value) or len(value) > LIST_MAX:
        raise Problem(400, f"field {name!r} must be a list of at most {LIST_MAX} strings")
    return tuple(value)


async def submit_task(request: web.Request) -> web.Response:

    body = await json_body(request)
    principal = principal_of(request)
    payload = _get(body, "payload", dict)
    credential = _get(body, "credential", dict, {})
    req = _get(body, "requirements", dict, {})
    if payload is None:
        raise Problem(400, "field 'payload' is required")
    try:
        spec = TaskSpec(
            owner=principal.identity,
            vo=_get(body, "vo", str, ""),
            group=_get(body, "group", str, ""),
            credential_username=_get(credential, "username", str, principal.identity),
            credential_name=_get(credential, "name", str, "default"),
            fqans=_strings(body, "fqans"),
            priority=_get(body, "priority", int, 0),
            requirements=Requirements(
                sites_allowed=frozenset(_strings(req, "sites_allowed")),
                sites_banned=frozenset(_strings(req, "sites_banned")),
                platform=_get(req, "platform", str),
                tags=frozenset(_strings(req, "tags")),
                cpu_time=_get(req, "cpu_time", int, 0),
                memory_mb=_get(req, "memory_mb", int, 0),
            ),
            payload=Payload(
                command=_get(payload, "command", str, ""),
                args=_strings(payload, "args"),
                input_files=_strings(payload, "input_files"),
            ),
            max_wall_s=_get(body, "max_wall_s", int, 12 * 3600),
            max_cpu_s=_get(body, "max_cpu_s", int, 12 * 3600),
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


def _secret(body: dict[str, Any]) -> str | None:
    """The assignment secret the pilot presents (None when it sends none: refused by policy)."""
    value = body.get(SECRET_FIELD)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _SECRET_MAX:
        raise Problem(
            400, f"field {SECRET_FIELD!r} must be a string of at most {_SECRET_MAX} characters"
        )
    return value


async def _optional_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request whose body may be left out (start, heartbeat)."""
    return await json_body(request) if request.can_read_body else {}


async def get_task(request: web.Request) -> web.Response:

    task = await _call(_service(request).task, principal_of(request), _task_id(request))
    return web.json_response(task_json(task))


async def task_log(request: web.Request) -> web.Response:
    tail = await _call(_service(request).log_tail, principal_of(request), _task_id(request))
    return web.json_response({"id": _task_id(request), "log_tail": tail})


async def cancel_task(request: web.Request) -> web.Response:

    task = await _call(_service(request).cancel, principal_of(request), _task_id(request))
    return web.json_response(task_json(task))


async def match_task(request: web.Request) -> web.Response:

    body = await json_body(request)
    principal = principal_of(request)
    try:
        caps = PilotCapabilities(
            pilot_dn=principal.identity,
            pilot_id=_get(body, "pilot_id", str, "pilot"),
            site=_get(body, "site", str, ""),
            ce=_get(body, "ce", str, ""),
            platform=_get(body, "platform", str, ""),
            tags=frozenset(_strings(body, "tags")),
            cpu_time_left=_get(body, "cpu_time_left", int, 0),
            memory_mb=_get(body, "memory_mb", int, 0),
        )
    except (ValueError, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None
    task = await _call(_service(request).match, principal, caps)
    if task is None:
        return web.Response(status=204)
    # The secret goes to this pilot instance, once; proxyd keeps only its digest.
    return web.json_response({**task_json(task), SECRET_FIELD: task.assignment_secret})


async def task_proxy(request: web.Request) -> web.Response:

    body = await json_body(request)
    issued = await _call(
        _service(request).payload_proxy,
        principal_of(request),
        _task_id(request),
        load_csr(body),
        _secret(body),
    )
    return web.json_response(
        {
            "chain": pem_chain(issued.certificates),
            "serial": str(issued.proxy.serial_number),
            "not_after": _iso(issued.proxy.not_valid_after_utc),
        }
    )


async def start_task(request: web.Request) -> web.Response:

    body = await _optional_body(request)
    task = await _call(
        _service(request).start, principal_of(request), _task_id(request), _secret(body)
    )
    return web.json_response(task_json(task))


async def heartbeat_task(request: web.Request) -> web.Response:

    body = await _optional_body(request)
    task = await _call(
        _service(request).heartbeat, principal_of(request), _task_id(request), _secret(body)
    )
    return web.json_response(task_json(task))


def _accounting(body: dict[str, Any]) -> Accounting:
    """A pilot's accounting report; every number bounded (400 naming the field and bound)."""
    try:
        return Accounting(
            cpu_s=_get(body, "cpu_s", (int, float), 0.0),
            wall_s=_get(body, "wall_s", (int, float), 0.0),
            max_rss_kb=_get(body, "max_rss_kb", int, 0),
            exit_code=_get(body, "exit_code", int),
            log_tail=_get(body, "log_tail", str, ""),
        )
    except (ValueError, TaskQueueError) as exc:
        raise Problem(400, str(exc)) from None


async def complete_task(request: web.Request) -> web.Response:

    body = await json_body(request)
    task = await _call(
        _service(request).complete,
        principal_of(request),
        _task_id(request),
        _accounting(body),
        _secret(body),
    )
    return web.json_response(task_json(task))


async def fail_task(request: web.Request) -> web.Response:

    body = await json_body(request)
    reason = _get(body, "reason", str, "failed")
    if len(reason) > REASON_MAX:
        raise Problem(400, f"field 'reason' must be at most {REASON_MAX} characters")
    accounting = _accounting(body) if "wall_s" in body or "cpu_s" in body else None
    task = await _call(
        _service(request).fail,
        principal_of(request),
        _task_id(request),
        free_text(reason, REASON_MAX),
        accounting,
        _secret(body),
    )
    return web.json_response(task_json(task))


async def mask_site(request: web.Request) -> web.Response:

    body = await json_body(request)
    masked = _get(body, "masked", bool)
    if masked is None:
        raise Problem(400, "field 'masked' (true or false) is required")
    reason = _get(body, "reason", str, "")
    if len(reason) > 1000:
        raise Problem(400, "field 'reason' must be at most 1000 characters")
    site = await _call(
        _service(request).mask_site,
        principal_of(request),
        request.match_info["site"],
        masked,
        reason,
    )
    return web.json_response({"site": site, "masked": masked})


async def ban_owner(request: web.Request) -> web.Response:

    body = await json_body(request)
    dn = _get(body, "dn", str)
    banned = _get(body, "banned", bool)
    if not dn or banned is None:
        raise Problem(400, "fields 'dn' and 'banned' are required")
    await _call(
        _service(request).ban_owner,
        principal_of(request),
        dn,
        banned,
        _get(body, "reason", str, ""),
    )
    return web.json_response({"dn": dn, "banned": banned})


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
_SECRET = {SECRET_FIELD: {"type": "string", "description": "the secret of the match (required)"}}
_PRESENT_SECRET = {"type": "object", "properties": _SECRET, "required": [SECRET_FIELD]}
_ID = (("id", "task id"),)

TASK_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "POST",
        "/v1/tasks",
        submit_task,
        "Submit a task (as its owner)",
        status=201,
        response=_TASK,
        body={
            "type": "object",
            "properties": {
                "vo": {"type": "string"},
                "group": {"type": "string"},
                "fqans": {"type": "array", "items": {"type": "string"}},
                "priority": {"type": "integer"},
                "credential": {"type": "object"},
                "requirements": {"type": "object"},
                "payload": {"type": "object"},
                "max_wall_s": {"type": "integer"},
                "max_cpu_s": {"type": "integer"},
            },
            "required": ["payload"],
        },
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
        "/v1/pilot/match",
        match_task,
        "A pilot asks for the best matching task (204: none)",
        response=_MATCHED,
        body={
            "type": "object",
            "properties": {
                "site": {"type": "string"},
                "ce": {"type": "string"},
                "platform": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "cpu_time_left": {"type": "integer"},
                "memory_mb": {"type": "integer"},
                "pilot_id": {"type": "string"},
            },
        },
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/proxy",
        task_proxy,
        "The limited payload proxy of a task (its pilot instance only)",
        body={
            "type": "object",
            "properties": {"csr": {"type": "string"}, **_SECRET},
            "required": ["csr", SECRET_FIELD],
        },
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/start",
        start_task,
        "The pilot starts the payload",
        response=_TASK,
        body=_PRESENT_SECRET,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/heartbeat",
        heartbeat_task,
        "The pilot is alive",
        response=_TASK,
        body=_PRESENT_SECRET,
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/complete",
        complete_task,
        "The payload finished: accounting",
        response=_TASK,
        body={
            "type": "object",
            "properties": {
                "cpu_s": {"type": "number"},
                "wall_s": {"type": "number"},
                "max_rss_kb": {"type": "integer"},
                "exit_code": {"type": "integer"},
                "log_tail": {"type": "string", "maxLength": LOG_TAIL_MAX},
                **_SECRET,
            },
            "required": [SECRET_FIELD],
        },
    ),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/fail",
        fail_task,
        "The payload failed",
        response=_TASK,
        body={
            "type": "object",
            "properties": {"reason": {"type": "string", "maxLength": REASON_MAX}, **_SECRET},
            "required": [SECRET_FIELD],
        },
    ),
    ApiRoute(
        "PUT",
        "/v1/admin/sites/{site}",
        mask_site,
        "Mask or unmask a site (admins)",
        body={
            "type": "object",
            "properties": {"masked": {"type": "boolean"}, "reason": {"type": "string"}},
        },
    ),
    ApiRoute(
        "PUT",
        "/v1/admin/bans",
        ban_owner,
        "Ban or unban a task owner (admins)",
        body={
            "type": "object",
            "properties": {
                "dn": {"type": "string"},
                "banned": {"type": "boolean"},
                "reason": {"type": "string"},
            },
        },
    ),
    ApiRoute(
        "GET",
        "/v1/accounting",
        accounting,
        "Accounting totals by owner, group or site (auditors)",
        query=(("by", "owner, group or site"),),
    ),
]
