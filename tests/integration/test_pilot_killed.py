"""Issue 20 acceptance: "a pilot killed mid-task leads to a reschedule, the third stall to
`failed`", with real `proxyd-pilot` processes killed by signal, then the stalled sweep;
and the operator's `proxyd admin reschedule` gives the failed task one more attempt.

The sweep runs on a queue over the server's database whose clock is an hour ahead (the
injectable clock, not a sleep): every silent attempt is past the heartbeat timeout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from proxyd.taskqueue.sql import SqlTaskQueue
from tests.integration.test_pilots import BIN, Bed, bed
from tests.taskqueue.support import Clock

__all__ = ["bed"]  # the fixture of test_pilots: a server, credentials, a work root

SLEEPER = (
    "import os, sys, time\n"
    "open(os.path.join(sys.argv[1], 'sleeper.pid'), 'w').write(str(os.getpid()))\n"
    "time.sleep(600)\n"
)
TIMEOUT = dt.timedelta(minutes=30)


def _kill_the_pilot_mid_task(bed: Bed, task_id: int) -> None:
    """Start a pilot, wait until it runs the task's payload, then SIGKILL it (and the orphaned
    payload: nobody reports on the task any more)."""
    pid_file = bed.results / "sleeper.pid"
    pid_file.unlink(missing_ok=True)
    pilot = bed.pilot("SITE-A", "pilot", "--max-tasks", "1")
    deadline = time.monotonic() + 60
    while not pid_file.exists() or bed.task("alice", task_id)["state"] != "running":
        assert time.monotonic() < deadline, "the payload never started"
        assert pilot.poll() is None, pilot.communicate()
        time.sleep(0.2)
    pilot.send_signal(signal.SIGKILL)
    pilot.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # it may have died with its pilot
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_killed_pilot_leads_to_a_reschedule_and_the_third_stall_to_failed(
    bed: Bed, tmp_path: Path
) -> None:
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    [task_id] = bed.submit(
        "alice", 1, command=[sys.executable, str(sleeper), str(bed.results)], max_wall_s=300
    )
    repo = bed.server.repo
    later = Clock(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    sweep = SqlTaskQueue(repo.engine, audit=repo.audit, clock=later, max_attempts=3)
    for attempt in (1, 2, 3):
        _kill_the_pilot_mid_task(bed, task_id)
        assert bed.task("alice", task_id)["attempts"] == attempt
        assert sweep.mark_stalled(TIMEOUT) == [task_id]
        task = bed.task("alice", task_id)
        expected = "rescheduled" if attempt < 3 else "failed"
        assert task["state"] == expected, task
        assert f"attempt {attempt} of 3 stalled" in str(task["reason"])
    events = [s.event for s in repo.audit.query(limit=100, newest_first=False)]
    steps = [(e.operation, e.rule) for e in events if e.operation.startswith("task.")]
    assert steps.count(("task.stall", "queue.heartbeat_timeout")) == 3
    assert steps.count(("task.reschedule", "queue.retry")) == 2
    assert steps[-1] == ("task.fail", "queue.max_attempts")

    # The operator gives it one more attempt, from the command line.
    admin = [str(BIN / "proxyd"), "admin", "--config", str(bed.config_file)]
    done = subprocess.run(
        [*admin, "reschedule", str(task_id), "--reason", "node fixed"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"task {task_id} rescheduled" in done.stdout
    assert bed.task("alice", task_id)["state"] == "rescheduled"
    refused = subprocess.run(
        [*admin, "reschedule", str(task_id)], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "task.state_conflict" in refused.stderr
    assert "Traceback" not in refused.stderr
