"""The test harness itself: what it promises the other tests (CI, stop 24)."""

from __future__ import annotations

import dataclasses
import gc
import socket
from pathlib import Path

import pytest

from proxyd.config import ApiConfig, Config, Listen
from proxyd.devpki import DevPKI
from tests.support.server import _ephemeral_range, free_port, running_server


def test_free_ports_are_outside_the_range_outgoing_connections_take_theirs_from() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # never the same port twice in a run
    assert all(not low <= p <= high for p in ports)
    for port in ports[:20]:
        with socket.create_server(("127.0.0.1", port)):
            pass  # each one can be listened on


def test_a_server_that_cannot_start_says_why_and_leaves_no_loop_behind(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", free_port())) as busy:
        port = busy.getsockname()[1]

        def on_busy_port(config: Config) -> Config:
            return dataclasses.replace(config, api=ApiConfig(Listen("127.0.0.1", port)))

        with (
            pytest.raises(RuntimeError, match="address already in use"),
            running_server(dev_pki, tmp_path / "state", configure=on_busy_port),
        ):
            pass
    # A loop left open is reported when collected, as an unraisable ResourceWarning: pytest
    # turns it into this test's failure (before the fix, the next test's).
    gc.collect()
