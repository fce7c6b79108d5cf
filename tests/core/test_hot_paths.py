"""The memos of the request hot paths (issue #8) never change an answer.

Peer chains are validated once per chain while nothing time- or trust-
dependent has changed; unsealed master-key-sealed keys are kept for seconds,
bound to the sealed bytes; bans and credentials are read on every request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import proxyd.core.base
import proxyd.principal
from proxyd.devpki import DevPKI, user_dn
from proxyd.principal import PeerCache, PrincipalKind, validity_window
from proxyd.repository import BadPassphrase, Denied, NotFound, Repository, StoreOptions
from proxyd.sealing import UnsealedKeyCache
from proxyd.store.db import make_engine
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    dev_crl,
    load_identity,
    make_proxy,
    make_repository,
    principal,
    spare_key,
)
from voms_ext import ChainError, TrustStore, VomsExtError, validate_chain

ALICE = user_dn("alice")
PASS = "correct horse battery"


@pytest.fixture
def repo(dev_pki: DevPKI, tmp_path: Path) -> Iterator[Repository]:
    repo = make_repository(dev_pki, tmp_path / "state")
    yield repo
    repo.engine.dispose()


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "wms")}


def der_chain(ident: Identity, pki: DevPKI) -> list[bytes]:
    """What the TLS layer hands over: the peer's chain with the trust anchor, as DER."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    return [c.public_bytes(serialization.Encoding.DER) for c in (*ident.certificates, ca)]


def anchors(pki: DevPKI) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())]


def crl(
    pki: DevPKI, next_update: dt.datetime, revoked: x509.Certificate | None = None
) -> x509.CertificateRevocationList:
    serials = (revoked.serial_number,) if revoked is not None else ()
    return dev_crl(pki, next_update=next_update, revoked=serials)


class CountingValidate:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = proxyd.principal.validate_chain
        monkeypatch.setattr(proxyd.principal, "validate_chain", self)

    def __call__(self, *args: object, **kw: object) -> object:
        self.calls += 1
        return self._real(*args, **kw)  # type: ignore[arg-type]


# --- PeerCache ------------------------------------------------------------------------------


