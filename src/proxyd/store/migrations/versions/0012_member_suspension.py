"""Suspended VO members: `vo_members.suspended_reason` and `suspended_at`.

A VO admin suspends a member, with a reason, without removing it (what it
holds is kept for when it is restored), as VOMS-Admin and INDIGO IAM do; a
suspended member gets no AC from proxyd's attribute authority. Both columns
are NULL for a member in good standing and set together. Nullable, no rewrite.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vo_members", sa.Column("suspended_reason", sa.Text(), nullable=True))
    op.add_column(
        "vo_members", sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("vo_members") as batch:
        batch.drop_column("suspended_at")
        batch.drop_column("suspended_reason")
