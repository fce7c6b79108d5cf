"""The audit tables, and events to and from their rows."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Row, Table
from sqlalchemy.exc import DBAPIError

from proxyd.store.models import AuditHeadRow, AuditRow

from .events import AuditError, AuditEvent, Decision, StoredEvent

EVENTS = cast(Table, AuditRow.__table__)
HEAD = cast(Table, AuditHeadRow.__table__)


def row_values(stored: StoredEvent) -> dict[str, Any]:
    e = stored.event
    return {
        "seq": stored.seq,
        "time": e.time,
        "actor_dn": e.actor_dn,
        "actor_kind": e.actor_kind,
        "peer": e.peer,
        "operation": e.operation,
        "owner_dn": e.owner_dn,
        "credential_name": e.credential_name,
        "rule": e.rule,
        "decision": e.decision,
        "serial": e.serial,
        "lifetime_s": e.lifetime_s,
        "fqans": list(e.fqans),
        "detail": e.detail,
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
    }


def row_event(row: Row[Any]) -> AuditEvent:
    fqans = row.fqans
    if not isinstance(fqans, list):
        raise TypeError("fqans is not a JSON list")
    return AuditEvent(
        time=row.time,
        actor_dn=row.actor_dn,
        actor_kind=row.actor_kind,
        peer=row.peer,
        operation=row.operation,
        rule=row.rule,
        decision=cast(Decision, row.decision),
        owner_dn=row.owner_dn,
        credential_name=row.credential_name,
        serial=row.serial,
        lifetime_s=row.lifetime_s,
        fqans=tuple(fqans),
        detail=row.detail,
    )


def row_stored(row: Row[Any]) -> StoredEvent:
    try:
        event = row_event(row)
    except (ValueError, TypeError) as exc:
        raise AuditError(
            f"audit row {row.seq} is not a valid event ({exc}); run verify to locate tampering"
        ) from None
    return StoredEvent(int(row.seq), event, str(row.prev_hash), str(row.hash))


def db_reason(exc: BaseException) -> str:
    """The driver's one-line reason, not the statement and its parameters."""
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
