"""The stored credential is checked at every use (issue 15): revoked, expired, untrusted, locked.

Every retrieval (passphrase and trusted), renewal, payload proxy and key
retrieval validates the stored chain anew against the repository's current
trust store and CRLs (a reload swaps `repo.trust`), and refuses a revoked
or expired certificate or a CA no longer trusted with `credential.revoked`,
`credential.expired` or `credential.untrusted`; an operator's lock refuses
it with `credential.locked` and the operator's message. Each refusal is a
policy decision, audited like every other.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

import proxyd.core.base
from proxyd.audit import AuditWriteError
from proxyd.cli.main import main
from proxyd.config import load_config
from proxyd.devpki import PILOT_DN, DevPKI, user_dn
from proxyd.issuer import VomsRequest
from proxyd.principal import Principal, local_operator
from proxyd.repository import (
    BadRequest,
    Denied,
    NotFound,
    Repository,
    StoreOptions,
)
from proxyd.taskqueue import Payload, PilotCapabilities, TaskSpec
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskService
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    dev_crl,
    install_crl,
    load_identity,
    make_proxy,
    make_repository,
    principal,
    spare_key,
)
from tests.support.server import free_port, write_config
from tests.taskqueue.support import Clock
from voms_ext import ProxyBuilder, TrustStore, validate_chain
from voms_ext.names import subject_hash

ALICE = user_dn("alice")
PASS = "correct horse battery"
MESSAGE = "Locked by the security team: incident 2024-117, call +41 22 000"


@dataclasses.dataclass
class Bed:
    """A repository on its own copy of the trust directory, alice's credentials, a task queue."""

    repo: Repository
    queue: SqlTaskQueue
    pki: DevPKI
    cert_dir: Path
    ids: dict[str, Identity]
    proof_trust: TrustStore  # the dev trust directory itself, never changed
    clock: Clock  # the core's: tests move it instead of sleeping
    peers: dict[str, Principal] = dataclasses.field(default_factory=dict)

    def who(self, name: str | None) -> Principal:
        """The TLS peer `name` (anonymous for None), authenticated once, before any change."""
        if name is None:
            return principal(self.repo, None)
        if name not in self.peers:
            self.peers[name] = principal(self.repo, self.ids[name])
        return self.peers[name]

    def reload(self) -> None:
        """What `proxyd serve` does when the trust directory changes: a new store, swapped in."""
        self.repo.trust = TrustStore.from_dirs(self.cert_dir, self.pki.voms_dir)

    def by_passphrase(self, name: str = "default") -> object:
        return self.repo.retrieve(
            self.who(None), "alice", csr_for(spare_key(3)), name=name, passphrase=PASS
        )

    def by_wms(self, name: str = "wms-use") -> object:
        return self.repo.retrieve(self.who("wms"), "alice", csr_for(spare_key(3)), name=name)

    def by_renewal(self, name: str = "wms-use") -> object:
        """bob renews alice's credential with a proof (a proxy) of alice's, which the edge
        verified (the stored credential is what is checked here)."""
        proof = validate_chain(make_proxy(self.ids["alice"]).certificates, self.proof_trust)
        return self.repo.retrieve(
            self.who("bob"), "alice", csr_for(spare_key(3)), name=name, renewal_proof=proof
        )

    def payload(self, name: str = "wms-use") -> object:
        task = self.queue.submit(
            TaskSpec(
                owner=ALICE,
                vo="dteam",
                group="/dteam",
                fqans=(),
                credential_username="alice",
                credential_name=name,
                payload=Payload("/usr/bin/true", ()),
                max_wall_s=3600,
            )
        )
        matched = self.queue.match(
            PilotCapabilities(PILOT_DN, "pilot-1", "SITE-A", cpu_time_left=10**5)
        )
        assert matched is not None and matched.id == task.id
        service = TaskService(self.repo, self.queue)  # as the HTTPS edge asks, with the secret
        return service.payload_proxy(
            self.who("pilot"), task.id, csr_for(spare_key(3)), matched.assignment_secret
        )

    def refused(self, use: str, rule: str, *words: str) -> Denied:
        with pytest.raises(Denied) as err:
            getattr(self, use)()
        assert err.value.rule == rule, (use, err.value.rule, err.value.message)
        for word in words:
            assert word in err.value.message, (use, err.value.message)
        return err.value

    def denials(self, rule: str) -> list[tuple[str, str]]:
        """(operation, actor) of the deny events with `rule`, oldest first."""
        events = self.repo.audit.query(rule=rule, decision="deny", newest_first=False)
        return [(e.event.operation, e.event.actor_dn) for e in events]


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "wms", "pilot")}


