"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Call `probe` until `done(result)`; its last result, or AssertionError naming `what`.

    The deadline is generous on purpose: a loaded 2-core CI machine is slow,
    and a condition that holds returns at once however long the deadline is.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s, still not {what}: last seen {result!r}")
        time.sleep(interval)
