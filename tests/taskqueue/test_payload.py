"""Payload proxies (I2): only the matched pilot, only while the task is live, only limited."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from proxyd.devpki import PILOT_DN, DevPKI, user_dn
from proxyd.issuer import IssuedProxy
from proxyd.metrics import DECISIONS
from proxyd.principal import Principal, PrincipalKind
from proxyd.repository import Denied, Repository, StoreOptions
from proxyd.sealing import MasterKeyring
from proxyd.store.db import make_engine, migrate
from proxyd.taskqueue import Accounting, Payload, PilotCapabilities, TaskSpec, TaskState
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskService
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_test_config,
    principal,
    spare_key,
    trust_of,
)
from tests.taskqueue.support import Clock
from voms_ext import validate_chain
from voms_ext.asn1 import OID_POLICY_LIMITED, OID_PROXY_CERT_INFO
from voms_ext.proxy import decode_proxy_cert_info

ALICE = user_dn("alice")
CAROL = user_dn("carol")  # a second pilot identity in these tests (policy.pilot_dns)
LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
OWN = object()  # World: present the secret the match gave


@dataclasses.dataclass
class World:
    repo: Repository
    queue: SqlTaskQueue
    ids: dict[str, Identity]
    clock: Clock  # the core's and the queue's: tests move time, they do not sleep
    secrets: dict[int, str] = dataclasses.field(default_factory=dict)  # task id -> its secret

    @property
    def service(self) -> TaskService:
        return TaskService(self.repo, self.queue)

    def who(self, name: str) -> Principal:
        return principal(self.repo, self.ids[name])

    def match(self, who: str = "pilot") -> int:
        dn = self.who(who).identity
        task = self.queue.match(PilotCapabilities(dn, f"{who}-1", "SITE-A", cpu_time_left=10**5))
        assert task is not None and task.assignment_secret is not None
        self.secrets[task.id] = task.assignment_secret
        return task.id

    def issue(self, who: str, task_id: int, secret: str | object | None = OWN) -> IssuedProxy:
        """A payload proxy as the HTTPS edge asks for it (OWN: with the secret of the match)."""
        presented = self.secrets.get(task_id) if secret is OWN else secret
        assert presented is None or isinstance(presented, str)
        return self.service.payload_proxy(self.who(who), task_id, csr_for(spare_key(3)), presented)

    def handoff(
        self, who: str, task_id: int, secret: str | object | None = OWN
    ) -> x509.Certificate:
        return self.issue(who, task_id, secret).proxy

    def denied(self, who: str, task_id: int, secret: str | object | None = OWN) -> str:
        with pytest.raises(Denied) as err:
            self.handoff(who, task_id, secret)
        assert err.value.rule is not None
        return err.value.rule


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "carol", "pilot")}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(
    request: pytest.FixtureRequest, dev_pki: DevPKI, tmp_path: Path, ids: dict[str, Identity]
) -> Iterator[World]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'proxyd.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    config = make_test_config(dev_pki, url, tmp_path / "state")
    policy = dataclasses.replace(config.policy, pilot_dns=(*config.policy.pilot_dns, CAROL))
    config = dataclasses.replace(config, policy=policy)
    config.server.state_dir.mkdir(mode=0o700, exist_ok=True)
    engine = make_engine(url)
    migrate(engine)
    keyring = MasterKeyring.load_or_create(config.server.master_key_file)
    clock = Clock(dt.datetime.now(dt.UTC))
    repo = Repository(config, engine, keyring, trust_of(dev_pki), clock=clock)
    delegate(repo, ids["alice"], StoreOptions("alice"))  # no passphrase: for trusted use
    yield World(repo, SqlTaskQueue(engine, audit=repo.audit, clock=clock), ids, clock)
    engine.dispose()


def task_of(owner: str, username: str, *fqans: str, group: str = "/dteam") -> TaskSpec:
    return TaskSpec(
        owner=owner,
        vo="dteam",
        group=group,
        fqans=fqans,
        credential_username=username,
        payload=Payload("/usr/bin/analysis", ("--events", "1000")),
        max_wall_s=3600,
    )


def policy_oid(cert: x509.Certificate) -> str:
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_PROXY_CERT_INFO))
    return decode_proxy_cert_info(ext.value.value).policy_language  # type: ignore[attr-defined]


def test_the_matched_pilot_gets_a_limited_proxy_with_the_task_fqans(world: World) -> None:
    spec = task_of(
        ALICE,
        "alice",
        "/dteam/analysis/Role=NULL",
        "/dteam/Role=production",
        group="/dteam/analysis",
    )
    task = world.queue.submit(spec)
    assert world.who("pilot").kind is PrincipalKind.PILOT
    assert world.match() == task.id
    proxy = world.handoff("pilot", task.id)

    assert OID_POLICY_LIMITED == LIMITED and policy_oid(proxy) == LIMITED
    issued = world.issue("pilot", task.id)
    result = validate_chain(issued.certificates, world.repo.trust)
    assert result.identity == ALICE and result.is_limited
    assert result.fqans[:2] == (
        "/dteam/analysis/Role=NULL/Capability=NULL",
        "/dteam/Role=production/Capability=NULL",
    )  # the task's FQANs first (VOMS order); further groups alice holds may follow
    margin = world.repo.config.policy.payload_lifetime_margin
    left = proxy.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=3600) < left <= dt.timedelta(seconds=3600) + margin  # I4

    events = world.repo.audit.query(operation="payload_proxy", newest_first=False)
    assert [(e.event.decision, e.event.rule) for e in events] == [
        ("allow", "payload.assigned"),
        ("allow", "payload.assigned"),
    ]
    first = events[0].event
    assert first.serial == str(proxy.serial_number) and first.detail == f"task {task.id} (limited)"
    assert (first.actor_dn, first.actor_kind, first.owner_dn) == (PILOT_DN, "pilot", ALICE)


def test_another_pilot_is_refused(world: World) -> None:
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match("pilot")
    assert world.who("carol").kind is PrincipalKind.PILOT
    assert world.denied("carol", task.id) == "payload.not_assigned"
    [deny] = world.repo.audit.query(operation="payload_proxy", decision="deny")
    assert deny.event.actor_dn == CAROL and deny.event.rule == "payload.not_assigned"
    assert (deny.event.detail or "").startswith(f"task {task.id}: ")


def test_no_proxy_before_the_match_or_after_the_end(world: World) -> None:
    first, second = world.queue.submit_many([task_of(ALICE, "alice"), task_of(ALICE, "alice")])
    assert world.denied("pilot", first) == "payload.not_assigned"  # queued, nobody's yet
    world.match()
    world.queue.start(first, PILOT_DN)
    world.handoff("pilot", first)
    world.queue.complete(first, PILOT_DN, Accounting(cpu_s=1, wall_s=2))
    assert world.denied("pilot", first) == "payload.assignment_ended"

    world.match()
    world.queue.reschedule(second, reason="operator")
    assert world.denied("pilot", second) == "payload.not_assigned"  # back in the queue
    assert world.denied("pilot", 10**6) == "payload.not_assigned"  # no such task
    rules = [
        e.event.rule
        for e in world.repo.audit.query(
            operation="payload_proxy", decision="deny", newest_first=False
        )
    ]
    assert rules == [
        "payload.not_assigned",
        "payload.assignment_ended",
        "payload.not_assigned",
        "payload.not_assigned",
    ]


def test_a_pilot_never_gets_a_pilot_credential(world: World) -> None:
    delegate(world.repo, world.ids["pilot"], StoreOptions("pilot"))  # the pilot stores its own
    task = world.queue.submit(task_of(PILOT_DN, "pilot"))  # no pilot role: the DN alone
    world.match()
    assert world.denied("pilot", task.id) == "pilot.pilot_credential"


def test_only_pilots_get_payload_proxies(world: World) -> None:
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    assert world.denied("alice", task.id) == "payload.not_pilot"
    assert world.denied("bob", 10**6) == "payload.not_pilot"


def test_owner_ban_and_unheld_fqans_refuse_the_handoff(world: World) -> None:
    grabby = world.queue.submit(task_of(ALICE, "alice", "/dteam/Role=lcgadmin"))
    world.match()
    assert world.denied("pilot", grabby.id) == "voms.fqan_not_held"
    plain = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    world.queue.ban_owner(ALICE, by=user_dn("admin"), reason="compromised")
    assert world.denied("pilot", plain.id) == "ban.owner"  # I5: runtime bans are shared


def test_only_the_owner_and_admins_cancel_a_task_auditors_only_read(world: World) -> None:
    """DELETE /v1/tasks/{id} has its own rule: an auditor may read the task, not cancel it."""
    auditor, admin = user_dn("bob"), user_dn("admin")
    policy = dataclasses.replace(world.repo.config.policy, auditors=(auditor,), admins=(admin,))
    world.repo.config = dataclasses.replace(world.repo.config, policy=policy)
    service = TaskService(world.repo, world.queue)
    bob = Principal(auditor, PrincipalKind.USER)
    task = world.queue.submit(task_of(ALICE, "alice"))

    assert service.task(bob, task.id).id == task.id  # auditors read
    with pytest.raises(Denied) as refused:
        service.cancel(bob, task.id)
    assert refused.value.rule == "task.not_owner"
    assert world.queue.get(task.id).state is TaskState.WAITING  # type: ignore[union-attr]
    limited_alice = Principal(ALICE, PrincipalKind.USER, limited=True)
    with pytest.raises(Denied, match="limited proxy"):
        service.cancel(limited_alice, task.id)
    assert service.cancel(world.who("alice"), task.id).state is TaskState.CANCELLED
    other = world.queue.submit(task_of(ALICE, "alice"))
    admin_principal = Principal(admin, PrincipalKind.USER)
    assert service.cancel(admin_principal, other.id).state is TaskState.CANCELLED
    refusals = [
        e for e in world.repo.audit.query(operation="task_cancel") if e.event.decision == "deny"
    ]
    assert {e.event.rule for e in refusals} == {"task.not_owner", "task.limited"}


# --- issue 15 ----------------------------------------------------------------------------------


def test_a_pilot_that_only_heartbeats_gets_no_proxy_past_its_budget(world: World) -> None:
    """Finding 2 (I2/I4): the wall-time budget starts at the match. A pilot that heartbeats
    but never starts gets proxies that all end by matched_at + max_wall_s + margin, and
    after that none at all (payload.assignment_ended)."""
    spec = dataclasses.replace(task_of(ALICE, "alice"), max_wall_s=4)
    task = world.queue.submit(spec)
    world.match()
    matched_at = world.queue.get(task.id).matched_at  # type: ignore[union-attr]
    assert matched_at is not None
    margin = world.repo.config.policy.payload_lifetime_margin
    bound = matched_at + dt.timedelta(seconds=4) + margin
    pilot, secret = world.who("pilot"), world.secrets[task.id]
    ends = []
    while world.clock() < matched_at + dt.timedelta(seconds=3.5):
        world.service.heartbeat(pilot, task.id, secret)
        ends.append(world.handoff("pilot", task.id).not_valid_after_utc)
        world.clock.advance(0.7)
    assert len(ends) >= 4
    # Certificates count whole seconds, and the lifetime is granted relative to when the
    # request is decided: at most a fraction of a second past the bound, never more.
    assert max(ends) < bound + dt.timedelta(seconds=1), (ends, bound)
    world.clock.advance((matched_at + dt.timedelta(seconds=4.1) - world.clock()).total_seconds())
    world.service.heartbeat(pilot, task.id, secret)  # heartbeats stretch nothing
    assert world.denied("pilot", task.id) == "payload.assignment_ended"
    assert world.queue.get(task.id).state is TaskState.MATCHED  # type: ignore[union-attr]


def test_a_sibling_pilot_without_the_secret_is_refused_everything(world: World) -> None:
    """Payloads bound to one pilot instance: the same certificate without the match's
    secret gets no proxy and cannot start, heartbeat, complete or fail the task."""
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    service, pilot, secret = world.service, world.who("pilot"), world.secrets[task.id]
    acc = Accounting(cpu_s=1, wall_s=2)
    calls: dict[str, Callable[[str | None], object]] = {
        "proxy": lambda s: service.payload_proxy(pilot, task.id, csr_for(spare_key(3)), s),
        "start": lambda s: service.start(pilot, task.id, s),
        "heartbeat": lambda s: service.heartbeat(pilot, task.id, s),
        "complete": lambda s: service.complete(pilot, task.id, acc, s),
        "fail": lambda s: service.fail(pilot, task.id, "sibling", acc, s),
    }
    for name, call in calls.items():
        for wrong in (None, "", secret[:-1] + ("A" if secret[-1] != "A" else "B")):
            with pytest.raises(Denied) as refused:
                call(wrong)
            assert refused.value.rule == "payload.wrong_instance", (name, wrong)
    assert world.queue.get(task.id).state is TaskState.MATCHED  # type: ignore[union-attr]
    denials = world.repo.audit.query(decision="deny", rule="payload.wrong_instance", limit=100)
    assert {e.event.operation for e in denials} == {"payload_proxy", "task_update"}
    assert len(denials) == 15 and {e.event.actor_dn for e in denials} == {PILOT_DN}

    # The instance that holds the secret does all of it.
    assert calls["proxy"](secret) is not None
    assert service.start(pilot, task.id, secret).state is TaskState.RUNNING
    assert service.heartbeat(pilot, task.id, secret).state is TaskState.RUNNING
    assert service.complete(pilot, task.id, acc, secret).state is TaskState.DONE


def test_a_rescheduled_task_kills_the_earlier_secret(world: World) -> None:
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    first = world.secrets[task.id]
    world.queue.reschedule(task.id, reason="operator")
    world.match()  # the same DN: a sibling pilot instance gets it this time
    second = world.secrets[task.id]
    assert second != first
    assert world.denied("pilot", task.id, first) == "payload.wrong_instance"
    with pytest.raises(Denied, match="another instance"):
        world.service.heartbeat(world.who("pilot"), task.id, first)
    world.handoff("pilot", task.id, second)
    second_task = world.queue.get(task.id)
    assert second_task is not None and second_task.attempts == 2


def test_task_decisions_are_counted_once_committed(world: World) -> None:
    """proxyd_decisions_total counts the queue's decisions like any other: the allow the
    queue commits with its change (decided=) is counted once that change returned."""

    def allows(op: str, rule: str) -> float:
        labels = {"operation": op, "decision": "allow", "rule": rule}
        return DECISIONS.labels(**labels)._value.get()

    spec = task_of(ALICE, "alice")
    before = (allows("task_submit", "task.owner"), allows("task_match", "task.pilot"))
    task = world.service.submit(world.who("alice"), spec)
    pilot = world.who("pilot")
    matched = world.service.match(pilot, PilotCapabilities(pilot.identity, "p-1", "SITE-A"))
    assert matched is not None and matched.id == task.id
    after = (allows("task_submit", "task.owner"), allows("task_match", "task.pilot"))
    assert after == (before[0] + 1, before[1] + 1)
