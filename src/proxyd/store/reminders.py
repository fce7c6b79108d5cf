"""The `expiry_reminders` and `owner_contacts` tables: the only code that reads or writes them.

Every function works on the caller's Connection and inside the caller's
transaction, so a reminder's claim commits with its audit event (I6).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .models import CredentialRow, OwnerContactRow, ReminderRow


@dataclass(frozen=True)
class ExpiringRow:
    credential_id: int
    owner_dn: str
    username: str
    name: str
    not_after: dt.datetime
    chain_pem: str
    contact: str | None  # the owner's own setting, if any


def expiring(conn: Connection, now: dt.datetime, until: dt.datetime) -> list[ExpiringRow]:
    """Stored credentials that end after `now` and no later than `until`, soonest first."""
    rows = conn.execute(
        select(
            CredentialRow.id,
            CredentialRow.owner_dn,
            CredentialRow.username,
            CredentialRow.name,
            CredentialRow.not_after,
            CredentialRow.chain_pem,
            OwnerContactRow.email,
        )
        .outerjoin(OwnerContactRow, OwnerContactRow.owner_dn == CredentialRow.owner_dn)
        .where(and_(CredentialRow.not_after > now, CredentialRow.not_after <= until))
        .order_by(CredentialRow.not_after, CredentialRow.id)
    )
    return [ExpiringRow(*row) for row in rows]


def sent(conn: Connection, credential_ids: Sequence[int]) -> set[tuple[int, dt.datetime, int]]:
    """(credential id, end, horizon seconds) of the reminders already claimed."""
    if not credential_ids:
        return set()
    rows = conn.execute(
        select(ReminderRow.credential_id, ReminderRow.not_after, ReminderRow.horizon_s).where(
            ReminderRow.credential_id.in_(credential_ids)
        )
    )
    return {(int(c), n, int(h)) for c, n, h in rows}


def claim(
    conn: Connection,
    *,
    credential_id: int,
    not_after: dt.datetime,
    horizon_s: int,
    owner_dn: str,
    now: dt.datetime,
    channels: str,
) -> bool:
    """Record the reminder as sent; False when another sweep got there first."""
    values = {
        "credential_id": credential_id,
        "not_after": not_after,
        "horizon_s": horizon_s,
        "owner_dn": owner_dn,
        "sent_at": now,
        "channels": channels,
    }
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # RETURNING, not rowcount: the driver does not report a row count for this statement.
    claimed = conn.execute(
        insert(ReminderRow).values(**values).on_conflict_do_nothing().returning(ReminderRow.id)
    ).scalar_one_or_none()
    return claimed is not None


def unclaim(
    conn: Connection, *, credential_id: int, not_after: dt.datetime, horizon_s: int
) -> None:
    conn.execute(
        delete(ReminderRow).where(
            ReminderRow.credential_id == credential_id,
            ReminderRow.not_after == not_after,
            ReminderRow.horizon_s == horizon_s,
        )
    )


def set_contact(conn: Connection, owner_dn: str, email: str, now: dt.datetime) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(OwnerContactRow).values(owner_dn=owner_dn, email=email, updated_at=now)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[OwnerContactRow.owner_dn],
            set_={"email": email, "updated_at": now},
        )
    )


def contact_of(conn: Connection, owner_dn: str) -> str | None:
    return conn.execute(
        select(OwnerContactRow.email).where(OwnerContactRow.owner_dn == owner_dn)
    ).scalar_one_or_none()
