"""Matching: a pilot asks for work and gets the best task it can run, audited with the claim.

Matches asked for at the same moment on one queue object (a proxyd
worker's concurrent pilot requests) are served in batches by
`store.batching.LeaderBatcher`: one thread matches them one after the
other in one transaction and appends their events at once, which takes
the audit chain's single append point once per batch instead of once per
match. A batch gives every pilot the task it would have got asking alone,
in that order. A request alone in its batch is matched alone (SQLite: its
candidates are read before the write lock is taken).

A request that saw candidates but found other processes claiming all of
them is tried again (`RETRY`: back to the front of the queue; alone: after
a short, growing wait), up to `_CLAIM_ROUNDS` times, then answered None.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Row

from ...audit import AuditEvent
from ...store.batching import RETRY, LeaderBatcher, Retry
from ...tasklimits import TaskLimits
from ..base import named_task
from ..fairshare import FairShare
from ..model import PilotCapabilities, Task
from . import postgres, sqlite
from .situation import Claimed, Situation, match_event, read_situation
from .writer import Writer

log = logging.getLogger("proxyd.taskqueue")

_CLAIM_ROUNDS = 24
_BACKOFF_S = (0.001, 0.05)  # the first wait of a match alone whose candidates were all taken


@dataclasses.dataclass(eq=False)
class MatchRequest:
    """One `match` call: the pilot, the events of the decision that let it ask, its tries."""

    caps: PilotCapabilities
    decided: tuple[AuditEvent, ...] = ()
    tries: int = 0


class Matcher:
    """The match path of `SqlTaskQueue` (see the module docstring)."""

    def __init__(
        self,
        writer: Writer,
        fair: FairShare,
        static_bans: Sequence[str],
        *,
        page_size: int,
        max_pages: int,
        match_batch: int,
        clock: Callable[[], dt.datetime],
        limits: TaskLimits | None = None,
    ) -> None:
        self._writer = writer
        self._limits = limits or TaskLimits()
        self._engine = writer.engine
        self._postgres = writer.engine.dialect.name == "postgresql"
        self._fair = fair
        self._static_bans = tuple(static_bans)
        self._page_size = page_size
        self._max_pages = max_pages
        self._clock = clock
        self._batcher: LeaderBatcher[MatchRequest, Task | None] | None = (
            LeaderBatcher(self.match_batch, max_batch=match_batch) if match_batch > 1 else None
        )

    def match(self, caps: PilotCapabilities, decided: Sequence[AuditEvent]) -> Task | None:
        request = MatchRequest(caps, tuple(decided))
        if self._batcher is None:
            return self.match_alone(request)
        return self._batcher.submit(request)

    def match_batch(self, batch: Sequence[MatchRequest]) -> list[Task | Retry | None]:
        """Match a batch in one transaction with one audit append; an outcome per request.

        The situation is read once; each request's claim sees the batch's
        earlier claims (their tasks are matched, their owners' reservations
        grown in the situation), so the batch matches as the same requests
        one after the other would.
        """
        if len(batch) == 1:  # no one to share with (SQLite: read outside the write lock)
            return [self.match_alone(batch[0])]
        now = self._clock()
        outcomes: list[Task | Retry | None] = []
        claimed_rows: list[Row[Any]] = []
        events: list[AuditEvent] = []
        with self._writer.transaction() as conn:
            situation = read_situation(conn, self._fair, self._static_bans, now, self._limits)
            book = None
            if self._postgres:  # pages of 2 x page_size, fewer of them: the same bound per pair
                page = 2 * self._page_size
                book = postgres.Book(conn, page, -(-self._page_size * self._max_pages // page))
            for r in batch:
                seen, claimed = 0, None
                situation.count_site(conn, r.caps.site)
                if situation.closed(r.caps.site):
                    pass  # a masked or banned site: nothing, at once
                elif book is not None:
                    seen, claimed = postgres.claim_from_book(conn, book, situation, r.caps, now)
                else:
                    ranked = self._ranked(conn, situation, r.caps)
                    seen, claimed = len(ranked), sqlite.claim(conn, ranked, r.caps, now)
                if claimed is not None:
                    task, row = claimed.task(), claimed.row
                    claimed_rows.append(row)
                    situation.reserve((row.group_name, row.owner_dn), row.max_wall_s, r.caps.site)
                    events += [*named_task(r.decided, task.id), match_event(task, r.caps)]
                    outcomes.append(task)
                elif seen and r.tries + 1 < _CLAIM_ROUNDS:
                    r.tries += 1
                    outcomes.append(RETRY)
                else:
                    if seen:
                        log.warning("match: other pilots were claiming every candidate")
                    events += r.decided
                    outcomes.append(None)
            if claimed_rows and self._postgres:
                postgres.reserve_many(conn, claimed_rows)
            self._writer.audit(conn, events)
        return outcomes

    def match_alone(self, r: MatchRequest) -> Task | None:
        """One match in a transaction of its own (PostgreSQL: two statements and the audit
        append; SQLite: the candidates are read in a transaction of their own, so that the
        database write lock is held for the claim and its events only)."""
        caps = r.caps
        for attempt in range(_CLAIM_ROUNDS):
            now = self._clock()
            ranked: list[Row[Any]] = []
            if not self._postgres:
                with self._engine.connect() as conn:
                    situation = read_situation(
                        conn, self._fair, self._static_bans, now, self._limits
                    )
                    situation.count_site(conn, caps.site)
                    ranked = self._ranked(conn, situation, caps)
                if not ranked:
                    self._writer.audit_alone(r.decided)
                    return None
            with self._writer.transaction() as conn:
                claimed: Claimed | None
                if self._postgres:
                    situation = read_situation(
                        conn, self._fair, self._static_bans, now, self._limits
                    )
                    situation.count_site(conn, caps.site)
                    seen, claimed = 0, None
                    if not situation.closed(caps.site):
                        seen, claimed = postgres.find_and_claim(
                            conn,
                            situation,
                            caps,
                            now,
                            page_size=self._page_size,
                            max_pages=self._max_pages,
                            retry=attempt > 0,
                        )
                    if not seen:
                        self._writer.audit(conn, r.decided)
                        return None
                else:
                    claimed = sqlite.claim(conn, ranked, caps, now)
                if claimed is not None:
                    task = claimed.task()
                    self._writer.audit(
                        conn, [*named_task(r.decided, task.id), match_event(task, caps)]
                    )
                    return task
            # Others are claiming all we saw, right now: wait a little.
            time.sleep(min(_BACKOFF_S[0] * 2**attempt, _BACKOFF_S[1]))
        log.warning("match: other pilots were claiming every candidate, %d times", _CLAIM_ROUNDS)
        self._writer.audit_alone(r.decided)
        return None

    def _ranked(
        self, conn: Connection, situation: Situation, caps: PilotCapabilities
    ) -> list[Row[Any]]:
        return sqlite.ranked(
            conn, situation, caps, page_size=self._page_size, max_pages=self._max_pages
        )
