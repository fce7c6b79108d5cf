"""The PostgreSQL matcher: candidates read without locks, the claim with FOR UPDATE SKIP LOCKED.

Alone, a match is one statement after the situation
(`statements.FIND_CLAIM_AND_RESERVE`): the scan, the pick in
`fairshare.match_key` order, the claim and the reservation. In a batch, the
pages of every pair are read once for all its requests (`Book`), each
request picks from them with `situation.best_first` and claims the first
still free of its best (`statements.CLAIM_LISTED`), and the reservations
are made at the end in one lock order (`reserve_many`). Either way only
the claimed row is locked, so pilots never wait for each other's
candidates and never get the same task.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row

from ..model import PilotCapabilities
from .rows import Pair, name_set
from .situation import Claimed, Situation, best_first, claim_params
from .statements import (
    CLAIM_LISTED,
    FIND_CLAIM_AND_RESERVE,
    FIRST_PAGE,
    PAGES_FOR_ANY_PILOT,
    RESERVE_MANY,
)

CLAIM_LIST = 16  # candidates one claim of a batch may try, best first


class Candidate(NamedTuple):
    """A queued task as a batch's book holds it: what ranking and requirements need."""

    id: int
    group_name: str
    owner_dn: str
    priority: int
    platform: str | None
    cpu_time_s: int
    memory_mb: int
    sites_allowed: frozenset[str]
    sites_banned: frozenset[str]
    tags: frozenset[str]

    @classmethod
    def of(cls, row: Row[Any]) -> Candidate:
        return cls(
            row.id,
            row.group_name,
            row.owner_dn,
            row.priority,
            row.platform,
            row.cpu_time_s,
            row.memory_mb,
            name_set(row.sites_allowed),
            name_set(row.sites_banned),
            name_set(row.tags),
        )

    def fits(self, caps: PilotCapabilities) -> bool:
        """Every requirement, as `Requirements.unmet` has them."""
        return (
            (self.platform is None or self.platform == caps.platform)
            and self.cpu_time_s <= caps.cpu_time_left
            and self.memory_mb <= caps.memory_mb
            and (not self.sites_allowed or caps.site in self.sites_allowed)
            and caps.site not in self.sites_banned
            and self.tags <= caps.tags
        )


class Book:
    """The queued tasks of every (group, owner) that a batch has read, page by page
    (`situation.Pages`).

    The requests of the batch choose from it, each by its own requirements;
    a pair is read further only when a request needs it to. Tasks claimed in
    the batch, or found claimed by other processes, are `taken`.
    """

    def __init__(self, conn: Connection, page_size: int, max_pages: int) -> None:
        self._conn = conn
        self._page_size = page_size
        self._max_pages = max_pages
        self.rows: dict[Pair, list[Candidate]] = {}
        self._next: dict[Pair, tuple[int, int] | None] = {}  # keyset; None: all read
        self._pages: dict[Pair, int] = defaultdict(int)
        self.taken: set[int] = set()

    def can_read(self, pair: Pair) -> bool:
        return self._next.get(pair, FIRST_PAGE) is not None and self._pages[pair] < self._max_pages

    def next_priority(self, pair: Pair) -> int | None:
        keyset = self._next.get(pair, FIRST_PAGE)
        return keyset[0] if keyset is not None else None

    def first(self, pairs: Sequence[Pair]) -> None:
        self.further([p for p in pairs if p not in self.rows])

    def further(self, pairs: Iterable[Pair]) -> None:
        """The next page of each of `pairs` (one statement)."""
        todo: list[tuple[Pair, tuple[int, int]]] = []
        for pair in pairs:
            keyset = self._next.get(pair, FIRST_PAGE)
            if keyset is not None and self._pages[pair] < self._max_pages:
                todo.append((pair, keyset))
        if not todo:
            return
        wanted = [{"g": g, "o": o, "ap": ap, "aid": aid} for (g, o), (ap, aid) in todo]
        params = {"b_pairs": json.dumps(wanted), "b_limit": self._page_size}
        got: dict[Pair, list[Candidate]] = defaultdict(list)
        for row in self._conn.execute(PAGES_FOR_ANY_PILOT, params):
            got[(row.group_name, row.owner_dn)].append(Candidate.of(row))
        for pair, _ in todo:
            page = sorted(got.get(pair, ()), key=lambda c: (-c.priority, c.id))
            self.rows.setdefault(pair, []).extend(page)
            self._pages[pair] += 1
            full = len(page) == self._page_size
            self._next[pair] = (page[-1].priority, page[-1].id) if full else None

    def fitting(self, pair: Pair, caps: PilotCapabilities) -> list[Candidate]:
        """The pair's first task read so far that `caps` can run and nobody took ([] or one:
        the claim list is made of the best of each pair)."""
        taken = self.taken
        for c in self.rows.get(pair, ()):
            if c.id not in taken and c.fits(caps):
                return [c]
        return []


