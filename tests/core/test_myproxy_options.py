"""MyProxy's options that proxyd lacked (issue 18, item 2): default_* lists,
accepted_credentials, check_multiple_credentials; and `admin list
--expiring-within / --invalid / --json` (item 4).

The semantics are myproxy-server's (`myproxy_check_policy` in gct's
myproxy_server.c): the server-wide list AND (the credential's own list when
it was stored with one, else the server's default_* list when set).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from proxyd.cli.main import main
from proxyd.config import ConfigError, PolicyConfig, load_config, parse_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.policy import AuthMethod, CredentialFacts, Operation, Request, decide
from proxyd.principal import Principal, PrincipalKind, local_operator
from proxyd.repository import BadPassphrase, Repository, StoreOptions
from proxyd.store.models import CredentialRow
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    install_crl,
    load_identity,
    make_repository,
    principal,
    spare_key,
)
from tests.support.server import free_port, write_config
from tests.taskqueue.support import Clock
from voms_ext import TrustStore

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
BOB = "/C=XX/O=proxyd dev/OU=Users/CN=bob"
WMS = "/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"
OTHER_WMS = "/C=XX/O=proxyd dev/OU=Hosts/CN=other.localhost"

alice = Principal(ALICE, PrincipalKind.USER)
bob = Principal(BOB, PrincipalKind.USER)
wms = Principal(WMS, PrincipalKind.HOST)
other_wms = Principal(OTHER_WMS, PrincipalKind.HOST)

BASE = PolicyConfig(
    authorized_retrievers=("*",),
    trusted_retrievers=("*/OU=Hosts/CN=*",),
    authorized_renewers=("*",),
    key_retrievers=("*",),
)


def cred(**kw: object) -> CredentialFacts:
    base = CredentialFacts(
        owner=ALICE,
        name="default",
        has_passphrase=True,
        not_after=NOW + 48 * H,
        max_lifetime=24 * H,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def verdict(
    who: Principal, request: Request, facts: CredentialFacts | None, **policy: object
) -> tuple[bool, str, str]:
    config = dataclasses.replace(BASE, **policy)  # type: ignore[arg-type]
    d = decide(dataclasses.replace(request, now=NOW), who, facts, config)
    return d.allowed, d.rule, d.reason


PW = Request(Operation.RETRIEVE, owner=ALICE, auth=AuthMethod.PASSPHRASE)
TRUSTED = Request(Operation.RETRIEVE, owner=ALICE, auth=AuthMethod.CERTIFICATE)
RENEW = Request(Operation.RENEW, owner=ALICE, proof=alice)
KEY = Request(Operation.RETRIEVE_KEY, owner=ALICE, auth=AuthMethod.PASSPHRASE)
STORE = Request(Operation.STORE, owner=ALICE, username="alice")
DESTROY = Request(Operation.DESTROY, owner=ALICE, name="default")


# --- configuration ------------------------------------------------------------------------

SERVER = '[server]\nhost_cert = "/h/cert.pem"\nhost_key = "/h/key.pem"\n'
SOURCE = "/etc/proxyd/proxyd.toml"


def test_the_new_policy_keys_default_to_myproxy_without_them() -> None:
    policy = parse_config(SERVER, SOURCE).policy
    assert policy.default_retrievers is None
    assert policy.default_renewers is None
    assert policy.default_trusted_retrievers is None
    assert policy.default_key_retrievers is None
    assert policy.accepted_credentials == ("*",)  # everyone may store, as before
    assert policy.check_multiple_credentials is False


def test_the_new_policy_keys_parse() -> None:
    policy = parse_config(
        SERVER
        + "[policy]\n"
        + 'default_retrievers = ["*/CN=wms.localhost"]\n'
        + 'default_renewers = ["none"]\n'
        + 'default_trusted_retrievers = ["*/CN=crab-(prod|preprod).cern.ch"]\n'
        + "default_key_retrievers = []\n"
        + 'accepted_credentials = ["*/OU=Users/*"]\n'
        + "check_multiple_credentials = true\n",
        SOURCE,
    ).policy
    assert policy.default_retrievers == ("*/CN=wms.localhost",)
    assert policy.default_renewers == ("none",)
    assert policy.default_trusted_retrievers == ("*/CN=crab-(prod|preprod).cern.ch",)
    assert policy.default_key_retrievers == ()  # set, and empty: nobody passes
    assert policy.accepted_credentials == ("*/OU=Users/*",)
    assert policy.check_multiple_credentials is True


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'default_retrievers = "*"',
            "[policy] default_retrievers must be a list of non-empty strings, got '*'",
        ),
        (
            'default_renewers = [""]',
            "[policy] default_renewers must be a list of non-empty strings, got ['']",
        ),
        (
            "default_trusted_retrievers = [1]",
            "[policy] default_trusted_retrievers must be a list of non-empty strings, got [1]",
        ),
        (
            'default_key_retrievers = "none"',
            "[policy] default_key_retrievers must be a list of non-empty strings, got 'none'",
        ),
        (
            'accepted_credentials = "*"',
            "[policy] accepted_credentials must be a list of non-empty strings, got '*'",
        ),
        (
            'check_multiple_credentials = "yes"',
            "[policy] check_multiple_credentials must be true or false, got 'yes'",
        ),
    ],
)
def test_bad_values_are_refused_with_where_and_why(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(SERVER + "[policy]\n" + line + "\n", SOURCE)
    assert str(err.value) == f"{SOURCE}: {message}"


# --- default_retrievers --------------------------------------------------------------------


def test_default_retrievers_apply_to_a_credential_stored_without_a_list() -> None:
    facts = cred()
    assert verdict(bob, PW, facts, default_retrievers=(ALICE,))[:2] == (
        False,
        "retrieve.credential_acl",
    )
    assert (
        "server's default retriever policy"
        in verdict(bob, PW, facts, default_retrievers=(ALICE,))[2]
    )
    assert verdict(alice, PW, facts, default_retrievers=(ALICE,))[:2] == (
        True,
        "retrieve.passphrase",
    )
    # Not set: the server-wide list alone decides (MyProxy's "*" default).
    assert verdict(bob, PW, facts)[:2] == (True, "retrieve.passphrase")
    # Set and empty: nobody passes the per-credential check.
    assert verdict(alice, PW, facts, default_retrievers=())[:2] == (
        False,
        "retrieve.credential_acl",
    )


def test_the_credentials_own_retrievers_override_the_default() -> None:
    facts = cred(retrievers=(BOB,))
    assert verdict(bob, PW, facts, default_retrievers=(ALICE,))[:2] == (
        True,
        "retrieve.passphrase",
    )
    allowed, rule, reason = verdict(alice, PW, facts, default_retrievers=(ALICE,))
    assert (allowed, rule) == (False, "retrieve.credential_acl")
    assert "credential's retriever policy" in reason


def test_the_server_wide_retrievers_still_apply_over_any_default() -> None:
    facts = cred()
    assert verdict(bob, PW, facts, authorized_retrievers=(ALICE,), default_retrievers=("*",))[
        :2
    ] == (False, "retrieve.server_acl")


# --- default_trusted_retrievers ------------------------------------------------------------


def test_default_trusted_retrievers() -> None:
    facts = cred(has_passphrase=False)
    assert verdict(wms, TRUSTED, facts, default_trusted_retrievers=("none",))[:2] == (
        False,
        "retrieve.credential_acl",
    )
    assert verdict(wms, TRUSTED, facts, default_trusted_retrievers=(WMS,))[:2] == (
        True,
        "retrieve.trusted",
    )
    assert verdict(other_wms, TRUSTED, facts, default_trusted_retrievers=(WMS,))[:2] == (
        False,
        "retrieve.credential_acl",
    )
    # The credential's own -Z list wins over the default.
    own = cred(has_passphrase=False, trusted_retrievers=(OTHER_WMS,))
    assert verdict(other_wms, TRUSTED, own, default_trusted_retrievers=(WMS,))[:2] == (
        True,
        "retrieve.trusted",
    )
    # Not set: trusted_retrievers alone (every host here).
    assert verdict(other_wms, TRUSTED, facts)[:2] == (True, "retrieve.trusted")
    # I3 whatever the default says: still limited.
    d = decide(
        dataclasses.replace(TRUSTED, now=NOW),
        wms,
        facts,
        dataclasses.replace(BASE, default_trusted_retrievers=(WMS,)),
    )
    assert d.limited


# --- default_renewers ----------------------------------------------------------------------


def test_default_renewers() -> None:
    facts = cred(has_passphrase=False)
    allowed, rule, reason = verdict(wms, RENEW, facts, default_renewers=("none",))
    assert (allowed, rule) == (False, "renew.not_authorized")
    assert "server's default renewer policy" in reason
    assert verdict(wms, RENEW, facts, default_renewers=(WMS,))[:2] == (True, "renew.authorized")
    assert verdict(wms, RENEW, cred(has_passphrase=False, renewers=(WMS,)), default_renewers=())[
        :2
    ] == (True, "renew.authorized")
    assert verdict(wms, RENEW, facts, authorized_renewers=(ALICE,), default_renewers=("*",))[
        :2
    ] == (False, "renew.not_authorized")


# --- default_key_retrievers ----------------------------------------------------------------


def test_default_key_retrievers() -> None:
    facts = cred()
    assert verdict(alice, KEY, facts, default_key_retrievers=("none",))[:2] == (
        False,
        "retrieve_key.not_authorized",
    )
    assert verdict(alice, KEY, facts, default_key_retrievers=(ALICE,))[:2] == (
        True,
        "retrieve_key.authorized",
    )
    assert verdict(alice, KEY, facts)[:2] == (True, "retrieve_key.authorized")
    own = cred(key_retrievers=(ALICE,))
    assert verdict(alice, KEY, own, default_key_retrievers=("none",))[:2] == (
        True,
        "retrieve_key.authorized",
    )
    assert verdict(alice, KEY, facts, key_retrievers=(BOB,), default_key_retrievers=("*",))[:2] == (
        False,
        "retrieve_key.not_authorized",
    )


# --- accepted_credentials ------------------------------------------------------------------


def test_accepted_credentials_decide_who_may_store_and_destroy() -> None:
    allowed, rule, reason = verdict(alice, STORE, None, accepted_credentials=(BOB,))
    assert (allowed, rule) == (False, "store.not_accepted")
    assert reason == (
        f'"{ALICE}" not authorized to store credentials on this server '
        "(accepted_credentials policy)"
    )
    assert verdict(alice, STORE, None, accepted_credentials=("*/OU=Users/*",))[:2] == (
        True,
        "store.owner",
    )
    assert verdict(alice, STORE, None)[:2] == (True, "store.owner")  # default: everyone
    # myproxy-server checks accepted_credentials on DESTROY too; INFO stays the owner's.
    assert verdict(alice, DESTROY, cred(), accepted_credentials=())[:2] == (
        False,
        "destroy.not_accepted",
    )
    info = Request(Operation.INFO, owner=ALICE)
    assert verdict(alice, info, cred(), accepted_credentials=())[:2] == (True, "owner.self")


def test_a_ban_still_comes_before_accepted_credentials() -> None:
    assert verdict(alice, STORE, None, banned_dns=(ALICE,), accepted_credentials=())[:2] == (
        False,
        "ban.peer",
    )


# --- check_multiple_credentials (the core, real store and sealing) ---------------------------

PASS = "correct horse battery"
OTHER_PASS = "another long passphrase"


@dataclasses.dataclass
class Bed:
    repo: Repository
    ids: dict[str, Identity]
    pki: DevPKI
    clock: Clock
    cert_dir: Path

    def events(self, operation: str) -> list[tuple[str, str, str | None, str | None]]:
        found = self.repo.audit.query(operation=operation, newest_first=False)
        return [
            (e.event.decision, e.event.rule, e.event.credential_name, e.event.detail) for e in found
        ]


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "wms")}


@pytest.fixture
def bed(dev_pki: DevPKI, tmp_path: Path, ids: dict[str, Identity]) -> Iterator[Bed]:
    cert_dir = tmp_path / "certificates"
    shutil.copytree(dev_pki.cert_dir, cert_dir)
    clock = Clock(dt.datetime.now(dt.UTC))
    repo = make_repository(dev_pki, tmp_path / "state", clock=clock)
    repo.trust = TrustStore.from_dirs(cert_dir, dev_pki.voms_dir)
    repo.config = dataclasses.replace(
        repo.config,
        policy=dataclasses.replace(repo.config.policy, check_multiple_credentials=True),
    )
    delegate(repo, ids["alice"], StoreOptions("alice", passphrase=PASS))
    delegate(repo, ids["alice"], StoreOptions("alice", name="batch", passphrase=OTHER_PASS))
    delegate(repo, ids["alice"], StoreOptions("alice", name="wms-use"), lifetime_h=2)
    yield Bed(repo, ids, dev_pki, clock, cert_dir)
    repo.engine.dispose()


def get(bed: Bed, who: Principal, passphrase: str | None, **kw: object) -> object:
    retrieval = bed.repo.authorize_retrieval(who, "alice", passphrase=passphrase, **kw)  # type: ignore[arg-type]
    return bed.repo.complete_retrieval(retrieval, csr_for(spare_key(3)))


def test_a_get_without_a_name_takes_the_first_credential_the_client_may_use(bed: Bed) -> None:
    anonymous = principal(bed.repo, None)
    get(bed, anonymous, OTHER_PASS, any_name=True)  # "default" has PASS; "batch" opens
    # The audit shows the decision on the credential used, and no refusal of the others.
    assert bed.events("retrieve") == [
        (
            "allow",
            "retrieve.passphrase",
            "batch",
            "full; check_multiple_credentials took 'batch' of 2 tried",
        )
    ]
    # A trusted retriever without a passphrase: "default" and "batch" need theirs.
    get(bed, principal(bed.repo, bed.ids["wms"]), None, any_name=True)
    assert bed.events("retrieve")[-1] == (
        "allow",
        "retrieve.trusted",
        "wms-use",
        "limited; check_multiple_credentials took 'wms-use' of 3 tried",
    )


def test_the_default_credential_is_tried_first(bed: Bed) -> None:
    get(bed, principal(bed.repo, None), PASS, any_name=True)
    assert bed.events("retrieve") == [
        (
            "allow",
            "retrieve.passphrase",
            "default",
            "full; check_multiple_credentials took 'default' of 1 tried",
        )
    ]


def test_the_chosen_credentials_passphrase_is_derived_once(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial that chose the credential opened its key: the GET uses that key instead of
    paying argon2 again (it paid it twice before). Each wrong credential tried costs one."""
    import proxyd.core.base as core_base

    derived: list[bool] = []
    original = core_base.unseal

    def counted(sealed: Any, **kw: Any) -> bytes:
        derived.append(sealed.has_passphrase)
        return original(sealed, **kw)

    monkeypatch.setattr(core_base, "unseal", counted)
    get(bed, principal(bed.repo, None), PASS, any_name=True)  # "default" opens at once
    assert derived == [True]
    derived.clear()
    get(bed, principal(bed.repo, None), OTHER_PASS, any_name=True)  # "default", then "batch"
    assert derived == [True, True]
    assert [e[2] for e in bed.events("retrieve")] == ["default", "batch"]


