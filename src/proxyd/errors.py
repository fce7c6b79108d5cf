"""Errors that end a proxyd command with a message instead of a traceback."""

from __future__ import annotations


class ServeError(Exception):
    """The service cannot start or keep running; the message says why and what to check."""
