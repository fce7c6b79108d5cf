"""I6 over every operation of the core (issue «One gate», item 7).

"Every decision is audited, and an effect commits with its audit event or not
at all." The operations are enumerated from the code: the public methods of
`Repository` and of `TaskService`. Each is a scenario below (allowed, and
refused where a refusal is natural) or is exempt with a reason; a new public
method with neither fails `test_every_operation_has_a_scenario_or_a_reason`.

For every scenario, on a fresh world (a copy of one prepared database):

* `test_a_failed_audit_write_leaves_no_effect`: with the `audit_head` row
  deleted every audit append fails at the database; the call must raise
  AuditWriteError (a read returns nothing) and no row of any table changes.
  (`rotate_master_key` also rewrites the key file, outside the database:
  only the rows must not change.)
* `test_one_decision_one_audit_row`: with a working log, the decisions made
  during the call (`DecisionTally`: those of `policy.decide`, and the
  refusals the core makes on its own, `Gate.refuse`) equal the decision rows
  it added; the task queue's records of what it did (`queue.*` rules) come
  only after the allow that let it act. An allowed call adds only allows, a
  refused one ends with its deny.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import inspect
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy import inspect as sa_inspect

from proxyd import policy
from proxyd.audit import AuditWriteError
from proxyd.config import Config
from proxyd.core.exchange import TokenIdentity
from proxyd.devpki import DevPKI, user_dn
from proxyd.issuer import AttributeAuthority, VomsRequest, load_authorities
from proxyd.policy import DecisionTally, Operation, current_tally
from proxyd.principal import Principal, PrincipalKind, anonymous, local_operator
from proxyd.reminders.settings import RemindersConfig
from proxyd.repository import (
    ChallengeFirst,
    PendingStore,
    Repository,
    RepositoryError,
    Retrieval,
    StoreOptions,
)
from proxyd.sealing import MasterKeyring
from proxyd.store.db import make_engine, migrate
from proxyd.store.members import MemberReads
from proxyd.store.models import AuditHeadRow, AuditRow, Base, CredentialRow
from proxyd.taskqueue import Accounting, Payload, PilotCapabilities, TaskFilter, TaskSpec
from proxyd.taskqueue.base import TaskQueue
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskService
from proxyd.tokens.profile import TokenFacts, TrustedIssuer
from proxyd.tokens.settings import TokensConfig
from tests.conftest import throwaway_postgres
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_proxy,
    make_test_config,
    principal,
    spare_key,
    trust_of,
)
from voms_ext import ProxyBuilder, TrustStore, validate_chain

ALICE = user_dn("alice")
BOB = user_dn("bob")
CAROL = user_dn("carol")  # admin and auditor in these tests
EVE = user_dn("eve")  # a DN to ban
PASS = "correct horse battery"
NEW_PASS = "battery staple horse"
ACC = Accounting(cpu_s=5.0, wall_s=6.0, exit_code=0)
# What a pilot offers (TaskService.match puts the authenticated DN in place of "any").
CAPS = PilotCapabilities("any", "pilot-1", "SITE-A", cpu_time_left=10**5)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
# Tables kept out of the "no effect" snapshot: the append point the test deletes.
NOT_SNAPSHOT = {AuditHeadRow.__tablename__}
# Tables of the database that are not proxyd's rows (alembic's bookkeeping).
NOT_MODELS = {"alembic_version"}


# --- the world ----------------------------------------------------------------------------------


class PresentedSecret:
    """The queue as `TaskService.payload_proxy` hands it to `Repository.payload_proxy`:
    the assignment says whether the asking pilot presented this secret."""

    def __init__(self, queue: TaskQueue, secret: str | None) -> None:
        self._queue = queue
        self._secret = secret

    def get(self, task_id: int) -> Any:
        return self._queue.get(task_id)

    def assignment(self, task_id: int, secret: str | None = None) -> Any:
        return self._queue.assignment(task_id, self._secret)


@dataclasses.dataclass
class World:
    """A repository, its SQL task queue and the TaskService on them, on a fresh database
    holding alice's credentials "alice" (trusted retrieval) and "alice"/"pp" (passphrase,
    key retrieval), and bob's "bob". `state` is what a setup hands to its call."""

    repo: Repository
    queue: SqlTaskQueue
    ids: dict[str, Identity]
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return self.repo.engine

    @functools.cached_property
    def service(self) -> TaskService:
        return TaskService(self.repo, self.queue)

    def who(self, name: str) -> Principal:
        if name == "anonymous":
            return anonymous("127.0.0.1")
        if name == "operator":
            return local_operator()
        return principal(self.repo, self.ids[name])

    # --- credentials

    def begin(self, who: str, options: StoreOptions) -> tuple[PendingStore, tuple[Any, ...]]:
        """A delegation begun by `who`'s local proxy, and the chain it signs for the CSR."""
        local = make_proxy(self.ids[who], key_index=2)
        pending = self.repo.begin_store(principal(self.repo, local), options)
        delegated = (
            ProxyBuilder(local.cert, local.chain)
            .from_csr(pending.csr)
            .lifetime(dt.timedelta(hours=12))
            .sign(local.key)
        )
        return pending, (delegated, *local.certificates)

    def proxy_principal(self, who: str) -> Principal:
        return principal(self.repo, make_proxy(self.ids[who], key_index=2))

    def pem(self, who: str) -> bytes:
        """A proxy of `who` with its key and chain, as MyProxy STORE sends it."""
        proxy = make_proxy(self.ids[who], key_index=4)
        cert = proxy.cert.public_bytes(serialization.Encoding.PEM)
        key = proxy.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in proxy.chain)
        return cert + key + chain

    def proof(self, who: str) -> Any:
        """A renewal proof: a chain of `who` that signed the server's challenge."""
        return validate_chain(make_proxy(self.ids[who]).certificates, self.repo.trust)

    def expire(self, username: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(CredentialRow)
                .where(CredentialRow.username == username)
                .values(not_after=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
            )

    def lock_out(self) -> None:
        """Enough wrong passphrases on alice/pp that the next attempt is locked out."""
        for _ in range(self.repo.config.policy.passphrase_attempts + 1):
            with contextlib.suppress(RepositoryError):
                self.repo.retrieve(
                    self.who("anonymous"), "alice", csr(), name="pp", passphrase="wrong one here"
                )

    # --- tasks

    def submit(self, owner: str = ALICE, username: str = "alice") -> int:
        return self.queue.submit(task_of(owner, username)).id

    def matched(self) -> int:
        """A task matched to the pilot; its secret in state["secret"]."""
        task_id = self.submit()
        caps = PilotCapabilities(
            self.who("pilot").identity, "pilot-1", "SITE-A", cpu_time_left=10**5
        )
        task = self.queue.match(caps)
        assert task is not None and task.id == task_id and task.assignment_secret is not None
        self.state["secret"] = task.assignment_secret
        return task_id

    def running(self) -> int:
        task_id = self.matched()
        self.queue.start(task_id, self.who("pilot").identity)
        return task_id

    def finished(self) -> int:
        task_id = self.running()
        self.queue.complete(task_id, self.who("pilot").identity, ACC)
        return task_id


def task_of(owner: str, username: str) -> TaskSpec:
    return TaskSpec(
        owner=owner,
        vo="dteam",
        group="/dteam",
        fqans=(),
        credential_username=username,
        payload=Payload("/usr/bin/analysis", ("--events", "1000")),
        max_wall_s=3600,
    )


def csr() -> x509.CertificateSigningRequest:
    return csr_for(spare_key(3))


@functools.lru_cache(maxsize=1)
def weak_csr() -> x509.CertificateSigningRequest:
    """A CSR for a key shorter than MIN_RSA_BITS: refused when the proxy is signed."""
    return csr_for(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505 - weak on purpose


# --- scenarios ----------------------------------------------------------------------------------

Call = Callable[[World], object]


def _nothing(world: World) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One call of an operation on a fresh world. `covers`: the public methods it calls
    ("Repository.x", "TaskService.y"); `refused`: the rule of the deny it must end with
    (None: allowed, every new row an allow)."""

    name: str
    covers: tuple[str, ...]
    call: Call
    setup: Call = _nothing
    refused: str | None = None


def R(method: str) -> tuple[str, ...]:
    return (f"Repository.{method}",)


def T(method: str) -> tuple[str, ...]:
    return (f"TaskService.{method}",)


def _setup(*steps: Call) -> Call:
    def run(world: World) -> None:
        for step in steps:
            step(world)

    return run


def _put_begun(world: World) -> None:
    world.state["put"] = world.begin("alice", StoreOptions("alice2"))


def _ban_alice(world: World) -> None:
    world.repo.ban(world.who("carol"), "user", ALICE, "compromised")


def _ban_eve(world: World) -> None:
    world.repo.ban(world.who("carol"), "user", EVE, "compromised")


def _eve_in_dteam(world: World) -> None:
    world.repo.add_member(world.who("carol"), "dteam", EVE, ["/dteam", "/dteam/x"])


def _eve_suspended(world: World) -> None:
    _eve_in_dteam(world)
    world.repo.suspend(world.who("carol"), "dteam", EVE, "left the experiment")


def _alice_suspended(world: World) -> None:
    # This world's AAs read the TOML table, which suspends no one: read the database instead.
    reads = MemberReads(world.repo.engine)
    world.repo.authorities = {
        vo: AttributeAuthority(aa.config, reads.held, reads.suspension)
        for vo, aa in world.repo.authorities.items()
    }
    carol, alice = world.who("carol"), world.who("alice").identity
    world.repo.add_member(carol, "dteam", alice, ["/dteam"])
    world.repo.suspend(carol, "dteam", alice, "AUP expired")


def _lock_alice(world: World) -> None:
    world.repo.lock(world.who("carol"), "alice", None, "under investigation")


def _task(make: Callable[[World], int]) -> Call:
    def run(world: World) -> None:
        world.state["task"] = make(world)

    return run


def _ban_eve_in_queue(world: World) -> None:
    world.queue.ban_owner(EVE, by=CAROL, reason="compromised")


def _two_step(world: World, who: str, csr_of: Callable[[], x509.CertificateSigningRequest]) -> Any:
    retrieval = world.repo.authorize_retrieval(world.who(who), "alice")
    return world.repo.complete_retrieval(retrieval, csr_of())


def _opened(world: World, who: str) -> Any:
    """The MyProxy edge's GET: open_retrieval, then (no challenge due) complete it."""
    opened = world.repo.open_retrieval(world.who(who), "alice")
    assert isinstance(opened, Retrieval), opened
    return world.repo.complete_retrieval(opened, csr())


def _two_step_abandoned(world: World) -> None:
    retrieval = world.repo.authorize_retrieval(world.who("wms"), "alice")
    world.repo.abandon_retrieval(retrieval, "the client went away")


def _payload_via_repo(world: World, secret: str | None) -> Any:
    queue = cast(TaskQueue, PresentedSecret(world.queue, secret))
    return world.repo.payload_proxy(world.who("pilot"), world.state["task"], csr(), queue)


def _reminders_to(world: World, webhook: str) -> None:
    """Reminders on, by webhook only; the world's credentials end within 3 days."""
    config = world.repo.config
    world.repo.config = dataclasses.replace(config, reminders=RemindersConfig(webhook=webhook))


@functools.lru_cache(maxsize=1)
def _webhook_sink() -> str:
    """A webhook that accepts every reminder, for the whole test run (a daemon thread)."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/reminders"


def _issuing_tokens(world: World) -> None:
    tokens = TokensConfig(issuer="https://proxyd.example.org:8443")
    world.repo.config = dataclasses.replace(world.repo.config, tokens=tokens)


def _token_via_repo(world: World, secret: str | None) -> Any:
    queue = cast(TaskQueue, PresentedSecret(world.queue, secret))
    return world.repo.payload_token(world.who("pilot"), world.state["task"], queue)


TOKEN_ISS = "https://iam.example.org"


def _eve_mapped(world: World) -> None:
    world.repo.add_token_mapping(world.who("carol"), TOKEN_ISS, "eve", EVE)


def _alice_token(groups: tuple[str, ...]) -> TokenIdentity:
    """What token_identity gives for a verified token of alice's (verified over HTTPS in
    tests/tokens): the exchange's decision and effect are what I6 is about here."""
    issuer = TrustedIssuer(TOKEN_ISS, ("proxyd",), "proxyd.retrieve", "dteam")
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    facts = TokenFacts(TOKEN_ISS, "alice", "jti-1", ("proxyd",), (), groups, expires, None)
    who = Principal(ALICE, PrincipalKind.USER, address="127.0.0.1", bearer=True)
    return TokenIdentity(who, issuer, facts)


def _admin_read(method: str) -> list[Scenario]:
    """An operation that is a read of admins or auditors (carol), refused to alice."""
    rule = {
        "audit_events": "audit_read.auditors",
        "audit_verify": "audit_read.auditors",
        "inventory": "audit_read.auditors",
        "authorize_metrics": "metrics_read.readers",
        "list_bans": "admin.admins",
        "list_members": "vo_members.admins",
        "list_token_mappings": "admin.admins",
        "list_credentials": "admin.admins",
        "review_credentials": "admin.admins",
    }[method]
    return [
        Scenario(
            f"Repository.{method}", R(method), lambda w: getattr(w.repo, method)(w.who("carol"))
        ),
        Scenario(
            f"Repository.{method}-refused-alice",
            R(method),
            lambda w: getattr(w.repo, method)(w.who("alice")),
            refused=rule,
        ),
    ]


SCENARIOS: list[Scenario] = [
    # --- delegation in: PUT (begin + finish), STORE, import
    Scenario(
        "Repository.begin_store",
        R("begin_store"),
        lambda w: w.repo.begin_store(w.proxy_principal("alice"), StoreOptions("alice2")),
    ),
    Scenario(
        "Repository.begin_store-refused-bob-over-alice",
        R("begin_store"),
        lambda w: w.repo.begin_store(w.proxy_principal("bob"), StoreOptions("alice")),
        refused="store.not_owner",
    ),
    Scenario(
        "Repository.finish_store",
        R("finish_store"),
        lambda w: w.repo.finish_store(*w.state["put"]),
        setup=_put_begun,
    ),
    Scenario(
        "Repository.finish_store-refused-banned-meanwhile",
        R("finish_store"),
        lambda w: w.repo.finish_store(*w.state["put"]),
        setup=_setup(_put_begun, _ban_alice),
        refused="ban.peer",
    ),
    Scenario(
        "Repository.store_pem",
        R("store_pem"),
        lambda w: w.repo.store_pem(w.who("alice"), StoreOptions("alice-pem"), w.pem("alice")),
    ),
    Scenario(
        "Repository.store_pem-refused-bob-stores-alices",
        R("store_pem"),
        lambda w: w.repo.store_pem(w.who("bob"), StoreOptions("bob-pem"), w.pem("alice")),
        refused="store.not_owner",
    ),
    Scenario(
        "Repository.import_pem-by-local-operator",
        R("import_pem"),
        lambda w: w.repo.import_pem(w.who("operator"), StoreOptions("imported"), w.pem("alice")),
    ),
    Scenario(
        "Repository.import_pem-refused-bob-imports-alices",
        R("import_pem"),
        lambda w: w.repo.import_pem(w.who("bob"), StoreOptions("imported"), w.pem("alice")),
        refused="store.not_owner",
    ),
    # --- the owner's operations
    Scenario("Repository.info", R("info"), lambda w: w.repo.info(w.who("alice"), "alice")),
    Scenario(
        "Repository.info-refused-bob",
        R("info"),
        lambda w: w.repo.info(w.who("bob"), "alice"),
        refused="owner.only",
    ),
    Scenario(
        "Repository.info-refused-no-such-username",
        R("info"),
        lambda w: w.repo.info(w.who("alice"), "nobody"),
        refused="credential.not_found",
    ),
    Scenario("Repository.destroy", R("destroy"), lambda w: w.repo.destroy(w.who("alice"), "alice")),
    Scenario(
        "Repository.destroy-refused-bob",
        R("destroy"),
        lambda w: w.repo.destroy(w.who("bob"), "alice"),
        refused="owner.only",
    ),
    Scenario(
        "Repository.change_passphrase",
        R("change_passphrase"),
        lambda w: w.repo.change_passphrase(w.who("alice"), "alice", "pp", PASS, NEW_PASS),
    ),
    Scenario(
        "Repository.change_passphrase-refused-bob",
        R("change_passphrase"),
        lambda w: w.repo.change_passphrase(w.who("bob"), "alice", "pp", PASS, NEW_PASS),
        refused="owner.only",
    ),
    Scenario(
        "Repository.change_passphrase-refused-wrong-old",
        R("change_passphrase"),
        lambda w: w.repo.change_passphrase(
            w.who("alice"), "alice", "pp", "not it at all", NEW_PASS
        ),
        refused="auth.bad_passphrase",
    ),
    Scenario(
        "Repository.change_passphrase-refused-none-set",
        R("change_passphrase"),
        lambda w: w.repo.change_passphrase(w.who("alice"), "alice", "default", PASS, NEW_PASS),
        refused="auth.no_passphrase",
    ),
    Scenario(
        "Repository.retrieve_key",
        R("retrieve_key"),
        lambda w: w.repo.retrieve_key(w.who("alice"), "alice", "pp", PASS),
    ),
    Scenario(
        "Repository.retrieve_key-refused-bob",
        R("retrieve_key"),
        lambda w: w.repo.retrieve_key(w.who("bob"), "alice", "pp", PASS),
        refused="retrieve_key.not_authorized",
    ),
    # --- issuance: GET in one call, in two steps, renewal, ACs, payload proxies
    Scenario(
        "Repository.retrieve-trusted-wms",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("wms"), "alice", csr()),
    ),
    Scenario(
        "Repository.retrieve-refused-bob-not-trusted",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("bob"), "alice", csr()),
        refused="retrieve.not_trusted",
    ),
    Scenario(
        "Repository.retrieve-passphrase",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("anonymous"), "alice", csr(), name="pp", passphrase=PASS),
    ),
    Scenario(
        "Repository.retrieve-refused-wrong-passphrase",
        R("retrieve"),
        lambda w: w.repo.retrieve(
            w.who("anonymous"), "alice", csr(), name="pp", passphrase="not it at all"
        ),
        refused="auth.bad_passphrase",
    ),
    Scenario(
        "Repository.retrieve-refused-no-such-username",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("anonymous"), "nobody", csr(), passphrase=PASS),
        refused="credential.not_found",
    ),
    Scenario(
        "Repository.retrieve-refused-locked-out",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("anonymous"), "alice", csr(), name="pp", passphrase=PASS),
        setup=lambda w: w.lock_out(),
        refused="auth.locked_out",
    ),
    Scenario(
        "Repository.retrieve-renewal",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("wms"), "alice", csr(), renewal_proof=w.proof("alice")),
    ),
    Scenario(
        "Repository.retrieve-renewal-refused-bobs-proof",
        R("retrieve"),
        lambda w: w.repo.retrieve(w.who("wms"), "alice", csr(), renewal_proof=w.proof("bob")),
        refused="renew.proof_mismatch",
    ),
    Scenario(
        "Repository.two-step-GET-complete",
        ("Repository.authorize_retrieval", "Repository.complete_retrieval"),
        lambda w: _two_step(w, "wms", csr),
    ),
    Scenario(
        "Repository.two-step-GET-refused-bob",
        ("Repository.authorize_retrieval",),
        lambda w: _two_step(w, "bob", csr),
        refused="retrieve.not_trusted",
    ),
    Scenario(
        "Repository.two-step-GET-refused-weak-csr",
        ("Repository.authorize_retrieval", "Repository.complete_retrieval"),
        lambda w: _two_step(w, "wms", weak_csr),
        refused="issue.bad_request",
    ),
    Scenario(
        "Repository.open_retrieval-then-complete",
        ("Repository.open_retrieval", "Repository.complete_retrieval"),
        lambda w: _opened(w, "wms"),
    ),
    Scenario(
        "Repository.open_retrieval-refused-anonymous",
        R("open_retrieval"),
        lambda w: _opened(w, "anonymous"),
        refused="anonymous.denied",
    ),
    Scenario(
        "Repository.two-step-GET-abandon",
        ("Repository.authorize_retrieval", "Repository.abandon_retrieval"),
        _two_step_abandoned,
    ),
    Scenario(
        "Repository.issue_acs",
        R("issue_acs"),
        lambda w: w.repo.issue_acs(
            w.who("alice"), [VomsRequest.parse("dteam")], dt.timedelta(hours=1)
        ),
    ),
    Scenario(
        "Repository.issue_acs-refused-fqan-not-held",
        R("issue_acs"),
        lambda w: w.repo.issue_acs(
            w.who("bob"), [VomsRequest.parse("dteam:/dteam/Role=production")], dt.timedelta(hours=1)
        ),
        refused="voms.fqan_not_held",
    ),
    Scenario(
        "Repository.issue_acs-refused-no-certificate",
        R("issue_acs"),
        lambda w: w.repo.issue_acs(
            w.who("anonymous"), [VomsRequest.parse("dteam")], dt.timedelta(hours=1)
        ),
        refused="voms.not_member",
    ),
    Scenario(
        "Repository.issue_acs-refused-member-suspended",
        R("issue_acs"),
        lambda w: w.repo.issue_acs(
            w.who("alice"), [VomsRequest.parse("dteam")], dt.timedelta(hours=1)
        ),
        setup=_alice_suspended,
        refused="voms.member_suspended",
    ),
    Scenario(
        "Repository.payload_proxy",
        R("payload_proxy"),
        lambda w: _payload_via_repo(w, w.state["secret"]),
        setup=_task(World.matched),
    ),
    Scenario(
        "Repository.payload_proxy-refused-no-secret",
        R("payload_proxy"),
        lambda w: _payload_via_repo(w, None),
        setup=_task(World.matched),
        refused="payload.wrong_instance",
    ),
    # --- reads of admins and auditors, and `authorize`
    *_admin_read("audit_events"),
    *_admin_read("audit_verify"),
    *_admin_read("authorize_metrics"),
    *_admin_read("list_bans"),
    *_admin_read("list_members"),
    *_admin_read("list_token_mappings"),
    *_admin_read("list_credentials"),
    *_admin_read("review_credentials"),
    *_admin_read("inventory"),
    Scenario(
        "Repository.authorize-audit-read",
        R("authorize"),
        lambda w: w.repo.authorize(w.who("carol"), policy.Request(Operation.AUDIT_READ)),
    ),
    Scenario(
        "Repository.authorize-refused-alice",
        R("authorize"),
        lambda w: w.repo.authorize(w.who("alice"), policy.Request(Operation.AUDIT_READ)),
        refused="audit_read.auditors",
    ),
    # --- administration
    Scenario(
        "Repository.ban",
        R("ban"),
        lambda w: w.repo.ban(w.who("carol"), "user", EVE, "compromised"),
    ),
    Scenario(
        "Repository.ban-refused-alice",
        R("ban"),
        lambda w: w.repo.ban(w.who("alice"), "user", EVE, "compromised"),
        refused="admin.admins",
    ),
    Scenario(
        "Repository.ban-refused-already-banned",
        R("ban"),
        lambda w: w.repo.ban(w.who("carol"), "user", EVE, "again"),
        setup=_ban_eve,
        refused="admin.already_banned",
    ),
    Scenario(
        "Repository.unban",
        R("unban"),
        lambda w: w.repo.unban(w.who("carol"), "user", EVE),
        setup=_ban_eve,
    ),
    Scenario(
        "Repository.unban-refused-nothing-banned",
        R("unban"),
        lambda w: w.repo.unban(w.who("carol"), "user", EVE),
        refused="admin.not_banned",
    ),
    Scenario(
        "Repository.unban-refused-alice",
        R("unban"),
        lambda w: w.repo.unban(w.who("alice"), "user", EVE),
        setup=_ban_eve,
        refused="admin.admins",
    ),
    Scenario(
        "Repository.lock",
        R("lock"),
        lambda w: w.repo.lock(w.who("carol"), "alice", None, "under investigation"),
    ),
    Scenario(
        "Repository.lock-refused-alice",
        R("lock"),
        lambda w: w.repo.lock(w.who("alice"), "bob", None, "mine now"),
        refused="admin.admins",
    ),
    Scenario(
        "Repository.lock-refused-no-such-username",
        R("lock"),
        lambda w: w.repo.lock(w.who("carol"), "nobody", None, "under investigation"),
        refused="credential.not_found",
    ),
    Scenario(
        "Repository.unlock",
        R("unlock"),
        lambda w: w.repo.unlock(w.who("carol"), "alice"),
        setup=_lock_alice,
    ),
    Scenario(
        "Repository.unlock-refused-not-locked",
        R("unlock"),
        lambda w: w.repo.unlock(w.who("carol"), "alice"),
        refused="credential.not_locked",
    ),
    Scenario(
        "Repository.expire-an-expired-credential",
        R("expire"),
        lambda w: w.repo.expire(w.who("carol")),
        setup=lambda w: w.expire("bob"),
    ),
    Scenario(
        "Repository.expire-nothing-expired",
        R("expire"),
        lambda w: w.repo.expire(w.who("carol")),
    ),
    Scenario(
        "Repository.expire-refused-alice",
        R("expire"),
        lambda w: w.repo.expire(w.who("alice")),
        setup=lambda w: w.expire("bob"),
        refused="admin.admins",
    ),
    # --- VO members (proxyd admin vo)
    Scenario(
        "Repository.add_member",
        R("add_member"),
        lambda w: w.repo.add_member(w.who("carol"), "dteam", EVE, ["/dteam"]),
    ),
    Scenario(
        "Repository.add_member-refused-alice",
        R("add_member"),
        lambda w: w.repo.add_member(w.who("alice"), "dteam", EVE, ["/dteam"]),
        refused="vo_members.admins",
    ),
    Scenario(
        "Repository.add_member-refused-already-member",
        R("add_member"),
        lambda w: w.repo.add_member(w.who("carol"), "dteam", EVE, ["/dteam"]),
        setup=_eve_in_dteam,
        refused="vo.already_member",
    ),
    Scenario(
        "Repository.remove_member",
        R("remove_member"),
        lambda w: w.repo.remove_member(w.who("carol"), "dteam", EVE),
        setup=_eve_in_dteam,
    ),
    Scenario(
        "Repository.remove_member-refused-not-member",
        R("remove_member"),
        lambda w: w.repo.remove_member(w.who("carol"), "dteam", EVE),
        refused="vo.not_member",
    ),
    Scenario(
        "Repository.grant",
        R("grant"),
        lambda w: w.repo.grant(w.who("carol"), "dteam", EVE, "/dteam/Role=production"),
        setup=_eve_in_dteam,
    ),
    Scenario(
        "Repository.grant-refused-alice",
        R("grant"),
        lambda w: w.repo.grant(w.who("alice"), "dteam", EVE, "/dteam/Role=production"),
        setup=_eve_in_dteam,
        refused="vo_members.admins",
    ),
    Scenario(
        "Repository.revoke",
        R("revoke"),
        lambda w: w.repo.revoke(w.who("carol"), "dteam", EVE, "/dteam/x"),
        setup=_eve_in_dteam,
    ),
    Scenario(
        "Repository.revoke-refused-not-held",
        R("revoke"),
        lambda w: w.repo.revoke(w.who("carol"), "dteam", EVE, "/dteam/Role=production"),
        setup=_eve_in_dteam,
        refused="vo.fqan_not_held",
    ),
    Scenario(
        "Repository.suspend",
        R("suspend"),
        lambda w: w.repo.suspend(w.who("carol"), "dteam", EVE, "left the experiment"),
        setup=_eve_in_dteam,
    ),
    Scenario(
        "Repository.suspend-again-new-reason",
        R("suspend"),
        lambda w: w.repo.suspend(w.who("carol"), "dteam", EVE, "AUP not signed"),
        setup=_eve_suspended,
    ),
    Scenario(
        "Repository.suspend-refused-alice",
        R("suspend"),
        lambda w: w.repo.suspend(w.who("alice"), "dteam", EVE, "left the experiment"),
        setup=_eve_in_dteam,
        refused="vo_members.admins",
    ),
    Scenario(
        "Repository.suspend-refused-not-member",
        R("suspend"),
        lambda w: w.repo.suspend(w.who("carol"), "dteam", EVE, "left the experiment"),
        refused="vo.not_member",
    ),
    Scenario(
        "Repository.suspend-refused-bad-reason",
        R("suspend"),
        lambda w: w.repo.suspend(w.who("carol"), "dteam", EVE, "two\nlines"),
        setup=_eve_in_dteam,
        refused="vo.bad_reason",
    ),
    Scenario(
        "Repository.restore",
        R("restore"),
        lambda w: w.repo.restore(w.who("carol"), "dteam", EVE),
        setup=_eve_suspended,
    ),
    Scenario(
        "Repository.restore-refused-alice",
        R("restore"),
        lambda w: w.repo.restore(w.who("alice"), "dteam", EVE),
        setup=_eve_suspended,
        refused="vo_members.admins",
    ),
    Scenario(
        "Repository.restore-refused-not-suspended",
        R("restore"),
        lambda w: w.repo.restore(w.who("carol"), "dteam", EVE),
        setup=_eve_in_dteam,
        refused="vo.not_suspended",
    ),
    # --- tokens in: mappings (proxyd admin token-map) and the exchange (RFC 8693)
    Scenario(
        "Repository.add_token_mapping",
        R("add_token_mapping"),
        lambda w: w.repo.add_token_mapping(w.who("carol"), TOKEN_ISS, "eve", EVE),
    ),
    Scenario(
        "Repository.add_token_mapping-refused-alice",
        R("add_token_mapping"),
        lambda w: w.repo.add_token_mapping(w.who("alice"), TOKEN_ISS, "eve", EVE),
        refused="admin.admins",
    ),
    Scenario(
        "Repository.add_token_mapping-refused-exists",
        R("add_token_mapping"),
        lambda w: w.repo.add_token_mapping(w.who("carol"), TOKEN_ISS, "eve", ALICE),
        setup=_eve_mapped,
        refused="token_map.exists",
    ),
    Scenario(
        "Repository.remove_token_mapping",
        R("remove_token_mapping"),
        lambda w: w.repo.remove_token_mapping(w.who("carol"), TOKEN_ISS, "eve"),
        setup=_eve_mapped,
    ),
    Scenario(
        "Repository.remove_token_mapping-refused-not-mapped",
        R("remove_token_mapping"),
        lambda w: w.repo.remove_token_mapping(w.who("carol"), TOKEN_ISS, "eve"),
        refused="token_map.not_found",
    ),
    Scenario(
        "Repository.exchange_token",
        R("exchange_token"),
        lambda w: w.repo.exchange_token(_alice_token(("/dteam",)), csr()),
    ),
    Scenario(
        "Repository.exchange_token-refused-not-held",
        R("exchange_token"),
        lambda w: w.repo.exchange_token(_alice_token(("/dteam/nothere",)), csr()),
        refused="voms.fqan_not_held",
    ),
    Scenario(
        "Repository.exchange_token-refused-banned",
        R("exchange_token"),
        lambda w: w.repo.exchange_token(_alice_token(()), csr()),
        setup=_ban_alice,
        refused="ban.peer",
    ),
    Scenario(
        "Repository.rotate_master_key",
        R("rotate_master_key"),
        lambda w: w.repo.rotate_master_key(w.who("carol")),
    ),
    Scenario(
        "Repository.rotate_master_key-refused-alice",
        R("rotate_master_key"),
        lambda w: w.repo.rotate_master_key(w.who("alice")),
        refused="admin.admins",
    ),
    # --- the task queue: owners
    Scenario(
        "TaskService.submit",
        T("submit"),
        lambda w: w.service.submit(w.who("alice"), task_of(ALICE, "alice")),
    ),
    Scenario(
        "TaskService.submit-refused-bob-for-alice",
        T("submit"),
        lambda w: w.service.submit(w.who("bob"), task_of(ALICE, "alice")),
        refused="task.not_owner",
    ),
    Scenario(
        "TaskService.submit-refused-no-credential",
        T("submit"),
        lambda w: w.service.submit(w.who("alice"), task_of(ALICE, "nobody")),
        refused="task.credential_missing",
    ),
    Scenario(
        "TaskService.tasks",
        T("tasks"),
        lambda w: w.service.tasks(w.who("alice"), TaskFilter(owner=ALICE)),
        setup=_task(World.submit),
    ),
    Scenario(
        "TaskService.tasks-refused-bob",
        T("tasks"),
        lambda w: w.service.tasks(w.who("bob"), TaskFilter(owner=ALICE)),
        setup=_task(World.submit),
        refused="task.not_owner",
    ),
    Scenario(
        "TaskService.task",
        T("task"),
        lambda w: w.service.task(w.who("alice"), w.state["task"]),
        setup=_task(World.submit),
    ),
    Scenario(
        "TaskService.task-refused-bob",
        T("task"),
        lambda w: w.service.task(w.who("bob"), w.state["task"]),
        setup=_task(World.submit),
        refused="task.not_owner",
    ),
    Scenario(
        "TaskService.log_tail",
        T("log_tail"),
        lambda w: w.service.log_tail(w.who("alice"), w.state["task"]),
        setup=_task(World.finished),
    ),
    Scenario(
        "TaskService.log_tail-refused-bob",
        T("log_tail"),
        lambda w: w.service.log_tail(w.who("bob"), w.state["task"]),
        setup=_task(World.finished),
        refused="task.not_owner",
    ),
    Scenario(
        "TaskService.cancel",
        T("cancel"),
        lambda w: w.service.cancel(w.who("alice"), w.state["task"]),
        setup=_task(World.submit),
    ),
    Scenario(
        "TaskService.cancel-refused-bob",
        T("cancel"),
        lambda w: w.service.cancel(w.who("bob"), w.state["task"]),
        setup=_task(World.submit),
        refused="task.not_owner",
    ),
    Scenario(
        "TaskService.cancel-refused-finished-task",
        T("cancel"),
        lambda w: w.service.cancel(w.who("alice"), w.state["task"]),
        setup=_task(World.finished),
        refused="task.state_conflict",
    ),
    Scenario(
        "TaskService.reschedule",
        T("reschedule"),
        lambda w: w.service.reschedule(w.who("alice"), w.state["task"], "try again"),
        setup=_task(World.matched),
    ),
    Scenario(
        "TaskService.reschedule-refused-bob",
        T("reschedule"),
        lambda w: w.service.reschedule(w.who("bob"), w.state["task"]),
        setup=_task(World.matched),
        refused="task.not_owner",
    ),
    Scenario(
        "TaskService.reschedule-refused-waiting-task",
        T("reschedule"),
        lambda w: w.service.reschedule(w.who("alice"), w.state["task"]),
        setup=_task(World.submit),
        refused="task.state_conflict",
    ),
    # --- the task queue: pilots
    Scenario(
        "TaskService.match",
        T("match"),
        lambda w: w.service.match(w.who("pilot"), CAPS),
        setup=_task(World.submit),
    ),
    Scenario(
        "TaskService.match-no-task",
        T("match"),
        lambda w: w.service.match(w.who("pilot"), CAPS),
    ),
    Scenario(
        "TaskService.match-refused-not-a-pilot",
        T("match"),
        lambda w: w.service.match(w.who("alice"), CAPS),
        setup=_task(World.submit),
        refused="task.not_pilot",
    ),
    Scenario(
        "TaskService.start",
        T("start"),
        lambda w: w.service.start(w.who("pilot"), w.state["task"], w.state["secret"]),
        setup=_task(World.matched),
    ),
    Scenario(
        "TaskService.start-refused-no-secret",
        T("start"),
        lambda w: w.service.start(w.who("pilot"), w.state["task"], None),
        setup=_task(World.matched),
        refused="payload.wrong_instance",
    ),
    Scenario(
        "TaskService.heartbeat",
        T("heartbeat"),
        lambda w: w.service.heartbeat(w.who("pilot"), w.state["task"], w.state["secret"]),
        setup=_task(World.running),
    ),
    Scenario(
        "TaskService.heartbeat-refused-not-the-pilot",
        T("heartbeat"),
        lambda w: w.service.heartbeat(w.who("bob"), w.state["task"], w.state["secret"]),
        setup=_task(World.running),
        refused="task.not_assigned",
    ),
    Scenario(
        "TaskService.complete",
        T("complete"),
        lambda w: w.service.complete(w.who("pilot"), w.state["task"], ACC, w.state["secret"]),
        setup=_task(World.running),
    ),
    Scenario(
        "TaskService.complete-refused-before-start",
        T("complete"),
        lambda w: w.service.complete(w.who("pilot"), w.state["task"], ACC, w.state["secret"]),
        setup=_task(World.matched),
        refused="task.state_conflict",
    ),
    Scenario(
        "TaskService.fail",
        T("fail"),
        lambda w: w.service.fail(w.who("pilot"), w.state["task"], "lost", ACC, w.state["secret"]),
        setup=_task(World.running),
    ),
    Scenario(
        "TaskService.fail-refused-wrong-secret",
        T("fail"),
        lambda w: w.service.fail(w.who("pilot"), w.state["task"], "lost", ACC, "not the secret"),
        setup=_task(World.running),
        refused="payload.wrong_instance",
    ),
    Scenario(
        "TaskService.payload_proxy",
        T("payload_proxy"),
        lambda w: w.service.payload_proxy(
            w.who("pilot"), w.state["task"], csr(), w.state["secret"]
        ),
        setup=_task(World.matched),
    ),
    Scenario(
        "TaskService.payload_proxy-refused-not-matched",
        T("payload_proxy"),
        lambda w: w.service.payload_proxy(w.who("pilot"), w.state["task"], csr(), None),
        setup=_task(World.submit),
        refused="payload.not_assigned",
    ),
    # --- the task queue: operators
    Scenario(
        "TaskService.mask_site",
        T("mask_site"),
        lambda w: w.service.mask_site(w.who("carol"), "SITE-B", True, "maintenance"),
    ),
    Scenario(
        "TaskService.mask_site-refused-alice",
        T("mask_site"),
        lambda w: w.service.mask_site(w.who("alice"), "SITE-B", True, "maintenance"),
        refused="admin.admins",
    ),
    Scenario(
        "TaskService.ban_owner-ban",
        T("ban_owner"),
        lambda w: w.service.ban_owner(w.who("carol"), EVE, True, "compromised"),
    ),
    Scenario(
        "TaskService.ban_owner-ban-refused-alice",
        T("ban_owner"),
        lambda w: w.service.ban_owner(w.who("alice"), EVE, True, "compromised"),
        refused="admin.admins",
    ),
    Scenario(
        "TaskService.ban_owner-unban",
        T("ban_owner"),
        lambda w: w.service.ban_owner(w.who("carol"), EVE, False),
        setup=_ban_eve_in_queue,
    ),
    Scenario(
        "TaskService.ban_owner-unban-refused-nothing-banned",
        T("ban_owner"),
        lambda w: w.service.ban_owner(w.who("carol"), EVE, False),
        refused="admin.not_banned",
    ),
    Scenario(
        "TaskService.accounting",
        T("accounting"),
        lambda w: w.service.accounting(w.who("carol"), "owner"),
        setup=_task(World.finished),
    ),
    Scenario(
        "TaskService.accounting-refused-alice",
        T("accounting"),
        lambda w: w.service.accounting(w.who("alice"), "owner"),
        refused="audit_read.auditors",
    ),
    # --- expiry reminders and contacts (issue 20)
    Scenario(
        "Repository.set_contact",
        R("set_contact"),
        lambda w: w.repo.set_contact(w.who("alice"), "alice@example.org"),
    ),
    Scenario(
        "Repository.set_contact-refused-bad-address",
        R("set_contact"),
        lambda w: w.repo.set_contact(w.who("alice"), "alice@example.org, eve@example.org"),
        refused="contact.bad_address",
    ),
    Scenario(
        "Repository.remind_expiring",
        R("remind_expiring"),
        lambda w: w.repo.remind_expiring(w.who("operator")),
        setup=lambda w: _reminders_to(w, _webhook_sink()),
    ),
    Scenario(
        "Repository.remind_expiring-undelivered",
        R("remind_expiring"),
        lambda w: w.repo.remind_expiring(w.who("operator")),
        setup=lambda w: _reminders_to(w, "http://127.0.0.1:9/nobody-listens"),
        refused="remind.undelivered",
    ),
    Scenario(
        "Repository.remind_expiring-refused-alice",
        R("remind_expiring"),
        lambda w: w.repo.remind_expiring(w.who("alice")),
        setup=lambda w: _reminders_to(w, _webhook_sink()),
        refused="remind.sweep",
    ),
    # --- WLCG tokens (issue 19)
    Scenario(
        "Repository.payload_token",
        R("payload_token"),
        lambda w: _token_via_repo(w, w.state["secret"]),
        setup=_setup(_issuing_tokens, _task(World.matched)),
    ),
    Scenario(
        "Repository.payload_token-refused-wrong-secret",
        R("payload_token"),
        lambda w: _token_via_repo(w, "not the secret"),
        setup=_setup(_issuing_tokens, _task(World.matched)),
        refused="payload.wrong_instance",
    ),
    Scenario(
        "Repository.payload_token-refused-not-issuing",
        R("payload_token"),
        lambda w: _token_via_repo(w, w.state["secret"]),
        setup=_task(World.matched),
        refused="token.not_issuing",
    ),
    Scenario(
        "TaskService.payload_token",
        T("payload_token"),
        lambda w: w.service.payload_token(w.who("pilot"), w.state["task"], w.state["secret"]),
        setup=_setup(_issuing_tokens, _task(World.running)),
    ),
    Scenario(
        "TaskService.payload_token-refused-ended",
        T("payload_token"),
        lambda w: w.service.payload_token(w.who("pilot"), w.state["task"], w.state["secret"]),
        setup=_setup(_issuing_tokens, _task(World.finished)),
        refused="payload.assignment_ended",
    ),
    Scenario(
        "Repository.rotate_token_key",
        R("rotate_token_key"),
        lambda w: w.repo.rotate_token_key(w.who("carol")),
        setup=_issuing_tokens,
    ),
    Scenario(
        "Repository.rotate_token_key-refused-alice",
        R("rotate_token_key"),
        lambda w: w.repo.rotate_token_key(w.who("alice")),
        setup=_issuing_tokens,
        refused="admin.admins",
    ),
]

