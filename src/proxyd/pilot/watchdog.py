"""Run a payload in its own process group and watch it: wall and CPU time, memory, heartbeats,
and the three ways a payload goes bad without hitting a limit (as DIRAC's Watchdog sees them):

- **stuck**: it used (almost) no CPU for a long time -- a hung transfer, a deadlock, a
  `sleep` that never ends; DIRAC calls such a job stalled (MinCPUWallClockRatio);
- **disk**: the work directory's file system has less free space than a floor, so the
  payload (and the next one) would fail writing anyway (DIRAC's MinDiskSpace);
- **load**: it keeps far more threads runnable than the slot has cores, starving the
  other slots of the node (DIRAC's MaxLoadAvg, here relative to the slot).

CPU time, memory and runnable threads are read from /proc for every process of the
group, so a payload that forks cannot hide its children; on a limit the whole group
gets SIGTERM, then SIGKILL after a grace period. The heartbeat callback can stop the
payload the same way by raising StopPayload (the task was cancelled, or is no longer
this pilot's).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class StopPayload(Exception):
    """Raised by a heartbeat callback: end the payload now, for `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    wall_s: float
    cpu_s: float
    memory_mb: int = 0  # 0: no memory limit
    heartbeat_s: float = 60.0
    grace_s: float = 5.0
    # Stuck: less than stuck_cpu_fraction of one core used over the last stuck_s seconds
    # (DIRAC: 5 % over 30 minutes). 0: not checked.
    stuck_s: float = 0.0
    stuck_cpu_fraction: float = 0.05
    # Disk: less than this many MB free where the payload works (DIRAC: 10 MB). 0: not checked.
    min_disk_mb: int = 0
    # Load: more runnable threads than this, averaged over load_window_s (like the kernel's
    # load average, but the payload's own). 0: not checked.
    max_load: float = 0.0
    load_window_s: float = 60.0


# Outcome.killed_for for the watchdog's own findings; the others are limits or StopPayload.
STUCK, DISK, LOAD = "stuck", "disk", "load"
WATCHDOG_FINDINGS = frozenset((STUCK, DISK, LOAD))


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    # "wall time", "CPU time", "memory", "stuck", "disk", "load", a StopPayload reason, or None
    killed_for: str | None
    cpu_s: float
    wall_s: float
    max_rss_kb: int
    detail: str = ""  # what the watchdog saw, for the failure reason (stuck, disk, load)

    @property
    def succeeded(self) -> bool:
        return self.killed_for is None and self.exit_code == 0


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+).

    A payload that daemonises (fork, setsid, fork) leaves its process group
    and, without this, its parent: init adopts it and the watchdog loses it.
    As a child subreaper the pilot adopts such orphans itself, so they stay
    in the payload's tree, are counted, and are killed with it. Call it once
    in the pilot process, before the first payload.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    pgrp: int
    state: str
    start: int  # clock ticks after boot
    cpu_ticks: int
    rss_pages: int


def _proc(pid: str) -> _Proc | None:
    """One process from /proc/<pid>/stat, or None if it is gone."""
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    f = stat[stat.rindex(")") + 2 :].split()
    # state 0, ppid 1, pgrp 2; utime, stime 11, 12; cutime, cstime 13, 14; starttime 19; rss 21
    return _Proc(
        pid=int(pid),
        ppid=int(f[1]),
        pgrp=int(f[2]),
        state=f[0],
        start=int(f[19]),
        cpu_ticks=int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]),
        rss_pages=int(f[21]),
    )


def _processes() -> list[_Proc]:
    found = (_proc(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    return [p for p in found if p is not None]


@dataclass(frozen=True)
class _Payload:
    """Which processes are the payload's: its group, the leader's descendants, adopted orphans."""

    leader: int
    leader_start: int
    pilot: int
    pilot_children_before: frozenset[int]

    def tree(self, procs: list[_Proc]) -> list[_Proc]:
        by_parent: dict[int, list[_Proc]] = {}
        for p in procs:
            by_parent.setdefault(p.ppid, []).append(p)
        roots = [self.leader] + [
            p.pid
            for p in by_parent.get(self.pilot, [])
            # orphans the pilot adopted as subreaper, started with or after the payload
            if p.pid not in self.pilot_children_before and p.start >= self.leader_start
        ]
        members = set(roots)
        stack = list(roots)
        while stack:
            for child in by_parent.get(stack.pop(), []):
                if child.pid not in members:
                    members.add(child.pid)
                    stack.append(child.pid)
        return [p for p in procs if p.pid in members or p.pgrp == self.leader]


def _runnable_threads(tree: list[_Proc]) -> int:
    """Threads of the payload in state R (running or waiting for a core), from /proc/*/task."""
    count = 0
    for p in tree:
        try:
            tasks = os.scandir(f"/proc/{p.pid}/task")
        except OSError:
            continue
        with tasks:
            for task in tasks:
                try:
                    stat = Path(task.path, "stat").read_text()
                except OSError:
                    continue
                if stat[stat.rindex(")") + 2 :].startswith("R"):
                    count += 1
    return count


def _free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


class _Health:
    """The watchdog's judgement over time: stuck, disk and load (see the module docstring)."""

    def __init__(self, limits: Limits, workdir: Path, started: float) -> None:
        self.limits = limits
        self.workdir = workdir
        self.started = started
        self._cpu: deque[tuple[float, float]] = deque()  # (monotonic time, CPU seconds)
        self._load = 0.0
        self._load_at = started

    def check(self, now: float, cpu_s: float, tree: list[_Proc]) -> tuple[str, str] | None:
        """(finding, detail) when the payload should be killed, else None."""
        lim = self.limits
        if lim.stuck_s > 0:
            self._cpu.append((now, cpu_s))
            # Keep one sample at or before the window's start, to measure the whole window.
            while len(self._cpu) > 1 and self._cpu[1][0] <= now - lim.stuck_s:
                self._cpu.popleft()
            then, cpu_then = self._cpu[0]
            if now - self.started >= lim.stuck_s and now - then >= lim.stuck_s:
                used = cpu_s - cpu_then
                if used < lim.stuck_cpu_fraction * (now - then):
                    return STUCK, (
                        f"it used {used:.1f} s of CPU in the last {now - then:.0f} s "
                        f"(less than {lim.stuck_cpu_fraction:.0%} of a core)"
                    )
        if lim.min_disk_mb > 0:
            try:
                free = _free_mb(self.workdir)
            except OSError:
                free = None
            if free is not None and free < lim.min_disk_mb:
                return DISK, (
                    f"{free:.0f} MB free in its work directory, "
                    f"less than the {lim.min_disk_mb} MB floor"
                )
        if lim.max_load > 0:
            # An exponential average like the kernel's load average, with the window as its
            # time constant: a burst of threads at start-up does not count, a steady excess does.
            runnable = _runnable_threads(tree)
            weight = 1.0 - math.exp(-(now - self._load_at) / max(lim.load_window_s, 1e-3))
            self._load += (runnable - self._load) * weight
            self._load_at = now
            if self._load > lim.max_load:
                return LOAD, (
                    f"a load of {self._load:.1f} runnable threads, above the slot's "
                    f"{lim.max_load:g}"
                )
        return None


def _usage(tree: list[_Proc]) -> tuple[float, int]:
    """(CPU seconds, resident KiB) summed over the live processes of the payload."""
    cpu_ticks = sum(p.cpu_ticks for p in tree)
    rss_pages = sum(p.rss_pages for p in tree)
    return cpu_ticks / CLOCK_TICKS, rss_pages * PAGE_KB


def _kill(payload: _Payload, sig: int) -> None:
    """`sig` to the payload's group and to every process of its tree (setsid does not hide one)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(payload.leader, sig)
    for p in payload.tree(_processes()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)


def _reap_adopted(payload: _Payload, tree: list[_Proc], leader_done: bool) -> None:
    """Collect zombies the pilot adopted, so they do not pile up; the leader is Popen's."""
    for p in tree:
        if p.state == "Z" and p.ppid == payload.pilot and (leader_done or p.pid != payload.leader):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)


def _children_of(pid: int) -> frozenset[int]:
    return frozenset(p.pid for p in _processes() if p.ppid == pid)


def _start_of(pid: int) -> int:
    p = _proc(str(pid))
    return p.start if p is not None else 0


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
    detail = ""
    last_beat = started
    health = _Health(limits, Path(cwd), started)
    children_before = _children_of(os.getpid())
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
        payload = _Payload(proc.pid, _start_of(proc.pid), os.getpid(), children_before)
        deadline_kill: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            tree = payload.tree(_processes())
            cpu, rss = _usage(tree)
            cpu_seen, rss_max = max(cpu_seen, cpu), max(rss_max, rss)
            if killed_for is None:
                if now - started > limits.wall_s:
                    killed_for = "wall time"
                elif cpu_seen > limits.cpu_s:
                    killed_for = "CPU time"
                elif limits.memory_mb and rss > limits.memory_mb * 1024:
                    killed_for = "memory"
                elif (finding := health.check(now, cpu_seen, tree)) is not None:
                    killed_for, detail = finding
                if killed_for is not None:
                    _kill(payload, signal.SIGTERM)
                    deadline_kill = now + limits.grace_s
            elif deadline_kill is not None and now > deadline_kill:
                _kill(payload, signal.SIGKILL)
                deadline_kill = None
            if heartbeat is not None and now - last_beat >= limits.heartbeat_s:
                last_beat = now
                try:
                    heartbeat()
                except StopPayload as stop:
                    if killed_for is None:
                        killed_for = stop.reason
                        _kill(payload, signal.SIGTERM)
                        deadline_kill = now + limits.grace_s
                except Exception:  # noqa: S110 - a missed beat must not kill the payload
                    pass
            _reap_adopted(payload, tree, leader_done=False)
            time.sleep(poll_s)
        # The leader is gone; what is left of its tree is killed too, it belongs to the payload.
        _kill(payload, signal.SIGKILL)
        settle = time.monotonic() + 2.0
        while time.monotonic() < settle:
            tree = payload.tree(_processes())
            if not tree:
                break
            _reap_adopted(payload, tree, leader_done=True)
            time.sleep(0.02)
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
        detail=detail,
    )
