"""The task queue: tasks, per-attempt accounting, the site mask and fair-share usage.

Hand-written to match `proxyd.store.models` exactly; `tests/test_store.py`
checks that it does. Owner bans reuse the `bans` table (kind 'user').

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_STATES = (
    "waiting",
    "matched",
    "running",
    "done",
    "failed",
    "stalled",
    "rescheduled",
    "cancelled",
)
QUEUED = "state IN ('waiting', 'rescheduled')"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=False),
        sa.Column("vo", sa.String(64), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("fqans", sa.JSON(), nullable=False),
        sa.Column("credential_username", sa.String(255), nullable=False),
        sa.Column("credential_name", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("sites_allowed", sa.JSON(), nullable=False),
        sa.Column("sites_banned", sa.JSON(), nullable=False),
        sa.Column("platform", sa.String(64), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("cpu_time_s", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("input_files", sa.JSON(), nullable=False),
        sa.Column("max_wall_s", sa.Integer(), nullable=False),
        sa.Column("max_cpu_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("pilot_dn", sa.String(1024), nullable=True),
        sa.Column("pilot_id", sa.String(255), nullable=True),
        sa.Column("site", sa.String(255), nullable=True),
        sa.Column("ce", sa.String(255), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in TASK_STATES)),
            name="ck_tasks_state",
        ),
    )
    op.create_index("ix_tasks_state_heartbeat_at", "tasks", ["state", "heartbeat_at"])
    op.create_index("ix_tasks_owner_dn_state", "tasks", ["owner_dn", "state"])
    op.create_index(
        "ix_tasks_queue",
        "tasks",
        ["group_name", "owner_dn", sa.text("priority DESC"), "id"],
        postgresql_where=sa.text(QUEUED),
        sqlite_where=sa.text(QUEUED),
    )

    op.create_table(
        "task_accounting",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=False),
        sa.Column("vo", sa.String(64), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("pilot_dn", sa.String(1024), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("cpu_s", sa.Float(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("max_rss_kb", sa.BigInteger(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_task_accounting"),
        sa.UniqueConstraint("task_id", "attempt", name="uq_task_accounting_task_id_attempt"),
        sa.CheckConstraint("outcome IN ('done', 'failed')", name="ck_task_accounting_outcome"),
    )
    for column in ("owner_dn", "group_name", "site"):
        op.create_index(
            f"ix_task_accounting_{column}_finished_at",
            "task_accounting",
            [column, "finished_at"],
        )

    op.create_table(
        "site_mask",
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("masked", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(1024), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site", name="pk_site_mask"),
    )

    op.create_table(
        "fair_share",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=False),
        sa.Column("used_s", sa.Float(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reserved_s", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fair_share"),
        sa.UniqueConstraint("group_name", "owner_dn", name="uq_fair_share_group_name_owner_dn"),
    )


def downgrade() -> None:
    op.drop_table("fair_share")
    op.drop_table("site_mask")
    for column in ("site", "group_name", "owner_dn"):
        op.drop_index(f"ix_task_accounting_{column}_finished_at", table_name="task_accounting")
    op.drop_table("task_accounting")
    op.drop_index("ix_tasks_queue", table_name="tasks")
    op.drop_index("ix_tasks_owner_dn_state", table_name="tasks")
    op.drop_index("ix_tasks_state_heartbeat_at", table_name="tasks")
    op.drop_table("tasks")
