"""Tasks bound to one pilot instance; site names in one spelling; task numbers bounded.

- `tasks.secret_sha256`: the SHA-256 (hex) of the secret a pilot got with its
  match. Payload proxies, heartbeats, start, complete and fail need the secret,
  so a sibling pilot sharing the certificate cannot act on the task (I2).
  Tasks matched before this revision have no secret: their pilots are refused
  (`payload.wrong_instance`) until the tasks are rescheduled.
- Site names are compared as `taskqueue.model.normalise_site` spells them
  (NFKC, case folded, surrounding space stripped). Stored names are rewritten
  to that spelling: masks (several spellings of one site merge; masked if any
  was), task requirements, the matched site and accounting, so that a mask of
  `SITE-A` keeps applying to a pilot saying `site-a` (I5).
- Numbers beyond the bounds the model now enforces (`MAX_WALL_S`, `MAX_CPU_S`,
  `MAX_MEMORY_MB`) are lowered to them, so every stored task reads back.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None

# The bounds and the spelling as they were when this revision was written (a migration
# does not follow later changes of the application code).
_MAX_WALL_S = 365 * 86400
_MAX_CPU_S = 10 * 365 * 86400
_MAX_MEMORY_MB = 64 * 1024 * 1024


def _fold(name: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return folded.strip() or name


_tasks = sa.table(
    "tasks",
    sa.column("id", sa.Integer),
    sa.column("sites_allowed", sa.JSON),
    sa.column("sites_banned", sa.JSON),
    sa.column("site", sa.String),
    sa.column("max_wall_s", sa.Integer),
    sa.column("max_cpu_s", sa.Integer),
    sa.column("cpu_time_s", sa.Integer),
    sa.column("memory_mb", sa.Integer),
)
_mask = sa.table(
    "site_mask",
    sa.column("site", sa.String),
    sa.column("masked", sa.Boolean),
    sa.column("reason", sa.Text),
    sa.column("changed_by", sa.String),
    sa.column("changed_at", sa.DateTime(timezone=True)),
)
_accounting = sa.table("task_accounting", sa.column("site", sa.String))


def upgrade() -> None:
    op.add_column("tasks", sa.Column("secret_sha256", sa.String(64), nullable=True))
    conn = op.get_bind()
    _fold_masks(conn)
    _fold_task_sites(conn)
    for old in list(conn.execute(sa.select(_accounting.c.site).distinct()).scalars()):
        if old is not None and _fold(old) != old:
            conn.execute(
                sa.update(_accounting).where(_accounting.c.site == old).values(site=_fold(old))
            )
    for column, ceiling in (
        (_tasks.c.max_wall_s, _MAX_WALL_S),
        (_tasks.c.max_cpu_s, _MAX_CPU_S),
        (_tasks.c.cpu_time_s, _MAX_CPU_S),
        (_tasks.c.memory_mb, _MAX_MEMORY_MB),
    ):
        conn.execute(sa.update(_tasks).where(column > ceiling).values({column.name: ceiling}))


def _fold_masks(conn: Any) -> None:
    rows = conn.execute(sa.select(_mask)).all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        groups[_fold(row.site)].append(row)
    for site, group in groups.items():
        if len(group) == 1 and group[0].site == site:
            continue
        # One row per site: masked if any spelling was (I5); the latest word on it.
        masked = [r for r in group if r.masked]
        latest = max(masked or group, key=lambda r: r.changed_at)
        conn.execute(sa.delete(_mask).where(_mask.c.site.in_([r.site for r in group])))
        conn.execute(
            sa.insert(_mask).values(
                site=site,
                masked=bool(masked),
                reason=latest.reason,
                changed_by=latest.changed_by,
                changed_at=latest.changed_at,
            )
        )


def _fold_task_sites(conn: Any) -> None:
    for old in list(conn.execute(sa.select(_tasks.c.site).distinct()).scalars()):
        if old is not None and _fold(old) != old:
            conn.execute(sa.update(_tasks).where(_tasks.c.site == old).values(site=_fold(old)))
    # Most tasks have no site rules ("[]"): only the others are read.
    has_rules = sa.or_(
        sa.cast(_tasks.c.sites_allowed, sa.Text) != "[]",
        sa.cast(_tasks.c.sites_banned, sa.Text) != "[]",
    )
    rows = conn.execute(
        sa.select(_tasks.c.id, _tasks.c.sites_allowed, _tasks.c.sites_banned).where(has_rules)
    ).all()
    for row in rows:
        allowed = sorted({_fold(s) for s in row.sites_allowed or ()})
        banned = sorted({_fold(s) for s in row.sites_banned or ()})
        if (allowed, banned) != (list(row.sites_allowed or ()), list(row.sites_banned or ())):
            conn.execute(
                sa.update(_tasks)
                .where(_tasks.c.id == row.id)
                .values(sites_allowed=allowed, sites_banned=banned)
            )


def downgrade() -> None:
    # Folded site names stay folded (the earlier spelling is not kept).
    op.drop_column("tasks", "secret_sha256")
