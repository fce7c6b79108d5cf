"""Token mappings: which owner DN a token's (issuer, subject) stands for (issue 19).

- `token_map`: one row per (iss, sub) an administrator mapped
  (`proxyd admin token-map add`); the token exchange and bearer tokens on
  the API act as that owner. A new table only: instant on both backends.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_map",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(1024), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=False),
        sa.Column("added_by", sa.String(1024), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_token_map"),
        sa.UniqueConstraint("issuer", "subject", name="uq_token_map_issuer_subject"),
    )


def downgrade() -> None:
    op.drop_table("token_map")
