"""Helpers shared by the API handlers: the principal, JSON fields, blocking work, PEM."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar, overload

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import names
from ..issuer import IssueError, VomsRequest
from ..principal import Principal
from ..repository import CredentialInfo
from .problems import Problem

T = TypeVar("T")
PRINCIPAL = web.RequestKey("principal", Principal)


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run database/crypto work in a thread, in a copy of this request's context (policy tally)."""
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(ctx.run, fn, *args, **kwargs))


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise Problem(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "the request body must be a JSON object")
    return body


def field_of(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False
) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise Problem(400, f"field {name!r} is required")
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise Problem(400, f"field {name!r} must be of type {names}")
    return value


def string_list(body: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = field_of(body, name, list)
    if value is None:
        return None
    if not all(isinstance(v, str) and v for v in value) or len(value) > 64:
        raise Problem(400, f"field {name!r} must be a list of at most 64 non-empty strings")
    return tuple(value)


@overload
def checked(kind: names.Kind, value: str, field: str) -> str: ...
@overload
def checked(kind: names.Kind, value: None, field: str) -> None: ...
def checked(kind: names.Kind, value: str | None, field: str) -> str | None:
    """`value` checked by proxyd.names (None passes); a 400 naming the field and the rule."""
    if value is None:
        return None
    try:
        return names.check(kind, value, field)
    except names.InvalidField as exc:
        raise Problem(400, exc.message, exc.rule) from None


def checked_list(values: tuple[str, ...] | None, field: str) -> tuple[str, ...] | None:
    """Each DN pattern of an ACL list checked by proxyd.names; a 400 naming the field."""
    try:
        return names.check_patterns(values, f"field {field!r}")
    except names.InvalidField as exc:
        raise Problem(400, exc.message, exc.rule) from None


def positive_seconds(body: dict[str, Any], name: str) -> dt.timedelta | None:
    value = field_of(body, name, int)
    if value is None:
        return None
    if not 0 < value <= 10 * 365 * 86400:
        raise Problem(400, f"field {name!r} must be a positive number of seconds")
    return dt.timedelta(seconds=value)


def load_csr(body: dict[str, Any]) -> x509.CertificateSigningRequest:
    pem = field_of(body, "csr", str, required=True)
    try:
        return x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise Problem(400, f"field 'csr' is not a PEM PKCS#10 request: {exc}") from None


def voms_requests(body: dict[str, Any]) -> list[VomsRequest]:
    names = string_list(body, "voms") or ()
    try:
        return [VomsRequest.parse(v) for v in names]
    except IssueError as exc:
        raise Problem(400, str(exc)) from None


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def credential_json(c: CredentialInfo) -> dict[str, Any]:
    return {
        "username": c.username,
        "name": c.name,
        "owner": c.owner,
        "description": c.description,
        "not_before": iso(c.not_before),
        "not_after": iso(c.not_after),
        "max_lifetime": int(c.max_lifetime.total_seconds()),
        "has_passphrase": c.has_passphrase,
        "retrievers": list(c.retrievers) if c.retrievers is not None else None,
        "renewers": list(c.renewers) if c.renewers is not None else None,
        "trusted_retrievers": list(c.trusted_retrievers)
        if c.trusted_retrievers is not None
        else None,
    }


def pem_chain(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def principal_of(request: web.Request) -> Principal:
    p: Principal = request[PRINCIPAL]
    return p