def test_peer_cache_validates_a_chain_once_and_keeps_the_address_per_request(
    repo: Repository, ids: dict[str, Identity], dev_pki: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingValidate(monkeypatch)
    cache = PeerCache(repo.config.policy)
    chain = der_chain(ids["wms"], dev_pki)
    first = cache.principal(chain, repo.trust, "192.0.2.1")
    second = cache.principal(list(chain), repo.trust, "192.0.2.2")
    assert counting.calls == 1
    assert (first.identity, first.kind, first.address) == (
        second.identity,
        PrincipalKind.HOST,
        "192.0.2.1",
    )
    assert second.address == "192.0.2.2"
    assert second == principal(repo, ids["wms"], "192.0.2.2")  # what validation would say


def test_peer_cache_revalidates_against_a_reloaded_trust_store(
    repo: Repository, ids: dict[str, Identity], dev_pki: DevPKI
) -> None:
    cache = PeerCache(repo.config.policy)
    chain = der_chain(ids["wms"], dev_pki)
    cache.principal(chain, repo.trust)
    # The CA was removed from the trust directory: a new store, and the peer is refused at once.
    empty = TrustStore.from_certificates([])
    assert cache.cached(chain, empty) is None
    with pytest.raises(VomsExtError):
        cache.principal(chain, empty)
    # Revoked by a CRL fetched meanwhile (a new store with the same anchors).
    revoking = TrustStore.from_certificates(
        anchors(dev_pki),
        [crl(dev_pki, dt.datetime.now(dt.UTC) + dt.timedelta(days=1), ids["wms"].cert)],
    )
    with pytest.raises(ChainError, match="revoked"):
        cache.principal(chain, revoking)


def test_peer_cache_keeps_no_failure_and_no_answer_outside_the_validity_window(
    repo: Repository, ids: dict[str, Identity], dev_pki: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingValidate(monkeypatch)
    cache = PeerCache(repo.config.policy)
    short = make_proxy(ids["alice"], lifetime_h=1)
    chain = der_chain(short, dev_pki)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(ChainError, match="not yet valid"):
        cache.principal(chain, repo.trust, at=now - dt.timedelta(hours=1))
    assert cache.principal(chain, repo.trust, at=now).identity == ALICE  # failure was not kept
    assert cache.principal(chain, repo.trust, at=now + dt.timedelta(minutes=30)).identity == ALICE
    assert counting.calls == 2
    later = now + dt.timedelta(hours=2)  # the proxy has expired: validated again, and refused
    assert cache.cached(chain, repo.trust, at=later) is None
    with pytest.raises(ChainError, match="expired"):
        cache.principal(chain, repo.trust, at=later)
    assert counting.calls == 3


def test_validity_window_ends_with_the_crl_of_the_path(
    repo: Repository, ids: dict[str, Identity], dev_pki: DevPKI
) -> None:
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=10)
    trust = TrustStore.from_certificates(anchors(dev_pki), [crl(dev_pki, soon)])
    result = validate_chain(ids["wms"].certificates, trust)
    start, end = validity_window(result, trust)
    assert end == soon
    assert start == max(c.not_valid_before_utc for c in (*result.chain, *result.ca_path))
    cache = PeerCache(repo.config.policy)
    chain = der_chain(ids["wms"], dev_pki)
    cache.principal(chain, trust)
    assert cache.cached(chain, trust, at=soon - dt.timedelta(minutes=1)) is not None
    assert cache.cached(chain, trust, at=soon + dt.timedelta(minutes=1)) is None  # stale CRL


def test_peer_cache_is_bounded(repo: Repository, ids: dict[str, Identity], dev_pki: DevPKI) -> None:
    cache = PeerCache(repo.config.policy, maxsize=2)
    chains = [der_chain(make_proxy(ids["alice"], key_index=i), dev_pki) for i in (1, 2, 3)]
    for chain in chains:
        cache.principal(chain, repo.trust)
    assert cache.cached(chains[0], repo.trust) is None
    assert cache.cached(chains[2], repo.trust) is not None


# --- unsealed keys ------------------------------------------------------------------------------


class CountingUnseal:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = proxyd.core.base.unseal
        monkeypatch.setattr(proxyd.core.base, "unseal", self)

    def __call__(self, *args: object, **kw: object) -> bytes:
        self.calls += 1
        return self._real(*args, **kw)  # type: ignore[arg-type]


def issuer_key_of(issued_chain: tuple[x509.Certificate, ...]) -> bytes:
    return (
        issued_chain[1]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_master_sealed_key_is_unsealed_once_and_a_new_delegation_replaces_it(
    repo: Repository, ids: dict[str, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingUnseal(monkeypatch)
    wms = principal(repo, ids["wms"])
    delegate(repo, ids["alice"], StoreOptions("alice", trusted_retrievers=("*",)))
    first = repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    second = repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    assert counting.calls == 1
    assert issuer_key_of(first.certificates) == issuer_key_of(second.certificates)
    # The owner delegates anew (a new server key): the next GET signs with the new key.
    delegate(repo, ids["alice"], StoreOptions("alice", trusted_retrievers=("*",)))
    third = repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    assert counting.calls == 2
    assert issuer_key_of(third.certificates) != issuer_key_of(first.certificates)
    third.certificates[0].verify_directly_issued_by(third.certificates[1])
    # Destroyed: nothing is issued, whatever is remembered.
    repo.destroy(principal(repo, ids["alice"]), "alice")
    with pytest.raises(NotFound):
        repo.retrieve(wms, "alice", csr_for(spare_key(3)))


def test_passphrase_sealed_keys_are_never_kept(
    repo: Repository, ids: dict[str, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingUnseal(monkeypatch)
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    anyone = principal(repo, None)
    repo.retrieve(anyone, "alice", csr_for(spare_key(3)), passphrase=PASS)
    repo.retrieve(anyone, "alice", csr_for(spare_key(3)), passphrase=PASS)
    assert counting.calls == 2
    with pytest.raises(BadPassphrase):  # a correct passphrase just before proves nothing now
        repo.retrieve(anyone, "alice", csr_for(spare_key(3)), passphrase="not the passphrase")
    assert len(repo._keys._entries) == 0


def test_unsealed_key_cache_expires_and_is_bound_to_the_sealed_bytes() -> None:
    now = [100.0]
    cache = UnsealedKeyCache(ttl=10, maxsize=2, clock=lambda: now[0])
    key = object()
    cache.put("alice", "default", b"sealed-1", key)
    assert cache.get("alice", "default", b"sealed-1") is key
    assert cache.get("alice", "default", b"sealed-2") is None  # stored anew or re-wrapped
    now[0] += 10
    assert cache.get("alice", "default", b"sealed-1") is None
    for i in range(3):
        cache.put(f"u{i}", "default", b"s", key)
    assert cache.get("u0", "default", b"s") is None and cache.get("u2", "default", b"s") is key
    assert repr(cache) == "UnsealedKeyCache(ttl=10, maxsize=2)"  # never a key (I7)


# --- bans and credentials are read per request ------------------------------------------------


def test_a_ban_made_by_another_process_applies_to_the_next_request(
    repo: Repository, ids: dict[str, Identity], dev_pki: DevPKI, tmp_path: Path
) -> None:
    """Documented in docs/operator.md: a ban takes effect at the next request, everywhere."""
    from proxyd.principal import local_operator

    delegate(repo, ids["alice"], StoreOptions("alice", trusted_retrievers=("*",)))
    wms = principal(repo, ids["wms"])
    repo.retrieve(wms, "alice", csr_for(spare_key(3)))  # keys and peers are memoised now
    repo.info(principal(repo, ids["alice"]), "alice")
    # `proxyd admin ban` is another process with its own Repository on the same database.
    admin = Repository(
        repo.config, make_engine(repo.config.server.database), repo.keyring, repo.trust
    )
    admin.ban(local_operator(), "host", wms.identity, "test")
    with pytest.raises(Denied) as err:
        repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    assert err.value.rule == "ban.peer"
    admin.ban(local_operator(), "user", ALICE, "test")
    with pytest.raises(Denied) as err:
        repo.info(principal(repo, ids["alice"]), "alice")
    assert err.value.rule == "ban.peer"
    admin.unban(local_operator(), "host", wms.identity)
    with pytest.raises(Denied) as err:
        repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    assert err.value.rule == "ban.owner"
    admin.unban(local_operator(), "user", ALICE)
    repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    admin.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_driver_reads_give_what_the_orm_gives(
    request: pytest.FixtureRequest,
    backend: str,
    ids: dict[str, Identity],
    dev_pki: DevPKI,
    tmp_path: Path,
) -> None:
    """The request paths read credentials and bans on the driver's cursor: same values, same
    types (aware UTC datetimes, JSON lists, booleans, bytes) as SQLAlchemy's ORM."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from proxyd.principal import local_operator
    from proxyd.store.models import CredentialRow

    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    repo = make_repository(dev_pki, tmp_path / "state", database=url)
    try:
        delegate(
            repo,
            ids["alice"],
            StoreOptions(
                "alice", description="d", retrievers=("a", "b"), trusted_retrievers=("*",)
            ),
        )
        repo.ban(local_operator(), "user", "/CN=mallory", "test")
        repo.ban(local_operator(), "host", "/CN=host", "test")
        fast = repo._find("alice", "default")
        assert fast is not None and repo._find("alice", "nothing") is None
        with Session(repo.engine) as session:
            orm = session.scalars(select(CredentialRow)).one()
        for field in dataclasses.fields(fast):
            a, b = getattr(fast, field.name), getattr(orm, field.name)
            assert (a, type(a)) == (b, type(b)), field.name
        assert fast.not_after.utcoffset() == dt.timedelta(0)
        assert repo._bans() == repo._lookup("alice", "default")[1]
        assert (repo._bans().users, repo._bans().hosts) == (("/CN=mallory",), ("/CN=host",))
        assert "sealed" not in repr(fast) and "BEGIN" not in repr(fast)  # I7
    finally:
        repo.engine.dispose()
