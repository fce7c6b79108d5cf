"""Expiry reminders: what was sent, and where owners want to be told.

- `expiry_reminders`: one row per (credential, end, horizon) reminded; the
  unique key makes "once per horizon" hold across sweeps, workers and
  instances (a second sweep's insert fails and sends nothing).
- `owner_contacts`: an owner's e-mail address for reminders, set with
  `PUT /v1/contact`; it wins over the address in the certificate.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "expiry_reminders",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("horizon_s", sa.Integer(), nullable=False),
        sa.Column("owner_dn", sa.String(1024), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channels", sa.String(64), nullable=False),
        sa.UniqueConstraint("credential_id", "not_after", "horizon_s"),
    )
    op.create_table(
        "owner_contacts",
        sa.Column("owner_dn", sa.String(1024), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("owner_contacts")
    op.drop_table("expiry_reminders")
