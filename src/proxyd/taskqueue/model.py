"""The task queue's values: what a task asks for, what a pilot offers, and the task life cycle.

Everything here is a frozen dataclass or an enum, validated when it is
built (by `validation`, whose bounds and checks this module re-exports),
so a backend only stores and finds them. The life cycle is one explicit
table (`TRANSITIONS`); `next_state` is the only way through it, and an
illegal step raises `TaskStateError` naming the state and the event, as
h11 does for its protocol states. The errors live in `errors`, and are
re-exported here too.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..policy import Assignment
from .errors import InvalidTask, NotAssigned, TaskQueueError, UnknownTask
from .validation import (
    ARG_LEN,
    DN_LEN,
    EXIT_CODE_RANGE,
    LIST_MAX,
    LOG_TAIL_MAX,
    MAX_CPU_S,
    MAX_MEMORY_MB,
    MAX_PRIORITY,
    MAX_RSS_KB,
    MAX_WALL_S,
    MIN_PRIORITY,
    NAME_LEN,
    REASON_MAX,
    SITE_NAME_LEN,
    VO_NAME,
    checked_count,
    checked_fqan,
    checked_name,
    checked_names,
    checked_sites,
    free_text,
    invalid,
    normalise_site,
    storable,
    text_field,
)

__all__ = [
    "ACTIVE",
    "EXIT_CODE_RANGE",
    "FINAL",
    "LIST_MAX",
    "LOG_TAIL_MAX",
    "MAX_CPU_S",
    "MAX_MEMORY_MB",
    "MAX_PRIORITY",
    "MAX_RSS_KB",
    "MAX_WALL_S",
    "MIN_PRIORITY",
    "QUEUED",
    "REASON_MAX",
    "SITE_NAME_LEN",
    "SYSTEM_ACTOR",
    "TRANSITIONS",
    "Accounting",
    "AccountingTotal",
    "InvalidTask",
    "NotAssigned",
    "Payload",
    "PilotCapabilities",
    "Requirements",
    "Task",
    "TaskEvent",
    "TaskFilter",
    "TaskQueueError",
    "TaskSpec",
    "TaskState",
    "TaskStateError",
    "UnknownTask",
    "assignment_of",
    "free_text",
    "new_assignment_secret",
    "next_state",
    "normalise_site",
    "retry_outcome",
    "secret_digest",
    "secret_matches",
    "text_field",
]

SYSTEM_ACTOR = "<proxyd>"  # the actor of what proxyd does by itself (the stalled sweep)


class TaskState(enum.StrEnum):
    WAITING = "waiting"  # submitted, never matched
    MATCHED = "matched"  # claimed by a pilot, payload not started
    RUNNING = "running"  # the pilot started the payload
    DONE = "done"  # the pilot reported success
    FAILED = "failed"  # the pilot reported failure
    STALLED = "stalled"  # no heartbeat within the timeout
    RESCHEDULED = "rescheduled"  # queued again after an earlier attempt
    CANCELLED = "cancelled"  # withdrawn by its owner or an operator


class TaskEvent(enum.StrEnum):
    MATCH = "match"
    START = "start"
    HEARTBEAT = "heartbeat"
    COMPLETE = "complete"
    FAIL = "fail"
    STALL = "stall"
    RESCHEDULE = "reschedule"
    CANCEL = "cancel"


_S, _E = TaskState, TaskEvent
# The whole life cycle. Anything not listed is illegal and raises TaskStateError.
TRANSITIONS: Mapping[TaskState, Mapping[TaskEvent, TaskState]] = {
    _S.WAITING: {_E.MATCH: _S.MATCHED, _E.CANCEL: _S.CANCELLED},
    _S.RESCHEDULED: {_E.MATCH: _S.MATCHED, _E.CANCEL: _S.CANCELLED},
    _S.MATCHED: {
        _E.START: _S.RUNNING,
        _E.HEARTBEAT: _S.MATCHED,
        _E.FAIL: _S.FAILED,
        _E.STALL: _S.STALLED,
        _E.RESCHEDULE: _S.RESCHEDULED,
        _E.CANCEL: _S.CANCELLED,
    },
    _S.RUNNING: {
        _E.HEARTBEAT: _S.RUNNING,
        _E.COMPLETE: _S.DONE,
        _E.FAIL: _S.FAILED,
        _E.STALL: _S.STALLED,
        _E.RESCHEDULE: _S.RESCHEDULED,
        _E.CANCEL: _S.CANCELLED,
    },
    # A stalled pilot may still report the end of its payload (late, no proxy in between).
    _S.STALLED: {
        _E.COMPLETE: _S.DONE,
        _E.FAIL: _S.FAILED,
        _E.RESCHEDULE: _S.RESCHEDULED,
        _E.CANCEL: _S.CANCELLED,
    },
    _S.FAILED: {_E.RESCHEDULE: _S.RESCHEDULED},
    _S.DONE: {},
    _S.CANCELLED: {},
}
QUEUED = frozenset({TaskState.WAITING, TaskState.RESCHEDULED})  # eligible for matching
ACTIVE = frozenset({TaskState.MATCHED, TaskState.RUNNING})  # holds a pilot; assignment live
FINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


class TaskStateError(TaskQueueError):
    """An event that the task's current state does not allow."""

    def __init__(self, state: TaskState, event: TaskEvent, task_id: int | None = None) -> None:
        allowed = ", ".join(e.value for e in TRANSITIONS[state]) or "none"
        which = f"task {task_id}" if task_id is not None else "a task"
        super().__init__(
            f"{which} in state {state.value!r} cannot {event.value!r} "
            f"(events allowed in {state.value!r}: {allowed})"
        )
        self.state = state
        self.event = event
        self.task_id = task_id


