"""Issue 15, findings 1, 3 and 8: identities minted from a proxy, other spellings of a DN,
pilot roles in payloads, and I3 on the passphrase path.

Every attack here worked on the code before the fix (an independent child of a
proxy had its own subject as identity, and DN rules compared strings exactly).
Each is replayed in several certificate forms a proxy holder can make: RFC 3820
and pre-RFC draft independent proxies, an independent proxy deeper in the
chain, and, as controls that must keep working, impersonation, limited,
legacy and draft impersonation proxies of every depth.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from proxyd.devpki import DevPKI, host_dn, user_dn
from proxyd.patterns import dn_denied, dn_matches, same_dn
from proxyd.policy import Bans
from proxyd.principal import IdentityRefused, PrincipalKind, local_operator
from proxyd.repository import BadRequest, Denied, Repository, StoreOptions
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_proxy,
    make_repository,
    principal,
    spare_key,
)
from voms_ext import ProxyBuilder, validate_chain
from voms_ext.files import private_key_to_pem

ALICE, BOB = user_dn("alice"), user_dn("bob")
PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
WMS = host_dn("wms.localhost")
PASS = "correct horse battery"


def _child(parent: Identity, style: Callable[[ProxyBuilder], ProxyBuilder], key: int) -> Identity:
    builder = style(
        ProxyBuilder(parent.cert, parent.chain)
        .public_key(spare_key(key))
        .lifetime(dt.timedelta(hours=2))
    )
    return Identity(builder.sign(parent.key), spare_key(key), parent.certificates)


def _independent(b: ProxyBuilder) -> ProxyBuilder:
    return b.independent()


def _draft_independent(b: ProxyBuilder) -> ProxyBuilder:
    return b.draft().independent()


def _impersonation(b: ProxyBuilder) -> ProxyBuilder:
    return b.impersonation()


# Forms a proxy holder can mint: a function from the user's identity to a chain.
MINTED: dict[str, Callable[[Identity], Identity]] = {
    "rfc-independent": lambda who: _child(make_proxy(who), _independent, 5),
    "draft-independent": lambda who: _child(make_proxy(who), _draft_independent, 5),
    "independent-of-eec": lambda who: _child(who, _independent, 5),
    "independent-then-impersonation": lambda who: _child(
        _child(make_proxy(who), _independent, 5), _impersonation, 6
    ),
}
# Forms that speak for the end-entity certificate and must keep working.
HONEST: dict[str, Callable[[Identity], Identity]] = {
    "impersonation": lambda who: make_proxy(who),
    "second-level": lambda who: _child(make_proxy(who), _impersonation, 5),
    "legacy": lambda who: _child(who, lambda b: b.legacy(), 5),
    "draft": lambda who: _child(who, lambda b: b.draft(), 5),
    "third-level": lambda who: _child(
        _child(make_proxy(who), _impersonation, 5), _impersonation, 6
    ),
}


@pytest.fixture
def pki_ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "pilot", "wms")}


@pytest.fixture
def make_repo(dev_pki: DevPKI, tmp_path: Path) -> Iterator[Callable[..., Repository]]:
    made: list[Repository] = []

    def make(**policy_changes: object) -> Repository:
        base = make_repository(dev_pki, tmp_path / f"state{len(made)}")
        base.engine.dispose()
        policy = dataclasses.replace(base.config.policy, **policy_changes)  # type: ignore[arg-type]
        repo = make_repository(dev_pki, tmp_path / f"state{len(made)}", policy=policy)
        made.append(repo)
        return repo

    yield make
    for repo in made:
        repo.engine.dispose()


# --- what an independent proxy is to proxyd: nothing -------------------------------------------


@pytest.mark.parametrize("form", sorted(MINTED))
def test_a_minted_identity_cannot_authenticate(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], form: str
) -> None:
    repo = make_repo()
    chain = MINTED[form](pki_ids["alice"]).certificates
    with pytest.raises(IdentityRefused, match="independent proxy"):
        repo.peers.principal([c.public_bytes(_DER) for c in chain], repo.trust, "127.0.0.1")


@pytest.mark.parametrize("form", sorted(HONEST))
def test_honest_proxies_speak_for_the_end_entity(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], form: str
) -> None:
    repo = make_repo()
    chain = HONEST[form](pki_ids["alice"]).certificates
    peer = repo.peers.principal([c.public_bytes(_DER) for c in chain], repo.trust, "127.0.0.1")
    assert peer.identity == ALICE


@pytest.mark.parametrize("form", sorted(MINTED))
def test_a_banned_user_cannot_store_under_a_minted_identity(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], form: str
) -> None:
    """Finding 1: a banned user stored a credential and a WMS retrieved it."""
    repo = make_repo(banned_dns=(BOB,))
    minted = MINTED[form](pki_ids["bob"])
    # As the TLS peer: refused before any rule.
    with pytest.raises(IdentityRefused):
        principal(repo, minted)
    # As the delegated chain of a store (the owner would be the minted DN): refused.
    operator = local_operator()
    with pytest.raises(BadRequest, match="independent proxy"):
        repo._store_chain(  # the one place every store path validates its chain
            operator, StoreOptions("bob-minted"), minted.certificates, _pem_key(minted)
        )


def test_a_stolen_proxy_cannot_renew_the_owners_credential_through_a_minted_identity(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity]
) -> None:
    """Finding 1: a stolen short proxy of alice renewed her credential into a full 12 h one."""
    repo = make_repo(authorized_renewers=("*",), trusted_retrievers=("*",))
    delegate(repo, pki_ids["alice"], StoreOptions("alice"))
    stolen = make_proxy(pki_ids["alice"], lifetime_h=1)
    for form in ("rfc-independent", "draft-independent"):
        minted = _child(stolen, _independent if form.startswith("rfc") else _draft_independent, 5)
        with pytest.raises(IdentityRefused):
            principal(repo, minted)  # cannot be the TLS peer
        proof = validate_chain(minted.certificates, repo.trust)
        with pytest.raises(Denied) as err:  # nor the renewal proof
            repo.retrieve(
                principal(repo, stolen), "alice", csr_for(spare_key(3)), renewal_proof=proof
            )
        assert err.value.rule == "auth.independent_proxy"
    # The stolen proxy itself, with an honest proof, meets self-authorization.
    proof = validate_chain(make_proxy(stolen, key_index=4).certificates, repo.trust)
    with pytest.raises(Denied) as err:
        repo.retrieve(principal(repo, stolen), "alice", csr_for(spare_key(3)), renewal_proof=proof)
    assert err.value.rule in ("renew.self_authorization", "retrieve.self_authorization")
    rules = {e.event.rule for e in repo.audit.query(owner=ALICE, decision="deny")}
    assert "auth.independent_proxy" in rules


@pytest.mark.parametrize("form", sorted(MINTED))
def test_a_pilot_cannot_retrieve_its_own_credential_through_a_minted_identity(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], form: str
) -> None:
    repo = make_repo(trusted_retrievers=("*",))
    delegate(repo, pki_ids["pilot"], StoreOptions("pilot"))
    with pytest.raises(IdentityRefused):
        principal(repo, MINTED[form](pki_ids["pilot"]))


def test_a_pilot_credential_never_goes_down_the_passphrase_path(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity]
) -> None:
    """Finding 1: an anonymous client sending the pilot credential's passphrase got it."""
    repo = make_repo()
    delegate(repo, pki_ids["pilot"], StoreOptions("pilot", passphrase=PASS))
    for who in (None, pki_ids["alice"], pki_ids["wms"]):
        with pytest.raises(Denied) as err:
            repo.retrieve(principal(repo, who), "pilot", csr_for(spare_key(3)), passphrase=PASS)
        assert err.value.rule == "pilot.credential_trusted_only"