# Public methods that are not a decision of their own, each with why.
EXEMPT: dict[str, str] = {
    "Repository.open": "a constructor: opens the database, no request",
    "Repository.readiness": "a health probe for load balancers, not a decision",
    "Repository.retrieval_is_quick": "where an edge runs a GET (loop or thread), from config only",
    "Repository.challenge_facts": "a credential's policy facts from one lookup (bench.scale), no decision",
    "Repository.stored_facts": "the facts policy reads for the task service, no decision",
    "Repository.save_pending": "the second half of begin_store, whose decision is recorded there",
    "Repository.take_pending": "the second half of begin_store, whose decision is recorded there",
    "Repository.record_failure": "records a refusal an edge decided (no decision of the core)",
    "Repository.openid_configuration": "public discovery document (open route), no decision",
    "Repository.jwks": "the public keys tokens are verified with (open route), no decision",
    "Repository.token_identity": "authentication by a bearer token, no decision; its refusals "
    "are audited by the edge's bounded failed-authentication log, as certificates' are",
    "Repository.token_owner": "the mapping read token_identity authenticates with, no decision",
}


def public_operations() -> set[str]:
    return {
        f"{cls.__name__}.{name}"
        for cls in (Repository, TaskService)
        for name, _ in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


def test_every_operation_has_a_scenario_or_a_reason() -> None:
    operations = public_operations()
    covered = {op for s in SCENARIOS for op in s.covers}
    allowed = {op for s in SCENARIOS if s.refused is None for op in s.covers}
    assert not (missing := sorted(operations - covered - EXEMPT.keys())), (
        f"public operations with neither an I6 scenario nor an EXEMPT reason: {missing}"
    )
    assert not (unknown := sorted((covered | EXEMPT.keys()) - operations)), (
        f"scenarios or exemptions of no public operation: {unknown}"
    )
    assert not (both := sorted(covered & EXEMPT.keys())), f"exempt yet covered: {both}"
    assert not (refused_only := sorted(covered - allowed)), (
        f"operations with no allowed scenario: {refused_only}"
    )
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names)), "scenario names must be unique"


