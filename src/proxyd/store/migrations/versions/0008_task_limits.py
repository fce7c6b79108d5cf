"""Task-queue limits: active tasks counted per (group, owner) and found per site.

- `fair_share.running`: how many of the pair's tasks are matched or running,
  kept with `reserved_s` (a match adds one, the attempt's end takes it
  away), so that the matcher knows each owner's running tasks from the row
  it reads anyway (`[taskqueue.limits] max_running_per_owner`). Filled
  from the tasks that are active now.
- `ix_tasks_active_site`: the active tasks of a site, by group, for the
  site limits (`[taskqueue.limits.sites]`); partial, so it holds active
  tasks only.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('matched', 'running')"


def upgrade() -> None:
    op.add_column(
        "fair_share", sa.Column("running", sa.Integer(), nullable=False, server_default="0")
    )
    op.execute(
        "UPDATE fair_share SET running = (SELECT count(*) FROM tasks WHERE "
        "tasks.group_name = fair_share.group_name AND tasks.owner_dn = fair_share.owner_dn "
        "AND tasks.state IN ('matched', 'running'))"
    )
    op.create_index(
        "ix_tasks_active_site",
        "tasks",
        ["site", "group_name"],
        postgresql_where=sa.text(ACTIVE),
        sqlite_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_active_site", table_name="tasks")
    with op.batch_alter_table("fair_share") as batch:
        batch.drop_column("running")
