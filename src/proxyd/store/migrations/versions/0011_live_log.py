"""The running payload's log tail: `tasks.live_log`.

A pilot sends the end of its payload's output with each heartbeat; the task
row keeps the latest, so the owner can look at a payload while it runs
(`GET /v1/tasks/{id}/log`). It is cleared when the attempt ends (the
attempt's accounting row keeps the final tail). Nullable, no rewrite.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("live_log", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("live_log")