# --- other spellings of a DN ---------------------------------------------------------------------

SPELLINGS = {
    "as-is": BOB,
    "lower-case": BOB.lower(),
    "upper-case-values": "/C=XX/O=PROXYD DEV/OU=USERS/CN=BOB",
    "rfc2253-reversed": "CN=bob,OU=Users,O=proxyd dev,C=XX",
    "openssl-oneline": "C = XX, O = proxyd dev, OU = Users, CN = bob",
    "extra-spaces": "/C=XX/O=proxyd   dev/OU=Users/CN= bob ",
    "long-attribute-names": "/countryName=XX/organizationName=proxyd dev/OU=Users/commonName=bob",
    "fullwidth": "/C=XX/O=proxyd dev/OU=Users/CN=ｂｏｂ",
    "pattern": "*/cn=BOB",
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_ban_holds_for_every_spelling_of_the_name(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], spelling: str
) -> None:
    repo = make_repo(banned_dns=(SPELLINGS[spelling],))
    with pytest.raises(Denied) as err:
        repo.begin_store(principal(repo, make_proxy(pki_ids["bob"])), StoreOptions("bob"))
    assert err.value.rule == "ban.peer"
    assert dn_denied(SPELLINGS[spelling], BOB)
    assert Bans(users=(SPELLINGS[spelling],)).matches(BOB)
    # ... and bans no one else.
    assert not dn_denied(SPELLINGS[spelling], ALICE)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_pilot_classification_holds_for_every_spelling(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], spelling: str
) -> None:
    repo = make_repo(pilot_dns=(SPELLINGS[spelling],))
    assert principal(repo, make_proxy(pki_ids["bob"])).kind.value == "pilot"


