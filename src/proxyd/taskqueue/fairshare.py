"""Fair share between groups and owners: pure functions, shared by every backend.

Usage is counted in wall-clock seconds per (group, owner):

- finished work: the wall time each attempt used (as its pilot reported
  it, else as the queue observed it), decaying with a half-life, so last
  month's burst does not weigh on today;
- work in progress: a matched or running task is charged its requested
  `max_wall_s` until it ends, so a burst of matches spreads over owners
  before anything has finished.

A waiting task is ranked by `match_key`: its priority first, then its
group's usage divided by the group's share, then its owner's usage within
the group, then submission order (the task id). The smallest key wins.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from voms_ext import FqanError, normalise_fqan

from .model import InvalidTask

__all__ = ["FairShare", "PairUsage", "match_key", "ranking"]

Pair = tuple[str, str]  # (group, owner)


@dataclass(frozen=True)
class FairShare:
    """Shares per group (default `default_share` each) and how fast usage is forgotten."""

    shares: Mapping[str, float] = field(default_factory=dict)
    default_share: float = 1.0
    half_life: dt.timedelta = dt.timedelta(hours=24)

    def __post_init__(self) -> None:
        normalised: dict[str, float] = {}
        for group, share in self.shares.items():
            try:
                key = normalise_fqan(group)
            except FqanError as exc:
                raise InvalidTask(f"FairShare.shares: {exc}") from None
            normalised[key] = _positive(f"FairShare.shares[{group!r}]", share)
        object.__setattr__(self, "shares", normalised)
        _positive("FairShare.default_share", self.default_share)
        if self.half_life <= dt.timedelta(0):
            raise InvalidTask("FairShare.half_life: must be positive")

    def share(self, group: str) -> float:
        return self.shares.get(group, self.default_share)

    def decay(self, used_s: float, since: dt.datetime, now: dt.datetime) -> float:
        """`used_s` as counted at `since`, decayed to `now`."""
        elapsed = (now - since) / self.half_life
        return used_s * math.pow(0.5, elapsed) if elapsed > 0 else used_s


def _positive(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidTask(f"{where}: must be a positive number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class PairUsage:
    """The usage of one owner in one group, at one moment."""

    group: str
    owner: str
    used_s: float = 0.0  # finished wall seconds, decayed
    reserved_s: float = 0.0  # requested wall seconds of its matched and running tasks

    @property
    def total(self) -> float:
        return self.used_s + self.reserved_s


def ranking(usages: Iterable[PairUsage], policy: FairShare) -> dict[Pair, tuple[float, float]]:
    """(group usage / group share, owner usage) per (group, owner): lower runs first."""
    usages = list(usages)
    per_group: dict[str, float] = {}
    for u in usages:
        per_group[u.group] = per_group.get(u.group, 0.0) + u.total
    return {
        (u.group, u.owner): (per_group[u.group] / policy.share(u.group), u.total) for u in usages
    }


def match_key(
    priority: int, group: str, owner: str, task_id: int, ranks: Mapping[Pair, tuple[float, float]]
) -> tuple[int, float, float, int]:
    """Sort key of a candidate: the eligible task with the smallest key is matched."""
    group_ratio, owner_usage = ranks.get((group, owner), (0.0, 0.0))
    return (-priority, group_ratio, owner_usage, task_id)
