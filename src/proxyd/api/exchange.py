"""Tokens in at the HTTPS edge: `POST /v1/token-exchange` (RFC 8693) and bearer principals.

The exchange answers as RFC 8693 §2.2 says; its errors carry both the OAuth
members of RFC 6749 §5.2 (`error`, `error_description`) and proxyd's problem
members (`status`, `detail`, `rule`), in one JSON object, so an OAuth client
and a proxyd client each find what they read (docs/api.md). A token that
does not authenticate (invalid, untrusted, unmapped) is audited as a failed
authentication, at the bounded rate of failed certificates (authfail); a
refusal after that is a policy decision, audited by the core.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from http import HTTPStatus
from typing import Any

import jwt
from aiohttp import web
from multidict import MultiDictProxy

from .. import names
from ..authfail import AuthFailure
from ..core.exchange import TokenIdentity
from ..repository import Repository, RepositoryError
from ..tokens.profile import TokenRefused
from .openapi import ApiRoute, FormField
from .problems import CHALLENGE, Challenge, Problem, from_repository_error
from .util import checked, load_csr, pem_chain

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
# A WLCG access token is a JWT: clients that say so are answered alike.
SUBJECT_TYPES = (ACCESS_TOKEN, "urn:ietf:params:oauth:token-type:jwt")
X509_PROXY = "urn:proxyd:params:token-type:x509-proxy"
# Answered as the rule of the refusal says: an invalid or unknown token is 401, a valid
# token that maps to no owner 403 (it authenticated someone proxyd has no account for), a
# token without the issuer's required scope 403 (RFC 6750 §3.1 insufficient_scope).
_TOKEN_STATUS = {"token.unmapped": 403, "token.scope": 403}


def _repo(request: web.Request) -> Repository:
    from .app import REPO

    return request.app[REPO]


def _presented(token: str) -> str:
    """Who a refused token claims to be (unverified, escaped, bounded); never the token."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "<not a JWT>"
    if not isinstance(claims, dict):
        return "<not a JWT>"
    iss, sub, jti = (str(claims.get(k, "-"))[:200] for k in ("iss", "sub", "jti"))
    return names.escape(f"token iss={iss} sub={sub} jti={jti}")[:512]


async def token_identity(request: web.Request, token: str, where: str) -> TokenIdentity:
    """The identity a token authenticates; a failure is audited (bounded) and raised as a
    401 (403 for an unmapped subject) problem with its rule."""
    from .app import AUTH_FAILURES

    repo = _repo(request)
    try:
        return await asyncio.to_thread(repo.token_identity, token, request.remote)
    except TokenRefused as exc:
        failure = AuthFailure(
            rule=exc.rule,
            address=request.remote or "",
            identity=_presented(token),
            reason=names.escape(exc.reason)[:500],
            where=f"https {where}",
        )
        failures = request.app[AUTH_FAILURES]
        await asyncio.to_thread(failures.record, failure)
        failures.schedule_flush(asyncio.get_running_loop())
        status = _TOKEN_STATUS.get(exc.rule, 401)
        detail = f"the token is not accepted: {exc.reason}"
        # RFC 6750 §3.1: invalid_token goes with a 401, insufficient_scope with a 403; a
        # valid token mapped to no owner is neither (another token would not help).
        challenge: Challenge | None = None
        if exc.rule == "token.scope":
            challenge = Challenge("insufficient_scope", detail, _required_scope(request, token))
        elif status == 401:
            challenge = Challenge("invalid_token", detail)
        raise Problem(status, detail, exc.rule, challenge) from None


