"""The `token_map` table: the only code that writes or reads it.

Which owner DN a token's (issuer, subject) acts as, for the token exchange
and bearer tokens on the API. Whether a change is allowed is not decided
here (the core asks the policy); the writers work on the caller's
Connection and inside the caller's transaction, so a change commits with
its audit event (I6). `owner_of` is read anew on every request: a removal
applies to the very next token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .models import TokenMapRow

__all__ = ["TokenMapping", "add_mapping", "list_mappings", "owner_of", "remove_mapping"]

_T = TokenMapRow.__table__.c
_MAP = cast(Table, TokenMapRow.__table__)


@dataclasses.dataclass(frozen=True)
class TokenMapping:
    """One mapping as an operator lists it."""

    issuer: str
    subject: str
    owner_dn: str
    added_by: str
    added_at: dt.datetime


def add_mapping(
    conn: Connection, issuer: str, subject: str, owner_dn: str, by: str, now: dt.datetime
) -> bool:
    """Map (issuer, subject) to `owner_dn`; False, and nothing changed, if it is mapped."""
    insert: Any = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = conn.execute(
        insert(_MAP)
        .values(issuer=issuer, subject=subject, owner_dn=owner_dn, added_by=by, added_at=now)
        .on_conflict_do_nothing(index_elements=["issuer", "subject"])
        # A row back, or none: rowcount is no answer here (psycopg may report -1).
        .returning(_T.id)
    )
    return result.first() is not None


def remove_mapping(conn: Connection, issuer: str, subject: str) -> str | None:
    """Remove the mapping of (issuer, subject); the owner DN it had, or None."""
    row = conn.execute(
        delete(_MAP).where(_T.issuer == issuer, _T.subject == subject).returning(_T.owner_dn)
    ).first()
    return str(row[0]) if row is not None else None


def owner_of(conn: Connection, issuer: str, subject: str) -> str | None:
    """The owner DN (issuer, subject) is mapped to; None when it is not mapped."""
    row = conn.execute(
        select(_T.owner_dn).where(_T.issuer == issuer, _T.subject == subject)
    ).first()
    return str(row[0]) if row is not None else None


def list_mappings(conn: Connection) -> list[TokenMapping]:
    """Every mapping, by issuer and subject."""
    query = select(_T.issuer, _T.subject, _T.owner_dn, _T.added_by, _T.added_at).order_by(
        _T.issuer, _T.subject
    )
    return [TokenMapping(*row) for row in conn.execute(query)]
