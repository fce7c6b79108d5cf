"""kill -9 in the middle of traffic, on SQLite (WAL) and PostgreSQL: nothing acknowledged is lost.

Four client threads store credentials (MyProxy PUT, half with a passphrase,
half for trusted retrieval) and retrieve earlier ones (MyProxy GET), CRASH_OPS
operations in all. Half way through, the server process gets SIGKILL while
operations are in flight, and is started again on the same state. Then:

- every store the client saw acknowledged (the final OK) is retrievable,
  with a valid chain of the right owner;
- every other store attempt either retrieves correctly (it committed, the
  OK was lost) or is cleanly "not found": no half-written credential;
- every retrieval during the run returned a valid chain of the right owner
  for the client's own key, or failed cleanly;
- the audit hash chain verifies, and every acknowledged store is in it.

Default: 250 operations per backend (~15 s each); PROXYD_LONG_TESTS=1: 1,000.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from proxyd.audit import AuditLog, AuditWriteError
from proxyd.devpki import DevPKI, user_dn
from proxyd.myproxy.client import MyProxyClientError
from proxyd.repository import StoreOptions
from proxyd.store.db import make_engine
from proxyd.store.models import CredentialRow
from tests.reliability.support import ClientFiles, ServeProcess, client_files, report, scaled
from tests.support.grid import delegate, load_identity, make_repository, spare_key, trust_of
from voms_ext import TrustStore, validate_chain

CRASH_OPS = scaled(250, 1000)
THREADS = 4
USERS = ("alice", "bob", "carol")
CLEAN_REFUSALS = ("No credentials exist",)


@dataclasses.dataclass
class Attempt:
    username: str
    owner: str
    passphrase: str  # "" = stored for trusted retrieval
    acked: bool = False


@dataclasses.dataclass
class Run:
    server: ServeProcess
    files: dict[str, ClientFiles]
    wms: ClientFiles
    trust: TrustStore
    attempts: dict[str, Attempt] = dataclasses.field(default_factory=dict)
    ops: int = 0
    outage_failures: int = 0
    internal_errors: int = 0
    retrievals_ok: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def next_op(self) -> int | None:
        with self.lock:
            if self.ops >= CRASH_OPS:
                return None
            self.ops += 1
            return self.ops


class Outage(Exception):
    """The connection failed or was cut: the server is down or died mid-operation."""


def _retrieve(run: Run, attempt: Attempt, key_index: int) -> str:
    """'ok' or 'absent'; Outage if the server went away; AssertionError for an unclean answer."""
    key = spare_key(key_index)
    if attempt.passphrase:
        client = run.server.myproxy(timeout=30)
    else:
        client = run.server.myproxy(run.wms.credential, timeout=30)
    try:
        chain = client.get(attempt.username, attempt.passphrase, key=key, lifetime=3600)
    except MyProxyClientError as exc:
        if not exc.errors:
            raise Outage(str(exc)) from None
        if any(text in str(exc) for text in CLEAN_REFUSALS):
            return "absent"
        raise AssertionError(f"{attempt.username}: unclean refusal: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise Outage(str(exc)) from None
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    issued = (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert issued == ours, f"{attempt.username}: the proxy is not for the client's key"
    result = validate_chain(chain, run.trust)
    assert result.identity == attempt.owner, (attempt.username, result.identity)
    if not attempt.passphrase:
        assert result.is_limited, "trusted retrieval must yield a limited proxy (I3)"
    return "ok"


def _store(run: Run, files: ClientFiles, attempt: Attempt) -> None:
    try:
        run.server.myproxy(files.credential, timeout=30).put(
            attempt.username,
            attempt.passphrase,
            files.issuer,  # type: ignore[arg-type]
            trusted_retrievers=None if attempt.passphrase else "*/CN=wms.localhost",
        )
    except MyProxyClientError as exc:
        if not exc.errors:
            raise Outage(str(exc)) from None
        raise
    except (OSError, ssl.SSLError) as exc:
        raise Outage(str(exc)) from None
    attempt.acked = True


def _worker(run: Run, index: int, rng: random.Random) -> None:
    user = USERS[index % len(USERS)]
    files = run.files[user]
    count = 0
    while (op := run.next_op()) is not None:
        with run.lock:
            acked = [a for a in run.attempts.values() if a.acked]
        try:
            if acked and rng.random() < 0.4:
                attempt = rng.choice(acked)
                if _retrieve(run, attempt, 3 + index % 2) != "ok":
                    raise AssertionError(f"{attempt.username}: acknowledged, then not found")
                with run.lock:
                    run.retrievals_ok += 1
            else:
                count += 1
                passphrase = f"pp-{secrets.token_hex(6)}" if rng.random() < 0.5 else ""
                attempt = Attempt(f"crash-{index}-{count}", user_dn(user), passphrase)
                with run.lock:
                    run.attempts[attempt.username] = attempt
                _store(run, files, attempt)
        except Outage as exc:
            refused = "Connection refused" in str(exc)
            with run.lock:
                if refused:  # the server is not up yet: nothing was attempted, try again
                    run.ops -= 1
                    if not attempt.acked and attempt.username.startswith("crash-"):
                        run.attempts.pop(attempt.username, None)
                else:
                    run.outage_failures += 1
            time.sleep(0.2 if refused else 0.05)
        except MyProxyClientError as exc:
            with run.lock:
                run.internal_errors += "internal server error" in str(exc)
                run.problems.append(f"op {op}: {exc}")
        except AssertionError as exc:
            with run.lock:
                run.problems.append(f"op {op}: {exc}")


def _killer(run: Run) -> None:
    while run.ops < CRASH_OPS // 2:
        time.sleep(0.01)
    run.server.kill9()
    time.sleep(0.5)
    run.server.start()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("postgres_url")


def test_kill_9_loses_no_acknowledged_store(
    dev_pki: DevPKI, tmp_path: Path, database: str | None
) -> None:
    server = ServeProcess(dev_pki, tmp_path / "state", database=database).start()
    creds = tmp_path / "creds"
    run = Run(
        server,
        {u: client_files(dev_pki, creds, u) for u in USERS},
        client_files(dev_pki, creds, "wms", proxy=False),
        trust_of(dev_pki),
    )
    started = time.monotonic()
    try:
        threads = [
            threading.Thread(target=_worker, args=(run, i, random.Random(i)), name=f"client-{i}")
            for i in range(THREADS)
        ]
        killer = threading.Thread(target=_killer, args=(run,), name="killer")
        for t in [*threads, killer]:
            t.start()
        for t in [*threads, killer]:
            t.join(600)
        assert server.starts == 2, "the server was not killed and restarted"
        # After the restart: every attempt either retrieves correctly or is cleanly absent.
        outcomes = {"ok": 0, "absent": 0}
        for attempt in run.attempts.values():
            outcome = _retrieve(run, attempt, 5)
            assert outcome == "ok" or not attempt.acked, f"{attempt.username} was acknowledged"
            outcomes[outcome] += 1
    finally:
        server.stop()
    causes = server.internal_errors()
    url = database or f"sqlite:///{tmp_path / 'state' / 'proxyd.db'}"
    engine = make_engine(url)
    try:
        verdict = AuditLog(engine).verify()
        store_events = Counter(
            e.event.owner_dn
            for e in AuditLog(engine).query(operation="store", decision="allow", limit=100_000)
        )
        with engine.connect() as conn:
            rows = conn.execute(select(CredentialRow.username, CredentialRow.owner_dn)).all()
    finally:
        engine.dispose()
    acked = [a for a in run.attempts.values() if a.acked]
    # Audit events name owner and credential name, not the username: compare counts per owner.
    rows_per_owner = Counter(r.owner_dn for r in rows)
    unaudited = sum(max(0, n - store_events[owner]) for owner, n in rows_per_owner.items())
    report(
        f"crash-safety[{'postgresql' if database else 'sqlite'}]: {CRASH_OPS} ops in "
        f"{time.monotonic() - started:.1f} s, kill -9 at op {CRASH_OPS // 2}; stores attempted "
        f"{len(run.attempts)}, acknowledged {len(acked)}, retrievals during the run "
        f"{run.retrievals_ok}, failed during the outage {run.outage_failures}; after restart: "
        f"{outcomes['ok']} retrievable, {outcomes['absent']} cleanly absent; audit chain "
        f"{'ok' if verdict.ok else 'BROKEN'} ({verdict.checked} events); credentials without a "
        f"store event: {unaudited}; internal errors {dict(causes)}"
    )
    assert not run.problems, run.problems[:5]
    assert run.internal_errors == 0 and not causes, server.log()[-3000:]
    assert verdict.ok, verdict
    assert outcomes["ok"] >= len(acked) > 0
    assert run.outage_failures > 0, "the kill hit no operation in flight"


def test_a_store_whose_audit_write_fails_is_not_stored(dev_pki: DevPKI, tmp_path: Path) -> None:
    """I6: the store and its audit event commit together; a failed append stores nothing.

    The append fails inside the database, as a full disk or a constraint
    would make it fail: a trigger aborts the insert of a store/allow event.
    (Before the fix the credential row was committed in a transaction of its
    own and stayed stored, usable and unaudited.)
    """
    repo = make_repository(dev_pki, tmp_path / "state")
    with repo.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER audit_full BEFORE INSERT ON audit_events "
            "WHEN NEW.operation = 'store' AND NEW.decision = 'allow' "
            "BEGIN SELECT RAISE(ABORT, 'the audit database is full'); END"
        )
    try:
        with pytest.raises(AuditWriteError, match="audit database is full"):
            delegate(
                repo,
                load_identity(dev_pki, "alice"),
                StoreOptions("alice-audit", passphrase="audit pass 1"),
            )
        with repo.engine.connect() as conn:
            stored = conn.execute(
                select(CredentialRow.id).where(CredentialRow.username == "alice-audit")
            ).all()
        assert stored == [], "the credential was stored although its audit event was not"
        assert repo.audit.verify().ok
    finally:
        repo.engine.dispose()
