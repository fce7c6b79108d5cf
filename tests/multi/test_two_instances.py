"""Two `proxyd serve` processes on one PostgreSQL database: one service, whichever instance answers.

The instances share the database and the master key file (the same state
directory), and nothing else: clients spread over both, as behind a load
balancer. What one stores the other serves; concurrent issuance keeps one
audit chain; concurrent pilots on both never get the same task.

Needs the local PostgreSQL (the `postgres_url` fixture skips when it is
unreachable, and fails under PROXYD_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxyd.audit import AuditLog
from proxyd.devpki import DevPKI, user_dn
from proxyd.myproxy.client import ClientCredential, MyProxyClient
from proxyd.store.db import make_engine
from tests.support.grid import Identity, csr_for, load_identity, spare_key, trust_of
from tests.support.https import ApiClient
from tests.support.server import free_port, write_config
from voms_ext import Credential, ProxyBuilder, validate_chain, write_credential_file

pytestmark = pytest.mark.postgres

ALICE, CAROL = user_dn("alice"), user_dn("carol")
PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
PASSPHRASE = "shared by both instances"
TASKS = 200


@dataclasses.dataclass
class Instance:
    name: str
    myproxy_port: int
    api_port: int
    proc: subprocess.Popen[bytes]
    log: Path


@dataclasses.dataclass
class Pair:
    a: Instance
    b: Instance
    pki: DevPKI
    database: str
    creds: dict[str, Path]

    def api(self, instance: Instance, who: str) -> ApiClient:
        return ApiClient(instance.api_port, self.pki.cert_dir, self.creds[who])

    def myproxy(self, instance: Instance, who: str | None = None) -> MyProxyClient:
        credential = ClientCredential(str(self.creds[who])) if who else None
        return MyProxyClient(
            "localhost", instance.myproxy_port, cert_dir=self.pki.cert_dir, credential=credential
        )


def _config(pki: DevPKI, state: Path, database: str, mp: int, api: int) -> Path:
    """write_config's file for these ports, on the shared database, with carol as auditor."""
    path = write_config(pki, state, mp, api)
    text = path.read_text()
    default_db = '# database = "sqlite:///state/proxyd.db"   (the default)'
    assert default_db in text and "\n[policy]\n" in text
    text = text.replace(default_db, f'database = "{database}"')
    # The dev config names its own auditor; carol takes that key (a TOML key appears once).
    text = re.sub(r"(?m)^auditors = .*\n", "", text)
    text = text.replace("\n[policy]\n", f'\n[policy]\nauditors = ["{CAROL}"]\n', 1)
    path.write_text(text)
    return path