@pytest.fixture
def bed(dev_pki: DevPKI, tmp_path: Path, ids: dict[str, Identity]) -> Iterator[Bed]:
    cert_dir = tmp_path / "certificates"
    shutil.copytree(dev_pki.cert_dir, cert_dir)
    clock = Clock(dt.datetime.now(dt.UTC))
    repo = make_repository(dev_pki, tmp_path / "state", clock=clock)
    repo.trust = TrustStore.from_dirs(cert_dir, dev_pki.voms_dir)
    queue = SqlTaskQueue(repo.engine, audit=repo.audit)
    bed = Bed(repo, queue, dev_pki, cert_dir, ids, TrustStore.from_dirs(dev_pki.cert_dir), clock)
    for name in ("wms", "bob", "pilot", "alice"):
        bed.who(name)
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    delegate(repo, ids["alice"], StoreOptions("alice", name="wms-use"))
    yield bed
    repo.engine.dispose()


def other_ca(index: int = 5) -> x509.Certificate:
    """A CA that has nothing to do with the dev PKI (so the trust directory is not empty)."""
    key = spare_key(index)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def remove_dev_ca(pki: DevPKI, cert_dir: Path) -> None:
    """The dev CA leaves the trust directory (an IGTF update dropped it); another CA stays."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    for path in cert_dir.glob(f"{subject_hash(ca.subject)}.*"):
        path.unlink()
    other = other_ca()
    (cert_dir / f"{subject_hash(other.subject)}.0").write_bytes(
        other.public_bytes(serialization.Encoding.PEM)
    )


USES = ["by_passphrase", "by_wms", "by_renewal", "payload"]


# --- re-verification: the three verdicts, on every path -------------------------------------


def test_a_revoked_owner_certificate_refuses_every_use(bed: Bed) -> None:
    for use in USES:
        getattr(bed, use)()  # all fine before the CRL
    install_crl(bed.pki, bed.cert_dir, bed.ids["alice"].cert.serial_number)
    bed.reload()
    serial = str(bed.ids["alice"].cert.serial_number)
    for use in USES:
        err = bed.refused(use, "credential.revoked", "has been revoked", serial)
        assert ALICE not in err.message  # the reason names no owner (a passphrase GET is anonymous)
    with pytest.raises(Denied) as err:
        bed.repo.retrieve_key(bed.who("wms"), "alice", "default", PASS)
    assert err.value.rule == "credential.revoked"
    assert bed.denials("credential.revoked") == [
        ("retrieve", "<anonymous>"),
        ("retrieve", bed.who("wms").identity),
        ("renew", bed.who("bob").identity),
        ("payload_proxy", PILOT_DN),
        ("retrieve_key", bed.who("wms").identity),
    ]
    [event] = bed.repo.audit.query(rule="credential.revoked", operation="payload_proxy")
    assert event.event.owner_dn == ALICE and "has been revoked" in (event.event.detail or "")
    assert bed.repo.audit.verify().ok


def test_a_ca_no_longer_trusted_refuses_every_use(bed: Bed) -> None:
    remove_dev_ca(bed.pki, bed.cert_dir)
    bed.reload()
    for use in USES:
        err = bed.refused(use, "credential.untrusted", "not a trusted CA")
        assert str(bed.cert_dir) not in err.message  # no server paths in answers
        assert ALICE not in err.message
    assert [op for op, _ in bed.denials("credential.untrusted")] == [
        "retrieve",
        "retrieve",
        "renew",
        "payload_proxy",
    ]


def delegate_briefly(repo: Repository, who: Identity, options: StoreOptions, seconds: int) -> None:
    """myproxy-init with a delegated proxy that lives only `seconds`."""
    local = make_proxy(who, key_index=2, lifetime_h=1)
    pending = repo.begin_store(principal(repo, local), options)
    short = (
        ProxyBuilder(local.cert, local.chain)
        .from_csr(pending.csr)
        .lifetime(dt.timedelta(seconds=seconds))
        .sign(local.key)
    )
    repo.finish_store(pending, (short, *local.certificates))


def test_an_expired_stored_chain_refuses_every_use(bed: Bed) -> None:
    alice = bed.ids["alice"]
    delegate_briefly(bed.repo, alice, StoreOptions("alice", passphrase=PASS), 2)
    delegate_briefly(bed.repo, alice, StoreOptions("alice", name="wms-use"), 2)
    # (too short to issue from: under a minute left is lifetime.exhausted; then it ends)
    bed.refused("by_wms", "lifetime.exhausted")
    # Past the chains' end, counted from now: the delegations themselves may take seconds
    # on a loaded machine, so the clock's start is not a safe base.
    bed.clock.now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3.1)
    for use in USES:
        bed.refused(use, "credential.expired", "the stored credential expired at")
    assert len(bed.denials("credential.expired")) == len(USES)


def test_the_verdict_is_cached_per_trust_store_and_validity_window(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = proxyd.core.base.validate_chain

    def counting(chain, trust, at=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(trust)
        return real(chain, trust, at, **kw)

    monkeypatch.setattr(proxyd.core.base, "validate_chain", counting)
    for _ in range(5):
        bed.by_wms()
    assert len(calls) == 1  # one validation for five GETs
    bed.by_passphrase()
    assert len(calls) == 2  # another credential, another chain
    bed.reload()  # the same files, but a new store: checked again
    bed.by_wms()
    assert len(calls) == 3 and calls[-1] is bed.repo.trust
    # A CRL that goes stale in two seconds bounds the window: after it, checked again (and
    # refused: a stale CRL vouches for nothing).
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
    crl = dev_crl(bed.pki, next_update=soon)
    (bed.cert_dir / f"{subject_hash(crl.issuer)}.r0").write_bytes(
        crl.public_bytes(serialization.Encoding.PEM)
    )
    bed.reload()
    bed.by_wms()
    bed.by_wms()
    assert len(calls) == 4
    bed.clock.advance((soon - bed.clock()).total_seconds() + 1.1)
    bed.refused("by_wms", "credential.untrusted", "refresh CRLs")
    bed.refused("by_wms", "credential.untrusted")  # refusals are not cached
    assert len(calls) == 6


def test_a_revocation_is_seen_at_once_despite_the_cache(bed: Bed) -> None:
    bed.by_wms()
    bed.by_wms()  # cached
    install_crl(bed.pki, bed.cert_dir, bed.ids["alice"].cert.serial_number)
    bed.reload()
    bed.refused("by_wms", "credential.revoked")


# --- admin lock --------------------------------------------------------------------------------


def test_a_locked_credential_is_refused_on_every_use_with_the_message(bed: Bed) -> None:
    operator = local_operator()
    [locked] = bed.repo.lock(operator, "alice", "wms-use", MESSAGE)
    assert (locked.name, locked.locked) == ("wms-use", MESSAGE)
    for use in ("by_wms", "by_renewal", "payload"):
        err = bed.refused(use, "credential.locked", MESSAGE)
        assert err.message == f"credential locked: {MESSAGE}"
    bed.by_passphrase()  # the other credential is not locked
    # Storing over a locked credential would lift the lock by the back door: refused too.
    with pytest.raises(Denied) as err:
        delegate(bed.repo, bed.ids["alice"], StoreOptions("alice", name="wms-use"))
    assert err.value.rule == "credential.locked"
    # The owner still sees it (and the lock) and may destroy it.
    infos = {i.name: i for i in bed.repo.info(bed.who("alice"), "alice")}
    assert infos["wms-use"].locked == MESSAGE and infos["default"].locked is None

    assert [i.name for i in bed.repo.unlock(operator, "alice", "wms-use")] == ["wms-use"]
    bed.by_wms()
    admin = bed.repo.audit.query(operation="admin", newest_first=False)
    assert [(e.event.decision, e.event.owner_dn, e.event.detail) for e in admin] == [
        ("allow", ALICE, f"lock alice/wms-use: {MESSAGE}"),
        ("allow", ALICE, "unlock alice/wms-use"),
    ]
    assert [op for op, _ in bed.denials("credential.locked")] == [
        "retrieve",
        "renew",
        "payload_proxy",
        "store",
    ]


def test_lock_without_a_name_locks_all_of_the_username(bed: Bed) -> None:
    operator = local_operator()
    done = bed.repo.lock(operator, "alice", None, MESSAGE)
    assert sorted(i.name for i in done) == ["default", "wms-use"]
    bed.refused("by_passphrase", "credential.locked", MESSAGE)
    with pytest.raises(Denied) as err:
        bed.repo.retrieve_key(bed.who("wms"), "alice", "default", PASS)
    assert err.value.rule == "credential.locked"
    listed = bed.repo.list_credentials(operator)
    assert {(i.name, i.locked) for i in listed} == {("default", MESSAGE), ("wms-use", MESSAGE)}
    bed.repo.unlock(operator, "alice", "default")
    bed.by_passphrase()
    bed.refused("by_wms", "credential.locked")
    bed.repo.unlock(operator, "alice")
    bed.by_wms()
    with pytest.raises(BadRequest) as bad:
        bed.repo.unlock(operator, "alice")
    assert bad.value.rule == "credential.not_locked"


@pytest.mark.parametrize(
    "message",
    ["", "   ", "x" * 513, "line one\nERROR=forged line", "tab\there", "bell\a", "rtl \u202e"],
    ids=["empty", "blank", "too-long", "newline", "tab", "control", "rtl-override"],
)
def test_lock_messages_are_bounded_and_printable(bed: Bed, message: str) -> None:
    with pytest.raises(BadRequest):
        bed.repo.lock(local_operator(), "alice", "wms-use", message)
    bed.by_wms()


def test_lock_is_an_admin_decision_audited_with_its_change(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Denied) as err:
        bed.repo.lock(bed.who("bob"), "alice", None, MESSAGE)  # not an admin
    assert err.value.rule.startswith("admin.")
    with pytest.raises(NotFound):
        bed.repo.lock(local_operator(), "nobody", None, MESSAGE)
    assert [e.event.rule for e in bed.repo.audit.query(operation="admin", decision="deny")] == [
        "credential.not_found",
        err.value.rule,
    ]
    bed.repo.lock(local_operator(), "alice", "wms-use", "x" * 512)  # the longest allowed

    # The event commits with the change or neither happens (I6).
    real_append = bed.repo.audit.append

    def failing(event, *, conn=None):  # type: ignore[no-untyped-def]
        if conn is not None:
            raise AuditWriteError("disk full")
        return real_append(event, conn=conn)

    monkeypatch.setattr(bed.repo.audit, "append", failing)
    with pytest.raises(AuditWriteError):
        bed.repo.unlock(local_operator(), "alice", "wms-use")
    monkeypatch.undo()
    bed.refused("by_wms", "credential.locked")  # still locked: the unlock was rolled back


def test_a_locked_credential_shows_its_message_in_the_problem_detail(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    import urllib.parse

    from tests.support.https import ApiClient
    from tests.support.server import running_server
    from voms_ext import Credential, write_credential_file

    tmp_path.chmod(0o700)
    wms = load_identity(dev_pki, "wms")
    wms_pem = tmp_path / "wms.pem"
    write_credential_file(wms_pem, Credential(wms.certificates, wms.key))
    with running_server(dev_pki, tmp_path / "state") as server:
        repo = server.repo
        delegate(repo, load_identity(dev_pki, "alice"), StoreOptions(ALICE, name="wms-use"))
        repo.lock(local_operator(), ALICE, "wms-use", MESSAGE)
        path = f"/v1/credentials/wms-use/proxy?username={urllib.parse.quote(ALICE)}"
        csr = csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()
        reply = ApiClient(server.api_port, dev_pki.cert_dir, wms_pem).request(
            "POST", path, {"csr": csr}
        )
        assert reply.status == 403, reply.body
        assert reply.json["rule"] == "credential.locked"
        assert reply.json["detail"] == f"credential locked: {MESSAGE}"


# --- proxyd admin lock / unlock / list -----------------------------------------------------------


def test_admin_lock_unlock_and_list(
    dev_pki: DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(dev_pki, tmp_path / "state", free_port(), free_port())

    def admin(*args: str) -> int:
        return main(["admin", "--config", str(config), *args])

    repo = Repository.open(load_config(config))
    try:
        alice = load_identity(dev_pki, "alice")
        delegate(repo, alice, StoreOptions("alice"))
        delegate(repo, alice, StoreOptions("alice", name="batch"))
        wms = principal(repo, load_identity(dev_pki, "wms"))

        assert admin("lock", "--username", "alice", "--name", "batch", "--message", MESSAGE) == 0
        assert capsys.readouterr().out == f"locked alice/batch of {ALICE}\n"
        assert admin("list") == 0
        lines = sorted(capsys.readouterr().out.splitlines())
        assert lines[0].endswith("\ttrusted\tlocked: " + MESSAGE) and "\tbatch\t" in lines[0]
        assert lines[1].endswith("\ttrusted") and "\tdefault\t" in lines[1]
        with pytest.raises(Denied) as err:
            repo.retrieve(wms, "alice", csr_for(spare_key(3)), name="batch")
        assert (err.value.rule, err.value.message) == (
            "credential.locked",
            f"credential locked: {MESSAGE}",
        )
        repo.retrieve(wms, "alice", csr_for(spare_key(3)))  # "default" is not locked

        assert admin("lock", "--username", "alice", "--message", "bad\nmessage") == 1
        assert "printable" in capsys.readouterr().err
        assert admin("lock", "--username", "nobody", "--message", MESSAGE) == 1
        assert "credential.not_found" in capsys.readouterr().err
        assert admin("lock", "-l", "alice", "-m", MESSAGE) == 0  # every credential of alice
        assert len(capsys.readouterr().out.splitlines()) == 2
        assert admin("unlock", "--username", "alice") == 0
        assert sorted(capsys.readouterr().out.splitlines()) == [
            f"unlocked alice/batch of {ALICE}",
            f"unlocked alice/default of {ALICE}",
        ]
        assert admin("unlock", "--username", "alice") == 1
        assert "credential.not_locked" in capsys.readouterr().err
        repo.retrieve(wms, "alice", csr_for(spare_key(3)), name="batch")
        details = [
            e.event.detail
            for e in repo.audit.query(operation="admin", decision="allow", newest_first=False)
        ]
        # One decision, one event, naming every credential it changed.
        assert details == [
            f"lock alice/batch: {MESSAGE}",
            "list credentials",
            f"lock alice/batch, alice/default: {MESSAGE}",
            "unlock alice/batch, alice/default",
        ]
    finally:
        repo.engine.dispose()


def test_voms_request_on_a_locked_credential_is_refused_before_any_ac(bed: Bed) -> None:
    """ACs are issued only inside a retrieval: a locked credential gets none."""
    bed.repo.lock(local_operator(), "alice", "wms-use", MESSAGE)
    with pytest.raises(Denied) as err:
        bed.repo.retrieve(
            bed.who("wms"),
            "alice",
            csr_for(spare_key(3)),
            name="wms-use",
            voms=[VomsRequest("dteam", ())],
        )
    assert err.value.rule == "credential.locked"
    assert not bed.repo.audit.query(operation="retrieve", decision="allow")


@pytest.mark.postgres
def test_lock_and_the_verdict_on_postgres(
    dev_pki: DevPKI, tmp_path: Path, ids: dict[str, Identity], postgres_url: str
) -> None:
    repo = make_repository(dev_pki, tmp_path / "state", database=postgres_url)
    try:
        delegate(repo, ids["alice"], StoreOptions("alice"))
        wms = principal(repo, ids["wms"])
        repo.retrieve(wms, "alice", csr_for(spare_key(3)))
        repo.lock(local_operator(), "alice", None, MESSAGE)
        with pytest.raises(Denied) as err:
            repo.retrieve(wms, "alice", csr_for(spare_key(3)))
        assert (err.value.rule, err.value.message) == (
            "credential.locked",
            f"credential locked: {MESSAGE}",
        )
        assert [i.locked for i in repo.list_credentials(local_operator())] == [MESSAGE]
        repo.unlock(local_operator(), "alice")
        revoking = TrustStore.from_certificates(
            repo.trust.anchors, [dev_crl(dev_pki, revoked=(ids["alice"].cert.serial_number,))]
        )
        repo.trust = revoking
        with pytest.raises(Denied) as err:
            repo.retrieve(wms, "alice", csr_for(spare_key(3)))
        assert err.value.rule == "credential.revoked"
        assert repo.audit.verify().ok
    finally:
        repo.engine.dispose()
