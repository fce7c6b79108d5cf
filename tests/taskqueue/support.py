"""Helpers for the task queue tests: a settable clock, an audit list, specs and pilots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxyd.audit import AuditEvent
from proxyd.taskqueue import Payload, PilotCapabilities, Requirements, TaskQueue, TaskSpec

START = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
OTHER_PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=other pilot"


@dataclass
class Clock:
    now: dt.datetime = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class ListAudit:
    """An audit sink that keeps events in a list (for the in-memory backend)."""

    events: list[AuditEvent] = field(default_factory=list)

    def append_many(self, events: Iterable[AuditEvent]) -> None:
        self.events.extend(events)


@dataclass
class Harness:
    """A queue under test, its clock, and its audit events of one operation (oldest first)."""

    name: str
    queue: TaskQueue
    clock: Clock
    events: Callable[[str], list[AuditEvent]]


def owner_dn(name: str) -> str:
    return f"/C=XX/O=proxyd dev/OU=Users/CN={name}"


def spec(
    owner: str = "alice",
    *,
    priority: int = 0,
    group: str = "/dteam",
    max_wall_s: int = 3600,
    fqans: tuple[str, ...] = (),
    **requirements: object,
) -> TaskSpec:
    return TaskSpec(
        owner=owner_dn(owner),
        vo="dteam",
        group=group,
        fqans=fqans,
        credential_username=owner,
        priority=priority,
        requirements=Requirements(**requirements),  # type: ignore[arg-type]
        payload=Payload("/bin/echo", ("hello",), ("lfn:/grid/dteam/in.dat",)),
        max_wall_s=max_wall_s,
    )


def pilot(
    site: str = "SITE-A", *, dn: str = PILOT, pilot_id: str = "pilot-1", **offers: object
) -> PilotCapabilities:
    values: dict[str, object] = {
        "platform": "EL9-x86_64",
        "tags": frozenset({"cvmfs"}),
        "cpu_time_left": 86400,
        "memory_mb": 4096,
        "ce": "ce.site-a.example",
    }
    values.update(offers)
    return PilotCapabilities(dn, pilot_id, site, **values)  # type: ignore[arg-type]
