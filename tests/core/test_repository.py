"""The repository end to end, on SQLite and on PostgreSQL: store, info, retrieve, renew, destroy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxyd.devpki import DevPKI, host_dn, user_dn
from proxyd.issuer import VomsRequest
from proxyd.principal import local_operator
from proxyd.repository import (
    BadPassphrase,
    BadRequest,
    Denied,
    NotFound,
    Repository,
    StoreOptions,
)
from proxyd.sealing import MasterKeyring, SealingError, unseal
from proxyd.store.db import make_engine, migrate
from proxyd.store.models import CredentialRow
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_proxy,
    make_repository,
    make_test_config,
    principal,
    spare_key,
    trust_of,
)
from voms_ext import ProxyType, classify, validate_chain
from voms_ext.asn1 import OID_POLICY_LIMITED, OID_PROXY_CERT_INFO
from voms_ext.proxy import decode_proxy_cert_info

ALICE = user_dn("alice")
PASS = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgres"])
def repo(request: pytest.FixtureRequest, dev_pki: DevPKI, tmp_path: Path) -> Iterator[Repository]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    repo = make_repository(dev_pki, tmp_path / "state", database=url)
    yield repo
    repo.engine.dispose()


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "carol", "pilot", "wms", "host")}


def policy_oid(cert: x509.Certificate) -> str:
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_PROXY_CERT_INFO))
    return decode_proxy_cert_info(ext.value.value).policy_language  # type: ignore[attr-defined]


def test_store_then_retrieve_with_passphrase(repo: Repository, ids: dict[str, Identity]) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    [info] = repo.info(principal(repo, ids["alice"]), "alice")
    assert (info.owner, info.name, info.has_passphrase) == (ALICE, "default", True)

    issued = repo.retrieve(principal(repo, None), "alice", csr_for(spare_key(3)), passphrase=PASS)
    result = validate_chain(issued.certificates, repo.trust)
    assert result.identity == ALICE
    assert result.proxy_depth == 3  # new proxy <- delegated <- local proxy <- EEC
    assert issued.proxy.public_key().public_numbers() == spare_key(3).public_key().public_numbers()

    with pytest.raises(BadPassphrase) as err:
        repo.retrieve(
            principal(repo, None), "alice", csr_for(spare_key(3)), passphrase="wrong passphrase"
        )
    assert err.value.message == "invalid credential passphrase"
    with pytest.raises(NotFound, match='No credentials exist for username "nobody"'):
        repo.retrieve(principal(repo, None), "nobody", csr_for(spare_key(3)), passphrase=PASS)


def test_every_decision_is_audited(repo: Repository, ids: dict[str, Identity]) -> None:
    """I6: allow and deny alike land in the hash chain with their rule."""
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    repo.retrieve(principal(repo, None), "alice", csr_for(spare_key(3)), passphrase=PASS)
    with pytest.raises(BadPassphrase):
        repo.retrieve(
            principal(repo, None), "alice", csr_for(spare_key(3)), passphrase="not it at all"
        )
    with pytest.raises(Denied):
        repo.retrieve(principal(repo, ids["bob"]), "alice", csr_for(spare_key(3)))
    events = list(reversed(repo.audit.query(owner=ALICE)))
    assert [(e.event.operation, e.event.decision, e.event.rule) for e in events] == [
        ("store", "allow", "store.owner"),  # begun: the server's key made, its CSR sent
        ("store", "allow", "store.owner"),  # the signed chain stored
        ("retrieve", "allow", "retrieve.passphrase"),
        ("retrieve", "deny", "auth.bad_passphrase"),
        ("retrieve", "deny", "retrieve.not_trusted"),
    ]
    assert events[0].event.detail == "delegation begun: key pair made, certificate request sent"
    issued = events[2].event
    assert issued.serial is not None and issued.lifetime_s and issued.peer == "127.0.0.1"
    assert repo.audit.verify().ok


def test_I3_trusted_host_gets_limited_proxy_whatever_the_csr_asks(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice"))  # no passphrase: trusted retrieval
    wms = principal(repo, ids["wms"])
    plain = csr_for(spare_key(4))
    greedy = csr_for(
        spare_key(4),
        extensions=[
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(OID_PROXY_CERT_INFO),
                bytes.fromhex("300c300a06082b06010505071501"),
            ),
            x509.BasicConstraints(ca=True, path_length=None),
        ],
    )
    for csr in (plain, greedy):
        for want_full in (False, True):
            issued = repo.retrieve(wms, "alice", csr, want_full=want_full)
            assert policy_oid(issued.proxy) == OID_POLICY_LIMITED
            assert classify(issued.proxy).type is ProxyType.RFC_LIMITED
            assert validate_chain(issued.certificates, repo.trust).is_limited


def test_I1_limited_peer_cannot_store_or_retrieve(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    limited = make_proxy(ids["alice"], limited=True)
    with pytest.raises(Denied) as err:
        repo.begin_store(principal(repo, limited), StoreOptions("alice2"))
    assert err.value.rule == "limited.peer"
    with pytest.raises(Denied) as err:
        repo.retrieve(principal(repo, limited), "alice", csr_for(spare_key(3)), passphrase=PASS)
    assert err.value.rule == "limited.peer"


def test_I2_pilot_cannot_get_its_own_credential(repo: Repository, ids: dict[str, Identity]) -> None:
    delegate(repo, ids["pilot"], StoreOptions("pilot"))
    pilot = principal(repo, make_proxy(ids["pilot"]))
    with pytest.raises(Denied) as err:
        repo.retrieve(pilot, "pilot", csr_for(spare_key(3)))
    assert err.value.rule == "pilot.pilot_credential"
    proof = validate_chain(make_proxy(ids["pilot"]).certificates, repo.trust)
    with pytest.raises(Denied) as err:
        repo.retrieve(pilot, "pilot", csr_for(spare_key(3)), renewal_proof=proof)
    assert err.value.rule == "pilot.no_renewal"
    denials = repo.audit.query(actor=user_dn("pilot").replace("Users", "Pilots"), decision="deny")
    assert {e.event.rule for e in denials} == {"pilot.pilot_credential", "pilot.no_renewal"}


def test_I4_lifetime_capped_by_stored_credential(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(
        repo, ids["alice"], StoreOptions("alice", lifetime=dt.timedelta(hours=2)), lifetime_h=6
    )
    issued = repo.retrieve(
        principal(repo, ids["wms"]), "alice", csr_for(spare_key(3)), lifetime=dt.timedelta(hours=10)
    )
    proxy = issued.proxy
    assert proxy.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    assert proxy.not_valid_after_utc <= issued.certificates[1].not_valid_after_utc


def test_voms_attributes_from_our_authority(repo: Repository, ids: dict[str, Identity]) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice"))
    wms = principal(repo, ids["wms"])
    issued = repo.retrieve(wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("dteam")])
    result = validate_chain(issued.certificates, repo.trust)
    assert result.fqans == (
        "/dteam/Role=NULL/Capability=NULL",
        "/dteam/analysis/Role=NULL/Capability=NULL",
    )
    assert result.voms[0].uri == "voms.localhost:15000"
    assert issued.proxy.not_valid_after_utc <= result.voms[0].not_after  # I4: never outlives its AC

    issued = repo.retrieve(
        wms,
        "alice",
        csr_for(spare_key(3)),
        voms=[VomsRequest.parse("dteam:/dteam/Role=production")],
    )
    assert (
        validate_chain(issued.certificates, repo.trust).fqans[0]
        == "/dteam/Role=production/Capability=NULL"
    )

    with pytest.raises(Denied) as err:
        repo.retrieve(
            wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("dteam:/dteam/Role=admin")]
        )
    assert err.value.rule == "voms.fqan_not_held" and "/dteam/Role=admin" in err.value.message
    with pytest.raises(Denied) as err:
        repo.retrieve(wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("ops")])
    assert err.value.rule == "voms.fqan_not_held" and "/ops" in err.value.message
    with pytest.raises(BadRequest) as bad:
        repo.retrieve(wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("atlas")])
    assert "atlas" in bad.value.message


def test_ac_cache_reuses_acs_while_they_cover_the_proxy(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice"))
    wms = principal(repo, ids["wms"])
    first = repo.retrieve(wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("dteam")])
    second = repo.retrieve(wms, "alice", csr_for(spare_key(4)), voms=[VomsRequest.parse("dteam")])
    assert first.acs[0].serial_number == second.acs[0].serial_number
    other = repo.retrieve(
        wms,
        "alice",
        csr_for(spare_key(4)),
        voms=[VomsRequest.parse("dteam:/dteam/Role=production")],
    )
    assert other.acs[0].serial_number != first.acs[0].serial_number


def test_owner_operations(repo: Repository, ids: dict[str, Identity]) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    bob = principal(repo, ids["bob"])
    alice = principal(repo, ids["alice"])
    with pytest.raises(Denied) as err:
        repo.info(bob, "alice")
    assert err.value.rule == "owner.only"
    with pytest.raises(BadPassphrase):
        repo.change_passphrase(alice, "alice", "default", "not the passphrase", "new passphrase")
    repo.change_passphrase(alice, "alice", "default", PASS, "new passphrase")
    with pytest.raises(BadPassphrase):
        repo.retrieve(principal(repo, None), "alice", csr_for(spare_key(3)), passphrase=PASS)
    repo.retrieve(
        principal(repo, None), "alice", csr_for(spare_key(3)), passphrase="new passphrase"
    )
    with pytest.raises(Denied):
        repo.destroy(bob, "alice")
    repo.destroy(alice, "alice")
    with pytest.raises(NotFound):
        repo.info(alice, "alice")


def test_another_owner_cannot_overwrite_a_username(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("shared", passphrase=PASS))
    with pytest.raises(Denied) as err:
        delegate(repo, ids["bob"], StoreOptions("shared", passphrase=PASS))
    assert err.value.rule == "store.not_owner"


def test_delegated_chain_must_be_for_our_key_and_the_client(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    alice = make_proxy(ids["alice"])
    pending = repo.begin_store(principal(repo, alice), StoreOptions("alice"))
    from voms_ext import ProxyBuilder

    wrong_key = ProxyBuilder(alice.cert, alice.chain).public_key(spare_key(5)).sign(alice.key)
    with pytest.raises(BadRequest, match="not for the key"):
        repo.finish_store(pending, (wrong_key, *alice.certificates))
    bob = make_proxy(ids["bob"])
    bobs = ProxyBuilder(bob.cert, bob.chain).from_csr(pending.csr).sign(bob.key)
    with pytest.raises(Denied) as err:
        repo.finish_store(pending, (bobs, *bob.certificates))
    assert err.value.rule == "store.not_owner"


def test_sealed_keys_leave_no_trace_in_the_database(
    dev_pki: DevPKI, tmp_path: Path, ids: dict[str, Identity]
) -> None:
    """I7: the SQLite file holds no private key in any recognisable form."""
    db = tmp_path / "state" / "proxyd.db"
    config = make_test_config(dev_pki, f"sqlite:///{db}", tmp_path / "state")
    config.server.state_dir.mkdir(mode=0o700)
    engine = make_engine(config.server.database)
    migrate(engine)
    repo = Repository(
        config,
        engine,
        MasterKeyring.load_or_create(config.server.master_key_file),
        trust_of(dev_pki),
    )
    pending_pw = delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    pending_trusted = delegate(repo, ids["bob"], StoreOptions("bob"))
    engine.dispose()
    raw = db.read_bytes() + b"".join(p.read_bytes() for p in db.parent.glob("proxyd.db-*"))
    assert b"PRIVATE KEY" not in raw
    for pending in (pending_pw, pending_trusted):
        for fmt in (
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.PrivateFormat.PKCS8,
        ):
            pem = pending.key.private_bytes(
                serialization.Encoding.PEM, fmt, serialization.NoEncryption()
            )
            for line in pem.splitlines()[1:-1]:
                assert line not in raw
        numbers = pending.key.private_numbers()
        der = pending.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for secret in (
            numbers.p.to_bytes(128, "big"),
            numbers.q.to_bytes(128, "big"),
            numbers.d.to_bytes(256, "big")[:64],
            der[-64:],
        ):
            assert secret not in raw
    assert PASS.encode() not in raw


def test_passphrase_credential_cannot_be_opened_with_the_master_key(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    from sqlalchemy import select

    from proxyd.sealing import SealedKey
    from proxyd.store.db import session_factory

    with session_factory(repo.engine)() as session:
        row = session.scalars(select(CredentialRow)).one()
    sealed = SealedKey.from_bytes(row.sealed_key)
    assert sealed.master_key_id is None
    with pytest.raises(SealingError):
        unseal(sealed, keyring=repo.keyring, aad=b"proxyd-credential\x00alice\x00default")


def test_master_key_rotation_keeps_credentials_usable(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice"))
    old = repo.keyring.current_id
    assert repo.rotate_master_key(local_operator()) == 1
    assert repo.keyring.current_id != old
    repo.retrieve(principal(repo, ids["wms"]), "alice", csr_for(spare_key(3)))


def test_weak_csr_is_refused(repo: Repository, ids: dict[str, Identity]) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    delegate(repo, ids["alice"], StoreOptions("alice"))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    with pytest.raises(BadRequest, match="1024 bits"):
        repo.retrieve(principal(repo, ids["wms"]), "alice", csr_for(weak))


def test_host_dn_helper() -> None:
    assert host_dn("wms.localhost") == "/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"


def test_stored_credential_is_usable_for_at_most_max_stored_lifetime(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    """A 10-day delegation is cut to the server's 7-day maximum (myproxy's max_cred_lifetime)."""
    delegate(repo, ids["alice"], StoreOptions("alice"), lifetime_h=240)
    [info] = repo.info(principal(repo, ids["alice"]), "alice")
    left = info.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < left <= repo.config.policy.max_stored_lifetime


def test_concurrent_stores_all_succeed(repo: Repository, ids: dict[str, Identity]) -> None:
    """Regression: on SQLite, read-then-write store transactions begun DEFERRED failed at once
    with "database is locked" under concurrency (bench: 31-50 % of PUTs at C=8/32)."""
    from concurrent.futures import ThreadPoolExecutor

    def store(i: int) -> str:
        delegate(repo, ids["alice"], StoreOptions(f"alice-{i}"))
        return f"alice-{i}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(store, range(16)))
    assert sorted(c.username for c in repo.list_credentials(local_operator())) == sorted(stored)
    assert repo.audit.verify().ok
