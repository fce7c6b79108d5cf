"""The default task queue: SQLAlchemy Core on SQLite or PostgreSQL (backend name "sql").

Every change is one write transaction (`store.db.write_transaction`):
``BEGIN IMMEDIATE`` on SQLite, so one writer at a time; READ COMMITTED
with row locks on PostgreSQL. Where the dialects differ, the method says
what it does.

Matching (see docs/taskqueue.md): the site mask and site bans first, then
the owners not banned, then for every (group, owner) its first queued tasks
in priority-then-submission order that the pilot can run (a scan bounded by
`page_size` x `max_pages` tasks per pair); the one with the smallest
`fairshare.match_key` is claimed. Candidates are read without locks; the
claim locks only the task it takes, with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent pilots never claim the same task and never wait
for each other's candidates. The match's audit event is appended in the
same transaction when the audit log is this database's (the match and its
event commit together or not at all, I6); with another audit sink it is
written after the commit, and a match it refuses is taken back.

Matches asked for at the same moment on one queue object (a proxyd
worker's concurrent pilot requests) are served in batches: one thread
matches them one after the other in one transaction and appends their
events at once (`SqlTaskQueue._lead`), which takes the audit chain's
single append point once per batch instead of once per match. A batch
gives every pilot the task it would have got asking alone, in that order.
PostgreSQL, alone: two statements (the situation; then find, claim and
reserve in one, `_FIND_CLAIM_AND_RESERVE`). PostgreSQL, batched: the
situation and pages of every pair once (`_Book`), every requirement then
checked in Python, a claim statement per pilot (`_CLAIM_LISTED`) and the
reservations at the end in one lock order (`_RESERVE_MANY`). SQLite reads
a page per pair (`_ranked`) and claims in two statements (`_claim`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    column,
    delete,
    func,
    insert,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from ..audit import AuditEvent, AuditLog, AuditWriteError
from ..config import Config
from ..patterns import any_dn_denied, any_dn_matches
from ..policy import Assignment
from ..store.db import make_engine, migrate, require_proxyd_engine, write_transaction
from ..store.models import (
    QUEUED_STATES,
    BanRow,
    FairShareRow,
    SiteMaskRow,
    TaskAccountingRow,
    TaskRow,
)
from .base import (
    RULE_MATCH,
    RULE_PILOT_REPORT,
    RULE_REQUEST,
    RULE_TIMEOUT,
    AccountingKey,
    AuditSink,
    queue_event,
)
from .fairshare import FairShare, PairUsage, match_key, ranking
from .model import (
    ACTIVE,
    SYSTEM_ACTOR,
    Accounting,
    AccountingTotal,
    InvalidTask,
    NotAssigned,
    Payload,
    PilotCapabilities,
    Requirements,
    Task,
    TaskEvent,
    TaskFilter,
    TaskSpec,
    TaskState,
    UnknownTask,
    assignment_of,
    free_text,
    new_assignment_secret,
    next_state,
    normalise_site,
)

__all__ = ["SqlTaskQueue"]

log = logging.getLogger("proxyd.taskqueue")

T = TaskRow.__table__.c
A = TaskAccountingRow.__table__.c
M = SiteMaskRow.__table__.c
F = FairShareRow.__table__.c
B = BanRow.__table__.c
_TASKS = cast(Table, TaskRow.__table__)
_ACCOUNTING = cast(Table, TaskAccountingRow.__table__)
_MASK = cast(Table, SiteMaskRow.__table__)
_SHARES = cast(Table, FairShareRow.__table__)
_BANS = cast(Table, BanRow.__table__)

_FIRST_PAGE = (2**31 - 1, 0)  # a keyset before every task: priorities are far smaller
_CANDIDATE_COLUMNS = (
    T.id,
    T.group_name,
    T.owner_dn,
    T.priority,
    T.state,
    # As JSON text: most tasks have no site or tag rules, and "[]" needs no parsing.
    cast_(T.sites_allowed, Text).label("sites_allowed"),
    cast_(T.sites_banned, Text).label("sites_banned"),
    cast_(T.tags, Text).label("tags"),
    T.max_wall_s,
    T.platform,
    T.cpu_time_s,
    T.memory_mb,
)
# Queued again: no pilot holds it, and the secret of the earlier attempt is dead.
_CLEARED = {"pilot_dn": None, "pilot_id": None, "site": None, "ce": None, "secret_sha256": None}
_CLEARED_TIMES = {"matched_at": None, "started_at": None, "heartbeat_at": None}


_USAGE_COLUMNS = (F.group_name, F.owner_dn, F.used_s, F.used_at, F.reserved_s)
_NO_USAGE = tuple(null().cast(c.type) for c in _USAGE_COLUMNS[1:])

# The predicate of the partial index ix_tasks_queue, spelt with literals: neither PostgreSQL
# (generic plans) nor SQLite can use a partial index for a predicate with bound parameters.
_QUEUED = T.state.in_([literal_column(f"'{s}'") for s in QUEUED_STATES])


def _page(group: Any, owner: Any, after: tuple[Any, Any] | None) -> Select[Any]:
    """Queued tasks of one (group, owner) after a keyset (None: from the start), in matching
    order, that fit the pilot's platform, CPU time and memory (sites and tags are checked in
    `_fits`)."""
    keyset = (
        ()
        if after is None
        else (or_(T.priority < after[0], and_(T.priority == after[0], T.id > after[1])),)
    )
    return (
        select(*_CANDIDATE_COLUMNS)
        .where(
            _QUEUED,
            T.group_name == group,
            T.owner_dn == owner,
            *keyset,
            or_(T.platform.is_(None), T.platform == bindparam("b_platform")),
            T.cpu_time_s <= bindparam("b_cpu"),
            T.memory_mb <= bindparam("b_memory"),
        )
        .order_by(T.priority.desc(), T.id)
        .limit(bindparam("b_limit", type_=Integer))
    )


# The statements of the matching path, built once (building is what costs in SQLAlchemy).
_PAGE_ONE_PAIR = _page(
    bindparam("b_group"), bindparam("b_owner"), (bindparam("b_ap"), bindparam("b_aid"))
)
# What matching reads before the candidates, in one round trip: every (group, owner) with
# its usage, the owner and site ban patterns, and the masked sites.
_SITUATION = union_all(
    select(literal("pair", String).label("kind"), *_USAGE_COLUMNS),
    select(B.kind, B.pattern, *_NO_USAGE).where(B.kind.in_(("user", "site"))),
    select(literal("mask", String), M.site, *_NO_USAGE).where(M.masked.is_(True)),
)
_CLAIM_VALUES: dict[str, Any] = {
    "state": TaskState.MATCHED.value,
    "pilot_dn": bindparam("b_pilot_dn"),
    "pilot_id": bindparam("b_pilot_id"),
    "site": bindparam("b_site"),
    "ce": bindparam("b_ce"),
    "matched_at": bindparam("b_now"),
    "started_at": None,
    "heartbeat_at": bindparam("b_now"),
    "finished_at": None,
    "attempts": T.attempts + 1,
    "reason": None,
    "secret_sha256": bindparam("b_secret"),  # the digest of this attempt's assignment secret
}
# SQLite: BEGIN IMMEDIATE makes the claiming transaction the only writer; it claims the best
# candidate that is still queued, then reserves its wall time (two statements).
_CLAIM = (
    update(_TASKS)
    .where(T.id == bindparam("b_id"), T.state.in_(QUEUED_STATES))
    .values(**_CLAIM_VALUES)
    .returning(*_TASKS.c)
)
_RESERVE = (
    update(_SHARES)
    .where(F.group_name == bindparam("b_group"), F.owner_dn == bindparam("b_owner"))
    .values(reserved_s=F.reserved_s + bindparam("b_wall", type_=Integer))
)

# PostgreSQL finds, claims and reserves in one statement, given the (group, owner) pairs that
# may run work with their fair-share ranks (`fairshare.ranking`, computed in Python):
#   candidates  the first `b_limit` queued tasks of every pair that the pilot can run, all
#               requirements checked in SQL (ix_tasks_queue), read without locks;
#   pick        the best of them by `fairshare.match_key` order that is still queued and not
#               locked by another pilot (FOR UPDATE SKIP LOCKED: the LIMIT stops after one
#               lock, so only the task taken is locked);
#   claimed     that task, matched to the pilot;  reserved: its wall time, for its owner.
# The statement returns one row: how many candidates it saw (0: nothing for this pilot; more
# but no task: other pilots are claiming them all right now) and the claimed task, if any.
# The pairs travel as one JSON text: psycopg dumps lists of long DNs as arrays in Python,
# element by element, which cost more than the rest of the statement.
_RANKED_PAIRS = (
    func.json_to_recordset(cast_(bindparam("b_pairs", type_=Text), JSON))
    .table_valued(
        column("g", String), column("o", String), column("gr", Float), column("ou", Float)
    )
    .render_derived(name="pairs", with_types=True)
)


def _json_list_empty(column: Any) -> ColumnElement[bool]:
    return cast_(column, Text) == literal_column("'[]'")


_SITE = bindparam("b_site", type_=String)
# The scan of a pair is bounded as SQLite's paging is (`page_size` x `max_pages` queued tasks
# that meet platform, CPU and memory): tasks no pilot here can run cannot make a request for
# work expensive. The LIMITs are pulled lazily, so a pair whose first task fits costs one row.
_SCANNED = (
    select(
        T.id, T.priority, T.sites_allowed, T.sites_banned, T.tags
    )  # in matching order, as ix_tasks_queue has them
    .where(
        _QUEUED,
        T.group_name == _RANKED_PAIRS.c.g,
        T.owner_dn == _RANKED_PAIRS.c.o,
        or_(T.platform.is_(None), T.platform == bindparam("b_platform")),
        T.cpu_time_s <= bindparam("b_cpu"),
        T.memory_mb <= bindparam("b_memory"),
    )
    .order_by(T.priority.desc(), T.id)
    # A subquery, so that the planner does not know the number: with it, it may estimate that
    # a pair has fewer tasks than that and read them all (bitmap scan and sort) instead of
    # walking ix_tasks_queue in order and stopping at the first tasks that fit.
    .limit(select(bindparam("b_scan", type_=Integer)).scalar_subquery())
    .correlate(_RANKED_PAIRS)
    .subquery("scanned")
)
_S = _SCANNED.c
_HEADS = (
    select(_S.id, _S.priority)
    .where(
        # As `_fits` does; most tasks have no site or tag rules, and "[]" needs no parsing.
        or_(_json_list_empty(_S.sites_allowed), cast_(_S.sites_allowed, pg.JSONB).has_key(_SITE)),
        or_(
            _json_list_empty(_S.sites_banned),
            not_(cast_(_S.sites_banned, pg.JSONB).has_key(_SITE)),
        ),
        or_(
            _json_list_empty(_S.tags),
            cast_(_S.tags, pg.JSONB).contained_by(bindparam("b_tags", type_=pg.JSONB)),
        ),
    )
    .order_by(_S.priority.desc(), _S.id)
    .limit(bindparam("b_limit", type_=Integer))
    .lateral("heads")
)
_CANDIDATES = (
    select(_HEADS.c.id, _HEADS.c.priority, _RANKED_PAIRS.c.gr, _RANKED_PAIRS.c.ou)
    .select_from(_RANKED_PAIRS.join(_HEADS, true()))
    .cte("candidates")
)
_C = _CANDIDATES.c
_BEST_FIRST = select(*_C).order_by(_C.priority.desc(), _C.gr, _C.ou, _C.id).subquery("best_first")
_LOCKED = (
    select(T.id, T.state.label("state_before"))
    .where(T.id == _BEST_FIRST.c.id, _QUEUED)
    .with_for_update(skip_locked=True)
    .lateral("locked")
)
# Candidates best first, each locked only when the one before could not be: the LIMIT stops
# at the first lock taken (the outer ORDER BY is the order the sorted subquery delivers).
_PICK = (
    select(_LOCKED.c.id, _LOCKED.c.state_before)
    .select_from(_BEST_FIRST.join(_LOCKED, true()))
    .order_by(_BEST_FIRST.c.priority.desc(), _BEST_FIRST.c.gr, _BEST_FIRST.c.ou, _BEST_FIRST.c.id)
    .limit(1)
    .cte("pick")
)
_CLAIMED = (
    update(_TASKS)
    .where(T.id == _PICK.c.id)
    .values(**_CLAIM_VALUES)
    .returning(*_TASKS.c, _PICK.c.state_before)
    .cte("claimed")
)
_RESERVED = (
    update(_SHARES)
    .where(F.group_name == _CLAIMED.c.group_name, F.owner_dn == _CLAIMED.c.owner_dn)
    .values(reserved_s=F.reserved_s + _CLAIMED.c.max_wall_s)
    .cte("reserved")
)
# A batch of matches (PostgreSQL) reads the queue once for all its requests: pages of every
# pair, whatever the pilot (all requirements are checked in Python, `_Candidate.fits`), no
# locks; then each request claims the first free task of its own best-first list of ids, in
# one statement that locks only the task it takes (as `_PICK` does).
_PAGE_PAIRS = (
    func.json_to_recordset(cast_(bindparam("b_pairs", type_=Text), JSON))
    .table_valued(
        column("g", String), column("o", String), column("ap", Integer), column("aid", Integer)
    )
    .render_derived(name="pairs", with_types=True)
)
_ANY_PILOT = (
    select(*_CANDIDATE_COLUMNS)
    .where(
        _QUEUED,
        T.group_name == _PAGE_PAIRS.c.g,
        T.owner_dn == _PAGE_PAIRS.c.o,
        or_(
            T.priority < _PAGE_PAIRS.c.ap,
            and_(T.priority == _PAGE_PAIRS.c.ap, T.id > _PAGE_PAIRS.c.aid),
        ),
    )
    .order_by(T.priority.desc(), T.id)
    .limit(bindparam("b_limit", type_=Integer))
    .lateral("page")
)
_PAGES_FOR_ANY_PILOT = select(*_ANY_PILOT.c).select_from(_PAGE_PAIRS.join(_ANY_PILOT, true()))
_LISTED = (
    func.unnest(bindparam("b_ids", type_=pg.ARRAY(Integer)))
    .table_valued("id", with_ordinality="ord")
    .render_derived(name="listed")
)
_LISTED_IN_ORDER = select(*_LISTED.c).order_by(_LISTED.c.ord).subquery("in_order")
_LISTED_LOCK = (
    select(T.id, T.state.label("state_before"))
    .where(T.id == _LISTED_IN_ORDER.c.id, _QUEUED)
    .with_for_update(skip_locked=True)
    .lateral("locked")
)
_PICK_LISTED = (
    select(_LISTED_LOCK.c.id, _LISTED_LOCK.c.state_before)
    .select_from(_LISTED_IN_ORDER.join(_LISTED_LOCK, true()))
    .order_by(_LISTED_IN_ORDER.c.ord)
    .limit(1)
    .cte("pick")
)
_CLAIM_LISTED = (
    update(_TASKS)
    .where(T.id == _PICK_LISTED.c.id)
    .values(**_CLAIM_VALUES)
    .returning(*_TASKS.c, _PICK_LISTED.c.state_before)
)
_CLAIM_LIST = 16  # candidates one claim may try, best first
_SEEN = select(func.count().label("seen")).select_from(_CANDIDATES).subquery("seen")
_FIND_CLAIM_AND_RESERVE = (
    select(_SEEN.c.seen, *_CLAIMED.c)
    .select_from(_SEEN.outerjoin(_CLAIMED, true()))
    .add_cte(_RESERVED)
)
# A batch of matches reserves at the end, all pairs at once, locking their rows in one order
# (as `_charge` does), so that batches of several processes cannot deadlock on them.
_RESERVATIONS = (
    func.json_to_recordset(cast_(bindparam("b_reserve", type_=Text), JSON))
    .table_valued(column("g", String), column("o", String), column("w", Integer))
    .render_derived(name="reservations", with_types=True)
)
_IN_ORDER = (
    select(F.id)
    .where(tuple_(F.group_name, F.owner_dn).in_(select(_RESERVATIONS.c.g, _RESERVATIONS.c.o)))
    .order_by(F.group_name, F.owner_dn)
    .with_for_update()
    .cte("in_order")
)
_RESERVE_MANY = (
    update(_SHARES)
    .where(
        F.id.in_(select(_IN_ORDER.c.id)),
        F.group_name == _RESERVATIONS.c.g,
        F.owner_dn == _RESERVATIONS.c.o,
    )
    .values(reserved_s=F.reserved_s + _RESERVATIONS.c.w)
)
# When a pilot saw candidates but other pilots were claiming all of them (locked until their
# transactions commit), it looks again with as many candidates per owner as the scan bound
# allows, waiting a little longer each time; after this many tries it answers None.
_CLAIM_ROUNDS = 24
_BACKOFF_S = (0.001, 0.05)

Pair = tuple[str, str]  # (group, owner)
Clock = Callable[[], dt.datetime]


@dataclasses.dataclass(frozen=True)
class _Claimed:
    row: Row[Any]  # the task as claimed
    state_before: str  # waiting or rescheduled: where a match that cannot be audited goes back
    secret: str = dataclasses.field(repr=False)  # the assignment secret, for the pilot only

    def task(self) -> Task:
        """The claimed task, carrying its assignment secret (given to the pilot once)."""
        return dataclasses.replace(_task(self.row), assignment_secret=self.secret)


@dataclasses.dataclass
class _Situation:
    """What a match reads before the candidates (kept up to date through a batch)."""

    usages: dict[Pair, PairUsage]
    owner_bans: tuple[str, ...]
    site_bans: tuple[str, ...]
    masked: frozenset[str]
    fair: FairShare
    _ranks: dict[Pair, tuple[float, float]] | None = None

    def closed(self, site: str) -> bool:
        return site in self.masked or any_dn_matches(self.site_bans, site)

    def pairs(self) -> list[Pair]:
        if not self.owner_bans:
            return list(self.usages)
        return [(g, o) for g, o in self.usages if not any_dn_denied(self.owner_bans, o)]

    def ranks(self) -> dict[Pair, tuple[float, float]]:
        """`fairshare.ranking` of the usages as they are now."""
        if self._ranks is None:
            self._ranks = ranking(self.usages.values(), self.fair)
        return self._ranks

    def reserve(self, pair: Pair, wall_s: int) -> None:
        """A task of `pair` was claimed: its owner and group now use `wall_s` more."""
        u = self.usages[pair]
        self.usages[pair] = dataclasses.replace(u, reserved_s=u.reserved_s + wall_s)
        if self._ranks is not None:  # only the ranks of that group change
            group = [v for v in self.usages.values() if v.group == pair[0]]
            self._ranks.update(ranking(group, self.fair))


@dataclasses.dataclass(eq=False)
class _Request:
    """One `match` call waiting for a batch (see `SqlTaskQueue._lead`)."""

    caps: PilotCapabilities
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    lead: bool = False  # set with `done` when this caller is to run the next batch
    tries: int = 0
    finished: bool = False
    task: Task | None = None
    error: BaseException | None = None

    def outcome(self) -> Task | None:
        if self.error is not None:
            raise self.error
        return self.task


class _Candidate(NamedTuple):
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
    def of(cls, row: Row[Any]) -> _Candidate:
        return cls(
            row.id,
            row.group_name,
            row.owner_dn,
            row.priority,
            row.platform,
            row.cpu_time_s,
            row.memory_mb,
            _name_set(row.sites_allowed),
            _name_set(row.sites_banned),
            _name_set(row.tags),
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


class _Book:
    """PostgreSQL: the queued tasks of every (group, owner) that a batch has read, page by page.

    The requests of the batch choose from it, each by its own requirements;
    a pair is read further only when a request needs it to. Tasks claimed in
    the batch, or found claimed by other processes, are `taken`.
    """

    def __init__(self, conn: Connection, page_size: int, max_pages: int) -> None:
        self._conn = conn
        self._page_size = page_size
        self._max_pages = max_pages
        self.rows: dict[Pair, list[_Candidate]] = {}
        self._next: dict[Pair, tuple[int, int] | None] = {}  # keyset; None: all read
        self._pages: dict[Pair, int] = defaultdict(int)
        self.taken: set[int] = set()

    def can_read(self, pair: Pair) -> bool:
        return self._next.get(pair, _FIRST_PAGE) is not None and self._pages[pair] < self._max_pages

    def next_priority(self, pair: Pair) -> int:
        keyset = self._next.get(pair, _FIRST_PAGE)
        return keyset[0] if keyset is not None else -(2**31)

    def read(self, pairs: Iterable[Pair]) -> None:
        """The next page of each of `pairs` (one statement)."""
        todo: list[tuple[Pair, tuple[int, int]]] = []
        for pair in pairs:
            keyset = self._next.get(pair, _FIRST_PAGE)
            if keyset is not None and self._pages[pair] < self._max_pages:
                todo.append((pair, keyset))
        if not todo:
            return
        wanted = [{"g": g, "o": o, "ap": ap, "aid": aid} for (g, o), (ap, aid) in todo]
        params = {"b_pairs": json.dumps(wanted), "b_limit": self._page_size}
        got: dict[Pair, list[_Candidate]] = defaultdict(list)
        for row in self._conn.execute(_PAGES_FOR_ANY_PILOT, params):
            got[(row.group_name, row.owner_dn)].append(_Candidate.of(row))
        for pair, _ in todo:
            page = sorted(got.get(pair, ()), key=lambda c: (-c.priority, c.id))
            self.rows.setdefault(pair, []).extend(page)
            self._pages[pair] += 1
            full = len(page) == self._page_size
            self._next[pair] = (page[-1].priority, page[-1].id) if full else None

    def fitting(self, pair: Pair, caps: PilotCapabilities) -> list[_Candidate]:
        """The pair's first task read so far that `caps` can run and nobody took ([] or one)."""
        taken = self.taken
        for c in self.rows.get(pair, ()):
            if c.id not in taken and c.fits(caps):
                return [c]
        return []


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SqlTaskQueue:
    """The task queue in proxyd's database (tables of migration 0002, bans in `bans`).

    `audit` receives one event per match, completion, failure, stall,
    reschedule, cancellation, site mask and ban change (default: the
    audit log in the same database). `banned_dns` adds static owner bans
    (the config's `policy.banned_dns`) to the runtime ones. `page_size`
    and `max_pages` bound the candidate scan per (group, owner).
    `match_batch` is the most matches one transaction serves when threads
    ask at the same moment (1: every match alone).
    """

    name = "sql"

    def __init__(
        self,
        engine: Engine,
        *,
        audit: AuditSink | None = None,
        fair_share: FairShare | None = None,
        banned_dns: Sequence[str] = (),
        page_size: int = 2,
        max_pages: int = 16,
        match_batch: int = 32,
        clock: Clock = _utcnow,
    ) -> None:
        require_proxyd_engine(engine)
        if page_size < 1 or max_pages < 1 or match_batch < 1:
            raise ValueError("page_size, max_pages and match_batch must be at least 1")
        self._engine = engine
        self._audit: AuditSink = audit if audit is not None else AuditLog(engine)
        # Events of the default audit log (this database's) join the transaction of the change
        # they record, so the change and its event commit together or not at all (I6); other
        # sinks are written to after the commit, and a match they refuse is taken back.
        self._audit_joins = _same_database(self._audit, engine)
        self._fair = fair_share or FairShare()
        self._static_bans = tuple(banned_dns)
        self._page_size = page_size
        self._max_pages = max_pages
        self._clock = clock
        self._match_batch = match_batch
        self._batch_lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._leading = False

    @classmethod
    def from_source(cls, source: Engine | Config | URL | str, **options: Any) -> SqlTaskQueue:
        """The `load_taskqueue("sql", source)` factory: an engine as is, or a config or URL
        (then the database is opened and migrated, and a config's banned DNs apply)."""
        if isinstance(source, Engine):
            return cls(source, **options)
        if isinstance(source, Config):
            options.setdefault("banned_dns", source.policy.banned_dns)
            source = source.server.database
        engine = make_engine(source)
        migrate(engine)
        return cls(engine, **options)

    def _log(self, *events: AuditEvent) -> None:
        """Append queue events to the audit log, all or none (AuditWriteError otherwise)."""
        self._audit.append_many(events)

    # --- submitting -----------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> Task:
        now = self._clock()
        [task_id] = self._insert([spec], now)
        return Task(id=task_id, spec=spec, state=TaskState.WAITING, submitted_at=now)

    def submit_many(self, specs: Sequence[TaskSpec]) -> list[int]:
        return self._insert(specs, self._clock()) if specs else []

    def _insert(self, specs: Sequence[TaskSpec], now: dt.datetime) -> list[int]:
        for spec in specs:
            if not isinstance(spec, TaskSpec):
                raise TypeError(f"submit takes TaskSpec values, not {type(spec).__name__}")
        rows = [
            {**_spec_values(s), "state": "waiting", "attempts": 0, "submitted_at": now}
            for s in specs
        ]
        with write_transaction(self._engine) as conn:
            _ensure_pairs(conn, {(s.group, s.owner) for s in specs}, now)
            result = conn.execute(
                insert(_TASKS).returning(T.id, sort_by_parameter_order=True), rows
            )
            return list(result.scalars())

    # --- matching --------------------------------------------------------------------------------

    def match(self, capabilities: PilotCapabilities) -> Task | None:
        """Claim the best task `capabilities` can run, and audit it; None if there is none.

        Candidates are read without locks, and the claim takes the best one that is still
        free. With this database's audit log, the `task.match` event is appended in the same
        transaction (the match and its event commit together, or neither does), and the
        matches that threads ask for at the same moment share one transaction and one
        append (`_lead`), so the audit chain's single append point is taken once per batch,
        not once per match. Otherwise each match is its own transaction, audited after it.
        """
        if not self._audit_joins or self._match_batch <= 1:
            return self._match_alone(capabilities)
        request = _Request(capabilities)
        with self._batch_lock:
            self._waiting.append(request)
            if not self._leading:
                self._leading = request.lead = True
        while True:
            if request.lead:
                request.lead = False
                self._lead()
            if request.finished:
                return request.outcome()
            request.done.wait()
            request.done.clear()

    def _lead(self) -> None:
        """Serve the oldest waiting matches in one transaction, then hand over.

        One thread leads at a time: it takes up to `match_batch` requests
        (its own among them), and when it is done it makes the oldest
        request still waiting the next leader. A request that saw
        candidates but found other processes claiming all of them goes back
        to the front of the queue, up to `_CLAIM_ROUNDS` tries.
        """
        with self._batch_lock:
            n = min(len(self._waiting), self._match_batch)
            batch = [self._waiting.popleft() for _ in range(n)]
        try:
            again = self._match_many(batch)
        except BaseException as exc:  # rolled back: nobody in the batch got a task
            for r in batch:
                r.error, r.finished = exc, True
            again = []
        with self._batch_lock:
            for r in reversed(again):
                r.tries += 1
                if r.tries >= _CLAIM_ROUNDS:
                    log.warning("match: other pilots were claiming every candidate")
                    r.finished = True
                else:
                    self._waiting.appendleft(r)
            successor = self._waiting[0] if self._waiting else None
            if successor is None:
                self._leading = False
            else:
                successor.lead = True
        for r in batch:
            if r.finished:
                r.done.set()
        if successor is not None:
            successor.done.set()

    def _match_many(self, batch: Sequence[_Request]) -> list[_Request]:
        """Match a batch in one transaction with one audit append; the requests to try again.

        The situation is read once; each request's claim sees the batch's
        earlier claims (their tasks are matched, their owners' reservations
        grown in `situation`), so the batch matches as the same requests one
        after the other would.
        """
        postgres = self._engine.dialect.name == "postgresql"
        if len(batch) == 1:  # no one to share with (SQLite: read outside the write lock)
            r = batch[0]
            r.task, r.finished = self._match_alone(r.caps), True
            return []
        now = self._clock()
        again: list[_Request] = []
        matched: list[tuple[_Request, Task]] = []
        with write_transaction(self._engine) as conn:
            situation = self._situation(conn, now)
            book = None
            if postgres:  # pages of 2 x page_size, fewer of them: the same bound per pair
                page = 2 * self._page_size
                book = _Book(conn, page, -(-self._page_size * self._max_pages // page))
            claimed_rows: list[Row[Any]] = []
            for r in batch:
                if situation.closed(r.caps.site):
                    continue
                if book is not None:
                    seen, claimed = self._claim_from_book(conn, book, situation, r.caps, now)
                else:
                    ranked = self._ranked(conn, situation, r.caps)
                    seen, claimed = len(ranked), self._claim(conn, ranked, r.caps, now)
                if claimed is not None:
                    row = claimed.row
                    claimed_rows.append(row)
                    matched.append((r, claimed.task()))
                    situation.reserve((row.group_name, row.owner_dn), row.max_wall_s)
                elif seen:
                    again.append(r)
            if matched:
                if postgres:
                    self._reserve_many(conn, claimed_rows)
                events = [_match_event(task, r.caps) for r, task in matched]
                self._audit.append_many(events, conn=conn)  # type: ignore[call-arg]
        for r, task in matched:
            r.task = task
        for r in batch:
            r.finished = r not in again
        return again

    def _claim_from_book(
        self,
        conn: Connection,
        book: _Book,
        situation: _Situation,
        caps: PilotCapabilities,
        now: dt.datetime,
    ) -> tuple[int, _Claimed | None]:
        """PostgreSQL, in a batch: (candidates seen, the task claimed or None).

        The request's candidates come from the batch's book, ranked as
        `_ranked` ranks them; the claim takes the first still free of the
        best `_CLAIM_LIST` (one statement). Candidates that other processes
        took meanwhile are marked and the next ones tried, a few times.
        """
        seen = 0
        for _ in range(3):
            listed = self._choose(book, situation, caps)
            seen += len(listed)
            if not listed:
                return seen, None
            secret, params = _claim_params(caps, now)
            params["b_ids"] = [c.id for c in listed]
            row = conn.execute(_CLAIM_LISTED, params).one_or_none()
            if row is not None:
                book.taken.add(row.id)
                return seen, _Claimed(row, row.state_before, secret)
            book.taken.update(c.id for c in listed)  # all claimed by other processes
        return seen, None

    def _choose(
        self, book: _Book, situation: _Situation, caps: PilotCapabilities
    ) -> list[_Candidate]:
        """The best `_CLAIM_LIST` tasks of the book that `caps` can run, by match key; reads
        pairs further (all at once) only while they could beat the best found."""
        ranks = situation.ranks()
        todo = situation.pairs()
        book.read([p for p in todo if p not in book.rows])
        found: list[tuple[tuple[int, float, float, int], _Candidate]] = []
        best_priority: int | None = None
        while todo:
            further = []
            for pair in todo:
                fitting = book.fitting(pair, caps)
                if fitting:
                    group_ratio, owner_usage = ranks.get(pair, (0.0, 0.0))
                    for c in fitting:  # fairshare.match_key, inlined
                        found.append(((-c.priority, group_ratio, owner_usage, c.id), c))
                    top = fitting[0].priority
                    best_priority = top if best_priority is None else max(best_priority, top)
                elif book.can_read(pair):
                    further.append(pair)
            todo = [
                p
                for p in further
                if best_priority is None or book.next_priority(p) >= best_priority
            ]
            book.read(todo)
        found.sort(key=lambda kc: kc[0])
        return [c for _, c in found[:_CLAIM_LIST]]

    def _reserve_many(self, conn: Connection, claimed: Sequence[Row[Any]]) -> None:
        """PostgreSQL: add the claimed tasks' wall time to their owners' reservations."""
        per_pair: dict[Pair, int] = defaultdict(int)
        for row in claimed:
            per_pair[(row.group_name, row.owner_dn)] += row.max_wall_s
        todo = [{"g": g, "o": o, "w": w} for (g, o), w in per_pair.items()]
        conn.execute(_RESERVE_MANY, {"b_reserve": json.dumps(todo)})

    def _match_alone(self, caps: PilotCapabilities) -> Task | None:
        """One match in a transaction of its own (PostgreSQL: two statements and the audit
        append; SQLite: the candidates are read in a transaction of their own, so that the
        database write lock is held for the claim and its event only)."""
        postgres = self._engine.dialect.name == "postgresql"
        for attempt in range(_CLAIM_ROUNDS):
            now = self._clock()
            ranked: list[Row[Any]] = []
            if not postgres:
                with self._engine.connect() as conn:
                    situation = self._situation(conn, now)
                    ranked = self._ranked(conn, situation, caps)
                if not ranked:
                    return None
            with write_transaction(self._engine) as conn:
                if postgres:
                    situation = self._situation(conn, now)
                    if situation.closed(caps.site):
                        return None
                    seen, claimed = self._find_and_claim(
                        conn, situation, caps, now, retry=attempt > 0
                    )
                    if not seen:
                        return None
                else:
                    claimed = self._claim(conn, ranked, caps, now)
                if claimed is not None:
                    task = claimed.task()
                    event = _match_event(task, caps)
                    if self._audit_joins:
                        self._audit.append_many([event], conn=conn)  # type: ignore[call-arg]
            if claimed is None:  # others are claiming all we saw, right now: wait a little
                time.sleep(min(_BACKOFF_S[0] * 2**attempt, _BACKOFF_S[1]))
                continue
            if not self._audit_joins:
                try:
                    self._log(event)
                except AuditWriteError:
                    self._unclaim(task, TaskState(claimed.state_before))
                    raise
            return task
        log.warning("match: other pilots were claiming every candidate, %d times", _CLAIM_ROUNDS)
        return None

    def _find_and_claim(
        self,
        conn: Connection,
        situation: _Situation,
        caps: PilotCapabilities,
        now: dt.datetime,
        *,
        retry: bool,
    ) -> tuple[int, _Claimed | None]:
        """PostgreSQL: (candidates seen, the task claimed of them or None) in one statement.

        A first try reads `page_size` candidates per (group, owner); a retry, after other
        pilots were claiming all of those, reads as many as the scan bound allows.
        """
        pairs = situation.pairs()
        if not pairs:
            return 0, None
        ranks = situation.ranks()
        ranked = [{"g": g, "o": o, "gr": ranks[g, o][0], "ou": ranks[g, o][1]} for g, o in pairs]
        scan = self._page_size * self._max_pages
        secret, claim = _claim_params(caps, now)
        params = {
            "b_pairs": json.dumps(ranked),
            "b_tags": sorted(caps.tags),
            "b_scan": scan,
            **self._limits(caps),
            "b_limit": scan if retry else self._page_size,
            **claim,
        }
        row = conn.execute(_FIND_CLAIM_AND_RESERVE, params).one()
        claimed = _Claimed(row, row.state_before, secret) if row.id is not None else None
        return int(row.seen), claimed

    def _ranked(
        self, conn: Connection, situation: _Situation, caps: PilotCapabilities
    ) -> list[Row[Any]]:
        """SQLite: the queued tasks `caps` can run, best match key first.

        Each (group, owner) is read in its own priority-then-id order, a
        page at a time; the tasks of its page that fit are its candidates.
        A pair none of whose page fits is read further, but only while it
        could still beat the best candidate found so far.
        """
        if situation.closed(caps.site):
            return []
        ranks = situation.ranks()
        pairs = situation.pairs()
        keysets: dict[Pair, tuple[int, int]] = dict.fromkeys(pairs, _FIRST_PAGE)
        found: list[tuple[tuple[int, float, float, int], Row[Any]]] = []
        best_priority: int | None = None
        for _ in range(self._max_pages):
            if not keysets:
                break
            by_pair: dict[Pair, list[Row[Any]]] = defaultdict(list)
            for row in self._read_pages(conn, keysets, caps):
                by_pair[(row.group_name, row.owner_dn)].append(row)
            further: dict[Pair, tuple[int, int]] = {}
            for pair in keysets:
                page = sorted(by_pair.get(pair, ()), key=lambda r: (-r.priority, r.id))
                fitting = [r for r in page if _fits(r, caps)]
                for row in fitting:
                    found.append((match_key(row.priority, pair[0], pair[1], row.id, ranks), row))
                if fitting:
                    top = fitting[0].priority
                    best_priority = top if best_priority is None else max(best_priority, top)
                elif len(page) == self._page_size:
                    further[pair] = (page[-1].priority, page[-1].id)
            keysets = {
                p: k for p, k in further.items() if best_priority is None or k[0] >= best_priority
            }
        if keysets:
            log.info("match: candidate scan stopped after %d pages per owner", self._max_pages)
        found.sort(key=lambda kr: kr[0])
        return [row for _, row in found]

    def _situation(self, conn: Connection, now: dt.datetime) -> _Situation:
        """Usage per pair, owner and site ban patterns, masked sites: one statement."""
        usages: dict[Pair, PairUsage] = {}
        owners: list[str] = list(self._static_bans)
        sites: list[str] = []
        masked: set[str] = set()
        for kind, name, owner, used, at, reserved in conn.execute(_SITUATION):
            if kind == "pair":
                usages[name, owner] = PairUsage(
                    name, owner, self._fair.decay(used, at, now), reserved
                )
            elif kind == "user":
                owners.append(name)
            elif kind == "site":
                sites.append(_site_pattern(name))
            else:
                masked.add(name)
        return _Situation(usages, tuple(owners), tuple(sites), frozenset(masked), self._fair)

    def _limits(self, caps: PilotCapabilities) -> dict[str, Any]:
        return {
            "b_platform": caps.platform,
            "b_cpu": caps.cpu_time_left,
            "b_memory": caps.memory_mb,
            "b_limit": self._page_size,
        }

    def _read_pages(
        self, conn: Connection, keysets: Mapping[Pair, tuple[int, int]], caps: PilotCapabilities
    ) -> list[Row[Any]]:
        """SQLite: the next page of queued tasks per (group, owner) after its keyset."""
        limits = self._limits(caps)
        rows: list[Row[Any]] = []
        for (g, o), (ap, aid) in keysets.items():
            params = {"b_group": g, "b_owner": o, "b_ap": ap, "b_aid": aid}
            rows.extend(conn.execute(_PAGE_ONE_PAIR, {**params, **limits}).all())
        return rows

    def _claim(
        self,
        conn: Connection,
        ranked: Sequence[Row[Any]],
        caps: PilotCapabilities,
        now: dt.datetime,
    ) -> _Claimed | None:
        """SQLite: claim the first of `ranked` still queued (the write lock is ours) and add
        its wall time to its owner's reservation; None if other pilots took them all."""
        secret, params = _claim_params(caps, now)
        for row in ranked:
            claimed = conn.execute(_CLAIM, {**params, "b_id": row.id}).one_or_none()
            if claimed is not None:
                reserve = {"b_group": row.group_name, "b_owner": row.owner_dn}
                conn.execute(_RESERVE, {**reserve, "b_wall": row.max_wall_s})
                return _Claimed(claimed, row.state, secret)
        return None

    def _unclaim(self, task: Task, previous: TaskState) -> None:
        """Take back a match whose audit event could not be written (best effort)."""
        try:
            with write_transaction(self._engine) as conn:
                result = conn.execute(
                    update(_TASKS)
                    .where(
                        T.id == task.id,
                        T.state == TaskState.MATCHED.value,
                        T.pilot_dn == task.pilot,
                        T.attempts == task.attempts,
                    )
                    .values(
                        state=previous.value,
                        attempts=T.attempts - 1,
                        **_CLEARED,
                        **_CLEARED_TIMES,
                    )
                )
                if result.rowcount:
                    self._charge(conn, [(task, 0.0)], self._clock())
        except SQLAlchemyError:
            log.exception("task %d: the unaudited match could not be taken back", task.id)

    # --- pilot reports ------------------------------------------------------------------------

    def start(self, task_id: int, pilot: str) -> Task:
        return self._apply(task_id, TaskEvent.START, pilot=pilot)

    def heartbeat(self, task_id: int, pilot: str) -> Task:
        return self._apply(task_id, TaskEvent.HEARTBEAT, pilot=pilot)

    def complete(self, task_id: int, pilot: str, accounting: Accounting) -> Task:
        if not isinstance(accounting, Accounting):
            raise TypeError("complete needs an Accounting")
        return self._apply(task_id, TaskEvent.COMPLETE, pilot=pilot, accounting=accounting)

    def fail(
        self, task_id: int, pilot: str, reason: str, accounting: Accounting | None = None
    ) -> Task:
        return self._apply(
            task_id, TaskEvent.FAIL, pilot=pilot, accounting=accounting, reason=reason
        )

    # --- operator actions -----------------------------------------------------------------------

    def reschedule(self, task_id: int, *, by: str = SYSTEM_ACTOR, reason: str = "") -> Task:
        return self._apply(task_id, TaskEvent.RESCHEDULE, by=by, reason=reason or None)

    def cancel(self, task_id: int, *, by: str = SYSTEM_ACTOR, reason: str = "") -> Task:
        return self._apply(task_id, TaskEvent.CANCEL, by=by, reason=reason or None)

    def _apply(
        self,
        task_id: int,
        event: TaskEvent,
        *,
        pilot: str | None = None,
        by: str | None = None,
        accounting: Accounting | None = None,
        reason: str | None = None,
    ) -> Task:
        """One life-cycle event on one task, checked against the transition table."""
        now = self._clock()
        with write_transaction(self._engine) as conn:
            row = conn.execute(
                select(_TASKS).where(T.id == task_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownTask(task_id)
            before = _task(row)
            if pilot is not None and before.pilot != pilot:
                raise NotAssigned(task_id, pilot, before.pilot)
            state = next_state(before.state, event, task_id)
            changes: dict[str, Any] = {"state": state.value}
            if event is TaskEvent.START:
                changes.update(started_at=now, heartbeat_at=now)
            elif event is TaskEvent.HEARTBEAT:
                changes["heartbeat_at"] = now
            if state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED):
                changes["finished_at"] = now
            if state is TaskState.RESCHEDULED:
                changes.update(**_CLEARED, **_CLEARED_TIMES, finished_at=None)
            if reason is not None:
                changes["reason"] = free_text(reason[:4000], 4000)
            after = _task(
                conn.execute(
                    update(_TASKS).where(T.id == task_id).values(**changes).returning(*_TASKS.c)
                ).one()
            )
            if before.state in ACTIVE and state not in ACTIVE:
                self._charge(conn, [(before, _wall(before, accounting, now))], now)
            if accounting is not None and before.pilot is not None:
                _record_accounting(conn, before, state, accounting, now)
        self._audit_transition(before, after, event, pilot=pilot, by=by, accounting=accounting)
        return after

    def _audit_transition(
        self,
        before: Task,
        after: Task,
        event: TaskEvent,
        *,
        pilot: str | None,
        by: str | None,
        accounting: Accounting | None,
    ) -> None:
        if event in (TaskEvent.START, TaskEvent.HEARTBEAT):
            return  # progress, not a decision: not audited
        detail = f"task {after.id} {before.state.value} -> {after.state.value}"
        if before.pilot is not None and pilot is None:
            detail += f" (was on pilot {before.pilot_id} at site {before.site})"
        if after.reason:
            detail += f": {after.reason}"
        if accounting is not None:
            detail += (
                f"; exit {accounting.exit_code}, cpu {accounting.cpu_s:.0f} s, "
                f"wall {accounting.wall_s:.0f} s"
            )
        if pilot is not None:
            event_ = queue_event(
                f"task.{event.value}",
                RULE_PILOT_REPORT,
                pilot,
                actor_kind="pilot",
                task=after,
                detail=detail,
            )
        else:
            event_ = queue_event(
                f"task.{event.value}", RULE_REQUEST, by or SYSTEM_ACTOR, task=after, detail=detail
            )
        self._log(event_)

    def _charge(
        self, conn: Connection, ended: Sequence[tuple[Task, float]], now: dt.datetime
    ) -> None:
        """Tasks left matched/running: release their reservations, add the wall time they used."""
        per_pair: dict[Pair, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for task, wall_s in ended:
            totals = per_pair[(task.spec.group, task.spec.owner)]
            totals[0] += task.spec.max_wall_s
            totals[1] += wall_s
        for (group, owner), (release, used) in sorted(per_pair.items()):  # one lock order
            row = conn.execute(
                select(F.used_s, F.used_at, F.reserved_s)
                .where(F.group_name == group, F.owner_dn == owner)
                .with_for_update()
            ).one_or_none()
            if row is None:
                _ensure_pairs(conn, {(group, owner)}, now)
                row = conn.execute(
                    select(F.used_s, F.used_at, F.reserved_s).where(
                        F.group_name == group, F.owner_dn == owner
                    )
                ).one()
            conn.execute(
                update(_SHARES)
                .where(F.group_name == group, F.owner_dn == owner)
                .values(
                    used_s=self._fair.decay(row.used_s, row.used_at, now) + used,
                    used_at=now,
                    reserved_s=max(0, int(row.reserved_s - release)),
                )
            )

    # --- the stalled sweep --------------------------------------------------------------------

    def mark_stalled(self, heartbeat_timeout: dt.timedelta) -> list[int]:
        now = self._clock()
        limit = now - heartbeat_timeout
        reason = f"no heartbeat for more than {int(heartbeat_timeout.total_seconds())} s"
        with write_transaction(self._engine) as conn:
            rows = conn.execute(
                select(_TASKS)
                .where(T.state.in_([s.value for s in ACTIVE]), T.heartbeat_at < limit)
                .order_by(T.id)
                .with_for_update(skip_locked=True)  # a pilot reporting right now wins
            ).all()
            if not rows:
                return []
            stalled = [_task(r) for r in rows]
            conn.execute(
                update(_TASKS)
                .where(T.id.in_([t.id for t in stalled]))
                .values(state=TaskState.STALLED.value, reason=reason)
            )
            self._charge(conn, [(t, _wall(t, None, t.heartbeat_at or now)) for t in stalled], now)
        self._log(
            *[
                queue_event(
                    "task.stall",
                    RULE_TIMEOUT,
                    SYSTEM_ACTOR,
                    task=t,
                    detail=f"task {t.id} stalled on pilot {t.pilot_id} at site {t.site}: {reason}",
                )
                for t in stalled
            ]
        )
        return [t.id for t in stalled]

    # --- reading ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(_TASKS).where(T.id == task_id)).one_or_none()
        return _task(row) if row is not None else None

    def query(self, filters: TaskFilter) -> list[Task]:
        f = filters
        conditions: list[ColumnElement[bool]] = [
            column == value
            for column, value in (
                (T.owner_dn, f.owner),
                (T.group_name, f.group),
                (T.vo, f.vo),
                (T.site, f.site),
                (T.pilot_dn, f.pilot),
            )
            if value is not None
        ]
        if f.states:
            conditions.append(T.state.in_(sorted(s.value for s in f.states)))
        if f.after_id is not None:
            conditions.append(T.id > f.after_id)
        stmt = select(_TASKS).where(*conditions).order_by(T.id).limit(f.limit)
        with self._engine.connect() as conn:
            return [_task(r) for r in conn.execute(stmt).all()]

    def assignment(self, task_id: int, secret: str | None = None) -> Assignment | None:
        task = self.get(task_id)
        return assignment_of(task, self._clock(), secret) if task is not None else None

    def log_tail(self, task_id: int) -> str | None:
        """The log tail its pilot reported for the task's latest finished attempt."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(A.log_tail).where(A.task_id == task_id).order_by(A.attempt.desc()).limit(1)
            ).first()
        return row[0] if row is not None else None

    def accounting(
        self,
        by: AccountingKey,
        *,
        owner: str | None = None,
        group: str | None = None,
        site: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[AccountingTotal]:
        keys = {"owner": A.owner_dn, "group": A.group_name, "site": A.site}
        if by not in keys:
            raise ValueError(f"accounting is summed by owner, group or site, not {by!r}")
        key = keys[by]
        if site is not None:
            site = normalise_site(site)
        conditions: list[ColumnElement[bool]] = [
            column == value
            for column, value in ((A.owner_dn, owner), (A.group_name, group), (A.site, site))
            if value is not None
        ]
        if since is not None:
            conditions.append(A.finished_at >= since)
        if until is not None:
            conditions.append(A.finished_at < until)
        stmt = (
            select(
                key,
                func.count(),
                func.sum(case((A.outcome == "failed", 1), else_=0)),
                func.coalesce(func.sum(A.cpu_s), 0.0),
                func.coalesce(func.sum(A.wall_s), 0.0),
                func.coalesce(func.max(A.max_rss_kb), 0),
            )
            .where(*conditions)
            .group_by(key)
            .order_by(key)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            AccountingTotal(k, int(n), int(failed or 0), float(cpu), float(wall), int(rss))
            for k, n, failed, cpu, wall, rss in rows
        ]

    # --- site mask and owner bans -----------------------------------------------------------------

    def set_site_mask(self, site: str, masked: bool, by: str, reason: str = "") -> None:
        site = normalise_site(site)  # InvalidTask (a ValueError) for a bad name
        reason = free_text(reason[:1000], 1000)
        now = self._clock()
        row = {"site": site, "masked": bool(masked), "reason": reason, "changed_by": by}
        with write_transaction(self._engine) as conn:
            stmt = _dialect_insert(conn)(_MASK).values(**row, changed_at=now)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["site"],
                    set_={**{k: stmt.excluded[k] for k in row if k != "site"}, "changed_at": now},
                )
            )
        self._log(
            queue_event(
                "site.mask" if masked else "site.unmask",
                RULE_REQUEST,
                by,
                detail=f"site {site} {'masked' if masked else 'unmasked'}"
                + (f": {reason}" if reason else ""),
            )
        )

    def masked_sites(self) -> frozenset[str]:
        with self._engine.connect() as conn:
            return frozenset(conn.execute(select(M.site).where(M.masked.is_(True))).scalars())

    def ban_owner(self, dn: str, by: str, reason: str = "") -> None:
        if not isinstance(dn, str) or not dn or len(dn) > 1024:
            raise ValueError("an owner ban is a DN pattern of at most 1024 characters")
        with write_transaction(self._engine) as conn:
            conn.execute(
                _dialect_insert(conn)(_BANS)
                .values(
                    kind="user",
                    pattern=dn,
                    reason=reason or "banned from the task queue",
                    created_at=self._clock(),
                    created_by=by,
                )
                .on_conflict_do_nothing(index_elements=["kind", "pattern"])
            )
        self._log(
            _owner_event(
                "owner.ban", by, dn, f"owner {dn} banned" + (f": {reason}" if reason else "")
            )
        )

    def unban_owner(self, dn: str, by: str) -> bool:
        with write_transaction(self._engine) as conn:
            removed = conn.execute(delete(_BANS).where(B.kind == "user", B.pattern == dn)).rowcount
        self._log(
            _owner_event(
                "owner.unban", by, dn, f"owner {dn} {'unbanned' if removed else 'was not banned'}"
            )
        )
        return bool(removed)


# --- rows and values -------------------------------------------------------------------------------


def _spec_values(spec: TaskSpec) -> dict[str, Any]:
    r, p = spec.requirements, spec.payload
    return {
        "owner_dn": spec.owner,
        "vo": spec.vo,
        "group_name": spec.group,
        "fqans": list(spec.fqans),
        "credential_username": spec.credential_username,
        "credential_name": spec.credential_name,
        "priority": spec.priority,
        "sites_allowed": sorted(r.sites_allowed),
        "sites_banned": sorted(r.sites_banned),
        "platform": r.platform,
        "tags": sorted(r.tags),
        "cpu_time_s": r.cpu_time,
        "memory_mb": r.memory_mb,
        "command": p.command,
        "args": list(p.args),
        "input_files": list(p.input_files),
        "max_wall_s": spec.max_wall_s,
        "max_cpu_s": spec.max_cpu_s,
    }


def _task(row: Row[Any]) -> Task:
    m = row._mapping
    spec = TaskSpec(
        owner=m["owner_dn"],
        vo=m["vo"],
        group=m["group_name"],
        fqans=tuple(m["fqans"]),
        credential_username=m["credential_username"],
        credential_name=m["credential_name"],
        priority=m["priority"],
        requirements=Requirements(
            sites_allowed=frozenset(m["sites_allowed"]),
            sites_banned=frozenset(m["sites_banned"]),
            platform=m["platform"],
            tags=frozenset(m["tags"]),
            cpu_time=m["cpu_time_s"],
            memory_mb=m["memory_mb"],
        ),
        payload=Payload(m["command"], tuple(m["args"]), tuple(m["input_files"])),
        max_wall_s=m["max_wall_s"],
        max_cpu_s=m["max_cpu_s"],
    )
    return Task(
        id=m["id"],
        spec=spec,
        state=TaskState(m["state"]),
        submitted_at=m["submitted_at"],
        attempts=m["attempts"],
        pilot=m["pilot_dn"],
        pilot_id=m["pilot_id"],
        site=m["site"],
        ce=m["ce"],
        matched_at=m["matched_at"],
        started_at=m["started_at"],
        heartbeat_at=m["heartbeat_at"],
        finished_at=m["finished_at"],
        reason=m["reason"],
        secret_digest=m["secret_sha256"],
    )


def _fits(row: Row[Any], caps: PilotCapabilities) -> bool:
    """The requirements `_page` left to Python (as `Requirements.unmet` words them)."""
    allowed = _names(row.sites_allowed)
    if allowed and caps.site not in allowed:
        return False
    if caps.site in _names(row.sites_banned):
        return False
    return caps.tags.issuperset(_names(row.tags))


_NO_NAMES: frozenset[str] = frozenset()


def _name_set(text: str | None) -> frozenset[str]:
    return _NO_NAMES if text is None or text == "[]" else frozenset(json.loads(text))


def _names(text: str | None) -> list[str]:
    """A JSON list of names, read as text; the usual empty list costs no parsing."""
    return [] if text is None or text == "[]" else list(json.loads(text))


def _wall(task: Task, accounting: Accounting | None, end: dt.datetime) -> float:
    """The wall time an attempt used: as reported, else as observed since it started."""
    if accounting is not None:
        return accounting.wall_s
    began = task.started_at or task.matched_at
    return max((end - began).total_seconds(), 0.0) if began is not None else 0.0


def _record_accounting(
    conn: Connection, task: Task, outcome: TaskState, accounting: Accounting, now: dt.datetime
) -> None:
    conn.execute(
        insert(_ACCOUNTING).values(
            task_id=task.id,
            attempt=task.attempts,
            owner_dn=task.spec.owner,
            vo=task.spec.vo,
            group_name=task.spec.group,
            site=task.site or "",
            pilot_dn=task.pilot or "",
            outcome=outcome.value,
            cpu_s=accounting.cpu_s,
            wall_s=accounting.wall_s,
            max_rss_kb=accounting.max_rss_kb,
            exit_code=accounting.exit_code,
            log_tail=accounting.log_tail or None,
            finished_at=now,
        )
    )


def _dialect_insert(conn: Connection) -> Any:
    """INSERT with ON CONFLICT for this connection's dialect (both have the same API)."""
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def _ensure_pairs(conn: Connection, pairs: Iterable[Pair], now: dt.datetime) -> None:
    """A fair-share row for each (group, owner): matching reads the queue through them."""
    rows = [
        {"group_name": g, "owner_dn": o, "used_s": 0.0, "used_at": now, "reserved_s": 0}
        for g, o in sorted(set(pairs))
    ]
    if rows:
        conn.execute(
            _dialect_insert(conn)(_SHARES)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["group_name", "owner_dn"])
        )


def _same_database(audit: AuditSink, engine: Engine) -> bool:
    """Whether `audit` is the audit log of `engine`'s database, so that its events can join
    our transactions."""
    return isinstance(audit, AuditLog) and audit.engine is engine


def _claim_params(caps: PilotCapabilities, now: dt.datetime) -> tuple[str, dict[str, Any]]:
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


def _site_pattern(pattern: str) -> str:
    """A site ban pattern (`bans` kind "site") spelt as `normalise_site` spells site names,
    so that it matches every spelling of the site it names."""
    try:
        return normalise_site(pattern)
    except InvalidTask:
        return pattern


def _match_event(task: Task, caps: PilotCapabilities) -> AuditEvent:
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


def _owner_event(operation: str, by: str, dn: str, detail: str) -> AuditEvent:
    event = queue_event(operation, RULE_REQUEST, by, detail=detail)
    return dataclasses.replace(event, owner_dn=dn)
