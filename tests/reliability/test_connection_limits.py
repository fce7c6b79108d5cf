"""Connection limits on both edges (issue #9): over a limit, a connection is closed before TLS.

One `proxyd serve` process for the module, with small limits on both edges:
`max_connections = 5` and `max_connections_per_peer = 3`. Loopback has a
whole /8, so "other peers" are client sockets bound to 127.0.0.x; the
well-behaved clients (the real MyProxyClient and the HTTPS ApiClient) come
from 127.0.0.1. Idle connections are raw TCP that never start TLS: they
hold a slot until the handshake timeout (15 s MyProxy, 60 s HTTPS), longer
than any test here holds them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyd.connlimit import ConnectionGate
from proxyd.devpki import DevPKI
from proxyd.myproxy.client import MyProxyClientError
from tests.reliability.support import ClientFiles, ServeProcess, client_files, report
from tests.support.grid import spare_key
from tests.support.server import running_server

PASS = "limits passphrase"
TOTAL, PER_PEER = 5, 3
LIMITS = f"max_connections = {TOTAL}\nmax_connections_per_peer = {PER_PEER}\n"
EDGES = ("myproxy", "https")
REFUSED_WITHIN = 2.0  # seconds: a refused connection sees EOF or a reset at once, not later
SETTLE = 0.5  # seconds for the server to take in a close or a new connection


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    base = tmp_path_factory.mktemp("limits")
    srv = ServeProcess(dev_pki, base / "state", sections={"myproxy": LIMITS, "api": LIMITS}).start()
    try:
        alice = client_files(dev_pki, base / "creds", "alice")
        srv.myproxy(alice.credential).put("limits", PASS, alice.issuer)  # type: ignore[arg-type]
        srv.alice = alice  # type: ignore[attr-defined]
        yield srv
    finally:
        srv.stop()


def _port(server: ServeProcess, edge: str) -> int:
    return server.myproxy_port if edge == "myproxy" else server.api_port


def _idle(port: int, source: str) -> socket.socket:
    """A TCP connection from `source` that never starts TLS."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes (EOF or reset) within `seconds`; False if it keeps waiting."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _assert_refused_at_once(port: int, source: str) -> None:
    sock = _idle(port, source)
    started = time.monotonic()
    try:
        assert _closed_within(sock, REFUSED_WITHIN + 3), f"a connection from {source} was kept"
        elapsed = time.monotonic() - started
        assert elapsed < REFUSED_WITHIN, f"closed only after {elapsed:.1f} s"
    finally:
        sock.close()


def _assert_held(socks: list[socket.socket]) -> None:
    """The server accepted these and is waiting for their TLS handshake."""
    time.sleep(SETTLE)
    for sock in socks:
        assert not _closed_within(sock, 0.05), "an idle connection under the limit was closed"


def _valid_clients_work(server: ServeProcess, edge: str, pause: float = 0.0) -> None:
    """MyProxy GET and INFO, or HTTPS /healthz and an authenticated request, from 127.0.0.1.

    `pause` between the two: with a single free slot, the second connection
    must wait until the server has seen the first one close.
    """
    alice: ClientFiles = server.alice  # type: ignore[attr-defined]
    if edge == "myproxy":
        chain = server.myproxy(timeout=10).get("limits", PASS, key=spare_key(4), lifetime=3600)
        assert len(chain) >= 2
        time.sleep(pause)
        info = server.myproxy(alice.credential, timeout=10).info("limits")
        assert info.fields
    else:
        assert server.api().request("GET", "/healthz").status == 200
        time.sleep(pause)
        reply = server.api(alice.path).request("GET", "/v1/credentials?username=limits")
        assert reply.status == 200, reply.body[:300]


def _valid_client_is_refused(server: ServeProcess, edge: str) -> None:
    started = time.monotonic()
    with pytest.raises((OSError, MyProxyClientError)):
        _valid_clients_work(server, edge)
    assert time.monotonic() - started < REFUSED_WITHIN + 1