# --- fixtures -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Template:
    """A prepared database (and its master key) that each test starts from a copy of.

    SQLite: the file is copied. PostgreSQL: one database for the module whose rows are put
    back before each test (`rows`; a CREATE DATABASE per test costs ~0.7 s)."""

    backend: str
    url: str
    state_dir: Path
    rows: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "carol", "pilot", "wms")}


@pytest.fixture(scope="module")
def trust(dev_pki: DevPKI) -> TrustStore:
    return trust_of(dev_pki)


@pytest.fixture(scope="module")
def base_config(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The dev config with carol as admin and auditor and alice a key retriever."""
    config = make_test_config(dev_pki, "sqlite://", tmp_path_factory.mktemp("unused"))
    rules = dataclasses.replace(
        config.policy, admins=(CAROL,), auditors=(CAROL,), key_retrievers=(ALICE,)
    )
    return dataclasses.replace(config, policy=rules)


@pytest.fixture(scope="module")
def authorities(base_config: Config) -> dict[str, AttributeAuthority]:
    """The VOs' attribute authorities, loaded once (loading their keys is the slow part)."""
    return load_authorities(base_config.voms)


def _open(
    base: Config, url: str, state_dir: Path, trust: TrustStore, aas: dict[str, AttributeAuthority]
) -> Repository:
    server = dataclasses.replace(
        base.server, database=url, state_dir=state_dir, master_key_file=state_dir / "master.key"
    )
    config = dataclasses.replace(base, server=server)
    keyring = MasterKeyring.load_or_create(config.server.master_key_file)
    return Repository(config, make_engine(url), keyring, trust, aas)


@pytest.fixture(scope="module", params=BACKENDS)
def template(
    request: pytest.FixtureRequest,
    base_config: Config,
    authorities: dict[str, AttributeAuthority],
    ids: dict[str, Identity],
    trust: TrustStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Template]:
    state_dir = tmp_path_factory.mktemp("i6-template") / "state"
    state_dir.mkdir(mode=0o700)
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{state_dir / 'proxyd.db'}"
        else:
            url = stack.enter_context(throwaway_postgres())
        engine = make_engine(url)
        if engine.dialect.name == "postgresql":
            # A throw-away database: commits need not wait for the disk (atomicity, which
            # is what these tests are about, is the same).
            with engine.begin() as conn:
                name = engine.url.database
                conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
            engine.dispose()
        migrate(engine)
        engine.dispose()
        repo = _open(base_config, url, state_dir, trust, authorities)
        try:
            delegate(repo, ids["alice"], StoreOptions("alice"))  # trusted retrieval
            delegate(
                repo,
                ids["alice"],
                StoreOptions("alice", name="pp", passphrase=PASS, key_retrievers=(ALICE,)),
            )
            delegate(repo, ids["bob"], StoreOptions("bob"))
            with repo.engine.connect() as conn:
                rows = {
                    t.name: [dict(r._mapping) for r in conn.execute(select(t))]
                    for t in Base.metadata.sorted_tables
                }
        finally:
            repo.engine.dispose()
        yield Template(request.param, url, state_dir, rows)


@contextlib.contextmanager
def _copy_of(template: Template, state_dir: Path) -> Iterator[str]:
    """The template's database as it was prepared, as a URL."""
    if template.backend == "sqlite":
        copy = state_dir / "proxyd.db"
        source = sqlite3.connect(template.url.removeprefix("sqlite:///"))
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        yield f"sqlite:///{copy}"
        return
    engine = make_engine(template.url)
    try:
        with engine.begin() as conn:
            # DELETE, not TRUNCATE (which costs new files for every table and index); the
            # sequences go on, so rows put back keep their ids and new ones get fresh ones.
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))
            for table in Base.metadata.sorted_tables:
                if template.rows[table.name]:
                    conn.execute(insert(table), template.rows[table.name])
    finally:
        engine.dispose()
    yield template.url


