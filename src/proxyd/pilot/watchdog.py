"""Run a payload in its own process group and watch it: wall and CPU time, memory, heartbeats.

CPU time and memory are read from /proc for every process of the group,
so a payload that forks cannot hide its children; on a limit the whole
group gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Limits:
    wall_s: float
    cpu_s: float
    memory_mb: int = 0  # 0: no memory limit
    heartbeat_s: float = 60.0
    grace_s: float = 5.0


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    killed_for: str | None  # "wall time", "CPU time", "memory" or None
    cpu_s: float
    wall_s: float
    max_rss_kb: int

    @property
    def succeeded(self) -> bool:
        return self.killed_for is None and self.exit_code == 0


def _group_usage(pgid: int) -> tuple[float, int]:
    """(CPU seconds, resident KiB) summed over the live processes of a process group."""
    cpu_ticks = rss_pages = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[2] is pgrp; utime, stime at 11, 12; cutime, cstime 13, 14; rss at 21
        if int(fields[2]) != pgid:
            continue
        cpu_ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        rss_pages += int(fields[21])
    return cpu_ticks / CLOCK_TICKS, rss_pages * PAGE_KB


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_watched(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    limits: Limits,
    log_path: Path,
    heartbeat: Callable[[], None] | None = None,
    preexec: Callable[[], None] | None = None,
    poll_s: float = 0.2,
) -> Outcome:
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seen = 0.0
    rss_max = 0
    killed_for: str | None = None
    last_beat = started
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the watchdog can kill all of it
            preexec_fn=preexec,
        )
        pgid = proc.pid
        deadline_kill: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            cpu, rss = _group_usage(pgid)
            cpu_seen, rss_max = max(cpu_seen, cpu), max(rss_max, rss)
            if killed_for is None:
                if now - started > limits.wall_s:
                    killed_for = "wall time"
                elif cpu_seen > limits.cpu_s:
                    killed_for = "CPU time"
                elif limits.memory_mb and rss > limits.memory_mb * 1024:
                    killed_for = "memory"
                if killed_for is not None:
                    _kill_group(pgid, signal.SIGTERM)
                    deadline_kill = now + limits.grace_s
            elif deadline_kill is not None and now > deadline_kill:
                _kill_group(pgid, signal.SIGKILL)
                deadline_kill = None
            if heartbeat is not None and now - last_beat >= limits.heartbeat_s:
                last_beat = now
                with contextlib.suppress(Exception):  # a missed beat must not kill the payload
                    heartbeat()
            time.sleep(poll_s)
        # The leader is gone; orphans of the group are killed too, they belong to the payload.
        _kill_group(pgid, signal.SIGKILL)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The leader's own usage, including children it waited for; the /proc samples
    # catch what ran in the group without being waited for.
    waited_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    code = proc.returncode
    return Outcome(
        exit_code=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        killed_for=killed_for,
        cpu_s=max(cpu_seen, waited_cpu),
        wall_s=wall,
        max_rss_kb=rss_max,
    )
