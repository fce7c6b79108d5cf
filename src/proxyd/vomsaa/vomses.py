"""The standard vomses format: `"alias" "host" "port" "server DN" "vo" ["globus version"]`.

A vomses file (or every file of a vomses directory, as voms-proxy-init reads
`/etc/vomses`) lists the VOMS servers of one or more VOs, one per line.
proxyd contacts only the servers its configuration names this way; the
`VOMSES=` lines a MyProxy client sends select among them (`select`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 1024 * 1024
_FIELD = re.compile(r'\s*"([^"]*)"')
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


class VomsesError(ValueError):
    """A vomses line or file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class VomsesEntry:
    """One VOMS server of a VO."""

    alias: str
    host: str
    port: int
    dn: str  # the server's certificate subject, slash form
    vo: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_line(line: str, where: str) -> VomsesEntry | None:
    """One vomses line; None for a blank line or a comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields: list[str] = []
    pos = 0
    while pos < len(text):
        m = _FIELD.match(text, pos)
        if m is None:
            raise VomsesError(
                f"{where}: expected a double-quoted field at column {pos + 1}: {text[pos : pos + 30]!r}"
            )
        fields.append(m.group(1))
        pos = m.end()
        if len(fields) > 6:
            raise VomsesError(f"{where}: more than 6 fields")
    if len(fields) < 5:
        raise VomsesError(
            f'{where}: {len(fields)} fields, expected 5: "alias" "host" "port" "server DN" "vo"'
        )
    alias, host, port_text, dn, vo = fields[:5]
    if not _HOST.fullmatch(host):
        raise VomsesError(f"{where}: host {host!r} is not a host name or address")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise VomsesError(f"{where}: port {port_text!r} is not a TCP port number")
    if not dn.startswith("/") or "=" not in dn:
        raise VomsesError(f"{where}: server DN {dn!r} is not a slash-form DN (/C=.../CN=...)")
    if not vo or "/" in vo or any(c.isspace() for c in vo):
        raise VomsesError(f"{where}: VO name {vo!r} is empty or holds '/' or spaces")
    return VomsesEntry(alias, host, int(port_text), dn, vo)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def load_vomses(path: Path, vo: str) -> tuple[VomsesEntry, ...]:
    """The servers of `vo` in the vomses file or directory `path`, in file and line order."""
    if not path.exists():
        raise VomsesError(f"{path}: no such vomses file or directory")
    out: list[VomsesEntry] = []
    for file in _files(path):
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise VomsesError(f"{file}: cannot read: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise VomsesError(f"{file}: {len(data)} bytes, more than {MAX_FILE_BYTES}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VomsesError(f"{file}: not UTF-8 at byte {exc.start}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            entry = parse_line(line, f"{file}, line {number}")
            if entry is not None and entry.vo == vo and entry not in out:
                out.append(entry)
    if not out:
        raise VomsesError(f"{path}: no server of VO {vo!r} (the fifth field of a vomses line)")
    return tuple(out)


def select(
    configured: Sequence[VomsesEntry], client_lines: Iterable[str]
) -> tuple[VomsesEntry, ...]:
    """The configured servers a client's `VOMSES=` lines name (by host and port), in configured
    order; all configured servers when the lines name none of them. Never a server not configured.
    """
    named: set[tuple[str, int]] = set()
    for i, line in enumerate(client_lines, start=1):
        try:
            entry = parse_line(line, f"VOMSES line {i}")
        except VomsesError:
            continue  # a client's line is a hint; a bad one only selects nothing
        if entry is not None:
            named.add((entry.host.lower(), entry.port))
    chosen = tuple(s for s in configured if (s.host.lower(), s.port) in named)
    return chosen or tuple(configured)


@dataclass(frozen=True)
class UpstreamVoConfig:
    """A `[[voms]]` table with `vomses`: the VO's ACs come from its own VOMS servers."""

    vo: str
    vomses: Path
    servers: tuple[VomsesEntry, ...]
    timeout: dt.timedelta = dt.timedelta(seconds=10)  # per server, for each step
    max_lifetime: dt.timedelta = dt.timedelta(hours=24)  # the most proxyd asks for
