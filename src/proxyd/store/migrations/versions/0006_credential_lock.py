"""Operator locks on stored credentials (proxyd admin lock / unlock, myproxy-admin-query -L).

A locked credential is refused on every use with `credential.locked` and the
operator's message. Three nullable columns: no lock is the default, so the
migration rewrites nothing and is instant on both backends.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("credentials", sa.Column("lock_message", sa.String(512), nullable=True))
    op.add_column("credentials", sa.Column("locked_by", sa.String(1024), nullable=True))
    op.add_column("credentials", sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # SQLite drops columns by copying the table (batch mode).
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("locked_at")
        batch.drop_column("locked_by")
        batch.drop_column("lock_message")
