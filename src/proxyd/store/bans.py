"""The `bans` table (I5: bans win): the only code that writes or reads it.

A ban is a DN pattern of one kind: `user` (a person, as requester or as
the owner of a credential or task), `host` (a service identity) or `site`
(a grid site the task queue gives no work). Whether a DN is banned is not
decided here: `read_bans` gives `policy.Bans`, and its `matches` (deny-rule
matching, `patterns.any_dn_denied`) is the one evaluator, for the policy
and the task queue alike.

Every function works on the caller's Connection and inside the caller's
transaction, so a ban change commits together with its audit event (I6).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast, get_args

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..policy import Bans
from .models import DN_LEN, BanRow, utcnow

__all__ = [
    "BAN_KINDS",
    "PATTERNS",
    "Ban",
    "BanKind",
    "add_ban",
    "bans_of",
    "list_bans",
    "read_bans",
    "read_site_bans",
    "remove_ban",
    "site_bans_of",
]

BanKind = Literal["user", "host", "site"]
BAN_KINDS: tuple[BanKind, ...] = get_args(BanKind)

_B = BanRow.__table__.c
_BANS = cast(Table, BanRow.__table__)

# (kind, pattern) of every ban: what `bans_of` and `site_bans_of` read. For callers that read
# the bans in one round trip with other rows, or on a driver cursor; the table is tiny.
PATTERNS = select(_B.kind, _B.pattern)


@dataclasses.dataclass(frozen=True)
class Ban:
    """One ban as an operator lists it."""

    kind: str
    pattern: str
    reason: str
    created_at: dt.datetime
    created_by: str


def _checked(kind: str, pattern: str) -> None:
    if kind not in BAN_KINDS:
        raise ValueError(f"a ban is of kind {', '.join(BAN_KINDS)}, not {kind!r}")
    if not isinstance(pattern, str) or not pattern or len(pattern) > DN_LEN:
        raise ValueError(f"a ban pattern is a non-empty string of at most {DN_LEN} characters")


def add_ban(
    conn: Connection,
    kind: str,
    pattern: str,
    by: str,
    reason: str,
    *,
    now: dt.datetime | None = None,
) -> bool:
    """Ban `pattern` as `kind`; False, and nothing changed, if exactly that ban exists."""
    _checked(kind, pattern)
    insert: Any = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = conn.execute(
        insert(_BANS)
        .values(
            kind=kind,
            pattern=pattern,
            reason=reason,
            created_at=now if now is not None else utcnow(),
            created_by=by,
        )
        .on_conflict_do_nothing(index_elements=["kind", "pattern"])
        # A row back, or none: rowcount is no answer here (psycopg may report -1).
        .returning(_B.id)
    )
    return result.first() is not None


def remove_ban(conn: Connection, kind: str, pattern: str) -> bool:
    """Lift the ban of `pattern` as `kind`; whether there was one."""
    result = conn.execute(delete(_BANS).where(_B.kind == kind, _B.pattern == pattern))
    return bool(result.rowcount)


def bans_of(rows: Iterable[Sequence[str]]) -> Bans:
    """The user and host bans among (kind, pattern) rows of `PATTERNS`."""
    users: list[str] = []
    hosts: list[str] = []
    for kind, pattern in rows:
        if kind == "user":
            users.append(pattern)
        elif kind == "host":
            hosts.append(pattern)
    return Bans(users=tuple(users), hosts=tuple(hosts))


def site_bans_of(rows: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The site ban patterns among (kind, pattern) rows of `PATTERNS`."""
    return tuple(pattern for kind, pattern in rows if kind == "site")


def read_bans(conn: Connection) -> Bans:
    """The user and host bans, for `policy.decide` and the task queue."""
    return bans_of(conn.execute(PATTERNS))


def read_site_bans(conn: Connection) -> tuple[str, ...]:
    """The patterns of the sites banned from the task queue."""
    return site_bans_of(conn.execute(PATTERNS.where(_B.kind == "site")))


def list_bans(conn: Connection) -> list[Ban]:
    """Every ban, by kind and pattern."""
    rows = conn.execute(
        select(_B.kind, _B.pattern, _B.reason, _B.created_at, _B.created_by).order_by(
            _B.kind, _B.pattern
        )
    )
    return [Ban(*row) for row in rows]
