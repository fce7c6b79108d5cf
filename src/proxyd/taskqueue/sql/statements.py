"""The statement catalogue of the SQL task queue: every statement of the hot paths, built once.

Building a statement is what costs in SQLAlchemy, so the matching paths
only bind parameters to these. Parameters are named `b_*`. What each
dialect's matcher does with them is in `postgres` and `sqlite`.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    column,
    func,
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
from sqlalchemy.sql.elements import BindParameter

from ...store.bans import PATTERNS
from ...store.models import (
    ACTIVE_STATES,
    QUEUED_STATES,
    FairShareRow,
    SiteMaskRow,
    TaskAccountingRow,
    TaskRow,
)
from ..model import TaskState

T = TaskRow.__table__.c
A = TaskAccountingRow.__table__.c
M = SiteMaskRow.__table__.c
F = FairShareRow.__table__.c
TASKS = cast(Table, TaskRow.__table__)
ACCOUNTING = cast(Table, TaskAccountingRow.__table__)
MASK = cast(Table, SiteMaskRow.__table__)
SHARES = cast(Table, FairShareRow.__table__)

FIRST_PAGE = (2**31 - 1, 0)  # a keyset before every task: priorities are far smaller
CANDIDATE_COLUMNS = (
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
CLEARED = {"pilot_dn": None, "pilot_id": None, "site": None, "ce": None, "secret_sha256": None}
CLEARED_TIMES = {"matched_at": None, "started_at": None, "heartbeat_at": None}

_USAGE_COLUMNS = (F.group_name, F.owner_dn, F.used_s, F.used_at, F.reserved_s, F.running)
_NO_USAGE = tuple(null().cast(c.type) for c in _USAGE_COLUMNS[1:])

# The predicate of the partial index ix_tasks_queue, spelt with literals: neither PostgreSQL
# (generic plans) nor SQLite can use a partial index for a predicate with bound parameters.
QUEUED = T.state.in_([literal_column(f"'{s}'") for s in QUEUED_STATES])
# The site limits: a site's active tasks per group (the partial index ix_tasks_active_site).
SITE_LOAD = (
    select(T.group_name, func.count())
    .where(
        T.state.in_([literal_column(f"'{s}'") for s in ACTIVE_STATES]),
        T.site == bindparam("b_site"),
    )
    .group_by(T.group_name)
)

# SQLite: queued tasks of one (group, owner) after a keyset, in matching order, that fit the
# pilot's platform, CPU time and memory (sites and tags are checked in Python).
_AFTER_PRIORITY: BindParameter[Any] = bindparam("b_ap")
PAGE_ONE_PAIR = (
    select(*CANDIDATE_COLUMNS)
    .where(
        QUEUED,
        T.group_name == bindparam("b_group"),
        T.owner_dn == bindparam("b_owner"),
        or_(
            T.priority < _AFTER_PRIORITY,
            and_(T.priority == _AFTER_PRIORITY, T.id > bindparam("b_aid")),
        ),
        or_(T.platform.is_(None), T.platform == bindparam("b_platform")),
        T.cpu_time_s <= bindparam("b_cpu"),
        T.memory_mb <= bindparam("b_memory"),
    )
    .order_by(T.priority.desc(), T.id)
    .limit(bindparam("b_limit", type_=Integer))
)
# What matching reads before the candidates, in one round trip: every (group, owner) with
# its usage, the ban patterns (`store.bans`, the table's one reader) and the masked sites.
_BAN_PATTERNS = PATTERNS.subquery("ban_patterns")
SITUATION = union_all(
    select(literal("pair", String).label("kind"), *_USAGE_COLUMNS),
    select(_BAN_PATTERNS.c.kind, _BAN_PATTERNS.c.pattern, *_NO_USAGE),
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
CLAIM = (
    update(TASKS)
    .where(T.id == bindparam("b_id"), T.state.in_(QUEUED_STATES))
    .values(**_CLAIM_VALUES)
    .returning(*TASKS.c)
)
RESERVE = (
    update(SHARES)
    .where(F.group_name == bindparam("b_group"), F.owner_dn == bindparam("b_owner"))
    .values(reserved_s=F.reserved_s + bindparam("b_wall", type_=Integer), running=F.running + 1)
)

# PostgreSQL finds, claims and reserves in one statement, given the (group, owner) pairs that
# may run work with their fair-share ranks (`fairshare.ranking`, computed in Python):
#   candidates  the first `b_limit` queued tasks of every pair that the pilot can run, all
#               requirements checked in SQL (ix_tasks_queue), read without locks;
#   pick        the best of them in `fairshare.match_key` order (below: priority descending,
#               then the pair's two ranks, then the id) that is still queued and not locked
#               by another pilot (FOR UPDATE SKIP LOCKED: the LIMIT stops after one lock, so
#               only the task taken is locked);
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
        QUEUED,
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
        # As `Candidate.fits` does; most tasks have no site or tag rules, and "[]" needs no
        # parsing.
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
# `fairshare.match_key` in SQL: (-priority, group ratio, owner usage, id) ascending.
_BEST_FIRST = select(*_C).order_by(_C.priority.desc(), _C.gr, _C.ou, _C.id).subquery("best_first")
_LOCKED = (
    select(T.id)
    .where(T.id == _BEST_FIRST.c.id, QUEUED)
    .with_for_update(skip_locked=True)
    .lateral("locked")
)
# Candidates best first, each locked only when the one before could not be: the LIMIT stops
# at the first lock taken (the outer ORDER BY is the order the sorted subquery delivers).
_PICK = (
    select(_LOCKED.c.id)
    .select_from(_BEST_FIRST.join(_LOCKED, true()))
    .order_by(_BEST_FIRST.c.priority.desc(), _BEST_FIRST.c.gr, _BEST_FIRST.c.ou, _BEST_FIRST.c.id)
    .limit(1)
    .cte("pick")
)
_CLAIMED = (
    update(TASKS)
    .where(T.id == _PICK.c.id)
    .values(**_CLAIM_VALUES)
    .returning(*TASKS.c)
    .cte("claimed")
)
_RESERVED = (
    update(SHARES)
    .where(F.group_name == _CLAIMED.c.group_name, F.owner_dn == _CLAIMED.c.owner_dn)
    .values(reserved_s=F.reserved_s + _CLAIMED.c.max_wall_s, running=F.running + 1)
    .cte("reserved")
)
_SEEN = select(func.count().label("seen")).select_from(_CANDIDATES).subquery("seen")
FIND_CLAIM_AND_RESERVE = (
    select(_SEEN.c.seen, *_CLAIMED.c)
    .select_from(_SEEN.outerjoin(_CLAIMED, true()))
    .add_cte(_RESERVED)
)

# A batch of matches (PostgreSQL) reads the queue once for all its requests: pages of every
# pair, whatever the pilot (all requirements are checked in Python, `Candidate.fits`), no
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
    select(*CANDIDATE_COLUMNS)
    .where(
        QUEUED,
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
PAGES_FOR_ANY_PILOT = select(*_ANY_PILOT.c).select_from(_PAGE_PAIRS.join(_ANY_PILOT, true()))
_LISTED = (
    func.unnest(bindparam("b_ids", type_=pg.ARRAY(Integer)))
    .table_valued("id", with_ordinality="ord")
    .render_derived(name="listed")
)
_LISTED_IN_ORDER = select(*_LISTED.c).order_by(_LISTED.c.ord).subquery("in_order")
_LISTED_LOCK = (
    select(T.id)
    .where(T.id == _LISTED_IN_ORDER.c.id, QUEUED)
    .with_for_update(skip_locked=True)
    .lateral("locked")
)
_PICK_LISTED = (
    select(_LISTED_LOCK.c.id)
    .select_from(_LISTED_IN_ORDER.join(_LISTED_LOCK, true()))
    .order_by(_LISTED_IN_ORDER.c.ord)
    .limit(1)
    .cte("pick")
)
CLAIM_LISTED = (
    update(TASKS).where(T.id == _PICK_LISTED.c.id).values(**_CLAIM_VALUES).returning(*TASKS.c)
)
# A batch of matches reserves at the end, all pairs at once, locking their rows in one order
# (as `usage.charge` does), so that batches of several processes cannot deadlock on them.
_RESERVATIONS = (
    func.json_to_recordset(cast_(bindparam("b_reserve", type_=Text), JSON))
    .table_valued(
        column("g", String), column("o", String), column("w", Integer), column("n", Integer)
    )
    .render_derived(name="reservations", with_types=True)
)
_IN_ORDER = (
    select(F.id)
    .where(tuple_(F.group_name, F.owner_dn).in_(select(_RESERVATIONS.c.g, _RESERVATIONS.c.o)))
    .order_by(F.group_name, F.owner_dn)
    .with_for_update()
    .cte("in_order")
)
RESERVE_MANY = (
    update(SHARES)
    .where(
        F.id.in_(select(_IN_ORDER.c.id)),
        F.group_name == _RESERVATIONS.c.g,
        F.owner_dn == _RESERVATIONS.c.o,
    )
    .values(reserved_s=F.reserved_s + _RESERVATIONS.c.w, running=F.running + _RESERVATIONS.c.n)
)