def next_state(state: TaskState, event: TaskEvent, task_id: int | None = None) -> TaskState:
    """The state after `event`, or TaskStateError naming the state and the event."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise TaskStateError(state, event, task_id) from None


def retry_outcome(attempts: int, max_attempts: int | None) -> TaskState | None:
    """What becomes of a task whose attempt number `attempts` stalled or failed: queued
    again (RESCHEDULED) while it has attempts left, FAILED on the last one; None when the
    queue does not reschedule by itself (`max_attempts` None)."""
    if max_attempts is None:
        return None
    return TaskState.RESCHEDULED if attempts < max_attempts else TaskState.FAILED


# --- the assignment secret: which pilot instance holds a task ------------------------------------


def new_assignment_secret() -> tuple[str, str]:
    """A fresh secret for one match, and the digest of it the queue stores."""
    secret = secrets.token_urlsafe(32)
    return secret, secret_digest(secret)


def secret_digest(secret: str) -> str:
    """The SHA-256 of an assignment secret, hex: all the queue keeps of it."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def secret_matches(stored_digest: str | None, presented: str | None) -> bool:
    """Whether `presented` is the secret whose digest the queue stored (constant time)."""
    if stored_digest is None or presented is None:
        return False
    return hmac.compare_digest(secret_digest(presented), stored_digest)


@dataclass(frozen=True)
class Requirements:
    """What a task needs from a pilot. Empty means "anything"."""

    sites_allowed: frozenset[str] = frozenset()  # empty: every site
    sites_banned: frozenset[str] = frozenset()
    platform: str | None = None  # e.g. "EL9-x86_64"; None: any platform
    tags: frozenset[str] = frozenset()  # all must be among the pilot's tags
    cpu_time: int = 0  # CPU seconds needed; the pilot must have that much left
    memory_mb: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sites_allowed", checked_sites("Requirements.sites_allowed", self.sites_allowed)
        )
        object.__setattr__(
            self, "sites_banned", checked_sites("Requirements.sites_banned", self.sites_banned)
        )
        object.__setattr__(self, "tags", checked_names("Requirements.tags", self.tags))
        if self.platform is not None:
            checked_name("Requirements.platform", self.platform, length=64, plain=True)
        checked_count("Requirements.cpu_time", self.cpu_time, maximum=MAX_CPU_S)
        checked_count("Requirements.memory_mb", self.memory_mb, maximum=MAX_MEMORY_MB)

    def unmet(self, pilot: PilotCapabilities) -> str | None:
        """The first requirement `pilot` does not meet, as a sentence; None if it meets them all."""
        if self.sites_allowed and pilot.site not in self.sites_allowed:
            return f"site {pilot.site!r} is not among the allowed sites"
        if pilot.site in self.sites_banned:
            return f"site {pilot.site!r} is banned by the task"
        if self.platform is not None and self.platform != pilot.platform:
            return f"platform {pilot.platform!r} is not {self.platform!r}"
        missing = self.tags - pilot.tags
        if missing:
            return f"the pilot lacks the tags {', '.join(sorted(missing))}"
        if self.cpu_time > pilot.cpu_time_left:
            return f"needs {self.cpu_time} s of CPU, the pilot has {pilot.cpu_time_left} s left"
        if self.memory_mb > pilot.memory_mb:
            return f"needs {self.memory_mb} MB of memory, the pilot has {pilot.memory_mb} MB"
        return None