def test_when_none_is_usable_the_default_credentials_refusal_is_recorded(bed: Bed) -> None:
    with pytest.raises(BadPassphrase) as err:
        get(bed, principal(bed.repo, None), "wrong passphrase", any_name=True)
    assert err.value.rule == "auth.bad_passphrase"
    # One refusal, on the default credential, as without the option; no trial is recorded.
    assert bed.events("retrieve") == [
        ("deny", "auth.bad_passphrase", "default", "invalid credential passphrase")
    ]


def test_a_named_get_or_the_option_off_tries_one_credential_only(bed: Bed) -> None:
    anonymous = principal(bed.repo, None)
    with pytest.raises(BadPassphrase):
        get(bed, anonymous, OTHER_PASS, any_name=False)  # the edge got -k default
    bed.repo.config = dataclasses.replace(
        bed.repo.config,
        policy=dataclasses.replace(bed.repo.config.policy, check_multiple_credentials=False),
    )
    with pytest.raises(BadPassphrase):
        get(bed, anonymous, OTHER_PASS, any_name=True)
    assert [e[:3] for e in bed.events("retrieve")] == [
        ("deny", "auth.bad_passphrase", "default"),
        ("deny", "auth.bad_passphrase", "default"),
    ]


def test_a_credential_locked_out_by_wrong_passphrases_is_not_tried(bed: Bed) -> None:
    anonymous = principal(bed.repo, None)
    keys = bed.repo._lock_keys(anonymous, "alice", "batch")
    for _ in range(20):
        bed.repo.limiter.failure([keys[0]])  # "batch" only, not the peer
    with pytest.raises(BadPassphrase):
        get(bed, anonymous, OTHER_PASS, any_name=True)
    assert [e[:3] for e in bed.events("retrieve")] == [("deny", "auth.bad_passphrase", "default")]