def _wait_port(instance: Instance, port: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if instance.proc.poll() is not None:
            raise AssertionError(f"proxyd {instance.name} exited: {instance.log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"proxyd {instance.name} never opened port {port}")


def _start(name: str, pki: DevPKI, state: Path, database: str, logs: Path) -> Instance:
    mp, api = free_port(), free_port()
    config = _config(pki, state, database, mp, api)
    log = logs / f"proxyd-{name}.log"
    with log.open("wb") as out:  # a file, not a pipe: hundreds of access-log lines
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxyd.cli.main", "serve", "--config", str(config)],
            stdout=out,
            stderr=out,
        )
    instance = Instance(name, mp, api, proc, log)
    try:
        _wait_port(instance, mp)
        _wait_port(instance, api)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return instance


@pytest.fixture
def pair(dev_pki: DevPKI, tmp_path: Path, postgres_url: str) -> Iterator[Pair]:
    tmp_path.chmod(0o700)
    state = tmp_path / "state"  # one master key file for both
    creds: dict[str, Path] = {}
    for who in ("alice", "carol", "wms", "pilot"):
        ident = load_identity(dev_pki, who)
        creds[who] = tmp_path / f"{who}.pem"
        write_credential_file(creds[who], Credential(ident.certificates, ident.key))
    # One after the other: the first migrates the database and creates the master key.
    a = _start("A", dev_pki, state, postgres_url, tmp_path)
    instances = [a]
    try:
        instances.append(_start("B", dev_pki, state, postgres_url, tmp_path))
        yield Pair(a, instances[1], dev_pki, postgres_url, creds)
    finally:
        for instance in instances:
            instance.proc.send_signal(signal.SIGTERM)
        for instance in instances:
            instance.proc.wait(30)
    for instance in instances:
        assert instance.proc.returncode == 0, instance.log.read_text()[-3000:]
        assert "Traceback" not in instance.log.read_text()


def _delegate(client: ApiClient, ident: Identity, **options: object) -> None:
    """Both delegation steps on one instance (the pending key lives in its memory)."""
    started = client.request("POST", "/v1/delegations", options)
    assert started.status == 201, started.body
    proxy = (
        ProxyBuilder(ident.cert, ident.chain)
        .from_csr(x509.load_pem_x509_csr(started.json["csr"].encode()))
        .lifetime(dt.timedelta(days=2))
        .sign(ident.key)
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (proxy, ident.cert))
    done = client.request("PUT", f"/v1/delegations/{started.json['id']}", {"chain": chain.decode()})
    assert done.status == 201, done.body


def _csr() -> str:
    return csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()


@contextlib.contextmanager
def _audit(pair: Pair) -> Iterator[AuditLog]:
    engine = make_engine(pair.database)
    try:
        yield AuditLog(engine)
    finally:
        engine.dispose()


def test_stored_on_one_instance_is_served_by_the_other(pair: Pair) -> None:
    alice = load_identity(pair.pki, "alice")
    # MyProxy PUT to A, passphrase GET from B.
    pair.myproxy(pair.a, "alice").put("alice-mp", PASSPHRASE, (alice.cert, alice.key, ()))
    chain = pair.myproxy(pair.b).get("alice-mp", PASSPHRASE, key=spare_key(4), lifetime=3600)
    assert validate_chain(chain, trust_of(pair.pki)).identity == ALICE

    # API delegation on A, trusted retrieval by the WMS from B.
    _delegate(
        pair.api(pair.a, "alice"),
        alice,
        username="alice",
        name="wms",
        trusted_retrievers=["*/CN=wms.localhost"],
    )
    reply = pair.api(pair.b, "wms").request(
        "POST", "/v1/credentials/wms/proxy?username=alice", {"csr": _csr(), "lifetime": 3600}
    )
    assert reply.status == 200, reply.body
    assert reply.json["limited"] is True
    # And the owner sees it from either side.
    for instance in (pair.a, pair.b):
        listed = pair.api(instance, "alice").request("GET", "/v1/credentials?username=alice")
        assert [c["name"] for c in listed.json] == ["wms"]


def test_concurrent_issuance_on_both_keeps_one_chain(pair: Pair) -> None:
    alice = load_identity(pair.pki, "alice")
    _delegate(
        pair.api(pair.a, "alice"),
        alice,
        username="alice",
        name="default",
        trusted_retrievers=["*/CN=wms.localhost"],
    )
    pair.myproxy(pair.b, "alice").put("alice-mp", PASSPHRASE, (alice.cert, alice.key, ()))
    since = dt.datetime.now(dt.UTC)
    csr = _csr()

    def by_api(i: int) -> str:
        instance = (pair.a, pair.b)[i % 2]
        reply = pair.api(instance, "wms").request(
            "POST", "/v1/credentials/default/proxy?username=alice", {"csr": csr, "lifetime": 600}
        )
        assert reply.status == 200, reply.body
        return str(reply.json["serial"])

    def by_myproxy(i: int) -> str:
        instance = (pair.a, pair.b)[i % 2]
        chain = pair.myproxy(instance).get("alice-mp", PASSPHRASE, key=spare_key(4), lifetime=600)
        return str(chain[0].serial_number)

    with ThreadPoolExecutor(8) as pool:
        api_jobs = [pool.submit(by_api, i) for i in range(32)]
        mp_jobs = [pool.submit(by_myproxy, i) for i in range(12)]
        serials = [j.result(60) for j in (*api_jobs, *mp_jobs)]
    assert len(set(serials)) == len(serials) == 44

    with _audit(pair) as audit:
        issued = audit.query(operation="retrieve", decision="allow", since=since, limit=1000)
        assert sorted(s.event.serial or "" for s in issued) == sorted(serials)
        report = audit.verify()
        assert report.ok, report
        head = audit.query(limit=1)[0].seq
        assert report.checked == head  # one chain: seqs 1..head, every link verified
        # Through the API of either instance, the auditor sees the same verified chain.
        verified = pair.api(pair.b, "carol").request("GET", "/v1/audit/verify").json
        assert verified["ok"] is True and verified["checked"] >= head


def test_pilots_on_both_instances_never_get_the_same_task(pair: Pair) -> None:
    alice = load_identity(pair.pki, "alice")
    _delegate(pair.api(pair.a, "alice"), alice, username="alice", name="default")
    task = {
        "vo": "dteam",
        "group": "/dteam",
        "fqans": ["/dteam"],
        "credential": {"username": "alice", "name": "default"},
        "payload": {"command": "/bin/true"},
        "max_wall_s": 600,
    }

    def submit(_: int) -> int:
        reply = pair.api(pair.a, "alice").request("POST", "/v1/tasks", task)
        assert reply.status == 201, reply.body
        return int(reply.json["id"])

    with ThreadPoolExecutor(4) as pool:
        submitted = list(pool.map(submit, range(TASKS)))
    assert len(set(submitted)) == TASKS

    lock = threading.Lock()
    matched: list[int] = []
    deadline = time.monotonic() + 45

    def pilot(n: int) -> tuple[str, list[int]]:
        instance = (pair.a, pair.b)[n % 2]
        client = pair.api(instance, "pilot")
        caps = {"site": f"SITE-{n % 3}", "pilot_id": f"{instance.name}-{n}"}
        mine: list[int] = []
        while time.monotonic() < deadline:
            reply = client.request("POST", "/v1/pilot/match", caps)
            if reply.status == 200:
                mine.append(int(reply.json["id"]))
                with lock:
                    matched.append(mine[-1])
            elif reply.status == 204:
                with lock:  # SKIP LOCKED may pass over tasks other pilots are claiming
                    if len(matched) >= TASKS:
                        break
                time.sleep(0.02)
            else:
                raise AssertionError((reply.status, reply.body))
        return caps["pilot_id"], mine

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(pilot, range(8)))

    assert Counter(matched).most_common(1)[0][1] == 1, "a task was matched twice"
    assert sorted(matched) == sorted(submitted)
    per_instance = Counter(pid.split("-")[0] for pid, mine in results for _ in mine)
    assert per_instance["A"] > 0 and per_instance["B"] > 0, per_instance

    # The audit chain agrees: one task.match per task, naming the pilot job that got it.
    with _audit(pair) as audit:
        events = audit.query(operation="task.match", limit=10 * TASKS)
        by_task: dict[int, list[str]] = {}
        for stored in events:
            found = re.match(r"task (\d+) to pilot (\S+) ", stored.event.detail or "")
            assert found is not None and stored.event.actor_dn == PILOT
            by_task.setdefault(int(found.group(1)), []).append(found.group(2))
        expected = {task_id: [pid] for pid, mine in results for task_id in mine}
        assert by_task == expected
        assert audit.verify().ok