def test_allow_rules_keep_myproxy_exact_semantics() -> None:
    """Retriever ACLs never grant more than under myproxy-server: case and form matter."""
    assert dn_matches(BOB, BOB)
    assert not dn_matches(BOB.lower(), BOB)
    assert not dn_matches("CN=bob,OU=Users,O=proxyd dev,C=XX", BOB)
    assert same_dn("CN=bob,OU=Users,O=proxyd dev,C=XX", BOB)
    assert not same_dn(ALICE, BOB)
    assert not dn_denied(BOB, BOB + "/CN=12345")  # a proxy subject is not the EEC's name


# --- finding 3: pilot roles in payloads ----------------------------------------------------------


def test_a_task_may_not_ask_for_a_pilot_fqan(make_repo: Callable[..., Repository]) -> None:
    from proxyd import policy

    repo = make_repo(pilot_fqans=("/*/Role=pilot",))
    alice = principal(repo, None)
    alice = dataclasses.replace(alice, identity=ALICE, kind=alice.kind.USER)
    for fqan in ("/dteam/Role=pilot", "/dteam/Role=Pilot", "/dteam/Role=pilot/Capability=NULL"):
        request = policy.Request(
            policy.Operation.TASK_SUBMIT, owner=ALICE, fqans=(fqan,), held_fqans=(fqan,)
        )
        decision = policy.decide(request, alice, None, repo.config.policy)
        assert (decision.allowed, decision.rule) == (False, "pilot.fqan_in_payload"), fqan


def test_a_payload_proxy_never_carries_a_pilot_fqan(make_repo: Callable[..., Repository]) -> None:
    from proxyd import policy

    repo = make_repo(pilot_fqans=("/*/Role=pilot", "/dteam/pilots"))
    pilot = dataclasses.replace(principal(repo, None), identity=PILOT, kind=_PILOT_KIND)
    facts = policy.CredentialFacts(
        ALICE, "default", False, dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
        dt.timedelta(hours=12),
    )  # fmt: skip
    assignment = policy.Assignment(PILOT, 7, ALICE, "default", True, dt.timedelta(hours=1), True)
    for fqans, held in (
        (("/dteam/Role=pilot",), ("/dteam/Role=pilot",)),  # asked for explicitly
        ((), ("/dteam", "/dteam/pilots")),  # a pilot group the owner holds, added by default
    ):
        request = policy.Request(
            policy.Operation.PAYLOAD_PROXY, owner=ALICE, fqans=fqans, held_fqans=held,
            assignment=assignment,
        )  # fmt: skip
        decision = policy.decide(request, pilot, facts, repo.config.policy)
        assert (decision.allowed, decision.rule) == (False, "pilot.fqan_in_payload")


# --- finding 8: I3 on the passphrase path -------------------------------------------------------


@pytest.mark.parametrize("want_full", [False, True])
def test_a_trusted_retriever_sending_the_passphrase_gets_a_limited_proxy(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity], want_full: bool
) -> None:
    repo = make_repo(authorized_retrievers=("*",))
    delegate(repo, pki_ids["alice"], StoreOptions("alice", passphrase=PASS))
    wms = principal(repo, pki_ids["wms"])
    issued = repo.retrieve(
        wms, "alice", csr_for(spare_key(3)), passphrase=PASS, want_full=want_full
    )
    assert validate_chain(issued.certificates, repo.trust).is_limited


def test_a_full_delegation_host_gets_a_full_proxy_on_either_path(
    make_repo: Callable[..., Repository], pki_ids: dict[str, Identity]
) -> None:
    repo = make_repo(authorized_retrievers=("*",), full_delegation_hosts=(WMS,))
    delegate(repo, pki_ids["alice"], StoreOptions("alice", passphrase=PASS))
    wms = principal(repo, pki_ids["wms"])
    issued = repo.retrieve(wms, "alice", csr_for(spare_key(3)), passphrase=PASS, want_full=True)
    assert not validate_chain(issued.certificates, repo.trust).is_limited


# --- helpers -------------------------------------------------------------------------------------

_DER = Encoding.DER
_PILOT_KIND = PrincipalKind.PILOT


def _pem_key(identity: Identity) -> bytes:
    return private_key_to_pem(identity.key)
