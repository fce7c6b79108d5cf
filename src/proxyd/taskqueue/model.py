"""The task queue's values: what a task asks for, what a pilot offers, and the task life cycle.

Everything here is a frozen dataclass or an enum, validated when it is
built, so a backend only stores and finds them. The life cycle is one
explicit table (`TRANSITIONS`); `next_state` is the only way through it,
and an illegal step raises `TaskStateError` naming the state and the
event, as h11 does for its protocol states.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from voms_ext import Fqan, FqanError, parse_fqan

from ..policy import Assignment

__all__ = [
    "ACTIVE",
    "FINAL",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "QUEUED",
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
    "next_state",
]

MIN_PRIORITY = -1_000_000
MAX_PRIORITY = 1_000_000
SYSTEM_ACTOR = "<proxyd>"  # the actor of what proxyd does by itself (the stalled sweep)
_VO = re.compile(r"[A-Za-z0-9_.\-]+")
_NAME_LEN = 255
_DN_LEN = 1024


class TaskQueueError(Exception):
    """A task queue operation that did not happen; the message says why."""


class InvalidTask(TaskQueueError, ValueError):
    """A task specification or pilot description with a bad field (named in the message)."""


class UnknownTask(TaskQueueError, LookupError):
    """No task has this id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"there is no task {task_id}")
        self.task_id = task_id


class NotAssigned(TaskQueueError):
    """A pilot reported on a task that the queue has not matched to it."""

    def __init__(self, task_id: int, pilot: str, holder: str | None) -> None:
        held = f'it is assigned to "{holder}"' if holder else "it is not assigned to any pilot"
        super().__init__(f'task {task_id} is not assigned to "{pilot}": {held}')
        self.task_id = task_id
        self.pilot = pilot


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


def _bad(where: str, message: str) -> InvalidTask:
    return InvalidTask(f"{where}: {message}")


def _name(where: str, value: object, *, length: int = _NAME_LEN) -> str:
    if not isinstance(value, str) or not value or len(value) > length:
        raise _bad(where, f"must be a non-empty string of at most {length} characters")
    return value


def _names(where: str, values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        raise _bad(where, "must be a collection of names, not one string")
    return frozenset(_name(where, v) for v in values)


def _count(where: str, value: object, *, positive: bool = False) -> int:
    if type(value) is not int or value < (1 if positive else 0):
        raise _bad(where, f"must be an int {'> 0' if positive else '>= 0'}, not {value!r}")
    return value


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
            self, "sites_allowed", _names("Requirements.sites_allowed", self.sites_allowed)
        )
        object.__setattr__(
            self, "sites_banned", _names("Requirements.sites_banned", self.sites_banned)
        )
        object.__setattr__(self, "tags", _names("Requirements.tags", self.tags))
        if self.platform is not None:
            _name("Requirements.platform", self.platform, length=64)
        _count("Requirements.cpu_time", self.cpu_time)
        _count("Requirements.memory_mb", self.memory_mb)

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
        _name("Payload.command", self.command, length=4096)
        for where, values in (
            ("Payload.args", self.args),
            ("Payload.input_files", self.input_files),
        ):
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise _bad(where, "must be a sequence of strings")
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
        _name("TaskSpec.owner", self.owner, length=_DN_LEN)
        if not isinstance(self.vo, str) or not _VO.fullmatch(self.vo):
            raise _bad("TaskSpec.vo", f"{self.vo!r} is not a VO name")
        group = _fqan("TaskSpec.group", self.group, self.vo)
        if group.role is not None or group.capability is not None:
            raise _bad("TaskSpec.group", f"{self.group!r} is a group, it has no Role or Capability")
        object.__setattr__(self, "group", str(group))
        if isinstance(self.fqans, str):
            raise _bad("TaskSpec.fqans", "must be a sequence of FQANs, not one string")
        fqans: list[str] = []
        for text in self.fqans:
            fqan = str(_fqan("TaskSpec.fqans", text, self.vo))
            if fqan not in fqans:
                fqans.append(fqan)
        object.__setattr__(self, "fqans", tuple(fqans) or (str(group),))
        _name("TaskSpec.credential_username", self.credential_username)
        _name("TaskSpec.credential_name", self.credential_name)
        if not isinstance(self.payload, Payload):
            raise _bad("TaskSpec.payload", "must be a Payload")
        if not isinstance(self.requirements, Requirements):
            raise _bad("TaskSpec.requirements", "must be a Requirements")
        if type(self.priority) is not int or not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise _bad(
                "TaskSpec.priority",
                f"must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, not {self.priority!r}",
            )
        _count("TaskSpec.max_wall_s", self.max_wall_s, positive=True)
        _count("TaskSpec.max_cpu_s", self.max_cpu_s, positive=True)


