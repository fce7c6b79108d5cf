"""RFC 9457 problem details: the only shape an API error takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ..repository import BadPassphrase, BadRequest, Denied, NotFound, RepositoryError

PROBLEM_TYPE = "application/problem+json"
_STATUS = {Denied: 403, BadPassphrase: 403, NotFound: 404, BadRequest: 400}
REALM = "proxyd"
_MAX_ATTRIBUTE = 200


@dataclass(frozen=True)
class Challenge:
    """The RFC 6750 §3 attributes of a `WWW-Authenticate: Bearer` challenge; no `error` is the
    bare challenge of a request that presented no credentials (§3.1)."""

    error: str | None = None  # invalid_token | insufficient_scope
    description: str | None = None
    scope: str | None = None


BARE = Challenge()
# Where a problem response names the challenge it wants (add_challenge).
CHALLENGE = web.ResponseKey("challenge", Challenge)


class Problem(Exception):
    """Raised by handlers for a request the API itself refuses (bad JSON, missing field)."""

    def __init__(
        self, status: int, detail: str, rule: str | None = None, challenge: Challenge | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.rule = rule
        self.challenge = challenge


def _attribute(text: str) -> str:
    """A quoted-string safe attribute value: RFC 6750 §3 allows only %x20-21 / %x23-5B /
    %x5D-7E in error_description and scope, so `"` and `\\` cannot appear even escaped."""
    safe = "".join(
        c if " " <= c <= "~" and c not in '"\\' else ("'" if c == '"' else "?") for c in text
    )
    return safe if len(safe) <= _MAX_ATTRIBUTE else safe[: _MAX_ATTRIBUTE - 3] + "..."


def www_authenticate(challenge: Challenge, *, bearer: bool) -> str:
    """The header value. Without trusted token issuers a Bearer challenge would invite a
    token proxyd cannot accept: the challenge names the client certificate instead."""
    if not bearer:
        return f'ClientCertificate realm="{REALM}"'
    parts = [f'realm="{REALM}"']
    if challenge.error is not None:
        parts.append(f'error="{challenge.error}"')
    if challenge.description:
        parts.append(f'error_description="{_attribute(challenge.description)}"')
    if challenge.scope:
        parts.append(f'scope="{_attribute(challenge.scope)}"')
    return "Bearer " + ", ".join(parts)


def add_challenge(response: web.StreamResponse, *, bearer: bool) -> None:
    """The one place a `WWW-Authenticate` is set: on every 401 (RFC 9110 §15.5.2 requires
    one; bare unless the refusal named its error), and on a 403 whose problem asked for one
    (insufficient scope, RFC 6750 §3.1; a request without credentials)."""
    challenge = response.get(CHALLENGE)
    if challenge is None:
        if response.status != 401:
            return
        challenge = BARE
    response.headers["WWW-Authenticate"] = www_authenticate(challenge, bearer=bearer)


def problem_response(
    status: int, detail: str, rule: str | None = None, challenge: Challenge | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if rule:
        body["rule"] = rule
    response = web.json_response(body, status=status, content_type=PROBLEM_TYPE)
    if challenge is not None:
        response[CHALLENGE] = challenge
    return response


def from_repository_error(exc: RepositoryError, redact: Callable[[str], str] = str) -> web.Response:
    """The problem of a refused operation; `redact` takes the server's paths out of the text."""
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    # No credentials where some are needed: the bare challenge says which would do (§3.1).
    challenge = BARE if exc.rule == "anonymous.denied" else None
    return problem_response(status, redact(exc.message), exc.rule, challenge)
