"""The pilot reads the end of a payload's log as root, in a directory the payload owns: it must
read only the payload's own regular file (issue 20: the tail now also travels with every
heartbeat, so the owner can look at a running payload)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from proxyd.pilot.agent import LOG_TAIL_BYTES, _tail


def test_the_end_of_a_regular_log(tmp_path: Path) -> None:
    log = tmp_path / "payload.log"
    log.write_bytes(b"x" * LOG_TAIL_BYTES + b"last line\n")
    tail = _tail(log)
    assert len(tail) == LOG_TAIL_BYTES and tail.endswith("last line\n")
    assert _tail(tmp_path / "missing.log") == ""


def test_a_symlink_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    log = tmp_path / "payload.log"
    log.symlink_to(secret)  # what a payload could do to its own work directory
    assert _tail(log) == ""


def test_a_fifo_in_place_of_the_log_does_not_block_the_pilot(tmp_path: Path) -> None:
    log = tmp_path / "payload.log"
    os.mkfifo(log)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(_tail(log)), daemon=True)
    started = time.monotonic()
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the pilot blocked on a FIFO planted by the payload"
    assert result == [""] and time.monotonic() - started < 5
