"""The reading half of proxyd's configuration: typed access to one TOML table.

`Section` remembers which keys were read, so that `finish` can refuse the
unknown ones (a misspelt policy key silently ignored is a hole), and every
error names the file, the table, the key and what would fix it. The
settings modules (`proxyd.config`, `proxyd.reminders.settings`,
`proxyd.tokens.settings`) build their frozen dataclasses with it.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Listen", "Section", "section"]


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Section:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, source: Path, name: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.name = name
        self.data = data
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.source}: [{self.name}] {key}"

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.where(key)} is required but missing")
            return None
        return self.data[key]

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)} must be a non-empty string, got {value!r}")
        return value

    def path(
        self,
        key: builtins.str,
        default: builtins.str | None = None,
        *,
        required: builtins.bool = False,
    ) -> Path | None:
        value = self.str(key, default, required=required)
        if value is None:
            return None
        if "\0" in value:
            raise ConfigError(f"{self.where(key)} contains a NUL character")
        try:
            p = Path(value).expanduser()
            return p if p.is_absolute() else (self.source.parent / p).resolve()
        except (RuntimeError, OSError, ValueError) as exc:  # e.g. ~nosuchuser/...
            raise ConfigError(f"{self.where(key)}: cannot use the path {value!r}: {exc}") from None

    def int(
        self, key: builtins.str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self._get(key, False)
        if value is None:
            return default
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise ConfigError(f"{self.where(key)} must be an integer {bounds}, got {value!r}")
        return value

    def bool(self, key: builtins.str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)} must be true or false, got {value!r}")
        return value

    def duration(self, key: builtins.str, default: dt.timedelta) -> dt.timedelta:
        value = self._get(key, False)
        if value is None:
            return default
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 0 < value <= 100 * 365 * 86400
        ):
            return dt.timedelta(seconds=value)
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None or int(match.group(1)) == 0:
            raise ConfigError(
                f'{self.where(key)} must be a positive duration such as "12h", "30m", '
                f'"7d" or a number of seconds, got {value!r}'
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds > 100 * 365 * 86400:
            raise ConfigError(f"{self.where(key)} is longer than 100 years: {value!r}")
        return dt.timedelta(seconds=seconds)

    def strings(
        self, key: builtins.str, default: tuple[builtins.str, ...] = ()
    ) -> tuple[builtins.str, ...]:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(
                f"{self.where(key)} must be a list of non-empty strings, got {value!r}"
            )
        return tuple(value)

    def listen(self, key: builtins.str, default: Listen | None) -> Listen | None:
        value = self._get(key, False)
        if value is None:
            return default
        if value in ("", "off", False):
            return None
        match = _LISTEN.match(value) if isinstance(value, str) else None
        if match is None or not 0 < int(match.group("port")) < 65536:
            raise ConfigError(
                f'{self.where(key)} must be "HOST:PORT" (e.g. "0.0.0.0:7512") or "off", '
                f"got {value!r}"
            )
        return Listen(match.group("host").strip("[]"), int(match.group("port")))

    def table(self, key: builtins.str) -> Mapping[builtins.str, Any]:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(key)} must be a table")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(
                f"{self.source}: [{self.name}] has unknown key(s) {', '.join(unknown)}; "
                f"known keys are {', '.join(sorted(self.seen))}"
            )


def section(source: Path, doc: Mapping[str, Any], name: str) -> Section:
    data = doc.get(name, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return Section(source, name, data)
