"""Fully Qualified Attribute Names: `/vo/group/sub/Role=r/Capability=c`.

VOMS writes FQANs into ACs in the long form with explicit `Role=NULL` and
`Capability=NULL`; people and configs write the short form (`/dteam`,
`/dteam/Role=production`). Both parse to the same `Fqan`, which compares
equal however it was spelt.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .errors import FqanError

_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")


@dataclass(frozen=True, order=True)
class Fqan:
    vo: str
    groups: tuple[str, ...] = ()
    role: str | None = None
    capability: str | None = None

    @property
    def group(self) -> str:
        """The group path, `/vo/group/sub`."""
        return "/" + "/".join((self.vo, *self.groups))

    def __str__(self) -> str:
        """Short form: `/dteam/analysis/Role=production` (no NULL parts)."""
        out = self.group
        if self.role is not None:
            out += f"/Role={self.role}"
        if self.capability is not None:
            out += f"/Capability={self.capability}"
        return out

    @property
    def long(self) -> str:
        """Long form, as VOMS writes it into an AC."""
        return f"{self.group}/Role={self.role or 'NULL'}/Capability={self.capability or 'NULL'}"


def parse_fqan(text: str) -> Fqan:
    """Parse a short- or long-form FQAN; raise FqanError saying what is wrong."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise FqanError(f"FQAN {text!r} must start with '/' followed by the VO name")
    parts = text[1:].split("/")
    if not parts or not parts[0] or "=" in parts[0]:
        raise FqanError(f"FQAN {text!r} does not begin with a VO name")
    groups: list[str] = []
    role: str | None = None
    capability: str | None = None
    seen_role = seen_cap = False
    for part in parts:
        if part.startswith("Role="):
            if seen_role or seen_cap:
                raise FqanError(f"FQAN {text!r}: Role= must appear once, before Capability=")
            seen_role = True
            value = part[5:]
            if not value or not _NAME.match(value):
                raise FqanError(f"FQAN {text!r}: invalid role {value!r}")
            role = None if value == "NULL" else value
        elif part.startswith("Capability="):
            if seen_cap:
                raise FqanError(f"FQAN {text!r}: Capability= appears twice")
            seen_cap = True
            value = part[11:]
            if not value or not _NAME.match(value):
                raise FqanError(f"FQAN {text!r}: invalid capability {value!r}")
            capability = None if value == "NULL" else value
        else:
            if seen_role or seen_cap:
                raise FqanError(f"FQAN {text!r}: group {part!r} after Role/Capability")
            if not part or not _NAME.match(part):
                raise FqanError(
                    f"FQAN {text!r}: group name {part!r} is empty or has characters other "
                    "than letters, digits, '_', '.', '-'"
                )
            groups.append(part)
    return Fqan(groups[0], tuple(groups[1:]), role, capability)


def normalise_fqan(text: str) -> str:
    """The short form of any spelling: `/dteam/Role=NULL/Capability=NULL` → `/dteam`."""
    return str(parse_fqan(text))


def fqan_matches(pattern: str, fqan: str | Fqan) -> bool:
    """Glob match (`*`, `?`) of a short-form pattern against a normalised FQAN.

    `/*/Role=pilot` matches `/dteam/Role=pilot` and `/atlas/prod/Role=pilot`;
    `/dteam` matches only `/dteam` (no role); `/dteam/*` matches every
    subgroup and role of dteam.
    """
    value = str(fqan) if isinstance(fqan, Fqan) else normalise_fqan(fqan)
    return fnmatch.fnmatchcase(value, pattern)