# --- admin list --expiring-within / --invalid ------------------------------------------------


def test_review_lists_by_end_and_by_verdict(bed: Bed) -> None:
    operator = local_operator()
    soon = bed.repo.review_credentials(operator, expiring_within=3 * H)
    assert [(s.info.name, s.verdict) for s in soon] == [("wms-use", None)]
    everything = bed.repo.review_credentials(operator)
    assert everything[0].info.name == "wms-use"  # soonest end first
    assert sorted(s.info.name for s in everything) == ["batch", "default", "wms-use"]
    assert bed.repo.review_credentials(operator, invalid=True) == []

    bed.clock.advance(3 * 3600)  # wms-use (2 h) has ended
    invalid = bed.repo.review_credentials(operator, invalid=True)
    assert [(s.info.name, s.verdict) for s in invalid] == [("wms-use", "expired")]
    assert invalid[0].problem.startswith("the stored credential expired at ")

    # alice's certificate revoked: every credential of hers is invalid, with the reason.
    install_crl(bed.pki, bed.cert_dir, bed.ids["alice"].cert.serial_number)
    bed.repo.trust = TrustStore.from_dirs(bed.cert_dir, bed.pki.voms_dir)
    invalid = bed.repo.review_credentials(operator, invalid=True)
    assert sorted((s.info.name, s.verdict) for s in invalid) == [
        ("batch", "revoked"),
        ("default", "revoked"),
        ("wms-use", "revoked"),
    ]
    assert all("has been revoked" in s.problem for s in invalid)
    both = bed.repo.review_credentials(operator, invalid=True, expiring_within=H)
    assert [s.info.name for s in both] == ["wms-use"]

    details = [
        e.event.detail
        for e in bed.repo.audit.query(operation="admin", decision="allow", newest_first=False)
        if (e.event.detail or "").startswith("list ")
    ]
    assert details == [
        "list credentials expiring within 10800 s",
        "list credentials",
        "list invalid credentials",
        "list invalid credentials",
        "list invalid credentials",
        "list invalid credentials expiring within 3600 s",
    ]


