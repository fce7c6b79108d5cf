"""Helpers shared by the API handlers: the principal, request bodies, names, PEM."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar, cast, overload

import msgspec
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import names
from ..issuer import IssueError, VomsRequest
from ..principal import Principal
from ..repository import CredentialInfo
from .models import Body
from .openapi import BODY_MODELS
from .problems import Problem

B = TypeVar("B", bound=Body)
PRINCIPAL = web.RequestKey("principal", Principal)
# ui.py still runs its reads through this name; it is the standard helper, which runs the
# function in a copy of the request's context (the policy tally) as the API needs.
blocking = asyncio.to_thread

_DECODERS: dict[type[Body], msgspec.json.Decoder[Any]] = {}
_MISSING = re.compile(r"Object missing required field `(.*)`")


async def read_body(request: web.Request, model: type[B], *, optional: bool = False) -> B:
    """The request's JSON body as `model`, or a 400 problem saying what is wrong, and where.

    `optional`: a request without a body is `model()` (start, heartbeat).
    """
    declared = request.app[BODY_MODELS].get(request.match_info.handler)
    if declared is not model:  # a handler and its route table entry disagree: a bug
        raise RuntimeError(f"the handler decodes {model.__name__}, its route declares {declared}")
    if optional and not request.can_read_body:
        return model()
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = msgspec.json.Decoder(model)
    raw = await request.read()
    try:
        return cast(B, decoder.decode(raw))
    except msgspec.ValidationError as exc:
        raise Problem(400, invalid_body(exc)) from None
    except msgspec.DecodeError as exc:
        return _lenient(raw, request.charset, model, exc)
    except RecursionError:
        raise Problem(400, "the request body is nested too deeply") from None


def _lenient(raw: bytes, charset: str | None, model: type[B], exc: msgspec.DecodeError) -> B:
    """The body as the API read it before msgspec, which refuses what Python's json takes:
    lone surrogates in escapes (free text replaces them, names refuse them), NaN, and bodies
    in the charset their Content-Type names. The model then decides as on the fast path."""
    try:
        data = json.loads(raw.decode(charset or "utf-8"))
    except (ValueError, LookupError, RecursionError):
        raise Problem(400, _malformed(raw, exc)) from None
    try:
        return msgspec.convert(data, model)
    except msgspec.ValidationError as invalid:
        raise Problem(400, invalid_body(invalid)) from None


def _malformed(raw: bytes, exc: msgspec.DecodeError) -> str:
    if not raw.strip():
        return "the request body is empty: a JSON object is expected"
    why = str(exc).removeprefix("JSON is malformed: ")
    return f"the request body is not valid JSON: {why[:1].lower()}{why[1:]}"


def invalid_body(exc: msgspec.ValidationError) -> str:
    """msgspec's refusal as what is wrong, where (the JSON path) and why, never the value."""
    text = str(exc)
    reason, sep, where = text.rpartition(" - at `")
    path = where.removesuffix("`") if sep else "$"
    reason = reason if sep else text
    missing = _MISSING.fullmatch(reason)
    if missing:
        return f"field `{path}.{missing[1]}` is required"
    subject = "the request body" if path == "$" else f"field `{path}`"
    return f"{subject}: {reason[:1].lower()}{reason[1:]}"


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


def checked_list(values: Sequence[str] | None, field: str) -> tuple[str, ...] | None:
    """Each DN pattern of an ACL list checked by proxyd.names; a 400 naming the field."""
    try:
        return names.check_patterns(values, f"field {field!r}")
    except names.InvalidField as exc:
        raise Problem(400, exc.message, exc.rule) from None


def seconds(value: int | None) -> dt.timedelta | None:
    return None if value is None else dt.timedelta(seconds=value)


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem.encode("utf-8", "replace"))  # see finish_delegation
    except ValueError as exc:
        raise Problem(400, f"field 'csr' is not a PEM PKCS#10 request: {exc}") from None


def voms_requests(values: Sequence[str] | None) -> list[VomsRequest]:
    try:
        return [VomsRequest.parse(v) for v in values or ()]
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
