"""The errors of the core: each an operation that did not happen, with the message to show and its rule."""

from __future__ import annotations


class RepositoryError(Exception):
    """An operation that did not happen. `message` is safe to show the client."""

    code = "error"

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule


class Denied(RepositoryError):
    code = "denied"


class NotFound(RepositoryError):
    code = "not_found"


class BadPassphrase(RepositoryError):
    code = "bad_passphrase"


class BadRequest(RepositoryError):
    code = "bad_request"
