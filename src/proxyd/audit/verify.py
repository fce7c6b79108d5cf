"""Walking the chain: recompute every hash and name the first row where it breaks."""

from __future__ import annotations

from sqlalchemy import Connection, select

from .events import GENESIS_HASH, VerifyReport, canonical, chain_hash
from .rows import EVENTS, HEAD, row_event

_T = EVENTS.c
_H = HEAD.c


def walk_chain(conn: Connection, batch: int) -> VerifyReport:
    """Verify the whole chain on `conn`, reading `batch` rows at a time."""
    checked, last, prev = 0, 0, GENESIS_HASH

    def bad(seq: int | None, reason: str) -> VerifyReport:
        return VerifyReport(False, checked, seq, reason)

    head = conn.execute(select(_H.last_seq, _H.last_hash).where(_H.id == 1)).one_or_none()
    if head is None:
        return bad(None, "the audit_head row is missing")
    head_seq, head_hash = int(head.last_seq), str(head.last_hash)
    while rows := conn.execute(
        select(*_T).where(_T.seq > last).order_by(_T.seq).limit(batch)
    ).all():
        for row in rows:
            seq = int(row.seq)
            if seq > head_seq:
                return bad(
                    seq,
                    f"row {seq} is beyond the audit head (seq {head_seq}): it was "
                    "added without going through the append point",
                )
            if seq != last + 1:
                missing = f"row {last + 1}" if seq == last + 2 else f"rows {last + 1}..{seq - 1}"
                return bad(seq, f"row {seq}: previous-hash link broken ({missing} missing)")
            try:
                recomputed = chain_hash(str(row.prev_hash), canonical(seq, row_event(row)))
            except (ValueError, TypeError) as exc:
                return bad(seq, f"row {seq}: contents are not a valid audit event ({exc})")
            if recomputed != row.hash:
                return bad(seq, f"row {seq}: stored hash does not match its contents")
            if row.prev_hash != prev:
                if seq == 1:
                    return bad(1, "row 1: does not start from the genesis hash")
                return bad(
                    seq, f"row {seq}: previous-hash link broken (row {seq - 1} missing or changed)"
                )
            checked, last, prev = checked + 1, seq, str(row.hash)
    if last != head_seq:
        return bad(last + 1, f"audit head says seq {head_seq} but the last row is {last}")
    if head_hash != prev:
        if last == 0:
            return bad(None, "audit head hash is not the genesis hash, but the log is empty")
        return bad(last, f"audit head hash does not match row {last}")
    return VerifyReport(True, checked)
