"""What the two matchers share: the situation a match reads first, the scan in fair-share
order, and the claim's values.

A match first reads the **situation** in one statement: the usage of every
(group, owner), the bans and the masked sites. A pilot at a masked or
banned site gets nothing; owners that `policy.Bans` (the policy's own
evaluator) or the static `banned_dns` ban are left out; the rest are ranked
by `fairshare.ranking`. With `[taskqueue.limits]`, an owner at its
running limit and, at a site with limits, a group at its limit there are
left out too, and a site at its limit gets nothing (`Situation.pairs`).
Then `best_first` reads the queued tasks of the pairs page by page, from
`Pages` (one per dialect), and orders what the pilot can run by
`fairshare.match_key`, the one ranking of every backend.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Row

from ...audit import AuditEvent
from ...patterns import any_glob_matches
from ...policy import Bans
from ...store.bans import bans_of, site_bans_of
from ...tasklimits import TaskLimits
from ..base import RULE_MATCH, queue_event
from ..fairshare import FairShare, PairUsage, match_key, ranking
from ..model import (
    InvalidTask,
    PilotCapabilities,
    Task,
    new_assignment_secret,
    normalise_site,
)
from .rows import Pair, task_of
from .statements import SITE_LOAD, SITUATION

log = logging.getLogger("proxyd.taskqueue")


@dataclasses.dataclass
class Situation:
    """What a match reads before the candidates (kept up to date through a batch)."""

    usages: dict[Pair, PairUsage]
    bans: Bans  # the runtime user and host bans and the static banned_dns
    site_bans: tuple[str, ...]  # patterns, spelt as `normalise_site` spells names
    masked: frozenset[str]
    fair: FairShare
    limits: TaskLimits = dataclasses.field(default_factory=TaskLimits)
    running: dict[Pair, int] = dataclasses.field(default_factory=dict)  # active tasks
    _ranks: dict[Pair, tuple[float, float]] | None = None
    _pairs: tuple[Pair, ...] | None = None
    _owner_running: dict[str, int] | None = None
    _site_load: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def closed(self, site: str) -> bool:
        """Whether a pilot at `site` gets no work: the site is masked or banned."""
        return site in self.masked or any_glob_matches(self.site_bans, site)

    def count_site(self, conn: Connection, site: str) -> None:
        """Read the active tasks of `site` per group, if the site has limits (once per
        situation: a batch's claims are added by `reserve`)."""
        if site in self.limits.sites and site not in self._site_load:
            load: dict[str, int] = defaultdict(int)
            load.update((g, int(n)) for g, n in conn.execute(SITE_LOAD, {"b_site": site}))
            self._site_load[site] = load

    def pairs(self, site: str | None = None) -> tuple[Pair, ...]:
        """The (group, owner) pairs that may get work now: the owner is not banned, as
        `policy.decide` judges owners (`Bans.matches`), nor at its running limit; at
        `site`, if it has limits (`count_site` first), the site is not full and the group
        not at its limit there."""
        if self._pairs is None:
            if not self.bans.users and not self.bans.hosts:
                self._pairs = tuple(self.usages)
            else:
                banned = {o: self.bans.matches(o) for o in {o for _, o in self.usages}}
                self._pairs = tuple(p for p in self.usages if not banned[p[1]])
        if not self.limits.running_limited:
            return self._pairs
        pairs = self._pairs
        cap = self.limits.max_running_per_owner
        if cap is not None:
            owners = self.owner_running()
            pairs = tuple(p for p in pairs if owners.get(p[1], 0) < cap)
        site_limits = self.limits.sites.get(site) if site is not None else None
        if site_limits is not None:
            load = self._site_load.get(site or "", {})
            if site_limits.full(sum(load.values())):
                return ()
            if site_limits.max_running_per_group:
                pairs = tuple(p for p in pairs if not site_limits.group_full(p[0], load))
        return pairs

    def owner_running(self) -> dict[str, int]:
        """Active tasks per owner (over its groups)."""
        if self._owner_running is None:
            totals: dict[str, int] = defaultdict(int)
            for (_, owner), n in self.running.items():
                totals[owner] += n
            self._owner_running = totals
        return self._owner_running

    def ranks(self) -> dict[Pair, tuple[float, float]]:
        """`fairshare.ranking` of the usages as they are now."""
        if self._ranks is None:
            self._ranks = ranking(self.usages.values(), self.fair)
        return self._ranks

    def reserve(self, pair: Pair, wall_s: int, site: str) -> None:
        """A task of `pair` was claimed at `site`: its owner and group now use `wall_s`
        more, and hold one more active task (there)."""
        u = self.usages[pair]
        self.usages[pair] = dataclasses.replace(u, reserved_s=u.reserved_s + wall_s)
        self.running[pair] = self.running.get(pair, 0) + 1
        if self._owner_running is not None:
            self._owner_running[pair[1]] += 1
        if site in self._site_load:
            self._site_load[site][pair[0]] += 1
        if self._ranks is not None:  # only the ranks of that group change
            group = [v for v in self.usages.values() if v.group == pair[0]]
            self._ranks.update(ranking(group, self.fair))


def read_situation(
    conn: Connection,
    fair: FairShare,
    static_bans: Sequence[str],
    now: dt.datetime,
    limits: TaskLimits | None = None,
) -> Situation:
    """Usage and active tasks per pair, bans, masked sites: one statement."""
    usages: dict[Pair, PairUsage] = {}
    running: dict[Pair, int] = {}
    bans: list[tuple[str, str]] = []
    masked: set[str] = set()
    for kind, name, owner, used, at, reserved, active in conn.execute(SITUATION):
        if kind == "pair":
            usages[name, owner] = PairUsage(name, owner, fair.decay(used, at, now), reserved)
            running[name, owner] = active
        elif kind == "mask":
            masked.add(name)
        else:
            bans.append((kind, name))
    runtime = bans_of(bans)
    owners = Bans(users=(*static_bans, *runtime.users), hosts=runtime.hosts)
    sites = tuple(_site_pattern(p) for p in site_bans_of(bans))
    return Situation(
        usages, owners, sites, frozenset(masked), fair, limits or TaskLimits(), running
    )


def _site_pattern(pattern: str) -> str:
    """A site ban pattern spelt as `normalise_site` spells site names, so that it matches
    every spelling of the site it names."""
    try:
        return normalise_site(pattern)
    except InvalidTask:
        return pattern


class Ranked(Protocol):
    """A queued task as a scan holds it: what ordering it needs."""

    @property
    def id(self) -> int: ...

    @property
    def priority(self) -> int: ...


C = TypeVar("C", bound=Ranked)
C_co = TypeVar("C_co", bound=Ranked, covariant=True)


class Pages(Protocol[C_co]):
    """The queued tasks of each (group, owner), in priority-then-id order, read a page at a
    time (a dialect's matcher provides them)."""

    def first(self, pairs: Sequence[Pair]) -> None:
        """Read the first page of each of `pairs` not read yet."""

    def further(self, pairs: Sequence[Pair]) -> None:
        """Read the next page of each of `pairs`."""

    def fitting(self, pair: Pair, caps: PilotCapabilities) -> Sequence[C_co]:
        """The tasks of `pair` read so far that `caps` can run, in order."""
        ...

    def next_priority(self, pair: Pair) -> int | None:
        """The priority the next page of `pair` starts at or below; None if all is read."""

    def can_read(self, pair: Pair) -> bool:
        """Whether the scan bound allows another page of `pair`."""
        ...


def best_first(situation: Situation, pages: Pages[C], caps: PilotCapabilities) -> list[C]:
    """The queued tasks `caps` can run, smallest `fairshare.match_key` first.

    Each pair is read in its own priority-then-id order, a page at a time,
    until some of its tasks fit; a pair none of whose tasks fit so far is
    read further only while it could still beat the best found (its next
    page's priority is not lower) and the scan bound allows.
    """
    ranks = situation.ranks()
    todo: Sequence[Pair] = situation.pairs(caps.site)
    pages.first(todo)
    found: list[tuple[tuple[int, float, float, int], C]] = []
    best: int | None = None
    while todo:
        further: list[tuple[Pair, int]] = []
        for pair in todo:
            fitting = pages.fitting(pair, caps)
            if fitting:
                group, owner = pair
                found.extend((match_key(c.priority, group, owner, c.id, ranks), c) for c in fitting)
                top = fitting[0].priority
                if best is None or top > best:
                    best = top
            elif (following := pages.next_priority(pair)) is not None:
                further.append((pair, following))
        todo = [p for p, following in further if best is None or following >= best]
        bounded = [p for p in todo if not pages.can_read(p)]
        if bounded:
            log.info("match: candidate scan stopped at its bound for %d owner(s)", len(bounded))
            todo = [p for p in todo if pages.can_read(p)]
        pages.further(todo)
    found.sort(key=itemgetter(0))
    return [c for _, c in found]


@dataclasses.dataclass(frozen=True)
class Claimed:
    row: Row[Any]  # the task as claimed
    secret: str = dataclasses.field(repr=False)  # the assignment secret, for the pilot only

    def task(self) -> Task:
        """The claimed task, carrying its assignment secret (given to the pilot once)."""
        return dataclasses.replace(task_of(self.row), assignment_secret=self.secret)


def claim_params(caps: PilotCapabilities, now: dt.datetime) -> tuple[str, dict[str, Any]]:
    """A fresh assignment secret, and the claim's parameters (with the secret's digest)."""
    secret, digest = new_assignment_secret()
    return secret, {
        "b_pilot_dn": caps.pilot_dn,
        "b_pilot_id": caps.pilot_id,
        "b_site": caps.site,
        "b_ce": caps.ce or None,
        "b_now": now,
        "b_secret": digest,
    }


def match_event(task: Task, caps: PilotCapabilities) -> AuditEvent:
    return queue_event(
        "task.match",
        RULE_MATCH,
        caps.pilot_dn,
        actor_kind="pilot",
        task=task,
        detail=(
            f"task {task.id} to pilot {caps.pilot_id} at site {caps.site}"
            f"{' ce ' + caps.ce if caps.ce else ''}; priority {task.spec.priority}, "
            f"attempt {task.attempts}"
        ),
    )