def test_review_is_an_admin_decision(bed: Bed) -> None:
    from proxyd.repository import Denied

    with pytest.raises(Denied) as err:
        bed.repo.review_credentials(principal(bed.repo, bed.ids["alice"]), invalid=True)
    assert err.value.rule == "admin.admins"
    assert bed.events("admin")[-1][:2] == ("deny", "admin.admins")


def test_admin_list_json_for_scripts(
    dev_pki: DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(dev_pki, tmp_path / "state", free_port(), free_port())

    def admin(*args: str) -> int:
        return main(["admin", "--config", str(config), *args])

    repo = Repository.open(load_config(config))
    try:
        alice_id = load_identity(dev_pki, "alice")
        delegate(repo, alice_id, StoreOptions("alice"))
        delegate(repo, alice_id, StoreOptions("alice", name="old"), lifetime_h=2)
        # "old" ended an hour ago as far as the store knows (no sleeping).
        with repo.engine.begin() as conn:
            conn.execute(
                update(CredentialRow)
                .where(CredentialRow.name == "old")
                .values(not_after=dt.datetime.now(dt.UTC) - H)
            )
        assert admin("list", "--invalid", "--json") == 0
        document = json.loads(capsys.readouterr().out)
        assert document["count"] == 1
        assert document["filters"] == {"owner": None, "expiring_within_s": None, "invalid": True}
        (entry,) = document["credentials"]
        assert entry["username"] == "alice" and entry["name"] == "old"
        assert entry["owner"] == user_dn("alice")
        assert entry["status"] == "expired" and entry["seconds_left"] == 0
        assert entry["problem"].startswith("the stored credential expired at ")
        assert set(entry) == {
            "username",
            "name",
            "owner",
            "description",
            "not_before",
            "not_after",
            "seconds_left",
            "has_passphrase",
            "locked",
            "status",
            "problem",
        }

        assert admin("list", "--expiring-within", "48h", "--json") == 0
        document = json.loads(capsys.readouterr().out)
        assert document["filters"]["expiring_within_s"] == 48 * 3600
        assert sorted((c["name"], c["status"]) for c in document["credentials"]) == [
            ("default", "valid"),
            ("old", "expired"),
        ]
        assert admin("list", "--expiring-within", "1h") == 0
        out = capsys.readouterr()
        assert out.out.splitlines()[0].split("\t")[1] == "old"
        assert "\texpired: the stored credential expired at " in out.out
        assert out.err == "1 credential(s)\n"

        with pytest.raises(SystemExit) as exit_:
            admin("list", "--expiring-within", "soon")
        assert exit_.value.code == 2
        assert 'expected a duration such as "48h"' in capsys.readouterr().err
        assert admin("list", "--expired", "--invalid") == 1
        assert "use --invalid" in capsys.readouterr().err
    finally:
        repo.engine.dispose()
