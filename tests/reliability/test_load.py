"""Load: many concurrent clients on loopback doing GET, INFO and PUT over MyProxy and HTTPS.

Default run: 50 clients for 10 s against `proxyd serve --workers 2` on SQLite.
PROXYD_LONG_TESTS=1: 500 clients for 60 s, on SQLite and on PostgreSQL.

Every operation must succeed, and the server log must hold no internal
error. (This test found that concurrent stores on SQLite failed with
"database is locked"; fixed in 8825617, with its regression test in
tests/core/test_repository.py. API delegations now survive --workers 2,
fixed in d952eed.) Latencies (p50, p99, max) are reported per operation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import random
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxyd.devpki import DevPKI, user_dn
from tests.reliability.support import (
    ClientFiles,
    ServeProcess,
    client_files,
    long_only,
    percentile,
    report,
)
from tests.support.grid import csr_for, spare_key
from voms_ext import ProxyBuilder

USERS = ("alice", "bob", "carol")
PASS = "load test passphrase"
POOL = 6  # credentials stored up front, per user, for GET and INFO
WEIGHTS = {"mp_get": 20, "api_get": 20, "mp_info": 15, "api_info": 15, "mp_put": 5, "api_put": 5}


@dataclasses.dataclass
class Load:
    server: ServeProcess
    files: dict[str, ClientFiles]
    pki: DevPKI
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    errors: list[str] = dataclasses.field(default_factory=list)
    internal: int = 0  # "internal server error" answers
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    counter: int = 0

    def fresh_name(self) -> str:
        with self.lock:
            self.counter += 1
            return f"load-{self.counter}"


def _api(load: Load, user: str | None) -> Callable[..., tuple[int, bytes]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(capath=str(load.pki.cert_dir))
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    if user is not None:
        ctx.load_cert_chain(str(load.files[user].path))

    def one_connection(*requests: tuple[str, str, object]) -> tuple[int, bytes]:
        """Send the requests on one keep-alive connection (delegations stay on one worker)."""
        conn = http.client.HTTPSConnection(
            "localhost", load.server.api_port, context=ctx, timeout=60
        )
        try:
            status, body = 0, b""
            for method, path, payload in requests:
                if callable(payload):  # built from the previous answer (delegation id, CSR)
                    previous = json.loads(body)
                    path = path.format(**previous)
                    payload = payload(previous)
                data = json.dumps(payload).encode() if payload is not None else None
                headers = {"Content-Type": "application/json"} if data else {}
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                status, body = response.status, response.read()
                if status >= 300:
                    break
            return status, body
        finally:
            conn.close()

    return one_connection


def _operation(load: Load, kind: str, rng: random.Random) -> None:
    user = rng.choice(USERS)
    files = load.files[user]
    owned = f"{user}-pool-{rng.randrange(POOL)}"
    key_index = rng.randrange(3, 7)
    if kind == "mp_get":
        chain = load.server.myproxy(timeout=60).get(
            owned, PASS, key=spare_key(key_index), lifetime=3600
        )
        assert len(chain) >= 3
    elif kind == "mp_info":
        response = load.server.myproxy(files.credential, timeout=60).info(owned)
        assert response.get("CRED_OWNER") == user_dn(user)
    elif kind == "mp_put":
        load.server.myproxy(files.credential, timeout=60).put(load.fresh_name(), PASS, files.issuer)  # type: ignore[arg-type]
    elif kind == "api_get":
        csr = csr_for(spare_key(key_index)).public_bytes(serialization.Encoding.PEM).decode()
        status, body = _api(load, None)(
            (
                "POST",
                f"/v1/credentials/default/proxy?username={owned}",
                {"csr": csr, "passphrase": PASS, "lifetime": 3600},
            )
        )
        assert status == 200, body[:300]
    elif kind == "api_info":
        status, body = _api(load, user)(("GET", f"/v1/credentials?username={owned}", None))
        assert status == 200 and json.loads(body)[0]["owner"] == user_dn(user), body[:300]
    else:
        ident = files.identity

        def sign(started: dict[str, str]) -> dict[str, str]:
            csr = x509.load_pem_x509_csr(started["csr"].encode())
            proxy = (
                ProxyBuilder(ident.cert, ident.chain)
                .from_csr(csr)
                .lifetime(dt.timedelta(hours=24))
                .sign(ident.key)
            )
            pem = b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in (proxy, *ident.certificates)
            )
            return {"chain": pem.decode()}

        name = load.fresh_name()
        status, body = _api(load, user)(
            ("POST", "/v1/delegations", {"username": name, "passphrase": PASS}),
            ("PUT", "/v1/delegations/{id}", sign),
        )
        assert status == 201, body[:300]


def _client(load: Load, index: int, deadline: float) -> None:
    rng = random.Random(index)
    kinds = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        started = time.perf_counter()
        try:
            _operation(load, kind, rng)
        except Exception as exc:
            text = f"{kind}: {type(exc).__name__}: {exc}"[:300]
            with load.lock:
                load.errors.append(text)
                load.internal += "internal server error" in text.lower()
            continue
        with load.lock:
            load.latencies[kind].append(time.perf_counter() - started)


def _run_load(
    dev_pki: DevPKI, tmp_path: Path, clients: int, seconds: float, database: str | None
) -> None:
    # Every client connects from 127.0.0.1, like a site behind one NAT address: the
    # per-peer connection limit (64 per worker by default) must let all of them in.
    limits = f"max_connections = {max(1024, clients)}\nmax_connections_per_peer = {clients}\n"
    server = ServeProcess(
        dev_pki,
        tmp_path / "state",
        workers=2,
        database=database,
        sections={"myproxy": limits, "api": limits},
    ).start()
    try:
        files = {u: client_files(dev_pki, tmp_path / "creds", u) for u in USERS}
        load = Load(server, files, dev_pki)
        for user in USERS:  # the pool that GET and INFO use
            for i in range(POOL):
                server.myproxy(files[user].credential).put(
                    f"{user}-pool-{i}", PASS, files[user].issuer
                )  # type: ignore[arg-type]
        for i in range(3, 7):
            spare_key(i)
        deadline = time.monotonic() + seconds
        threads = [
            threading.Thread(target=_client, args=(load, i, deadline)) for i in range(clients)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)
        elapsed = time.monotonic() - started
        causes = server.internal_errors()
    finally:
        server.stop()
    everything = [x for xs in load.latencies.values() for x in xs]
    per_kind = ", ".join(
        f"{k} {len(v)} p50 {percentile(v, 50) * 1000:.0f}/p99 {percentile(v, 99) * 1000:.0f} ms"
        for k, v in sorted(load.latencies.items())
    )
    report(
        f"load[{'postgresql' if database else 'sqlite'}, --workers 2]: {clients} clients, "
        f"{elapsed:.1f} s, {len(everything)} ok ops ({len(everything) / elapsed:.0f}/s), "
        f"p50 {percentile(everything, 50) * 1000:.0f} ms, p99 {percentile(everything, 99) * 1000:.0f} ms, "
        f"max {max(everything) * 1000:.0f} ms; errors {len(load.errors)} "
        f"(internal {load.internal}); server log internal errors {dict(causes)}; {per_kind}"
    )
    assert not load.errors, load.errors[:5]
    assert not causes, server.log()[-3000:]
    assert len(everything) > clients, "hardly any operation completed"
    assert max(everything) < 60


def test_load_scaled_down(dev_pki: DevPKI, tmp_path: Path) -> None:
    """50 clients for 10 s (the long run: 500 clients for 60 s, below)."""
    _run_load(dev_pki, tmp_path, 50, 10, None)


@long_only
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_load_500_clients_60_s(
    dev_pki: DevPKI, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    database = None if backend == "sqlite" else request.getfixturevalue("postgres_url")
    _run_load(dev_pki, tmp_path, 500, 60, database)
