"""Initial schema: credentials, bans, the audit chain and its head.

Hand-written to match `proxyd.store.models` exactly; `tests/test_store.py`
checks that it does.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(64), nullable=True),
        sa.Column("has_passphrase", sa.Boolean(), nullable=False),
        sa.Column("retrievers", sa.JSON(), nullable=True),
        sa.Column("renewers", sa.JSON(), nullable=True),
        sa.Column("trusted_retrievers", sa.JSON(), nullable=True),
        sa.Column("key_retrievers", sa.JSON(), nullable=True),
        sa.Column("max_lifetime_s", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credentials"),
        sa.UniqueConstraint("username", "name", name="uq_credentials_username_name"),
    )
    op.create_index("ix_credentials_not_after", "credentials", ["not_after"])
    op.create_index("ix_credentials_owner_dn", "credentials", ["owner_dn"])

    op.create_table(
        "bans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("pattern", sa.String(1024), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(1024), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bans"),
        sa.UniqueConstraint("kind", "pattern", name="uq_bans_kind_pattern"),
        sa.CheckConstraint("kind IN ('user', 'host', 'site')", name="ck_bans_kind"),
    )

    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_dn", sa.String(1024), nullable=False),
        sa.Column("actor_kind", sa.String(32), nullable=False),
        sa.Column("peer", sa.String(255), nullable=False),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=True),
        sa.Column("credential_name", sa.String(255), nullable=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("serial", sa.String(64), nullable=True),
        sa.Column("lifetime_s", sa.Integer(), nullable=True),
        sa.Column("fqans", sa.JSON(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.CheckConstraint("decision IN ('allow', 'deny')", name="ck_audit_events_decision"),
    )
    op.create_index("ix_audit_events_owner_dn_time", "audit_events", ["owner_dn", "time"])
    op.create_index("ix_audit_events_actor_dn_time", "audit_events", ["actor_dn", "time"])
    op.create_index("ix_audit_events_serial", "audit_events", ["serial"])
    op.create_index("ix_audit_events_decision_time", "audit_events", ["decision", "time"])
    op.create_index("ix_audit_events_time", "audit_events", ["time"])

    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    # The append point exists from the start, so appenders only ever lock it.
    op.bulk_insert(audit_head, [{"id": 1, "last_seq": 0, "last_hash": GENESIS_HASH}])


def downgrade() -> None:
    op.drop_table("audit_head")
    for index in ("time", "decision_time", "serial", "actor_dn_time", "owner_dn_time"):
        op.drop_index(f"ix_audit_events_{index}", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("bans")
    op.drop_index("ix_credentials_owner_dn", table_name="credentials")
    op.drop_index("ix_credentials_not_after", table_name="credentials")
    op.drop_table("credentials")
