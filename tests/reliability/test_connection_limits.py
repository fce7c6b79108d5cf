"""Connection limits on both edges (issue #9): over a limit, a connection is closed before TLS.

One `proxyd serve` process for the module, with small limits on both edges:
`max_connections = 5` and `max_connections_per_peer = 3`. Loopback has a
whole /8, so "other peers" are client sockets bound to 127.0.0.x; the
well-behaved clients (the real MyProxyClient and the HTTPS ApiClient) come
from 127.0.0.1. Idle connections are raw TCP that never start TLS: they
hold a slot until the handshake timeout (15 s MyProxy, 60 s HTTPS), longer
than any test here holds them.

Nothing here sleeps and then counts: the tests read the server's own
connection gauges from its Prometheus files (PROMETHEUS_MULTIPROC_DIR, so
reading them takes no connection slot) and wait until they show what the
step expects.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from proxyd.connlimit import ConnectionGate
from proxyd.devpki import DevPKI
from proxyd.myproxy.client import MyProxyClientError
from tests.reliability.support import ClientFiles, ServeProcess, client_files, report
from tests.support.grid import spare_key
from tests.support.server import running_server
from tests.support.waiting import eventually

PASS = "limits passphrase"
TOTAL, PER_PEER = 5, 3
LIMITS = f"max_connections = {TOTAL}\nmax_connections_per_peer = {PER_PEER}\n"
EDGES = ("myproxy", "https")
REFUSED_WITHIN = 2.0  # seconds: a refused connection sees EOF or a reset at once, not later


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    base = tmp_path_factory.mktemp("limits")
    metrics_dir = base / "metrics"
    metrics_dir.mkdir()
    srv = ServeProcess(
        dev_pki,
        base / "state",
        sections={"myproxy": LIMITS, "api": LIMITS},
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    ).start()
    srv.metrics_dir = metrics_dir  # type: ignore[attr-defined]
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


def _assert_held(server: ServeProcess, edge: str, socks: list[socket.socket], open_: int) -> None:
    """The server counts `open_` connections on `edge` and is waiting for these to start TLS."""
    _wait_open(server, edge, open_)
    for sock in socks:
        assert not _closed_within(sock, 0.05), "an idle connection under the limit was closed"


def _valid_clients_work(server: ServeProcess, edge: str, held: int = 0) -> None:
    """MyProxy GET and INFO, or HTTPS /healthz and an authenticated request, from 127.0.0.1.

    Between the two, and after, wait until the server has seen the connection
    close (only the `held` idle ones stay open): with a single free slot the
    second connection needs the first one's.
    """
    alice: ClientFiles = server.alice  # type: ignore[attr-defined]
    if edge == "myproxy":
        chain = server.myproxy(timeout=10).get("limits", PASS, key=spare_key(4), lifetime=3600)
        assert len(chain) >= 2
        _wait_open(server, edge, held)
        info = server.myproxy(alice.credential, timeout=10).info("limits")
        assert info.fields
    else:
        assert server.api().request("GET", "/healthz").status == 200
        _wait_open(server, edge, held)
        reply = server.api(alice.path).request("GET", "/v1/credentials?username=limits")
        assert reply.status == 200, reply.body[:300]
    _wait_open(server, edge, held)


def _valid_client_is_refused(server: ServeProcess, edge: str) -> None:
    started = time.monotonic()
    with pytest.raises((OSError, MyProxyClientError)):
        _valid_clients_work(server, edge)
    assert time.monotonic() - started < REFUSED_WITHIN + 1


_SAMPLE = re.compile(r"^(proxyd_connections_\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)


def _metrics(server: ServeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The server's connection metrics, read from its files: no connection, no slot taken."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(server.metrics_dir))  # type: ignore[attr-defined,no-untyped-call]
    out = {}
    for name, labels, value in _SAMPLE.findall(generate_latest(registry).decode()):
        pairs = frozenset(tuple(kv.split("=", 1)) for kv in labels.split(","))
        out[name, frozenset((k, v.strip('"')) for k, v in pairs)] = float(value)
    return out


def _refused(metrics: dict, edge: str, reason: str) -> float:
    key = frozenset({("interface", edge), ("reason", reason)})
    return metrics.get(("proxyd_connections_refused_total", key), 0.0)


def _open(metrics: dict, edge: str) -> float:
    return metrics.get(("proxyd_connections_open", frozenset({("interface", edge)})), 0.0)


def _wait_open(server: ServeProcess, edge: str, count: int) -> dict:
    """Until the server counts exactly `count` open connections on `edge`."""
    return eventually(
        lambda: _metrics(server),
        lambda m: _open(m, edge) == count,
        f"{count} open {edge} connection(s)",
    )


def _wait_until_idle(server: ServeProcess) -> None:
    """Until our closed connections are gone on the server."""
    for edge in EDGES:
        _wait_open(server, edge, 0)


@contextlib.contextmanager
def _held(
    port: int, sources: list[str], settled: Callable[[], object] | None = None
) -> Iterator[list[socket.socket]]:
    """Idle connections from `sources`; on the way out, close them and call `settled`
    (which waits until the server has seen them go)."""
    socks = [_idle(port, source) for source in sources]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()
        if settled is not None:
            settled()


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
    with _held(port, sources, lambda: _wait_open(server, edge, 0)) as socks:
        _assert_held(server, edge, socks, TOTAL)
        _assert_refused_at_once(port, "127.0.0.20")
        _valid_client_is_refused(server, edge)  # the edge is full for everybody
        socks[0].close()
        _wait_open(server, edge, TOTAL - 1)
        _valid_clients_work(server, edge, held=TOTAL - 1)  # through the one free slot
        _assert_held(server, edge, socks[1:], TOTAL - 1)
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
    with _held(port, [attacker] * PER_PEER, lambda: _wait_open(server, edge, 0)) as socks:
        _assert_held(server, edge, socks, PER_PEER)
        _assert_refused_at_once(port, attacker)
        _valid_clients_work(server, edge, held=PER_PEER)  # another address, under the total limit
        during = _metrics(server)
        socks[0].close()
        _wait_open(server, edge, PER_PEER - 1)
        # the freed slot is the attacker's again
        with _held(port, [attacker], lambda: _wait_open(server, edge, PER_PEER - 1)) as again:
            _assert_held(server, edge, again, PER_PEER)
            _assert_refused_at_once(port, attacker)
    after = _metrics(server)
    reason = "max_connections_per_peer"
    assert _refused(after, edge, reason) - _refused(before, edge, reason) == 2
    assert _refused(after, edge, "max_connections") == _refused(before, edge, "max_connections")
    # While the attacker held its three: exactly those open on this edge.
    assert _open(during, edge) == PER_PEER


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
    with _held(port, [attacker] * PER_PEER, lambda: _wait_open(server, edge, 0)) as socks:
        _assert_held(server, edge, socks, PER_PEER)
        for _ in range(flood):
            sock = _idle(port, attacker)
            assert _closed_within(sock, REFUSED_WITHIN)
            sock.close()
        _valid_clients_work(server, edge, held=PER_PEER)
    elapsed = time.monotonic() - started
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
    without ever getting one. (The HTTPS edge's TLS is asyncio's SSLProtocol, the MyProxy
    edge's an ssl.SSLSocket: proxyd.tlsstream.)"""
    import ssl
    from asyncio.sslproto import SSLProtocol

    def tls_states() -> int:
        gc.collect()
        return sum(isinstance(o, SSLProtocol | ssl.SSLSocket) for o in gc.get_objects())

    with running_server(dev_pki, tmp_path / "state") as srv:
        baseline = tls_states()
        for port in (srv.myproxy_port, srv.api_port):
            with _held(port, ["127.0.0.50"] * 64) as socks:
                eventually(tls_states, lambda n: n - baseline == 64, "64 TLS states")
                for sock in socks[-1:]:
                    assert not _closed_within(sock, 0.05), "an idle connection was closed"
                for _ in range(40):
                    _assert_refused_at_once(port, "127.0.0.50")
                assert tls_states() - baseline == 64
            eventually(tls_states, lambda n: n <= baseline, "TLS states back to the baseline")


def test_metrics_exist_before_any_refusal(dev_pki: DevPKI, tmp_path: Path) -> None:
    from proxyd.metrics import exposition

    with running_server(dev_pki, tmp_path / "state"):  # in this process: its registry is ours
        body = exposition()[0].decode()
    for edge in EDGES:
        assert f'proxyd_connections_open{{interface="{edge}"}}' in body
        for reason in ("max_connections", "max_connections_per_peer"):
            assert (
                f'proxyd_connections_refused_total{{interface="{edge}",reason="{reason}"}}' in body
            )
