"""PUT /v1/contact: where the caller wants its expiry reminders (proxyd.core.reminders)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from aiohttp import web
from msgspec import Meta

from .models import Body
from .openapi import ApiRoute
from .util import principal_of, read_body


class ContactRequest(Body, frozen=True, kw_only=True):
    """The caller's own address for expiry reminders (over its certificate's address)."""

    email: Annotated[str, Meta(min_length=3, max_length=254)]


async def set_contact(request: web.Request) -> web.Response:
    from .app import REPO

    body = await read_body(request, ContactRequest)
    stored = await asyncio.to_thread(
        request.app[REPO].set_contact, principal_of(request), body.email
    )
    return web.json_response({"email": stored})


CONTACT_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "PUT",
        "/v1/contact",
        set_contact,
        "Set the caller's address for expiry reminders",
        body=ContactRequest,
        response={"type": "object", "properties": {"email": {"type": "string"}}},
    ),
]