@dataclass(frozen=True)
class Payload:
    """What the pilot runs: a command, its arguments, and the files it needs."""

    command: str
    args: tuple[str, ...] = ()
    input_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checked_name("Payload.command", self.command, length=ARG_LEN)
        for where, values in (
            ("Payload.args", self.args),
            ("Payload.input_files", self.input_files),
        ):
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise invalid(where, "must be a sequence of strings")
            if len(values) > LIST_MAX:
                raise invalid(where, f"must have at most {LIST_MAX} entries, not {len(values)}")
            for v in values:
                if len(v) > ARG_LEN:
                    raise invalid(where, f"an entry must be at most {ARG_LEN} characters")
                storable(where, v)
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "input_files", tuple(self.input_files))


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """A task as its owner submits it.

    `group` is the VO group it is accounted to (fair share); `fqans` are
    the attributes its payload proxy carries, normalised to the short form
    (default: the group). The credential is the owner's stored credential
    `(credential_username, credential_name)`, the one a pilot obtains a
    limited proxy of while the task is assigned to it.
    """

    owner: str
    vo: str
    group: str
    credential_username: str
    payload: Payload
    fqans: tuple[str, ...] = ()
    credential_name: str = "default"
    priority: int = 0
    requirements: Requirements = field(default_factory=Requirements)
    max_wall_s: int = 12 * 3600
    max_cpu_s: int = 12 * 3600

    def __post_init__(self) -> None:
        checked_name("TaskSpec.owner", self.owner, length=DN_LEN)
        if not isinstance(self.vo, str) or not VO_NAME.fullmatch(self.vo):
            raise invalid("TaskSpec.vo", f"{self.vo!r} is not a VO name")
        group = checked_fqan("TaskSpec.group", self.group, self.vo)
        if group.role is not None or group.capability is not None:
            raise invalid(
                "TaskSpec.group", f"{self.group!r} is a group, it has no Role or Capability"
            )
        object.__setattr__(self, "group", str(group))
        if isinstance(self.fqans, str):
            raise invalid("TaskSpec.fqans", "must be a sequence of FQANs, not one string")
        if len(self.fqans) > LIST_MAX:
            raise invalid("TaskSpec.fqans", f"must have at most {LIST_MAX} entries")
        fqans: list[str] = []
        for text in self.fqans:
            fqan = str(checked_fqan("TaskSpec.fqans", text, self.vo))
            if fqan not in fqans:
                fqans.append(fqan)
        object.__setattr__(self, "fqans", tuple(fqans) or (str(group),))
        checked_name("TaskSpec.credential_username", self.credential_username)
        checked_name("TaskSpec.credential_name", self.credential_name)
        if not isinstance(self.payload, Payload):
            raise invalid("TaskSpec.payload", "must be a Payload")
        if not isinstance(self.requirements, Requirements):
            raise invalid("TaskSpec.requirements", "must be a Requirements")
        if type(self.priority) is not int or not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise invalid(
                "TaskSpec.priority",
                f"must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, not {self.priority!r}",
            )
        checked_count("TaskSpec.max_wall_s", self.max_wall_s, positive=True, maximum=MAX_WALL_S)
        checked_count("TaskSpec.max_cpu_s", self.max_cpu_s, positive=True, maximum=MAX_CPU_S)


@dataclass(frozen=True)
class PilotCapabilities:
    """What a pilot offers when it asks for work. `pilot_dn` is its authenticated identity;
    `site` is normalised (`normalise_site`)."""

    pilot_dn: str
    pilot_id: str
    site: str
    ce: str = ""
    platform: str = ""
    tags: frozenset[str] = frozenset()
    cpu_time_left: int = 0
    memory_mb: int = 0

    def __post_init__(self) -> None:
        checked_name("PilotCapabilities.pilot_dn", self.pilot_dn, length=DN_LEN)
        checked_name("PilotCapabilities.pilot_id", self.pilot_id, plain=True)
        object.__setattr__(self, "site", normalise_site(self.site, "PilotCapabilities.site"))
        if not isinstance(self.ce, str) or len(self.ce) > NAME_LEN:
            raise invalid("PilotCapabilities.ce", "must be a string of at most 255 characters")
        if self.ce:
            checked_name("PilotCapabilities.ce", self.ce, plain=True)
        if not isinstance(self.platform, str) or len(self.platform) > 64:
            raise invalid("PilotCapabilities.platform", "must be a string of at most 64 characters")
        if self.platform:
            checked_name("PilotCapabilities.platform", self.platform, length=64, plain=True)
        object.__setattr__(self, "tags", checked_names("PilotCapabilities.tags", self.tags))
        checked_count("PilotCapabilities.cpu_time_left", self.cpu_time_left, maximum=MAX_CPU_S)
        checked_count("PilotCapabilities.memory_mb", self.memory_mb, maximum=MAX_MEMORY_MB)


