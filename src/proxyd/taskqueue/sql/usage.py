"""The `fair_share` table: what each (group, owner) used and holds, as `fairshare` ranks it."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, select, update

from ..fairshare import FairShare
from ..model import Accounting, Task
from .rows import Pair, dialect_insert
from .statements import SHARES, F


def ensure_pairs(conn: Connection, pairs: Iterable[Pair], now: dt.datetime) -> None:
    """A fair-share row for each (group, owner): matching reads the queue through them."""
    rows = [
        {
            "group_name": g,
            "owner_dn": o,
            "used_s": 0.0,
            "used_at": now,
            "reserved_s": 0,
            "running": 0,
        }
        for g, o in sorted(set(pairs))
    ]
    if rows:
        conn.execute(
            dialect_insert(conn)(SHARES)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["group_name", "owner_dn"])
        )


def wall(task: Task, accounting: Accounting | None, end: dt.datetime) -> float:
    """The wall time an attempt used: as reported, else as observed since it started."""
    if accounting is not None:
        return accounting.wall_s
    began = task.started_at or task.matched_at
    return max((end - began).total_seconds(), 0.0) if began is not None else 0.0


def charge(
    conn: Connection, fair: FairShare, ended: Sequence[tuple[Task, float]], now: dt.datetime
) -> None:
    """Tasks left matched/running: release their reservations and running counts, add the
    wall time they used."""
    per_pair: dict[Pair, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for task, wall_s in ended:
        totals = per_pair[(task.spec.group, task.spec.owner)]
        totals[0] += task.spec.max_wall_s
        totals[1] += wall_s
        totals[2] += 1
    for (group, owner), (release, used, count) in sorted(per_pair.items()):  # one lock order
        row = conn.execute(
            select(F.used_s, F.used_at, F.reserved_s, F.running)
            .where(F.group_name == group, F.owner_dn == owner)
            .with_for_update()
        ).one_or_none()
        if row is None:
            ensure_pairs(conn, {(group, owner)}, now)
            row = conn.execute(
                select(F.used_s, F.used_at, F.reserved_s, F.running).where(
                    F.group_name == group, F.owner_dn == owner
                )
            ).one()
        conn.execute(
            update(SHARES)
            .where(F.group_name == group, F.owner_dn == owner)
            .values(
                used_s=fair.decay(row.used_s, row.used_at, now) + used,
                used_at=now,
                reserved_s=max(0, int(row.reserved_s - release)),
                running=max(0, row.running - int(count)),
            )
        )
