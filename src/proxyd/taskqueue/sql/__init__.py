"""The default task queue: SQLAlchemy Core on SQLite or PostgreSQL (backend name "sql").

Every change is one write transaction (`store.db.write_transaction`):
``BEGIN IMMEDIATE`` on SQLite, so one writer at a time; READ COMMITTED
with row locks on PostgreSQL. The change's audit events, after those of
the decision that led to it (`decided`), commit with it or not at all (I6,
`writer`).

The package, by what a grid operator would look for:

| module | what |
| --- | --- |
| `queue` | `SqlTaskQueue`: submission, owner bans, the reads; puts the rest together |
| `matcher` | matching, alone or in batches (`store.batching.LeaderBatcher`) |
| `situation` | what both matchers share: usage, bans, masks, limits, the scan in fair-share order |
| `postgres` | the PostgreSQL matcher (one statement; FOR UPDATE SKIP LOCKED) |
| `sqlite` | the SQLite matcher (pages per owner; BEGIN IMMEDIATE) |
| `transitions` | the life cycle: pilot reports, reschedule, cancel; retries of failed attempts |
| `stalled` | the sweep of tasks whose pilot went silent (retried up to `max_attempts`) |
| `sites` | the site mask |
| `usage` | the `fair_share` table: reservations and used wall time |
| `writer` | write transactions and their audit events (I6) |
| `statements` | the statement catalogue of the hot paths, built once |
| `rows` | task rows and `model` values, both ways |

See docs/taskqueue.md for how matching finds the task.
"""

from __future__ import annotations

from .queue import SqlTaskQueue

__all__ = ["SqlTaskQueue"]
