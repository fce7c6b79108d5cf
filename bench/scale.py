"""Scale: how proxyd behaves with many stored credentials, audit events and queued tasks.

    .venv/bin/python -m bench.scale [--quick] [--parts creds,audit,tasks]

Three measurements (issue #8, part 3), each through the real code paths on
databases filled in bulk with SQL:

(a) creds: trusted retrieval (`Repository.retrieve`, the MyProxy GET of a
    WMS host: lookup, policy, unseal, sign a limited proxy, audit) with 1k
    and with 1M stored credentials, on SQLite and on PostgreSQL. The two
    sizes run side by side and are measured interleaved, so other load on
    the machine hits both alike; the figure is p99(large) / p99(small).
(b) audit: on PostgreSQL with 10M hash-chained events (10k owners, six
    months): `AuditLog.append` rate with several writer processes, and the
    p99 of a typical auditor query, `AuditLog.query(owner=..., since=...,
    until=...)` first page (100, newest first, as the API and the UI ask).
(c) tasks: `SqlTaskQueue.match` on PostgreSQL with 100k queued tasks and
    50 concurrent pilots (each its own connection, as in tests/taskqueue),
    counting double assignments from what the pilots got, from the task
    rows and from the audit chain.

`--quick` uses 1k vs 100k credentials, 1M audit events and 20k tasks
(about 5 minutes). Each part creates its own databases (PostgreSQL:
`proxyd_scale_<pid>_*`, SQLite: in a temp dir) and drops them at the end
unless `--keep`. The PostgreSQL server is `PROXYD_BENCH_POSTGRES` (default
postgresql://postgres@127.0.0.1:5432/test, the admin connection that
creates and drops the databases). The last line printed is the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import Engine, func, insert, select, text

from bench.common import (
    LoadResult,
    heading,
    load_cert,
    load_key,
    machine_line,
    percentile,
    run_load,
    say,
    write_keys,
)
from proxyd.audit import GENESIS_HASH, AuditEvent, AuditLog, canonical, chain_hash
from proxyd.config import Config, load_config
from proxyd.core.values import credential_aad
from proxyd.devpki import WMS_HOST, DevPKI, generate
from proxyd.principal import classify as classify_principal
from proxyd.repository import Repository, StoreOptions
from proxyd.sealing import seal
from proxyd.store.db import make_engine, migrate
from proxyd.store.models import AuditRow, CredentialRow, TaskRow
from proxyd.taskqueue.model import Payload, PilotCapabilities, Requirements, TaskSpec
from proxyd.taskqueue.sql import SqlTaskQueue
from voms_ext import ProxyBuilder, load_credential_file, validate_chain
from voms_ext.files import private_key_to_pem

PG_ADMIN_URL = os.environ.get("PROXYD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
USER_DN = "/C=XX/O=proxyd dev/OU=Users/CN={}"
PILOT_DN = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
C = CredentialRow.__table__.c


# --- PostgreSQL databases of our own -----------------------------------------------------------


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


@contextlib.contextmanager
def pg_database(tag: str, keep: bool = False) -> Iterator[str]:
    """A fresh database `proxyd_scale_<pid>_<tag>` as an SQLAlchemy URL; dropped afterwards."""
    name = f"proxyd_scale_{os.getpid()}_{tag}"
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        if keep:
            say(f"(kept database {name})")
        else:
            with _pg_admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_backends(url: str) -> list[int]:
    """Pids of the PostgreSQL backends connected to `url`'s database (for their CPU time)."""
    name = url.rsplit("/", 1)[1]
    with _pg_admin() as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def wait_for_connections(needed: int, timeout: float = 600) -> None:
    """Wait until the shared server has `needed` connections to spare (other people's test
    suites use it too), so that the load does not fail with "too many clients"."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        with _pg_admin() as admin:
            row = admin.execute(
                "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity"
            ).fetchone()
        free = int(row[0]) if row else 0
        if free >= needed + 5 or time.monotonic() > deadline:
            return
        if not said:
            say(f"  (waiting for {needed} free PostgreSQL connections; {free} free now)")
            said = True
        time.sleep(5)


def pg_size(url: str) -> str:
    name = url.rsplit("/", 1)[1]
    with _pg_admin() as admin:
        row = admin.execute("SELECT pg_size_pretty(pg_database_size(%s))", (name,)).fetchone()
    return str(row[0]) if row else "?"


# --- (a) retrieval with many stored credentials -------------------------------------------------

CRED_NAME = "default"


@dataclasses.dataclass
class CredsSetup:
    """A Repository on one database, the template credential stored through it, and the rest."""

    repo: Repository
    url: str
    count: int
    load_s: float


def _config_for(config: Config, url: str) -> Config:
    return dataclasses.replace(config, server=dataclasses.replace(config.server, database=url))


def store_template(repo: Repository, pki: DevPKI) -> tuple[bytes, dict[str, Any]]:
    """Alice delegates one credential for the WMS host, the MyProxy way (begin/finish_store);
    returns its key (PEM) and its row as stored, the template of the bulk rows."""
    cert, key = load_cert(pki.user("alice")[0]), load_key(pki.user("alice")[1])
    alice = classify_principal(validate_chain([cert], repo.trust), repo.config.policy, "127.0.0.1")
    options = StoreOptions(
        username=_username(0), name=CRED_NAME, trusted_retrievers=(f"*/CN={WMS_HOST}",)
    )
    pending = repo.begin_store(alice, options)
    assert pending.key is not None
    proxy = ProxyBuilder(cert, []).from_csr(pending.csr).lifetime(dt.timedelta(days=7)).sign(key)
    repo.finish_store(pending, (proxy, cert))
    with repo.engine.connect() as conn:
        row = conn.execute(select(CredentialRow.__table__).where(C.username == _username(0))).one()
    return private_key_to_pem(pending.key), dict(row._mapping)


def _username(i: int) -> str:
    return f"user{i:07d}"


def _credential_rows(
    repo: Repository, template: dict[str, Any], key_pem: bytes, first: int, last: int
) -> Iterator[dict[str, Any]]:
    """Rows `first`..`last - 1` like the template, each key sealed for its own row (the AAD
    binds a sealed key to its username and name, so a copied blob would not open)."""
    for i in range(first, last):
        username = _username(i)
        sealed = seal(
            key_pem, passphrase=None, keyring=repo.keyring, aad=credential_aad(username, CRED_NAME)
        )
        yield {**template, "username": username, "sealed_key": sealed.to_bytes()}


_CRED_COLUMNS = [c.name for c in CredentialRow.__table__.columns if c.name != "id"]


def fill_credentials(repo: Repository, template: dict[str, Any], key_pem: bytes, n: int) -> None:
    """Credentials 1..n-1 in bulk: PostgreSQL COPY, SQLite executemany (SQLAlchemy Core)."""
    chunk = 20_000
    if repo.engine.dialect.name == "postgresql":
        raw = repo.engine.raw_connection()
        try:
            cur = raw.cursor()
            cols = ", ".join(_CRED_COLUMNS)
            with cur.copy(f"COPY credentials ({cols}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in _credential_rows(repo, template, key_pem, 1, n):
                    copy.write_row([_pg_value(row[c]) for c in _CRED_COLUMNS])
            raw.commit()
        finally:
            raw.close()
        return
    table = CredentialRow.__table__
    for start in range(1, n, chunk):
        values = [
            {k: v for k, v in r.items() if k != "id"}
            for r in _credential_rows(repo, template, key_pem, start, min(start + chunk, n))
        ]
        with repo.engine.begin() as conn:
            conn.execute(insert(table), values)


def _pg_value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | dict) else v


def open_creds(config: Config, url: str, pki: DevPKI, count: int, label: str) -> CredsSetup:
    t0 = time.perf_counter()
    repo = Repository.open(_config_for(config, url))
    key_pem, template = store_template(repo, pki)
    fill_credentials(repo, template, key_pem, count)
    with repo.engine.connect() as conn:
        if repo.engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("VACUUM ANALYZE credentials"))
        else:
            conn.execute(text("ANALYZE"))
        stored = conn.execute(select(func.count()).select_from(CredentialRow)).scalar_one()
    if stored != count:
        raise RuntimeError(f"{label}: {stored} credentials stored, expected {count}")
    load_s = time.perf_counter() - t0
    say(f"  {label}: {count} credentials stored in {load_s:.1f} s")
    return CredsSetup(repo, url, count, load_s)


@dataclasses.dataclass
class RetrieveResult:
    backend: str
    small: CredsSetup
    large: CredsSetup
    retrieve: dict[int, list[float]]  # count -> sorted latencies (s) of Repository.retrieve
    lookup: dict[int, list[float]]  # count -> sorted latencies (s) of the lookup alone
    plan: list[str]

    def p(self, kind: str, count: int, q: float) -> float:
        values = (self.retrieve if kind == "retrieve" else self.lookup)[count]
        return percentile(values, q) * 1000

    def ratio(self, kind: str = "retrieve") -> float:
        return self.p(kind, self.large.count, 99) / self.p(kind, self.small.count, 99)


def measure_retrieval(
    backend: str, small: CredsSetup, large: CredsSetup, pki: DevPKI, probes: int, root: Path
) -> RetrieveResult:
    """Trusted retrieval by the WMS host (Repository.retrieve, no VOMS: the MyProxy GET) of
    random stored credentials, alternating between the two databases request by request."""
    wms_cert = load_credential_file(pki.host("wms")[0]).certificate
    key = load_key(write_keys(root / "keys", 1)[0])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "proxy")]))
        .sign(key, hashes.SHA256())
    )
    rng = random.Random(3)
    setups = (small, large)
    principals = {
        s.count: classify_principal(
            validate_chain([wms_cert, load_cert(pki.ca_cert)], s.repo.trust),
            s.repo.config.policy,
            "127.0.0.1",
        )
        for s in setups
    }
    retrieve: dict[int, list[float]] = {s.count: [] for s in setups}
    lookup: dict[int, list[float]] = {s.count: [] for s in setups}
    warm = max(50, probes // 10)
    for i in range(warm + probes):
        order = setups if i % 2 == 0 else setups[::-1]
        for s in order:
            username = _username(rng.randrange(s.count))
            t0 = time.perf_counter()
            facts = s.repo.challenge_facts(username, CRED_NAME)  # the edge's lookup alone
            if facts is None or facts.has_passphrase:
                raise RuntimeError(f"{username} is missing or has a passphrase")
            t1 = time.perf_counter()
            issued = s.repo.retrieve(principals[s.count], username, csr, name=CRED_NAME)
            t2 = time.perf_counter()
            if issued.proxy.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
                raise RuntimeError("the issued proxy is not for our key")
            if i >= warm:
                lookup[s.count].append(t1 - t0)
                retrieve[s.count].append(t2 - t1)
    for v in (*retrieve.values(), *lookup.values()):
        v.sort()
    plan = explain(
        large.repo.engine,
        select(CredentialRow).where(C.username == _username(large.count // 2), C.name == CRED_NAME),
    )
    return RetrieveResult(backend, small, large, retrieve, lookup, plan)


def explain(engine: Engine, stmt: Any) -> list[str]:
    """The query plan of `stmt` with its measured run (PostgreSQL: EXPLAIN ANALYZE)."""
    compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
    prefix = (
        "EXPLAIN (ANALYZE, BUFFERS)"
        if engine.dialect.name == "postgresql"
        else "EXPLAIN QUERY PLAN"
    )
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"{prefix} {compiled}").all()
    return [str(r[-1]) for r in rows]


def report_retrieval(r: RetrieveResult) -> str:
    say(f"  {'stored':>9} {'retrieve p50':>13} {'p99 ms':>8} {'lookup p50':>11} {'p99 ms':>8}")
    for s in (r.small, r.large):
        say(
            f"  {s.count:>9} {r.p('retrieve', s.count, 50):>13.2f} {r.p('retrieve', s.count, 99):>8.2f}"
            f" {r.p('lookup', s.count, 50):>11.3f} {r.p('lookup', s.count, 99):>8.3f}"
        )
    say(f"  plan of the lookup with {r.large.count} stored:")
    for line in r.plan:
        say(f"    {line}")
    ratio = r.ratio()
    verdict = "met" if ratio <= 1.2 else "MISSED"
    say(
        f"  p99({r.large.count}) / p99({r.small.count}): retrieve {ratio:.2f}, "
        f"lookup alone {r.ratio('lookup'):.2f} (target retrieve <= 1.2: {verdict})"
    )
    return f"creds {r.backend}: p99 ratio {ratio:.2f} ({r.large.count} vs {r.small.count}; target <= 1.2) {verdict}"


def bench_creds(
    backend: str, config: Config, pki: DevPKI, sizes: Sizes, probes: int, root: Path, keep: bool
) -> str:
    heading(
        f"(a) trusted retrieval on {backend}: {sizes.creds_small} vs {sizes.creds_large} "
        f"stored credentials, {probes} retrievals each, interleaved"
    )
    with contextlib.ExitStack() as stack:
        urls = []
        for count in (sizes.creds_small, sizes.creds_large):
            if backend == "postgresql":
                urls.append(stack.enter_context(pg_database(f"creds{count}", keep)))
            else:
                urls.append(f"sqlite:///{root / f'creds{count}' / 'proxyd.db'}")
        small = open_creds(config, urls[0], pki, sizes.creds_small, f"{backend} small")
        large = open_creds(config, urls[1], pki, sizes.creds_large, f"{backend} large")
        try:
            size = (
                pg_size(urls[1])
                if backend == "postgresql"
                else f"{(root / f'creds{sizes.creds_large}' / 'proxyd.db').stat().st_size / 2**30:.1f} GiB"
            )
            say(f"  database with {sizes.creds_large} credentials: {size}")
            result = measure_retrieval(backend, small, large, pki, probes, root)
        finally:
            small.repo.engine.dispose()
            large.repo.engine.dispose()
        if backend == "sqlite" and not keep:
            for count in (sizes.creds_small, sizes.creds_large):
                shutil.rmtree(root / f"creds{count}", ignore_errors=True)
    return report_retrieval(result)


# --- (b) the audit log with many events -------------------------------------------------------------

AUDIT_OWNERS = 10_000
AUDIT_DAYS = 180
AUDIT_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WMS_HOSTS = [f"/C=XX/O=proxyd dev/OU=Hosts/CN=wms{i}.example" for i in range(20)]
PILOTS = [f"/C=XX/O=proxyd dev/OU=Pilots/CN=pilot{i}" for i in range(50)]
_AUDIT_COLUMNS = [c.name for c in AuditRow.__table__.columns]


def owner_weights(owners: int = AUDIT_OWNERS) -> list[float]:
    """Cumulative weights: a few owners are very active (the first ~2% of events), most are
    not (the median owner has about 2 in 100,000 events)."""
    cumulative, total = [], 0.0
    for rank in range(owners):
        total += (rank + 10) ** -1.1
        cumulative.append(total)
    return cumulative


def audit_events(n: int, seed: int = 10) -> Iterator[AuditEvent]:
    """`n` events over AUDIT_DAYS, in time order, with the mix a busy service logs:
    trusted retrievals by WMS hosts, stores and INFOs by owners, task matches by pilots,
    refusals."""
    rng = random.Random(seed)
    cumulative = owner_weights()
    step = AUDIT_DAYS * 86400 / n
    serial = 10**15
    for i in range(n):
        when = AUDIT_START + dt.timedelta(seconds=i * step + rng.random() * step)
        owner = USER_DN.format(
            f"user{rng.choices(range(AUDIT_OWNERS), cum_weights=cumulative)[0]:05d}"
        )
        kind = rng.random()
        serial += 1
        if kind < 0.70:
            yield AuditEvent(
                time=when,
                actor_dn=WMS_HOSTS[i % len(WMS_HOSTS)],
                actor_kind="host",
                peer=f"10.0.{i % 7}.{i % 251}",
                operation="retrieve",
                rule="retrieve.trusted",
                decision="allow",
                owner_dn=owner,
                credential_name="default",
                serial=str(serial),
                lifetime_s=43200,
                fqans=("/dteam/Role=NULL/Capability=NULL",),
                detail="limited",
            )
        elif kind < 0.80:
            yield AuditEvent(
                time=when,
                actor_dn=owner,
                actor_kind="user",
                peer=f"192.168.{i % 13}.{i % 241}",
                operation="store",
                rule="store.owner",
                decision="allow",
                owner_dn=owner,
                credential_name="default",
                lifetime_s=7 * 86400,
            )
        elif kind < 0.88:
            yield AuditEvent(
                time=when,
                actor_dn=owner,
                actor_kind="user",
                peer=f"192.168.{i % 13}.{i % 241}",
                operation="info",
                rule="info.owner",
                decision="allow",
                owner_dn=owner,
            )
        elif kind < 0.95:
            yield AuditEvent(
                time=when,
                actor_dn=PILOTS[i % len(PILOTS)],
                actor_kind="pilot",
                peer="",
                operation="task.match",
                rule="queue.fair_share",
                decision="allow",
                owner_dn=owner,
                credential_name="default",
                fqans=("/dteam",),
                detail=f"task {i} to pilot p{i % 977} at site SITE-{i % 10}; priority 0, attempt 1",
            )
        else:
            yield AuditEvent(
                time=when,
                actor_dn=WMS_HOSTS[i % len(WMS_HOSTS)],
                actor_kind="host",
                peer=f"10.0.{i % 7}.{i % 251}",
                operation="retrieve",
                rule="retrieve.not_trusted",
                decision="deny",
                owner_dn=owner,
                credential_name="default",
                detail="the credential does not name this host as a trusted retriever",
            )


def fill_audit(engine: Engine, n: int) -> tuple[float, float]:
    """`n` chained events (canonical form and hashes from proxyd.audit) by COPY, with the
    table's indexes dropped during the load and rebuilt after; the head set to the last row.
    Returns (seconds to generate and copy, seconds to rebuild the indexes)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_events' "
            "AND indexname <> 'pk_audit_events'"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        raw.commit()
        t0 = time.perf_counter()
        prev, seq = GENESIS_HASH, 0
        cols = ", ".join(_AUDIT_COLUMNS)
        with cur.copy(f"COPY audit_events ({cols}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for seq, event in enumerate(audit_events(n), start=1):
                digest = chain_hash(prev, canonical(seq, event))
                copy.write_row(
                    (
                        seq,
                        event.time,
                        event.actor_dn,
                        event.actor_kind,
                        event.peer,
                        event.operation,
                        event.owner_dn,
                        event.credential_name,
                        event.rule,
                        event.decision,
                        event.serial,
                        event.lifetime_s,
                        json.dumps(list(event.fqans)),
                        event.detail,
                        prev,
                        digest,
                    )
                )
                prev = digest
                if seq % 1_000_000 == 0:
                    say(f"    {seq} events written ({time.perf_counter() - t0:.0f} s)")
        cur.execute("UPDATE audit_head SET last_seq = %s, last_hash = %s WHERE id = 1", (seq, prev))
        raw.commit()
        copied = time.perf_counter() - t0
        t0 = time.perf_counter()
        cur.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            cur.execute(definition)
            raw.commit()
        driver = raw.driver_connection
        assert driver is not None
        driver.autocommit = True
        driver.execute("VACUUM ANALYZE audit_events")
        return copied, time.perf_counter() - t0
    finally:
        raw.close()


_SHARED_LOGS: dict[str, AuditLog] = {}


@dataclasses.dataclass(frozen=True)
class Append:
    """A writer per load thread, appending one event per call (`AuditLog.append`).

    shared=True: the writers of a load process share its AuditLog, as the
    request threads of a proxyd worker share `repo.audit` (their appends
    then share transactions: the group commit of proxyd.audit).
    shared=False: each writer has its own AuditLog and engine, as separate
    processes or instances would: a transaction per event.
    """

    url: str
    shared: bool

    def setup(self, slot: int) -> Callable[[], object]:
        if self.shared:
            log = _SHARED_LOGS.get(self.url)
            if log is None:
                log = _SHARED_LOGS[self.url] = AuditLog(make_engine(self.url))
        else:
            log = AuditLog(make_engine(self.url))
        now = dt.datetime.now(dt.UTC)
        events = [dataclasses.replace(e, time=now) for e in audit_events(1000, seed=100 + slot)]
        it = iter(range(10**12))

        def run() -> object:
            log.append(events[next(it) % len(events)])
            return None

        return run


@dataclasses.dataclass
class AuditResult:
    events: int
    copy_s: float
    index_s: float
    verify: str
    size: str
    plan: list[str]
    query: list[float]  # sorted latencies (s), owner + time range, first page
    worst: list[float]  # the most active owner, the whole range
    worst_plan: list[str]
    rows_per_page: float
    appends: list[tuple[int, bool, LoadResult]]  # (writers, shared log per process, result)


def bench_audit(
    url: str, events: int, probes: int, writers: Sequence[int], duration: float, verify: bool
) -> AuditResult:
    engine = make_engine(url)
    migrate(engine)
    copy_s, index_s = fill_audit(engine, events)
    say(f"  {events} events copied in {copy_s:.0f} s, indexes rebuilt in {index_s:.0f} s")
    audit = AuditLog(engine)
    verdict = "skipped"
    if verify:
        t0 = time.perf_counter()
        report = audit.verify()
        verdict = (
            f"ok, {report.checked} rows in {time.perf_counter() - t0:.0f} s"
            if report.ok
            else f"BROKEN at {report.first_bad_seq}: {report.reason}"
        )
        say(f"  AuditLog.verify: {verdict}")
    size = pg_size(url)
    rng = random.Random(5)
    end = AUDIT_START + dt.timedelta(days=AUDIT_DAYS)

    def probe() -> tuple[str, dt.datetime, dt.datetime]:
        owner = USER_DN.format(f"user{rng.randrange(AUDIT_OWNERS):05d}")
        days = rng.choice((7, 30))
        until = AUDIT_START + dt.timedelta(days=rng.uniform(days, AUDIT_DAYS))
        return owner, until - dt.timedelta(days=days), until

    owner, since, until = probe()
    plan = explain(
        engine,
        select(*AuditRow.__table__.c)
        .where(AuditRow.owner_dn == owner, AuditRow.time >= since, AuditRow.time < until)
        .order_by(AuditRow.seq.desc())
        .limit(100),
    )
    for _ in range(20):  # warm the connection pool and the statement
        audit.query(owner=owner, since=since, until=until, limit=100)
    latencies, rows = [], 0
    for _ in range(probes):
        owner, since, until = probe()
        t0 = time.perf_counter()
        page = audit.query(owner=owner, since=since, until=until, limit=100)
        latencies.append(time.perf_counter() - t0)
        rows += len(page)
    worst = []
    busiest = USER_DN.format("user00000")
    worst_plan = explain(
        engine,
        select(*AuditRow.__table__.c)
        .where(AuditRow.owner_dn == busiest, AuditRow.time >= AUDIT_START, AuditRow.time < end)
        .order_by(AuditRow.seq.desc())
        .limit(100),
    )
    for _ in range(max(20, probes // 10)):
        t0 = time.perf_counter()
        audit.query(owner=busiest, since=AUDIT_START, until=end, limit=100)
        worst.append(time.perf_counter() - t0)
    engine.dispose()
    appends = []
    for n in writers:
        for shared in (True, False):
            wait_for_connections(2 if shared else n)
            load = run_load(
                Append(url, shared),
                label=f"append ({'a log per process' if shared else 'a log per writer'})",
                concurrency=n,
                duration=duration,
                warmup=1.0,
                servers=lambda: pg_backends(url),
            )
            appends.append((n, shared, load))
    return AuditResult(
        events,
        copy_s,
        index_s,
        verdict,
        size,
        plan,
        sorted(latencies),
        sorted(worst),
        worst_plan,
        rows / probes,
        appends,
    )


def report_audit(r: AuditResult) -> list[str]:
    say(f"  database size {r.size}")
    say("  plan of the auditor query (owner, 7 or 30 days, first page of 100, newest first):")
    for line in r.plan:
        say(f"    {line}")
    q = [percentile(r.query, x) * 1000 for x in (50, 90, 99)]
    w = [percentile(r.worst, x) * 1000 for x in (50, 99)]
    say(
        f"  AuditLog.query(owner, since, until, limit=100): p50 {q[0]:.1f} ms, p90 {q[1]:.1f} ms, "
        f"p99 {q[2]:.1f} ms over {len(r.query)} random owners and ranges "
        f"({r.rows_per_page:.0f} rows per page on average)"
    )
    say(
        f"  the most active owner ({r.events * 2 // 100} events), all {AUDIT_DAYS} days: "
        f"p50 {w[0]:.1f} ms, p99 {w[1]:.1f} ms"
    )
    say("  its plan:")
    for line in r.worst_plan:
        say(f"    {line}")
    out = [
        f"audit query p99 {q[2]:.1f} ms with {r.events} events "
        f"(target < 50) {'met' if q[2] < 50 else 'MISSED'}"
    ]
    for writers, shared, load in r.appends:
        say("  " + load.line())
        for line in load.error_lines():
            say(line)
        pg = load.server_cpu_ms_per_op if load.server_cpu is not None else float("nan")
        say(
            f"    = {load.rate:.0f} events/s with {writers} writers in "
            f"{min(writers, os.cpu_count() or 1)} processes; CPU per "
            f"event: PostgreSQL {pg:.2f} ms, writers {load.client_cpu_ms_per_op:.2f} ms"
        )
        model = "a log per process" if shared else "a log per writer"
        verdict = "met" if load.rate >= 5000 else "MISSED"
        out.append(
            f"audit appends {load.rate:.0f}/s with {writers} writers, {model} "
            f"(target >= 5000) {verdict}"
        )
    return out


# --- (c) task matching -------------------------------------------------------------------------

GROUPS = ("/dteam", "/dteam/prod", "/dteam/analysis", "/dteam/sgm")
SITES = 10


def task_specs(count: int, owners: int, seed: int = 8) -> list[TaskSpec]:
    """`count` tasks of `owners` owners (a few owners submit most), spread over four groups.

    Most tasks run anywhere; some need one of two sites, a tag every pilot
    has, a tag one pilot in five has, or a platform; priorities 0..3.
    """
    rng = random.Random(seed)
    weights = [1 / (rank + 5) for rank in range(owners)]
    who = rng.choices(range(owners), weights, k=count)
    specs = []
    for i, owner in enumerate(who):
        kind = rng.random()
        req: dict[str, Any] = {}
        if kind < 0.15:
            site = rng.randrange(SITES)
            req["sites_allowed"] = frozenset({f"SITE-{site}", f"SITE-{(site + 1) % SITES}"})
        elif kind < 0.25:
            req["tags"] = frozenset({"cvmfs"})
        elif kind < 0.30:
            req["tags"] = frozenset({"gpu"})
        elif kind < 0.40:
            req["platform"] = "EL9-x86_64"
        specs.append(
            TaskSpec(
                owner=USER_DN.format(f"user{owner:05d}"),
                vo="dteam",
                group=GROUPS[owner % len(GROUPS)],
                credential_username=f"user{owner:05d}",
                priority=rng.choice((0, 0, 0, 1, 1, 2, 3)),
                requirements=Requirements(cpu_time=3600, memory_mb=2000, **req),
                payload=Payload("/usr/bin/run-job", ("--job", str(i)), (f"lfn:/dteam/in{i}.dat",)),
                max_wall_s=rng.choice((3600, 7200, 4 * 3600, 12 * 3600)),
            )
        )
    return specs


_SHARED_QUEUES: dict[str, SqlTaskQueue] = {}


@dataclasses.dataclass(frozen=True)
class Match:
    """One pilot per load thread.

    shared=False: each pilot has its own engine and queue object (a
    connection each), as tests/taskqueue drives them: the most contention.
    shared=True: the pilots of one load process share one queue object, as
    the requests of pilots share the queue of the `proxyd serve` worker
    that answers them (`--workers N`: one queue per worker process).
    """

    url: str
    shared: bool = False

    def setup(self, slot: int) -> Callable[[], object]:
        if self.shared:
            queue = _SHARED_QUEUES.get(self.url)
            if queue is None:
                queue = _SHARED_QUEUES[self.url] = SqlTaskQueue(make_engine(self.url))
        else:
            queue = SqlTaskQueue(make_engine(self.url))
        caps = PilotCapabilities(
            pilot_dn=PILOT_DN,
            pilot_id=f"pilot-{slot}",
            site=f"SITE-{slot % SITES}",
            ce=f"ce{slot % 2}.site-{slot % SITES}.example",
            platform="EL9-x86_64",
            tags=frozenset({"cvmfs", "gpu"} if slot % 5 == 0 else {"cvmfs"}),
            cpu_time_left=2 * 86400,
            memory_mb=4096,
        )

        def run() -> object:
            task = queue.match(caps)
            if task is None:
                raise LookupError("no task matched (queue empty?)")
            return (slot, task.id)

        return run


@dataclasses.dataclass
class TaskResult:
    load: LoadResult
    queued_before: int
    queued_after: int
    pilot_doubles: int  # task ids that more than one pilot call returned
    db_doubles: int  # tasks matched more than once (attempts > 1) in the task table
    audit_doubles: int  # tasks with more than one task.match event in the chain
    matched_rows: int
    match_events: int
    pilot_calls: int
    chain_ok: bool
    shared: bool
    insert_s: float
    pg_cpu_ms: float | None


def bench_tasks(
    url: str,
    *,
    tasks: int,
    owners: int,
    pilots: int,
    duration: float,
    warmup: float,
    shared: bool,
) -> TaskResult:
    engine = make_engine(url)
    migrate(engine)
    specs = task_specs(tasks, owners)
    t0 = time.perf_counter()
    queue = SqlTaskQueue(engine)
    for i in range(0, len(specs), 5000):
        queue.submit_many(specs[i : i + 5000])
    insert_s = time.perf_counter() - t0
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    say(f"  queued {tasks} tasks of {owners} owners in {insert_s:.1f} s (submit_many)")
    engine.dispose()
    wait_for_connections(2 if shared else pilots)
    load = run_load(
        Match(url, shared),
        label="match (shared queue)" if shared else "match (queue per pilot)",
        concurrency=pilots,
        duration=duration,
        warmup=warmup,
        servers=lambda: pg_backends(url),
    )
    engine = make_engine(url)
    try:
        ids = [task_id for _slot, task_id in load.values]
        pilot_doubles = sum(1 for n in Counter(ids).values() if n > 1)
        with engine.connect() as conn:
            states = dict(
                conn.execute(select(TaskRow.state, func.count()).group_by(TaskRow.state)).all()
            )
            db_doubles = conn.execute(
                select(func.count()).select_from(TaskRow).where(TaskRow.attempts > 1)
            ).scalar_one()
        audit = AuditLog(engine)
        per_task: Counter[int] = Counter()
        after = 0
        while page := audit.query(
            operation="task.match", after_seq=after, newest_first=False, limit=5000
        ):
            for stored in page:
                m = re.match(r"task (\d+) ", stored.event.detail or "")
                per_task[int(m.group(1)) if m else -1] += 1
            after = page[-1].seq
        chain = audit.verify()
    finally:
        engine.dispose()
    return TaskResult(
        load=load,
        queued_before=tasks,
        queued_after=states.get("waiting", 0) + states.get("rescheduled", 0),
        pilot_doubles=pilot_doubles,
        db_doubles=int(db_doubles),
        audit_doubles=sum(1 for n in per_task.values() if n > 1),
        matched_rows=states.get("matched", 0),
        match_events=sum(per_task.values()),
        pilot_calls=len(ids),
        chain_ok=chain.ok,
        shared=shared,
        insert_s=insert_s,
        pg_cpu_ms=load.server_cpu_ms_per_op if load.server_cpu is not None else None,
    )


def report_tasks(r: TaskResult, pilots: int) -> str:
    load = r.load
    say("  " + load.line())
    for line in load.error_lines():
        say(line)
    busy = f"{load.machine_busy * 100:.0f}%" if load.machine_busy is not None else "?"
    say(
        f"  queue {r.queued_before} -> {r.queued_after} waiting; machine CPU busy {busy} of "
        f"{os.cpu_count()} cores (everyone's); PostgreSQL backends "
        f"{r.pg_cpu_ms:.2f} ms CPU/match, pilots {load.client_cpu_ms_per_op:.2f} ms CPU/match"
    )
    say(
        f"  double assignments: {r.pilot_doubles} by the pilots' task ids "
        f"({r.pilot_calls} matches returned), {r.db_doubles} in the task table "
        f"({r.matched_rows} matched rows), {r.audit_doubles} in the audit chain "
        f"({r.match_events} task.match events; chain verifies: {r.chain_ok})"
    )
    doubles = r.pilot_doubles + r.db_doubles + r.audit_doubles
    consistent = r.pilot_calls == r.matched_rows == r.match_events
    verdict = "met" if load.rate >= 1000 and doubles == 0 and consistent else "MISSED"
    model = "shared queue per process" if r.shared else "queue per pilot"
    return (
        f"tasks ({model}): {load.rate:.0f} matches/s with {r.queued_before} queued, {pilots} "
        f"pilots (target >= 1000, no double assignment): {verdict}, doubles {doubles}"
    )


# --- main ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    creds_small: int  # stored credentials, the small and the large database
    creds_large: int
    audit_events: int
    tasks: int


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced sizes (about 5 minutes)")
    ap.add_argument("--parts", default="creds,audit,tasks", help="which measurements to run")
    ap.add_argument("--tasks", type=int, help="queued tasks (default 100k; quick 20k)")
    ap.add_argument("--owners", type=int, default=100, help="task owners")
    ap.add_argument("--pilots", type=int, default=50)
    ap.add_argument(
        "--pilot-model",
        default="shared,own",
        help="shared: pilots of a load process share its queue (as pilots share a proxyd "
        "worker's); own: a queue and connection per pilot (as tests/taskqueue)",
    )
    ap.add_argument("--duration", type=float, help="seconds measured per load point")
    ap.add_argument("--probes", type=int, help="retrievals / auditor queries measured")
    ap.add_argument("--writers", default="8,32", help="concurrent audit writers (list)")
    ap.add_argument("--verify", action="store_true", help="AuditLog.verify the full-size chain too")
    ap.add_argument("--keep", action="store_true", help="keep databases and temp files")
    args = ap.parse_args(argv)
    # A terminated run still drops its databases and removes its files (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = Sizes(
        creds_small=1000,
        creds_large=100_000 if args.quick else 1_000_000,
        audit_events=1_000_000 if args.quick else 10_000_000,
        tasks=args.tasks or (20_000 if args.quick else 100_000),
    )
    duration = args.duration or (5.0 if args.quick else 20.0)
    parts = set(args.parts.split(","))
    began = time.monotonic()
    say(machine_line())
    summary: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="proxyd-bench-scale-"))
    try:
        if "creds" in parts:
            pki = generate(root / "pki")
            config = load_config(pki.config)
            probes = args.probes or (1000 if args.quick else 3000)
            for backend in ("sqlite", "postgresql"):
                summary.append(bench_creds(backend, config, pki, sizes, probes, root, args.keep))
        if "audit" in parts:
            heading(
                f"(b) audit log on PostgreSQL: {sizes.audit_events} events of {AUDIT_OWNERS} "
                f"owners over {AUDIT_DAYS} days"
            )
            with pg_database("audit", args.keep) as url:
                r = bench_audit(
                    url,
                    sizes.audit_events,
                    probes=args.probes or (300 if args.quick else 1000),
                    writers=[int(w) for w in args.writers.split(",")],
                    duration=duration,
                    verify=args.quick or args.verify,
                )
                summary += report_audit(r)
        if "tasks" in parts:
            for model in args.pilot_model.split(","):
                shared = model == "shared"
                heading(
                    f"(c) task matching on PostgreSQL: {sizes.tasks} queued, {args.pilots} "
                    f"pilots, {'one queue per load process' if shared else 'a queue each'}, "
                    f"{duration:.0f} s"
                )
                with pg_database(f"tasks_{model}", args.keep) as url:
                    r = bench_tasks(
                        url,
                        tasks=sizes.tasks,
                        owners=args.owners,
                        pilots=args.pilots,
                        duration=duration,
                        warmup=1.0,
                        shared=shared,
                    )
                    summary.append(report_tasks(r, args.pilots))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    say(f"\n(total {time.monotonic() - began:.0f} s; {machine_line('at the end')})")
    say("scale: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
