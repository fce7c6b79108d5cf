"""Pending HTTPS delegations in the database, so any worker or instance can finish them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_delegations",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("actor_dn", sa.String(1024), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(), nullable=False),
        sa.Column("csr_pem", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_pending_delegations"),
    )
    op.create_index("ix_pending_delegations_expires_at", "pending_delegations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_pending_delegations_expires_at", table_name="pending_delegations")
    op.drop_table("pending_delegations")
