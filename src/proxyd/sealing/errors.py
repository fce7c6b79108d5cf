"""What sealing refuses. No message ever holds key bytes, data keys or passphrases (I7)."""

from __future__ import annotations


class SealingError(Exception):
    """A sealed key or master keyring cannot be created, read or opened."""


class WrongPassphrase(SealingError):
    """The passphrase does not open the sealed key (or one is needed and missing)."""