@pytest.fixture
def world(
    template: Template,
    base_config: Config,
    authorities: dict[str, AttributeAuthority],
    ids: dict[str, Identity],
    trust: TrustStore,
    tmp_path: Path,
) -> Iterator[World]:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    shutil.copy2(template.state_dir / "master.key", state_dir / "master.key")
    with _copy_of(template, state_dir) as url:
        repo = _open(base_config, url, state_dir, trust, authorities)
        try:
            yield World(repo, SqlTaskQueue(repo.engine, audit=repo.audit), ids)
        finally:
            repo.engine.dispose()


# --- the two tests ------------------------------------------------------------------------------


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but the audit append point), ordered by primary key."""
    tables = [t for t in Base.metadata.sorted_tables if t.name not in NOT_SNAPSHOT]
    present = set(sa_inspect(engine).get_table_names())
    unknown = present - {t.name for t in Base.metadata.sorted_tables} - NOT_MODELS
    assert not unknown, f"tables the snapshot does not know: {sorted(unknown)}"
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in tables
        }


def audit_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditRow).order_by(AuditRow.seq)).all())


def audit_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(AuditRow)) or 0)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_failed_audit_write_leaves_no_effect(world: World, scenario: Scenario) -> None:
    scenario.setup(world)
    before = snapshot(world.engine)
    with world.engine.begin() as conn:
        head = conn.execute(select(AuditHeadRow)).one()
        conn.execute(delete(AuditHeadRow))
    try:
        try:
            result = scenario.call(world)
        except AuditWriteError:
            pass
        else:
            pytest.fail(
                f"I6: {scenario.name} returned {result!r:.200} although its audit event "
                "could not be written"
            )
        after = snapshot(world.engine)
    finally:
        with world.engine.begin() as conn:
            conn.execute(insert(AuditHeadRow).values(**head._asdict()))
    changed = sorted(t for t in before if before[t] != after[t])
    assert not changed, (
        f"I6: {scenario.name} changed {changed} although its audit event could not be written"
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_one_decision_one_audit_row(world: World, scenario: Scenario) -> None:
    scenario.setup(world)
    seen = audit_count(world.engine)
    tally = DecisionTally()
    token = current_tally.set(tally)
    raised: RepositoryError | None = None
    try:
        scenario.call(world)
    except RepositoryError as exc:
        raised = exc
    finally:
        current_tally.reset(token)
    new = audit_rows(world.engine)[seen:]
    described = [f"{r.operation} {r.decision} {r.rule}" for r in new]
    # The task queue records what it did (which task it matched, which transition it made)
    # beside the allow that let it act, in the same transaction: a `queue.*` rule, never
    # a decision of its own, never without that allow before it.
    decisions = [r for r in new if not r.rule.startswith("queue.")]
    records = [i for i, r in enumerate(new) if r.rule.startswith("queue.")]
    assert tally.count == len(decisions), (
        f"I6: {scenario.name} made {tally.count} decision(s) but wrote {len(decisions)} "
        f"decision row(s): {described}"
    )
    assert all(any(r.decision == "allow" for r in new[:i]) for i in records), (
        f"I6: {scenario.name}: a queue record without the allow that let the queue act: {described}"
    )
    if scenario.refused is None:
        assert raised is None, f"{scenario.name} should be allowed, was refused: {raised!r}"
        assert all(r.decision == "allow" for r in new), f"{scenario.name}: {described}"
    else:
        assert new and (new[-1].decision, new[-1].rule) == ("deny", scenario.refused), (
            f"{scenario.name} should end with a deny by {scenario.refused}: {described}"
        )


def test_a_renewal_challenge_is_chosen_before_anything_is_decided(world: World) -> None:
    """open_retrieval's other answer: bob may renew (the dev config's authorized_renewers
    "*") but is no trusted retriever of alice's credential, which has no passphrase, so the
    MyProxy edge must challenge him (policy.challenge) — nothing is decided or recorded until
    his proof comes back through authorize_retrieval, which decides and records once."""
    seen = audit_count(world.engine)
    tally = DecisionTally()
    token = current_tally.set(tally)
    try:
        opened = world.repo.open_retrieval(world.who("bob"), "alice")
    finally:
        current_tally.reset(token)
    assert isinstance(opened, ChallengeFirst)
    assert (tally.count, audit_count(world.engine)) == (0, seen)
    with pytest.raises(RepositoryError) as refused:
        world.repo.authorize_retrieval(world.who("bob"), "alice", renewal_proof=world.proof("bob"))
    assert refused.value.rule == "renew.proof_mismatch"
    assert audit_count(world.engine) == seen + 1
