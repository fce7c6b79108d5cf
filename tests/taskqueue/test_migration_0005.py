"""Migration 0005: a mask of `SITE-A` written before it keeps applying to a pilot saying `site-a`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, select

from proxyd.store import make_engine, migrate
from proxyd.store.db import alembic_config, write_transaction
from proxyd.store.models import BanRow, FairShareRow, SiteMaskRow, TaskAccountingRow, TaskRow
from proxyd.taskqueue.sql import SqlTaskQueue
from tests.store_fixtures import BACKENDS, database_url
from tests.taskqueue.support import Clock, owner_dn, pilot

T0 = dt.datetime(2029, 12, 1, tzinfo=dt.UTC)


def _task(task_id: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": task_id,
        "owner_dn": owner_dn("alice"),
        "vo": "dteam",
        "group_name": "/dteam",
        "fqans": ["/dteam"],
        "credential_username": "alice",
        "credential_name": "default",
        "priority": 0,
        "sites_allowed": [],
        "sites_banned": [],
        "platform": None,
        "tags": [],
        "cpu_time_s": 0,
        "memory_mb": 0,
        "command": "/bin/true",
        "args": [],
        "input_files": [],
        "max_wall_s": 3600,
        "max_cpu_s": 3600,
        "state": "waiting",
        "attempts": 0,
        "submitted_at": T0,
        "site": None,  # every row has the same keys (executemany)
        "pilot_dn": None,
    }
    row.update(values)
    return row


@pytest.mark.parametrize("backend", BACKENDS)
def test_0005_folds_stored_site_names_and_bounds_numbers(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    engine = make_engine(database_url(request, backend, tmp_path))
    try:
        cfg = alembic_config()
        with write_transaction(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
        admin = owner_dn("admin")
        with write_transaction(engine) as conn:
            conn.execute(
                insert(SiteMaskRow.__table__),
                [
                    # Two spellings of one site, the masked one older: masked wins (I5).
                    {
                        "site": "SITE-A",
                        "masked": True,
                        "reason": "downtime",
                        "changed_by": admin,
                        "changed_at": T0,
                    },
                    {
                        "site": "site-a",
                        "masked": False,
                        "reason": "",
                        "changed_by": admin,
                        "changed_at": T0 + dt.timedelta(hours=1),
                    },
                    {
                        "site": "Site-D",
                        "masked": True,
                        "reason": "gone",
                        "changed_by": admin,
                        "changed_at": T0,
                    },
                ],
            )
            conn.execute(
                insert(TaskRow.__table__),
                [
                    _task(1, sites_allowed=["SITE-B"], sites_banned=["Site-C"]),
                    _task(2, max_wall_s=999_999_999_999 if backend == "sqlite" else 2**31 - 1),
                    _task(3, state="done", site="SITE-B", pilot_dn="/CN=p", attempts=1),
                ],
            )
            conn.execute(
                insert(TaskAccountingRow.__table__).values(
                    task_id=3, attempt=1, owner_dn=owner_dn("alice"), vo="dteam",
                    group_name="/dteam", site="SITE-B", pilot_dn="/CN=p", outcome="done",
                    cpu_s=1.0, wall_s=2.0, max_rss_kb=0, exit_code=0, finished_at=T0,
                )
            )  # fmt: skip
            conn.execute(
                insert(FairShareRow.__table__).values(
                    group_name="/dteam", owner_dn=owner_dn("alice"), used_s=0.0, used_at=T0,
                    reserved_s=0,
                )
            )  # fmt: skip
            conn.execute(
                insert(BanRow.__table__).values(
                    kind="site", pattern="SITE-E*", reason="compromised", created_by=admin,
                    created_at=T0,
                )
            )  # fmt: skip
        migrate(engine)

        with engine.connect() as conn:
            masks = {r.site: r.masked for r in conn.execute(select(SiteMaskRow.__table__))}
            tasks = {r.id: r for r in conn.execute(select(TaskRow.__table__))}
            [acc_site] = conn.execute(select(TaskAccountingRow.site)).scalars()
        assert masks == {"site-a": True, "site-d": True}
        assert (tasks[1].sites_allowed, tasks[1].sites_banned) == (["site-b"], ["site-c"])
        assert tasks[2].max_wall_s == 365 * 86400
        assert tasks[3].site == "site-b" and acc_site == "site-b"
        assert all(t.secret_sha256 is None for t in tasks.values())

        queue = SqlTaskQueue(engine, clock=Clock())
        assert queue.masked_sites() == {"site-a", "site-d"}
        assert queue.match(pilot("site-a")) is None  # masked as SITE-A before the upgrade
        assert queue.match(pilot("site-e1")) is None  # banned as SITE-E* before the upgrade
        got = queue.match(pilot("Site-B"))
        assert got is not None and got.id == 1 and got.spec.requirements.sites_allowed == {"site-b"}
        assert [t.key for t in queue.accounting("site")] == ["site-b"]
        assert queue.get(2) is not None  # a number beyond the bounds was lowered: it reads back
    finally:
        engine.dispose()