@dataclass(frozen=True)
class Accounting:
    """What one attempt of a task used, as its pilot measured it."""

    cpu_s: float
    wall_s: float
    max_rss_kb: int = 0
    exit_code: int | None = None
    log_tail: str = ""  # the end of the payload's output, at most LOG_TAIL_MAX characters

    def __post_init__(self) -> None:
        if not isinstance(self.log_tail, str):
            raise invalid("Accounting.log_tail", "must be a string")
        if len(self.log_tail) > LOG_TAIL_MAX:
            raise invalid("Accounting.log_tail", f"must be at most {LOG_TAIL_MAX} characters")
        object.__setattr__(self, "log_tail", free_text(self.log_tail, LOG_TAIL_MAX))
        for name, maximum in (("cpu_s", MAX_CPU_S), ("wall_s", MAX_WALL_S)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= maximum  # NaN and infinities fail too
            ):
                raise invalid(f"Accounting.{name}", f"must be a number from 0 to {maximum}")
            object.__setattr__(self, name, float(value))
        checked_count("Accounting.max_rss_kb", self.max_rss_kb, maximum=MAX_RSS_KB)
        low, high = EXIT_CODE_RANGE
        if self.exit_code is not None and (
            type(self.exit_code) is not int or not low <= self.exit_code <= high
        ):
            raise invalid("Accounting.exit_code", f"must be an int from {low} to {high} or None")


@dataclass(frozen=True)
class AccountingTotal:
    """Accounting summed over the attempts that share `key` (an owner, group or site)."""

    key: str
    attempts: int
    failed: int
    cpu_s: float
    wall_s: float
    max_rss_kb: int


@dataclass(frozen=True)
class Task:
    """A task as the queue holds it. `pilot` is the DN of the pilot it is or was matched to."""

    id: int
    spec: TaskSpec
    state: TaskState
    submitted_at: dt.datetime
    attempts: int = 0  # how many times it has been matched
    pilot: str | None = None
    pilot_id: str | None = None
    site: str | None = None
    ce: str | None = None
    matched_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    reason: str | None = None
    # The SHA-256 of the current attempt's assignment secret (`new_assignment_secret`): the
    # pilot instance that presents the secret holds the task, not a sibling sharing its DN.
    secret_digest: str | None = field(default=None, repr=False)
    # The secret itself, only on the Task that `match` returns (given to that pilot once).
    assignment_secret: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks `TaskQueue.query` returns: all given fields must match; pages by id."""

    owner: str | None = None
    group: str | None = None
    vo: str | None = None
    states: frozenset[TaskState] = frozenset()  # empty: any state
    site: str | None = None
    pilot: str | None = None
    after_id: int | None = None  # the last id of the previous page
    limit: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", frozenset(TaskState(s) for s in self.states))
        checked_count("TaskFilter.limit", self.limit, positive=True, maximum=10_000)
        if self.site is not None:
            object.__setattr__(self, "site", normalise_site(self.site, "TaskFilter.site"))
        for where, value in (
            ("TaskFilter.owner", self.owner),
            ("TaskFilter.group", self.group),
            ("TaskFilter.vo", self.vo),
            ("TaskFilter.pilot", self.pilot),
        ):
            if value is not None:
                checked_name(where, value, length=DN_LEN)
        if self.after_id is not None:
            checked_count("TaskFilter.after_id", self.after_id, maximum=2**63 - 1)

    def matches(self, task: Task) -> bool:
        """The filter as a predicate (for backends that filter in Python)."""
        return (
            (self.owner is None or task.spec.owner == self.owner)
            and (self.group is None or task.spec.group == self.group)
            and (self.vo is None or task.spec.vo == self.vo)
            and (not self.states or task.state in self.states)
            and (self.site is None or task.site == self.site)
            and (self.pilot is None or task.pilot == self.pilot)
            and (self.after_id is None or task.id > self.after_id)
        )


def assignment_of(task: Task, now: dt.datetime, secret: str | None = None) -> Assignment | None:
    """The queue's word to the policy: which pilot holds `task`, and for how much longer.

    None when the task has no pilot (never matched, or queued again). The
    assignment is live only while the task is matched or running; its time
    left is the task's wall-time budget minus the time since the **match**
    (I2/I4: a pilot that never starts the payload, heartbeats or not, cannot
    stretch it; a task with no match time has none left). `secret` is what
    the asking pilot presented: `instance_ok` says whether it is the secret
    of this attempt (the pilot instance the task was matched to).
    """
    if task.pilot is None:
        return None
    if task.matched_at is None:
        left = dt.timedelta(0)
    else:
        elapsed = max(now - task.matched_at, dt.timedelta(0))
        left = max(dt.timedelta(seconds=task.spec.max_wall_s) - elapsed, dt.timedelta(0))
    return Assignment(
        pilot=task.pilot,
        task_id=task.id,
        owner=task.spec.owner,
        credential_name=task.spec.credential_name,
        live=task.state in ACTIVE and left > dt.timedelta(0),
        time_left=left,
        active=task.state in ACTIVE,
        instance_ok=secret_matches(task.secret_digest, secret),
        attempt=task.attempts,
    )