def _fqan(where: str, text: object, vo: str) -> Fqan:
    try:
        fqan = parse_fqan(text)  # type: ignore[arg-type]
    except FqanError as exc:
        raise _bad(where, str(exc)) from None
    if fqan.vo != vo:
        raise _bad(where, f"{text!r} is not in VO {vo!r}")
    return fqan


@dataclass(frozen=True)
class PilotCapabilities:
    """What a pilot offers when it asks for work. `pilot_dn` is its authenticated identity."""

    pilot_dn: str
    pilot_id: str
    site: str
    ce: str = ""
    platform: str = ""
    tags: frozenset[str] = frozenset()
    cpu_time_left: int = 0
    memory_mb: int = 0

    def __post_init__(self) -> None:
        _name("PilotCapabilities.pilot_dn", self.pilot_dn, length=_DN_LEN)
        _name("PilotCapabilities.pilot_id", self.pilot_id)
        _name("PilotCapabilities.site", self.site)
        if not isinstance(self.ce, str) or len(self.ce) > _NAME_LEN:
            raise _bad("PilotCapabilities.ce", "must be a string of at most 255 characters")
        if not isinstance(self.platform, str) or len(self.platform) > 64:
            raise _bad("PilotCapabilities.platform", "must be a string of at most 64 characters")
        object.__setattr__(self, "tags", _names("PilotCapabilities.tags", self.tags))
        _count("PilotCapabilities.cpu_time_left", self.cpu_time_left)
        _count("PilotCapabilities.memory_mb", self.memory_mb)


LOG_TAIL_MAX = 16 * 1024


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
            raise _bad("Accounting.log_tail", "must be a string")
        object.__setattr__(self, "log_tail", self.log_tail[-LOG_TAIL_MAX:])
        for name in ("cpu_s", "wall_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise _bad(f"Accounting.{name}", f"must be a number >= 0, not {value!r}")
            object.__setattr__(self, name, float(value))
        _count("Accounting.max_rss_kb", self.max_rss_kb)
        if self.exit_code is not None and type(self.exit_code) is not int:
            raise _bad("Accounting.exit_code", f"must be an int or None, not {self.exit_code!r}")


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
        _count("TaskFilter.limit", self.limit, positive=True)

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


def assignment_of(task: Task, now: dt.datetime) -> Assignment | None:
    """The queue's word to the policy: which pilot holds `task`, and for how much longer.

    None when the task has no pilot (never matched, or queued again). The
    assignment is live only while the task is matched or running; its
    time left is the task's wall-time budget minus the time since start.
    """
    if task.pilot is None:
        return None
    elapsed = now - task.started_at if task.started_at is not None else dt.timedelta(0)
    left = max(dt.timedelta(seconds=task.spec.max_wall_s) - elapsed, dt.timedelta(0))
    return Assignment(
        pilot=task.pilot,
        task_id=task.id,
        owner=task.spec.owner,
        credential_name=task.spec.credential_name,
        live=task.state in ACTIVE and left > dt.timedelta(0),
        time_left=left,
        active=task.state in ACTIVE,
    )
