"""The SQLite matcher: one writer at a time (BEGIN IMMEDIATE), pages read pair by pair.

SQLite has no row locks: `store.db.write_transaction` takes the database
write lock up front, so the claim cannot interleave with another writer.
A match alone reads its candidates in a read transaction first, so that
the write lock is held for the claim and its audit event only; the claim
then takes the best candidate that is still queued.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row

from ..model import PilotCapabilities
from .rows import Pair, name_set
from .situation import Claimed, Situation, best_first, claim_params
from .statements import CLAIM, FIRST_PAGE, PAGE_ONE_PAIR, RESERVE


class _Pages:
    """`situation.Pages` for one pilot: platform, CPU and memory are checked in SQL
    (`statements.PAGE_ONE_PAIR`), sites and tags here."""

    def __init__(
        self, conn: Connection, caps: PilotCapabilities, page_size: int, max_pages: int
    ) -> None:
        self._conn = conn
        self._caps = caps
        self._page_size = page_size
        self._max_pages = max_pages
        self._limits = {
            "b_platform": caps.platform,
            "b_cpu": caps.cpu_time_left,
            "b_memory": caps.memory_mb,
            "b_limit": page_size,
        }
        self._fitting: dict[Pair, list[Row[Any]]] = {}
        self._next: dict[Pair, tuple[int, int] | None] = {}  # keyset; None: all read
        self._pages: dict[Pair, int] = {}

    def first(self, pairs: Sequence[Pair]) -> None:
        self.further(pairs)

    def further(self, pairs: Sequence[Pair]) -> None:
        for pair in pairs:
            ap, aid = self._next.get(pair) or FIRST_PAGE
            params = {"b_group": pair[0], "b_owner": pair[1], "b_ap": ap, "b_aid": aid}
            page = self._conn.execute(PAGE_ONE_PAIR, {**params, **self._limits}).all()
            self._pages[pair] = self._pages.get(pair, 0) + 1
            full = len(page) == self._page_size
            self._next[pair] = (page[-1].priority, page[-1].id) if full else None
            self._fitting[pair] = [row for row in page if _fits(row, self._caps)]

    def fitting(self, pair: Pair, caps: PilotCapabilities) -> list[Row[Any]]:
        return self._fitting.get(pair, [])

    def next_priority(self, pair: Pair) -> int | None:
        keyset = self._next.get(pair)
        return keyset[0] if keyset is not None else None

    def can_read(self, pair: Pair) -> bool:
        return self._pages.get(pair, 0) < self._max_pages


def _fits(row: Row[Any], caps: PilotCapabilities) -> bool:
    """The requirements `statements.PAGE_ONE_PAIR` left to Python (as `Requirements.unmet`
    words them)."""
    allowed = name_set(row.sites_allowed)
    if allowed and caps.site not in allowed:
        return False
    if caps.site in name_set(row.sites_banned):
        return False
    return caps.tags.issuperset(name_set(row.tags))


def ranked(
    conn: Connection,
    situation: Situation,
    caps: PilotCapabilities,
    *,
    page_size: int,
    max_pages: int,
) -> list[Row[Any]]:
    """The queued tasks `caps` can run, best match key first (`situation.best_first`)."""
    if situation.closed(caps.site):
        return []
    return best_first(situation, _Pages(conn, caps, page_size, max_pages), caps)


def claim(
    conn: Connection,
    ranked: Sequence[Row[Any]],
    caps: PilotCapabilities,
    now: dt.datetime,
) -> Claimed | None:
    """Claim the first of `ranked` still queued (the write lock is ours) and add its wall
    time to its owner's reservation; None if other pilots took them all."""
    secret, params = claim_params(caps, now)
    for row in ranked:
        claimed = conn.execute(CLAIM, {**params, "b_id": row.id}).one_or_none()
        if claimed is not None:
            reserve = {"b_group": row.group_name, "b_owner": row.owner_dn}
            conn.execute(RESERVE, {**reserve, "b_wall": row.max_wall_s})
            return Claimed(claimed, secret)
    return None