_SAMPLE = re.compile(r"^(proxyd_connections_\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)


def _metrics(server: ServeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = server.api().request("GET", "/metrics")
    assert reply.status == 200
    time.sleep(SETTLE)  # until the server has seen this connection close: it held a slot
    out = {}
    for name, labels, value in _SAMPLE.findall(reply.body.decode()):
        pairs = frozenset(tuple(kv.split("=", 1)) for kv in labels.split(","))
        out[name, frozenset((k, v.strip('"')) for k, v in pairs)] = float(value)
    return out


def _refused(metrics: dict, edge: str, reason: str) -> float:
    key = frozenset({("interface", edge), ("reason", reason)})
    return metrics.get(("proxyd_connections_refused_total", key), 0.0)


def _open(metrics: dict, edge: str) -> float:
    return metrics[("proxyd_connections_open", frozenset({("interface", edge)}))]


def _wait_until_idle(server: ServeProcess) -> None:
    """Until our closed connections are gone on the server (only /metrics' own is open)."""
    deadline = time.monotonic() + 10
    while True:
        m = _metrics(server)
        if _open(m, "myproxy") == 0 and _open(m, "https") <= 1:
            return
        assert time.monotonic() < deadline, m
        time.sleep(0.1)


@contextlib.contextmanager
def _held(port: int, sources: list[str]) -> Iterator[list[socket.socket]]:
    socks = [_idle(port, source) for source in sources]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()
        time.sleep(SETTLE)  # the server sees them go before anything else is counted


def _connection_log(server: ServeProcess) -> list[dict[str, object]]:
    return [r for r in server.log_records() if r.get("logger") == "proxyd.connections"]


# --- the total limit -------------------------------------------------------------------------


@pytest.mark.parametrize("edge", EDGES)
def test_over_max_connections_is_closed_at_once_and_a_freed_slot_serves_a_client(
    server: ServeProcess, edge: str
) -> None:
    _wait_until_idle(server)
    port = _port(server, edge)
    before = _metrics(server)
    sources = [f"127.0.0.{10 + i}" for i in range(TOTAL)]  # one each: under the per-peer limit
    with _held(port, sources) as socks:
        _assert_held(socks)
        _assert_refused_at_once(port, "127.0.0.20")
        _valid_client_is_refused(server, edge)  # the edge is full for everybody
        socks[0].close()
        time.sleep(SETTLE)
        _valid_clients_work(server, edge, pause=SETTLE)  # through the one free slot
        _assert_held(socks[1:])
    after = _metrics(server)
    assert _refused(after, edge, "max_connections") - _refused(before, edge, "max_connections") == 2
    other = "https" if edge == "myproxy" else "myproxy"
    for reason in ("max_connections", "max_connections_per_peer"):
        assert _refused(after, other, reason) == _refused(before, other, reason)
    report(f"connection limits: {edge} max_connections={TOTAL}: the 6th closed before TLS")


# --- the per-peer limit ------------------------------------------------------------------------


@pytest.mark.parametrize("edge", EDGES)
def test_over_max_connections_per_peer_is_closed_at_once_and_others_are_served(
    server: ServeProcess, edge: str
) -> None:
    _wait_until_idle(server)
    port = _port(server, edge)
    attacker = "127.0.0.30"
    before = _metrics(server)
    with _held(port, [attacker] * PER_PEER) as socks:
        _assert_held(socks)
        _assert_refused_at_once(port, attacker)
        _valid_clients_work(server, edge)  # another address, under the total limit
        time.sleep(SETTLE)
        during = _metrics(server)
        socks[0].close()
        time.sleep(SETTLE)
        with _held(port, [attacker]) as again:  # the freed slot is the attacker's again
            _assert_held(again)
            _assert_refused_at_once(port, attacker)
    after = _metrics(server)
    reason = "max_connections_per_peer"
    assert _refused(after, edge, reason) - _refused(before, edge, reason) == 2
    assert _refused(after, edge, "max_connections") == _refused(before, edge, "max_connections")
    # While the attacker held its three: exactly those open on this edge (plus, on the
    # HTTPS edge, the /metrics request itself).
    assert _open(during, edge) == PER_PEER + (1 if edge == "https" else 0)


# --- refusals are cheap, logged at a bounded rate, and counted ----------------------------------


@pytest.mark.parametrize("edge", EDGES)
def test_a_flood_of_refusals_is_counted_and_logged_in_a_line_or_two(
    server: ServeProcess, edge: str
) -> None:
    _wait_until_idle(server)
    port = _port(server, edge)
    attacker, flood = "127.0.0.40", 200
    before = _metrics(server)
    lines_before = len(_connection_log(server))
    started = time.monotonic()
    with _held(port, [attacker] * PER_PEER) as socks:
        _assert_held(socks)
        for _ in range(flood):
            sock = _idle(port, attacker)
            assert _closed_within(sock, REFUSED_WITHIN)
            sock.close()
        _valid_clients_work(server, edge)
    elapsed = time.monotonic() - started
    time.sleep(SETTLE)
    after = _metrics(server)
    reason = "max_connections_per_peer"
    assert _refused(after, edge, reason) - _refused(before, edge, reason) == flood
    lines = _connection_log(server)[lines_before:]
    # At most one line per edge per REFUSAL_LOG_INTERVAL (10 s): the refusal that opened
    # the window, or a summary of an earlier window, not one line per refusal.
    assert len(lines) <= 2 + int(elapsed // 10), lines
    refusals = [r for r in _connection_log(server) if r.get("event") == "connection_refused"]
    assert any(r["interface"] == edge for r in refusals)
    for record in refusals:
        assert record["level"] == "warning"
        assert record["reason"] in ("max_connections", "max_connections_per_peer")
        assert record["peer"].startswith("127.0.0.")  # type: ignore[union-attr]
        assert isinstance(record["limit"], int)
    report(
        f"connection limits: {edge}: {flood} refusals in {elapsed:.1f} s, {len(lines)} log line(s)"
    )


def test_refusals_are_summarised_once_per_interval() -> None:
    """The gate itself, with a clock in hand: N refusals, one line, then one summary."""
    now = [100.0]
    gate = ConnectionGate("myproxy", 2, 1, log_interval=10, clock=lambda: now[0])
    records: list[dict[str, object]] = []
    logger = logging.getLogger("proxyd.connections")
    handler = logging.Handler()
    handler.emit = lambda record: records.append(dict(record.fields))  # type: ignore[attr-defined,method-assign]
    logger.addHandler(handler)
    try:
        assert gate.admit("10.0.0.1") is None
        assert gate.admit("10.0.0.2") is None
        for i in range(1000):
            assert gate.admit(f"10.0.0.{3 + i % 200}") == "max_connections"
        assert gate.admit("10.0.0.1") == "max_connections_per_peer"
        assert [r["event"] for r in records] == ["connection_refused"]
        assert records[0]["peer"] == "10.0.0.3" and records[0]["limit"] == 2
        now[0] += 10
        gate.flush()  # the timer's job in a running loop
        assert records[1]["event"] == "connections_refused"
        assert records[1]["refused"] == 1000
        assert records[1]["by_reason"] == {"max_connections": 999, "max_connections_per_peer": 1}
        now[0] += 10
        gate.flush()  # a quiet interval: no line, and the window closes
        assert len(records) == 2
        gate.release("10.0.0.1")
        assert gate.admit("10.0.0.9") is None
        assert gate.admit("10.0.0.8") == "max_connections"  # logged at once again
        assert len(records) == 3 and records[2]["event"] == "connection_refused"
        assert gate.by_peer == {"10.0.0.2": 1, "10.0.0.9": 1} and gate.open == 2
    finally:
        logger.removeHandler(handler)


def test_refused_connections_get_no_tls_state(dev_pki: DevPKI, tmp_path: Path) -> None:
    """In-process server with the default limits (64 per peer): 64 idle connections from one
    address each have a TLS state machine waiting for the handshake; 40 more are closed
    without ever getting one."""
    from asyncio.sslproto import SSLProtocol

    def tls_states() -> int:
        gc.collect()
        return sum(isinstance(o, SSLProtocol) for o in gc.get_objects())

    with running_server(dev_pki, tmp_path / "state") as srv:
        baseline = tls_states()
        for port in (srv.myproxy_port, srv.api_port):
            with _held(port, ["127.0.0.50"] * 64) as socks:
                _assert_held(socks[-1:])
                assert tls_states() - baseline == 64
                for _ in range(40):
                    _assert_refused_at_once(port, "127.0.0.50")
                assert tls_states() - baseline == 64
            deadline = time.monotonic() + 10
            while tls_states() > baseline and time.monotonic() < deadline:
                time.sleep(0.1)


def test_metrics_exist_before_any_refusal(dev_pki: DevPKI, tmp_path: Path) -> None:
    with running_server(dev_pki, tmp_path / "state") as srv:
        from tests.support.https import ApiClient

        body = ApiClient(srv.api_port, dev_pki.cert_dir).request("GET", "/metrics").body.decode()
    for edge in EDGES:
        assert f'proxyd_connections_open{{interface="{edge}"}}' in body
        for reason in ("max_connections", "max_connections_per_peer"):
            assert (
                f'proxyd_connections_refused_total{{interface="{edge}",reason="{reason}"}}' in body
            )
