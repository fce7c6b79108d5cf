"""The `vo_members` and `vo_seeds` tables: the only code that writes or reads them.

Who belongs to a VO of proxyd's own attribute authority, and which FQANs
(groups, group/role pairs, normalised by `voms_ext.parse_fqan`) each member
holds. Whether a change is allowed is not decided here (the core asks the
policy); every writer works on the caller's Connection and inside the
caller's transaction, so a change commits together with its audit event (I6).

`MemberReads.held` is the request-path read: one indexed SELECT on the
driver's cursor, run on every issuance, so a change applies to the very next
request in every worker and instance (nothing is cached). A suspended member
holds nothing there (every issuing path refuses it as it would a non-member);
`MemberReads.suspension` tells why, read only when `held` found nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .driver import DriverStatement, pooled_cursor
from .models import VoMemberRow, VoSeedRow

__all__ = [
    "Member",
    "MemberReads",
    "add_member",
    "list_members",
    "member_fqans",
    "member_suspension",
    "remove_member",
    "restore_member",
    "seed_vo",
    "seeded_vos",
    "set_fqans",
    "suspend_member",
]

_M = VoMemberRow.__table__.c
_MEMBERS = cast(Table, VoMemberRow.__table__)
_SEEDS = cast(Table, VoSeedRow.__table__)

_HELD = select(_M.fqans, _M.suspended_reason).where(
    _M.vo == bindparam("vo"), _M.dn == bindparam("dn")
)


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a VO as an operator lists it."""

    vo: str
    dn: str
    fqans: tuple[str, ...]
    added_by: str
    added_at: dt.datetime
    changed_at: dt.datetime
    suspended_reason: str | None = None  # set while suspended, with suspended_at
    suspended_at: dt.datetime | None = None


def _insert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def add_member(
    conn: Connection, vo: str, dn: str, fqans: Sequence[str], by: str, now: dt.datetime
) -> bool:
    """Make `dn` a member of `vo` holding `fqans`; False, and nothing changed, if it is one."""
    result = conn.execute(
        _insert(conn)(_MEMBERS)
        .values(vo=vo, dn=dn, fqans=list(fqans), added_by=by, added_at=now, changed_at=now)
        .on_conflict_do_nothing(index_elements=["vo", "dn"])
        # A row back, or none: rowcount is no answer here (psycopg may report -1).
        .returning(_M.id)
    )
    return result.first() is not None


def remove_member(conn: Connection, vo: str, dn: str) -> tuple[str, ...] | None:
    """Remove `dn` from `vo`; the FQANs it held, or None when it was no member."""
    row = conn.execute(delete(_MEMBERS).where(_M.vo == vo, _M.dn == dn).returning(_M.fqans)).first()
    return tuple(row[0]) if row is not None else None


def member_fqans(
    conn: Connection, vo: str, dn: str, *, for_update: bool = False
) -> tuple[str, ...] | None:
    """The FQANs `dn` holds in `vo`; None when it is no member."""
    query = select(_M.fqans).where(_M.vo == vo, _M.dn == dn)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return tuple(row[0]) if row is not None else None


def set_fqans(conn: Connection, vo: str, dn: str, fqans: Sequence[str], now: dt.datetime) -> bool:
    """Replace the FQANs `dn` holds in `vo`; False when it is no member."""
    result = conn.execute(
        update(_MEMBERS)
        .where(_M.vo == vo, _M.dn == dn)
        .values(fqans=list(fqans), changed_at=now)
        .returning(_M.id)
    )
    return result.first() is not None


def member_suspension(
    conn: Connection, vo: str, dn: str, *, for_update: bool = False
) -> tuple[str | None] | None:
    """(why `dn` is suspended in `vo`, or None when it is not); None when it is no member."""
    query = select(_M.suspended_reason).where(_M.vo == vo, _M.dn == dn)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return (row[0],) if row is not None else None


def suspend_member(conn: Connection, vo: str, dn: str, reason: str, now: dt.datetime) -> bool:
    """Suspend `dn` in `vo` for `reason` (suspended already: the reason and time are new);
    False when it is no member. What it holds is kept."""
    result = conn.execute(
        update(_MEMBERS)
        .where(_M.vo == vo, _M.dn == dn)
        .values(suspended_reason=reason, suspended_at=now, changed_at=now)
        .returning(_M.id)
    )
    return result.first() is not None


def restore_member(conn: Connection, vo: str, dn: str, now: dt.datetime) -> bool:
    """End the suspension of `dn` in `vo`; False when it is no member or not suspended."""
    result = conn.execute(
        update(_MEMBERS)
        .where(_M.vo == vo, _M.dn == dn, _M.suspended_reason.is_not(None))
        .values(suspended_reason=None, suspended_at=None, changed_at=now)
        .returning(_M.id)
    )
    return result.first() is not None


def list_members(conn: Connection, vo: str | None = None) -> list[Member]:
    """Every member (of `vo`, or of every VO), by VO and DN."""
    query = select(
        _M.vo,
        _M.dn,
        _M.fqans,
        _M.added_by,
        _M.added_at,
        _M.changed_at,
        _M.suspended_reason,
        _M.suspended_at,
    ).order_by(_M.vo, _M.dn)
    if vo is not None:
        query = query.where(_M.vo == vo)
    return [
        Member(
            r.vo,
            r.dn,
            tuple(r.fqans),
            r.added_by,
            r.added_at,
            r.changed_at,
            r.suspended_reason,
            r.suspended_at,
        )
        for r in conn.execute(query)
    ]


def seeded_vos(conn: Connection) -> set[str]:
    """The VOs whose configured members were copied in already."""
    return set(conn.execute(select(_SEEDS.c.vo)).scalars())


def seed_vo(
    conn: Connection,
    vo: str,
    members: Mapping[str, Sequence[str]],
    by: str,
    now: dt.datetime,
) -> int | None:
    """Copy `members` of `vo` in, once: the number added, or None when `vo` was seeded before.

    The seed row is claimed first: of two instances starting together, one
    seeds and the other waits on the row's key and then finds it claimed.
    A DN that is a member already (added by hand before the first seed) keeps
    what it holds.
    """
    claimed = conn.execute(
        _insert(conn)(_SEEDS)
        .values(vo=vo, seeded_at=now, members=len(members))
        .on_conflict_do_nothing(index_elements=["vo"])
        .returning(_SEEDS.c.vo)
    ).first()
    if claimed is None:
        return None
    return sum(add_member(conn, vo, dn, fqans, by, now) for dn, fqans in members.items())


class MemberReads:
    """The request-path read of one engine: what a DN holds in a VO, read anew every time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held = DriverStatement(_HELD, engine.dialect)

    def held(self, vo: str, dn: str) -> tuple[str, ...]:
        """The FQANs `dn` holds in `vo`; () when it is no member or is suspended."""
        with pooled_cursor(self.engine) as cursor:
            rows = self._held.run(cursor, {"vo": vo, "dn": dn})
        return tuple(rows[0][0]) if rows and rows[0][1] is None else ()

    def suspension(self, vo: str, dn: str) -> str | None:
        """Why `dn` is suspended in `vo`; None when it is not (or is no member)."""
        with pooled_cursor(self.engine) as cursor:
            rows = self._held.run(cursor, {"vo": vo, "dn": dn})
        return rows[0][1] if rows else None