def _required_scope(request: web.Request, token: str) -> str | None:
    """The scope the token's (claimed) issuer requires, for the challenge's `scope`."""
    from .app import CONFIG

    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except (jwt.PyJWTError, AttributeError):
        return None
    issuers = request.app[CONFIG].tokens.issuers
    return next((i.required_scope for i in issuers if i.url == iss), None)


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer` header (maybe empty: refused as malformed
    when verified); None without one, or for another scheme."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


# --- the exchange ---------------------------------------------------------------------------


def _oauth_error(status: int, error: str, detail: str, rule: str | None) -> web.Response:
    body: dict[str, Any] = {
        "error": error,
        "error_description": detail,
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if rule:
        body["rule"] = rule
    return web.json_response(
        body, status=status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )


class _BadExchange(Exception):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def _field(form: MultiDictProxy[Any], name: str, *, required: bool = False) -> str | None:
    values = form.getall(name, [])
    if len(values) > 1:
        raise _BadExchange("invalid_request", f"field {name!r} is given more than once")
    if not values or values[0] == "":
        if required:
            raise _BadExchange("invalid_request", f"field {name!r} is missing")
        return None
    value = values[0]
    if not isinstance(value, str):
        raise _BadExchange("invalid_request", f"field {name!r} must be text, not a file")
    return value


def _lifetime(text: str | None) -> dt.timedelta | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) <= 0:
        raise _BadExchange(
            "invalid_request", "field 'lifetime' must be a positive whole number of seconds"
        )
    return dt.timedelta(seconds=int(text))


async def _form(request: web.Request) -> MultiDictProxy[Any]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise _BadExchange(
            "invalid_request",
            "the request must be application/x-www-form-urlencoded (RFC 8693), "
            f"not {request.content_type[:100]!r}",
        )
    try:
        return await request.post()
    except (ValueError, LookupError) as exc:  # bad encoding, or an unknown charset
        raise _BadExchange("invalid_request", f"the form cannot be read: {exc}"[:300]) from None


async def token_exchange(request: web.Request) -> web.Response:
    from .app import REDACT

    try:
        form = await _form(request)
        grant = _field(form, "grant_type", required=True)
        if grant != GRANT_TYPE:
            raise _BadExchange(
                "unsupported_grant_type", f"grant_type must be {GRANT_TYPE}, got {grant!r}"[:300]
            )
        token = _field(form, "subject_token", required=True)
        assert token is not None
        token_type = _field(form, "subject_token_type", required=True)
        if token_type not in SUBJECT_TYPES:
            raise _BadExchange(
                "invalid_request", f"subject_token_type must be one of {', '.join(SUBJECT_TYPES)}"
            )
        wanted = _field(form, "requested_token_type") or X509_PROXY
        if wanted != X509_PROXY:
            raise _BadExchange(
                "invalid_request", f"requested_token_type must be {X509_PROXY} (or left out)"
            )
        csr_pem = _field(form, "csr", required=True)
        assert csr_pem is not None
        try:
            csr = load_csr(csr_pem)
            name = checked(names.CREDENTIAL_NAME, _field(form, "credential"), "field 'credential'")
            username = checked(names.USERNAME, _field(form, "username"), "field 'username'")
        except Problem as exc:
            raise _BadExchange("invalid_request", exc.detail) from None
        lifetime = _lifetime(_field(form, "lifetime"))
    except _BadExchange as exc:
        return _oauth_error(400, exc.error, exc.detail, "token.bad_request")
    try:
        identity = await token_identity(request, token, "POST /v1/token-exchange")
        issued = await asyncio.to_thread(
            _repo(request).exchange_token,
            identity,
            csr,
            name=name,
            username=username,
            lifetime=lifetime,
        )
    except Problem as exc:
        # RFC 8693 §2.2.2 names the error `invalid_request` for a subject_token "invalid for
        # any reason, or ... unacceptable based on policy"; RFC 6749 §5.2 would answer it 400.
        # proxyd answers it as it answers the same token as a bearer (issue «Tokens»: 401 for
        # a token that does not authenticate, 403 for a valid one refused), with the same
        # RFC 6750 challenge on the 401, so one client sees one status per token everywhere.
        response = _oauth_error(exc.status, "invalid_request", exc.detail, exc.rule)
        if exc.challenge is not None:
            response[CHALLENGE] = exc.challenge
        return response
    except RepositoryError as exc:
        status = from_repository_error(exc).status
        return _oauth_error(status, "invalid_request", request.app[REDACT](exc.message), exc.rule)
    proxy = issued.proxy
    now = dt.datetime.now(dt.UTC)
    return web.json_response(
        {
            "access_token": pem_chain(issued.certificates),
            "issued_token_type": X509_PROXY,
            "token_type": "N_A",
            "expires_in": max(0, int((proxy.not_valid_after_utc - now).total_seconds())),
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


# RFC 6749 §5.2 members and the problem members, in one object (_oauth_error).
_OAUTH_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "enum": ["invalid_request", "unsupported_grant_type"]},
        "error_description": {"type": "string"},
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "rule": {"type": "string"},
    },
    "required": ["error", "error_description", "status", "detail"],
}

EXCHANGE_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "POST",
        "/v1/token-exchange",
        token_exchange,
        "RFC 8693 token exchange: a trusted issuer's access token (form fields grant_type, "
        "subject_token, subject_token_type, requested_token_type, csr, credential, username, "
        "lifetime) for a limited proxy of its mapped owner's credential",
        form=(
            FormField("grant_type", f"must be {GRANT_TYPE}", required=True),
            FormField("subject_token", "the access token (a JWT) to exchange", required=True),
            FormField("subject_token_type", f"one of {', '.join(SUBJECT_TYPES)}", required=True),
            FormField("requested_token_type", f"{X509_PROXY} (the default)"),
            FormField("csr", "PEM certificate signing request for the proxy's key", required=True),
            FormField("credential", "name of the owner's stored credential (default: default)"),
            FormField(
                "username",
                "username of the owner's credential (default: the owner's own, else the latest)",
            ),
            FormField("lifetime", "requested proxy lifetime in seconds (it only shrinks)"),
        ),
        errors=(
            (400, "invalid_request / unsupported_grant_type: a malformed request"),
            (
                401,
                "invalid_request: a subject_token that does not authenticate (RFC 6750 challenge)",
            ),
            (403, "a valid token refused: unmapped subject, missing scope, or by policy"),
            (404, "the owner has no such credential"),
        ),
        error_schema=_OAUTH_ERROR,
        response={
            "type": "object",
            "properties": {
                "access_token": {"type": "string"},
                "issued_token_type": {"type": "string"},
                "token_type": {"type": "string"},
                "expires_in": {"type": "integer"},
            },
        },
    ),
]

__all__ = ["EXCHANGE_ROUTES", "bearer_token", "token_identity"]
