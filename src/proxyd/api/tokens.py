"""Token routes: discovery and key set (open), and a payload's token (its pilot instance)."""

from __future__ import annotations

import asyncio
import datetime as dt

from aiohttp import web

from ..repository import Repository
from .models import PresentSecret
from .openapi import ApiRoute
from .problems import Problem
from .tasks import TASKS, _task_id
from .util import principal_of, read_body


def _repo(request: web.Request) -> Repository:
    from .app import REPO

    return request.app[REPO]


async def openid_configuration(request: web.Request) -> web.Response:
    doc = _repo(request).openid_configuration()
    if doc is None:
        raise Problem(404, "this server issues no tokens ([tokens] issuer is not set)")
    return web.json_response(doc, headers={"Cache-Control": "max-age=300"})


async def jwks(request: web.Request) -> web.Response:
    repo = _repo(request)
    if repo.openid_configuration() is None:
        raise Problem(404, "this server issues no tokens ([tokens] issuer is not set)")
    keys = await asyncio.to_thread(repo.jwks)
    return web.json_response(keys, headers={"Cache-Control": "max-age=300"})


async def task_token(request: web.Request) -> web.Response:
    body = await read_body(request, PresentSecret, optional=True)
    service = request.app.get(TASKS)
    if service is None:
        raise Problem(404, "the task queue is not enabled on this server")
    issued = await asyncio.to_thread(
        service.payload_token,
        principal_of(request),
        _task_id(request),
        body.assignment_secret,
    )
    return web.json_response(
        {
            "access_token": issued.token,
            "token_type": "Bearer",
            "jti": issued.jti,
            "expires_at": issued.expires.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


_TOKEN = {
    "type": "object",
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"type": "string"},
        "jti": {"type": "string"},
        "expires_at": {"type": "string"},
    },
}

TOKEN_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/.well-known/openid-configuration",
        openid_configuration,
        "Token issuer discovery (when [tokens] issuer is set)",
        open=True,
    ),
    ApiRoute("GET", "/v1/tokens/jwks", jwks, "The keys proxyd signs tokens with", open=True),
    ApiRoute(
        "POST",
        "/v1/tasks/{id}/token",
        task_token,
        "A WLCG access token of the task's owner, beside its payload proxy (its pilot only)",
        body=PresentSecret,
        response=_TOKEN,
    ),
]
