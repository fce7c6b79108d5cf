"""The admin API of VO members: list, add, remove, grant, revoke, suspend, restore (admins).

Thin handlers over `Repository.add_member` and friends (proxyd.core.members):
each is decided as an administrative operation and audited; a change applies
to the next request of every worker and instance.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..core.members import Member
from ..repository import Repository
from .models import VoMemberAdd, VoMemberFqan, VoMemberRemove, VoMemberSuspend
from .openapi import ApiRoute
from .util import iso, principal_of, read_body


def _repo(request: web.Request) -> Repository:
    from .app import REPO  # app.py imports this module for its route table

    return request.app[REPO]


def _vo(request: web.Request) -> str:
    return request.match_info["vo"]


def member_json(m: Member) -> dict[str, Any]:
    return {
        "vo": m.vo,
        "dn": m.dn,
        "fqans": list(m.fqans),
        "added_by": m.added_by,
        "added_at": iso(m.added_at),
        "changed_at": iso(m.changed_at),
        "suspended": m.suspended_reason is not None,
        "suspended_reason": m.suspended_reason,
        "suspended_at": iso(m.suspended_at) if m.suspended_at else None,
    }


def _held(vo: str, dn: str, fqans: tuple[str, ...]) -> web.Response:
    return web.json_response({"vo": vo, "dn": dn, "fqans": list(fqans)})


async def list_members(request: web.Request) -> web.Response:
    members = await asyncio.to_thread(
        _repo(request).list_members, principal_of(request), _vo(request)
    )
    return web.json_response({"members": [member_json(m) for m in members]})


async def add_member(request: web.Request) -> web.Response:
    body = await read_body(request, VoMemberAdd)
    held = await asyncio.to_thread(
        _repo(request).add_member, principal_of(request), _vo(request), body.dn, body.fqans or ()
    )
    response = _held(_vo(request), body.dn, held)
    response.set_status(201)
    return response


async def remove_member(request: web.Request) -> web.Response:
    body = await read_body(request, VoMemberRemove)
    held = await asyncio.to_thread(
        _repo(request).remove_member, principal_of(request), _vo(request), body.dn
    )
    return _held(_vo(request), body.dn, held)


async def grant(request: web.Request) -> web.Response:
    body = await read_body(request, VoMemberFqan)
    held = await asyncio.to_thread(
        _repo(request).grant, principal_of(request), _vo(request), body.dn, body.fqan
    )
    return _held(_vo(request), body.dn, held)


async def revoke(request: web.Request) -> web.Response:
    body = await read_body(request, VoMemberFqan)
    held = await asyncio.to_thread(
        _repo(request).revoke, principal_of(request), _vo(request), body.dn, body.fqan
    )
    return _held(_vo(request), body.dn, held)


async def suspend(request: web.Request) -> web.Response:
    body = await read_body(request, VoMemberSuspend)
    reason = await asyncio.to_thread(
        _repo(request).suspend, principal_of(request), _vo(request), body.dn, body.reason
    )
    return web.json_response(
        {"vo": _vo(request), "dn": body.dn, "suspended": True, "suspended_reason": reason}
    )


async def restore(request: web.Request) -> web.Response:
    body = await read_body(request, VoMemberRemove)
    was = await asyncio.to_thread(
        _repo(request).restore, principal_of(request), _vo(request), body.dn
    )
    return web.json_response(
        {"vo": _vo(request), "dn": body.dn, "suspended": False, "suspended_reason": was}
    )


_STRINGS = {"type": "array", "items": {"type": "string"}}
_HELD = {
    "type": "object",
    "properties": {"vo": {"type": "string"}, "dn": {"type": "string"}, "fqans": _STRINGS},
}
_MEMBER = {
    "type": "object",
    "properties": {
        "vo": {"type": "string"},
        "dn": {"type": "string"},
        "fqans": _STRINGS,
        "added_by": {"type": "string"},
        "added_at": {"type": "string"},
        "changed_at": {"type": "string"},
        "suspended": {"type": "boolean"},
        "suspended_reason": {"type": ["string", "null"]},
        "suspended_at": {"type": ["string", "null"]},
    },
}
_SUSPENSION = {
    "type": "object",
    "properties": {
        "vo": {"type": "string"},
        "dn": {"type": "string"},
        "suspended": {"type": "boolean"},
        "suspended_reason": {"type": "string"},
    },
}

MEMBER_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/v1/vos/{vo}/members",
        list_members,
        "The members of a VO of proxyd's attribute authority and their FQANs (admins)",
        response={"type": "object", "properties": {"members": {"type": "array", "items": _MEMBER}}},
    ),
    ApiRoute(
        "POST",
        "/v1/vos/{vo}/members",
        add_member,
        "Make a DN a member of the VO (admins); applies to the next request, no restart",
        body=VoMemberAdd,
        response=_HELD,
        status=201,
    ),
    ApiRoute(
        "POST",
        "/v1/vos/{vo}/members/remove",
        remove_member,
        "Remove a member from the VO (admins)",
        body=VoMemberRemove,
        response=_HELD,
    ),
    ApiRoute(
        "POST",
        "/v1/vos/{vo}/members/grant",
        grant,
        "Let a member hold one more group or role (admins)",
        body=VoMemberFqan,
        response=_HELD,
    ),
    ApiRoute(
        "POST",
        "/v1/vos/{vo}/members/revoke",
        revoke,
        "Take a group or role from a member (admins)",
        body=VoMemberFqan,
        response=_HELD,
    ),
    ApiRoute(
        "POST",
        "/v1/vos/{vo}/members/suspend",
        suspend,
        "Suspend a member (admins): it keeps its FQANs but gets no AC until restored; "
        "suspending again replaces the reason",
        body=VoMemberSuspend,
        response=_SUSPENSION,
    ),
    ApiRoute(
        "POST",
        "/v1/vos/{vo}/members/restore",
        restore,
        "End a member's suspension (admins); suspended_reason is what it was",
        body=VoMemberRemove,
        response=_SUSPENSION,
    ),
]
