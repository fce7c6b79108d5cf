"""RFC 9457 problem details: the only shape an API error takes."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ..repository import BadPassphrase, BadRequest, Denied, NotFound, RepositoryError

PROBLEM_TYPE = "application/problem+json"
_STATUS = {Denied: 403, BadPassphrase: 403, NotFound: 404, BadRequest: 400}


class Problem(Exception):
    """Raised by handlers for a request the API itself refuses (bad JSON, missing field)."""

    def __init__(self, status: int, detail: str, rule: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.rule = rule


def problem_response(status: int, detail: str, rule: str | None = None) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if rule:
        body["rule"] = rule
    return web.json_response(body, status=status, content_type=PROBLEM_TYPE)


def from_repository_error(exc: RepositoryError, redact: Callable[[str], str] = str) -> web.Response:
    """The problem of a refused operation; `redact` takes the server's paths out of the text."""
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    return problem_response(status, redact(exc.message), exc.rule)
