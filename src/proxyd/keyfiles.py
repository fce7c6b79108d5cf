"""Private key files must be private: proxyd refuses to start otherwise, as ssh does."""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from .config import Config
from .errors import ServeError


def check_private(path: Path, what: str) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise ServeError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ServeError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if mode & 0o077:
        raise ServeError(
            f"{what} {path} is mode {mode:04o}; private key files must be 0600 or 0400 "
            f"(readable by the service account only): run chmod 600 {path}"
        )


def private_key_files(config: Config) -> Iterable[tuple[Path, str]]:
    yield config.server.host_key, "host key"
    for vo in config.voms:
        yield vo.aa_key, f"VOMS AA key of VO {vo.vo}"


def check_key_files(config: Config) -> None:
    """Every private key the service reads (the master key checks itself when loaded)."""
    for path, what in private_key_files(config):
        check_private(path, what)
