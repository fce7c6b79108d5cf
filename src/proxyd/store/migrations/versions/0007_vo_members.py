"""VO members in the database, changed without a restart (proxyd admin vo, the admin API).

- `vo_members`: one row per (VO, member DN) with the FQANs the member holds
  (a JSON list, normalised). proxyd's attribute authority reads it on every
  issuance, so a change applies to the next request in every worker.
- `vo_seeds`: the VOs whose `[voms.members]` TOML table has been copied in.
  A VO is seeded once; after that the database is the only word on its members.

New tables only: nothing is rewritten, instant on both backends.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vo_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vo", sa.String(255), nullable=False),
        sa.Column("dn", sa.String(1024), nullable=False),
        sa.Column("fqans", sa.JSON(), nullable=False),
        sa.Column("added_by", sa.String(1024), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vo_members"),
        sa.UniqueConstraint("vo", "dn", name="uq_vo_members_vo_dn"),
    )
    op.create_table(
        "vo_seeds",
        sa.Column("vo", sa.String(255), nullable=False),
        sa.Column("seeded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("vo", name="pk_vo_seeds"),
    )


def downgrade() -> None:
    op.drop_table("vo_seeds")
    op.drop_table("vo_members")