def claim_from_book(
    conn: Connection,
    book: Book,
    situation: Situation,
    caps: PilotCapabilities,
    now: dt.datetime,
) -> tuple[int, Claimed | None]:
    """In a batch: (candidates seen, the task claimed or None).

    The request's candidates come from the batch's book in `best_first`
    order; the claim takes the first still free of the best `CLAIM_LIST`
    (one statement). Candidates that other processes took meanwhile are
    marked and the next ones tried, a few times.
    """
    seen = 0
    for _ in range(3):
        listed = best_first(situation, book, caps)[:CLAIM_LIST]
        seen += len(listed)
        if not listed:
            return seen, None
        secret, params = claim_params(caps, now)
        params["b_ids"] = [c.id for c in listed]
        row = conn.execute(CLAIM_LISTED, params).one_or_none()
        if row is not None:
            book.taken.add(row.id)
            return seen, Claimed(row, secret)
        book.taken.update(c.id for c in listed)  # all claimed by other processes
    return seen, None


def reserve_many(conn: Connection, claimed: Sequence[Row[Any]]) -> None:
    """Add the claimed tasks' wall time to their owners' reservations."""
    per_pair: dict[Pair, list[int]] = defaultdict(lambda: [0, 0])
    for row in claimed:
        totals = per_pair[(row.group_name, row.owner_dn)]
        totals[0] += row.max_wall_s
        totals[1] += 1
    todo = [{"g": g, "o": o, "w": w, "n": n} for (g, o), (w, n) in per_pair.items()]
    conn.execute(RESERVE_MANY, {"b_reserve": json.dumps(todo)})


def find_and_claim(
    conn: Connection,
    situation: Situation,
    caps: PilotCapabilities,
    now: dt.datetime,
    *,
    page_size: int,
    max_pages: int,
    retry: bool,
) -> tuple[int, Claimed | None]:
    """Alone: (candidates seen, the task claimed of them or None) in one statement.

    A first try reads `page_size` candidates per (group, owner); a retry, after other
    pilots were claiming all of those, reads as many as the scan bound allows.
    """
    pairs = situation.pairs(caps.site)
    if not pairs:
        return 0, None
    ranks = situation.ranks()
    ranked = [{"g": g, "o": o, "gr": ranks[g, o][0], "ou": ranks[g, o][1]} for g, o in pairs]
    scan = page_size * max_pages
    secret, claim = claim_params(caps, now)
    params = {
        "b_pairs": json.dumps(ranked),
        "b_tags": sorted(caps.tags),
        "b_scan": scan,
        "b_platform": caps.platform,
        "b_cpu": caps.cpu_time_left,
        "b_memory": caps.memory_mb,
        "b_limit": scan if retry else page_size,
        **claim,
    }
    row = conn.execute(FIND_CLAIM_AND_RESERVE, params).one()
    claimed = Claimed(row, secret) if row.id is not None else None
    return int(row.seen), claimed
