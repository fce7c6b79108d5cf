"""The watchdog's own findings, with real payload processes: stuck, disk and load (issue 20).

Each payload is a real process tree read from /proc; nothing is simulated. The
thresholds are scaled down (seconds, not DIRAC's 30 minutes) so each test takes
a few seconds, and each finding has a twin that must NOT be killed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from proxyd.pilot.agent import _failure_reason
from proxyd.pilot.watchdog import DISK, LOAD, STUCK, Limits, Outcome, _free_mb, run_watched

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
# Busy for `argv[1]` seconds of CPU, then exits 0.
BUSY = [
    sys.executable,
    "-c",
    "import sys, time\nend = time.process_time() + float(sys.argv[1])\n"
    "while time.process_time() < end:\n    pass\n",
]
# `argv[1]` busy processes forever (the watchdog must kill them all).
SPINNERS = [
    sys.executable,
    "-c",
    "import os, sys\nfor _ in range(int(sys.argv[1]) - 1):\n    if os.fork() == 0:\n        break\n"
    "while True:\n    pass\n",
]


def _run(argv: list[str], tmp_path: Path, **limits: float) -> tuple[Outcome, float]:
    base = {"wall_s": 60.0, "cpu_s": 60.0, "grace_s": 1.0}
    started = time.monotonic()
    outcome = run_watched(
        argv,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        limits=Limits(**{**base, **limits}),  # type: ignore[arg-type]
        log_path=tmp_path / "payload.log",
        poll_s=0.05,
    )
    return outcome, time.monotonic() - started


def test_a_sleeping_payload_is_killed_as_stuck(tmp_path: Path) -> None:
    outcome, took = _run(SLEEPER, tmp_path, stuck_s=1.5)
    assert outcome.killed_for == STUCK, outcome
    assert "of CPU in the last" in outcome.detail
    assert 1.5 <= took < 15
    assert outcome.exit_code is None  # killed by SIGTERM


def test_a_busy_payload_is_not_stuck(tmp_path: Path) -> None:
    outcome, _ = _run([*BUSY, "3"], tmp_path, stuck_s=1.0)
    assert outcome.succeeded, outcome


def test_stuck_is_off_by_default(tmp_path: Path) -> None:
    outcome, _ = _run([sys.executable, "-c", "import time; time.sleep(2)"], tmp_path)
    assert outcome.succeeded, outcome


def test_a_work_disk_below_the_floor_kills_the_payload(tmp_path: Path) -> None:
    # The floor is set above what the file system has free: the same comparison a full disk
    # makes true, without filling the machine's disk in a test.
    floor = int(_free_mb(tmp_path)) + 1024
    outcome, took = _run(SLEEPER, tmp_path, min_disk_mb=floor)
    assert outcome.killed_for == DISK, outcome
    assert f"less than the {floor} MB floor" in outcome.detail
    assert took < 15


def test_enough_disk_is_not_a_finding(tmp_path: Path) -> None:
    outcome, _ = _run([*BUSY, "0.5"], tmp_path, min_disk_mb=1)
    assert outcome.succeeded, outcome


def test_a_payload_far_above_its_slot_is_killed_for_load(tmp_path: Path) -> None:
    # Six busy processes on a slot allowing two runnable threads: runnable counts threads in
    # state R whether or not a core is free, so this holds on a loaded machine too.
    outcome, took = _run([*SPINNERS, "6"], tmp_path, max_load=2.0, load_window_s=0.5)
    assert outcome.killed_for == LOAD, outcome
    assert "runnable threads, above the slot's 2" in outcome.detail
    assert took < 20


def test_one_busy_process_fits_a_slot_of_two(tmp_path: Path) -> None:
    outcome, _ = _run([*BUSY, "2"], tmp_path, max_load=2.0, load_window_s=0.5)
    assert outcome.succeeded, outcome


@pytest.mark.parametrize(
    ("killed_for", "detail", "expected"),
    [
        (STUCK, "it used 0.0 s", "killed by the watchdog as stuck: it used 0.0 s"),
        (DISK, "3 MB free", "killed by the watchdog as disk: 3 MB free"),
        ("wall time", "", "killed: exceeded its wall time limit"),
    ],
)
def test_the_failure_reason_names_the_finding(killed_for: str, detail: str, expected: str) -> None:
    outcome = Outcome(None, 15, killed_for, 0.0, 1.0, 0, detail)
    assert _failure_reason(outcome) == expected
