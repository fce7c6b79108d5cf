"""`[taskqueue.limits]`: how much one owner, one site and one priority may take of the queue.

Plain values, read by two parts: the matcher (`proxyd.taskqueue`) honours
the running limits, and policy (`policy.decide`, `task_submit`) refuses a
priority outside the allowed range and an owner whose queue is full. The
module sits outside the `taskqueue` package so that `config` can import it
(the package imports `policy`, which imports `config`).

Limits count **active** tasks (matched or running: a task holds its pilot's
slot from the match). A limit left out is no limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voms_ext import FqanError, normalise_fqan

__all__ = ["LimitsError", "SiteLimits", "TaskLimits", "parse_limits"]

_MAX_COUNT = 10**9  # far beyond any queue, far within the database's integers
_PRIORITY = 1_000_000  # taskqueue.validation.MAX_PRIORITY (not imported: see the docstring)
ANY_FQAN = "*"  # the priority range of tasks none of whose FQANs is listed


class LimitsError(ValueError):
    """A `[taskqueue.limits]` value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class SiteLimits:
    """The most active tasks at one site: in total, and per task group (FQAN)."""

    max_running: int | None = None
    max_running_per_group: Mapping[str, int] = field(default_factory=dict)

    def full(self, running: int) -> bool:
        """Whether the site takes no task at all, with `running` active there."""
        return self.max_running is not None and running >= self.max_running

    def group_full(self, group: str, group_running: Mapping[str, int]) -> bool:
        cap = self.max_running_per_group.get(group)
        return cap is not None and group_running.get(group, 0) >= cap


@dataclass(frozen=True)
class TaskLimits:
    """Every limit of `[taskqueue.limits]`; the default limits nothing."""

    max_running_per_owner: int | None = None
    max_queued_per_owner: int | None = None
    sites: Mapping[str, SiteLimits] = field(default_factory=dict)  # normalised site names
    priority: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # FQAN or "*"

    def __post_init__(self) -> None:
        # Names spelt as the queue spells them, however the caller wrote them.
        if self.sites:
            from .taskqueue.validation import normalise_site  # the package imports config

            sites = {
                normalise_site(name, "TaskLimits.sites"): dataclasses.replace(
                    limits,
                    max_running_per_group={
                        _fqan("TaskLimits.sites", g): n
                        for g, n in limits.max_running_per_group.items()
                    },
                )
                for name, limits in self.sites.items()
            }
            object.__setattr__(self, "sites", sites)
        if self.priority:
            priority = {
                k if k == ANY_FQAN else _fqan("TaskLimits.priority", k): v
                for k, v in self.priority.items()
            }
            object.__setattr__(self, "priority", priority)

    @property
    def running_limited(self) -> bool:
        """Whether the matcher has anything to count."""
        return self.max_running_per_owner is not None or bool(self.sites)

    def priority_range(self, fqans: Iterable[str]) -> tuple[int, int] | None:
        """The priorities a task with these (normalised) FQANs may have: the widest range of
        those listed, else the "*" range; None when nothing limits them."""
        ranges = [self.priority[f] for f in fqans if f in self.priority]
        if not ranges:
            return self.priority.get(ANY_FQAN)
        return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise LimitsError(f"{where} must be an integer from 0 to {_MAX_COUNT}, got {value!r}")
    return value


def _fqan(where: str, text: Any) -> str:
    try:
        return str(normalise_fqan(text))
    except (FqanError, TypeError, ValueError) as exc:
        raise LimitsError(f"{where}: {text!r} is not an FQAN ({exc})") from None


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise LimitsError(f"{where} must be a table, got {value!r}")
    return value


def _known(where: str, table: Mapping[str, Any], keys: set[str]) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise LimitsError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known keys are "
            f"{', '.join(sorted(keys))}"
        )


def parse_limits(where: str, table: Mapping[str, Any]) -> TaskLimits:
    """`[taskqueue.limits]` as TaskLimits; `where` names the table in errors (file and
    section). LimitsError says which key is wrong and why."""
    from .taskqueue.validation import normalise_site  # the package imports config: lazily

    _known(where, table, {"max_running_per_owner", "max_queued_per_owner", "sites", "priority"})

    def optional(key: str) -> int | None:
        return _count(f"{where} {key}", table[key]) if key in table else None

    sites: dict[str, SiteLimits] = {}
    for name, entry in _table(f"{where} sites", table.get("sites", {})).items():
        at = f"{where} sites.{name!r}"
        try:
            site = normalise_site(name, "site")
        except ValueError as exc:
            raise LimitsError(f"{at}: {exc}") from None
        entry = _table(at, entry)
        _known(at, entry, {"max_running", "max_running_per_group"})
        groups = {
            _fqan(f"{at} max_running_per_group", g): _count(f"{at} max_running_per_group.{g}", n)
            for g, n in _table(
                f"{at} max_running_per_group", entry.get("max_running_per_group", {})
            ).items()
        }
        if site in sites:
            raise LimitsError(f"{at}: another spelling of site {site!r} is listed already")
        running = entry.get("max_running")
        sites[site] = SiteLimits(
            None if running is None else _count(f"{at} max_running", running), groups
        )
    priority: dict[str, tuple[int, int]] = {}
    for name, bounds in _table(f"{where} priority", table.get("priority", {})).items():
        at = f"{where} priority.{name!r}"
        key = ANY_FQAN if name == ANY_FQAN else _fqan(f"{where} priority", name)
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(type(b) is int and -_PRIORITY <= b <= _PRIORITY for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise LimitsError(
                f"{at} must be [lowest, highest]: two integers from {-_PRIORITY} to "
                f"{_PRIORITY}, lowest first, got {bounds!r}"
            )
        priority[key] = (bounds[0], bounds[1])
    return TaskLimits(
        max_running_per_owner=optional("max_running_per_owner"),
        max_queued_per_owner=optional("max_queued_per_owner"),
        sites=sites,
        priority=priority,
    )
