"""Audit events by owner in chain order: the auditor's first page is a short index walk.

`AuditLog.query(owner=..., since=..., until=...)` orders by seq. With only
(owner_dn, time), the database reads every event of the owner in the range
and sorts them, and once the statement is prepared (a generic plan, the
same for every owner) that is what it does for the busiest owner too: 0.7
to 1.5 s for an owner with 200,000 of 10 million events (bench.scale). On
(owner_dn, seq, time) it walks the owner's events newest first, checks the
time in the index, and stops after the page: 3 to 7 ms for that owner, the
same as before for the others (docs/performance.md, "Scale").

On PostgreSQL the index is built with a plain CREATE INDEX inside the
migration's transaction, so audit appends wait while it builds (about 20 s
per 10 million events on a small machine).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_owner_dn_seq_time", "audit_events", ["owner_dn", "seq", "time"]
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_owner_dn_seq_time", table_name="audit_events")
