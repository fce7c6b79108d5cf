"""POST /v1/token-exchange (RFC 8693) over real HTTPS, with a real token issuer on loopback.

The exchanged proxy is limited, of the mapped owner, carries the token's groups that
the owner holds (judged by voms_ext and by libvomsapi), and lives no longer than the
token; every refusal is a 401/403/404 with the rule, in RFC 6749 and problem shape, and
audited (the token's jti, never the token); random requests never get a 5xx.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.config import Config
from proxyd.devpki import PILOT_DN, DevPKI, user_dn
from proxyd.principal import local_operator
from proxyd.repository import StoreOptions
from proxyd.tokens.keys import TokenKeyring
from proxyd.tokens.profile import TrustedIssuer
from proxyd.tokens.settings import TokensConfig
from tests.support.grid import csr_for, delegate, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from tests.support.vomscheck import build_checker, check_proxy
from tests.tokens.support import LocalIssuer, local_issuer
from voms_ext import (
    Credential,
    classify,
    parse_credential_pem,
    validate_chain,
    write_credential_file,
)

ALICE, BOB, CAROL, DAVE = (user_dn(n) for n in ("alice", "bob", "carol", "dave"))
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
X509 = "urn:proxyd:params:token-type:x509-proxy"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ANALYSIS = "/dteam/analysis/Role=NULL/Capability=NULL"  # as an AC carries it
SUBJECTS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}


@dataclasses.dataclass
class Setup:
    server: RunningServer
    issuer: LocalIssuer
    key_dir: Path

    @property
    def client(self) -> ApiClient:
        return ApiClient(self.server.api_port, self.server.pki.cert_dir)  # no certificate

    def token(self, sub: str = "alice", **over: Any) -> str:
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer.url,
            "sub": sub,
            "aud": "proxyd",
            "wlcg.ver": "1.0",
            "exp": now + 3600,
            "iat": now,
            "scope": "proxyd.retrieve storage.read:/",
            "wlcg.groups": ["/dteam/analysis", "/dteam/unheld", "/cms/users"],
            "jti": str(uuid.uuid4()),
        }
        claims.update(over)
        return self.issuer.mint(**{k: v for k, v in claims.items() if v is not None})

    def exchange(self, token: str, **fields: str) -> Reply:
        body = {
            "grant_type": GRANT,
            "subject_token": token,
            "subject_token_type": ACCESS,
            "requested_token_type": X509,
            "csr": _csr(),
            **fields,
        }
        return self.client.request(
            "POST", "/v1/token-exchange", raw=urllib.parse.urlencode(body).encode(), headers=FORM
        )

    def events(self, **filters: Any) -> list[Any]:
        return [e.event for e in self.server.repo.audit.query(limit=10_000, **filters)]


def _csr() -> str:
    return csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def setup(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    out = tmp_path_factory.mktemp("exchange")
    out.chmod(0o700)
    with local_issuer(dev_pki, out / "issuer-keys") as issuer:
        trusted = TrustedIssuer(issuer.url, ("proxyd",), "proxyd.retrieve", "dteam")

        def configure(config: Config) -> Config:
            return dataclasses.replace(config, tokens=TokensConfig(issuers=(trusted,)))

        with running_server(dev_pki, out / "state", configure=configure) as server:
            repo = server.repo
            for who in ("alice", "bob", "carol"):
                delegate(repo, load_identity(dev_pki, who), StoreOptions(who))
            for sub, dn in SUBJECTS.items():
                repo.add_token_mapping(local_operator(), issuer.url, sub, dn)
            repo.ban(local_operator(), "user", CAROL, "compromised")
            yield Setup(server, issuer, out)


def _proxy(reply: Reply) -> tuple[x509.Certificate, ...]:
    assert reply.status == 200, reply.body
    doc = reply.json
    assert doc["issued_token_type"] == X509 and doc["token_type"] == "N_A"
    assert reply.headers["cache-control"] == "no-store"
    return parse_credential_pem(doc["access_token"].encode()).certificates


def test_a_token_gets_a_limited_proxy_of_its_owner_with_the_groups_it_holds(
    setup: Setup, dev_pki: DevPKI, tmp_path: Path
) -> None:
    token = setup.token()
    reply = setup.exchange(token)
    certs = _proxy(reply)
    proxy = certs[0]
    assert classify(proxy).type.is_limited
    result = validate_chain(certs, setup.server.repo.trust)  # ACs verified too
    assert result.identity == ALICE and result.is_limited
    # wlcg.groups ∩ held: /dteam/unheld is not held, /cms is another VO; nothing added.
    assert result.fqans == (ANALYSIS,)
    exp = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert proxy.not_valid_after_utc <= exp + dt.timedelta(seconds=5)
    assert 0 < reply.json["expires_in"] <= 3600

    # The independent judge: libvomsapi verifies the AC and reads the same FQANs.
    path = tmp_path / "exchanged.pem"
    write_credential_file(path, Credential(certs, spare_key(3)))
    verdict = check_proxy(build_checker(), path, dev_pki.cert_dir, dev_pki.voms_dir)
    assert verdict.ok, verdict.error
    (ac,) = verdict.acs
    assert (ac.vo, ac.holder, ac.fqans) == ("dteam", ALICE, (ANALYSIS,))

    [event] = [
        e
        for e in setup.events(operation="token_exchange", decision="allow")
        if e.serial == str(proxy.serial_number)
    ]
    jti = _jti(token)
    assert event.actor_dn == ALICE and event.owner_dn == ALICE and event.rule == "token.exchange"
    assert f"jti={jti}" in (event.detail or "") and "(limited)" in (event.detail or "")
    assert event.fqans == (ANALYSIS,)
    assert setup.server.repo.audit.verify().ok


def _jti(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_the_proxy_lives_no_longer_than_the_token_or_the_request(setup: Setup) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    certs = _proxy(setup.exchange(setup.token(exp=now + 600)))
    assert certs[0].not_valid_after_utc <= dt.datetime.fromtimestamp(now + 600, dt.UTC)
    reply = setup.exchange(setup.token(), lifetime="300")
    certs = _proxy(reply)
    left = certs[0].not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert left <= dt.timedelta(seconds=300) and reply.json["expires_in"] <= 300


def test_a_token_without_groups_gets_a_proxy_without_acs(setup: Setup) -> None:
    jwt_type = "urn:ietf:params:oauth:token-type:jwt"  # taken like access_token
    token = setup.token(**{"wlcg.groups": None})
    certs = _proxy(setup.exchange(token, subject_token_type=jwt_type))
    result = validate_chain(certs, setup.server.repo.trust)
    assert result.identity == ALICE and result.is_limited and result.fqans == ()


def _rejected(setup: Setup, reply: Reply, status: int, rule: str, operation: str) -> None:
    assert reply.status == status, reply.body
    doc = reply.json
    assert doc["rule"] == rule and doc["status"] == status
    assert doc["error"] == "invalid_request" and doc["error_description"] == doc["detail"]
    events = setup.events(rule=rule, decision="deny", operation=operation)
    assert events, f"no {operation} deny event with rule {rule}"


NOW = int(dt.datetime.now(dt.UTC).timestamp())


@pytest.mark.parametrize(
    ("over", "rule"),
    [
        ({"aud": "someone-else"}, "token.audience"),
        ({"iss": "https://evil.example.org"}, "token.issuer"),
        ({"exp": NOW - 3600, "iat": NOW - 7200}, "token.expired"),
        ({"scope": "storage.read:/"}, "token.scope"),
        ({"wlcg.ver": "0.9"}, "token.profile"),
        ({"nbf": NOW + 3600}, "token.not_yet_valid"),
    ],
)
def test_an_unacceptable_token_is_a_401_with_the_rule_audited(
    setup: Setup, over: dict[str, Any], rule: str
) -> None:
    token = setup.token(**over)
    reply = setup.exchange(token)
    # RFC 6750 §3.1: a token without the needed scope is refused 403 (insufficient_scope).
    _rejected(setup, reply, 403 if rule == "token.scope" else 401, rule, "authenticate")
    assert all(token not in (e.detail or "") for e in setup.events())


def test_a_token_signed_by_another_key_is_refused(setup: Setup) -> None:
    forger = TokenKeyring.load_or_create(setup.key_dir / "forger")
    now = int(dt.datetime.now(dt.UTC).timestamp())
    token = forger.sign(
        {
            "iss": setup.issuer.url,
            "sub": "alice",
            "aud": "proxyd",
            "wlcg.ver": "1.0",
            "exp": now + 600,
            "scope": "proxyd.retrieve",
        }
    )
    _rejected(setup, setup.exchange(token), 401, "token.signature", "authenticate")
    _rejected(setup, setup.exchange("not-a-jwt"), 401, "token.malformed", "authenticate")


def test_an_unmapped_subject_is_a_403(setup: Setup) -> None:
    reply = setup.exchange(setup.token(sub="mallory"))
    _rejected(setup, reply, 403, "token.unmapped", "authenticate")
    assert "proxyd admin token-map add" in reply.json["detail"]


def test_groups_the_owner_does_not_hold_are_dropped_and_none_held_is_refused(
    setup: Setup,
) -> None:
    # bob holds /dteam only: of ["/dteam/analysis", "/dteam/unheld"] nothing is his.
    token = setup.token(sub="bob", **{"wlcg.groups": ["/dteam/analysis", "/dteam/unheld"]})
    reply = setup.exchange(token)
    _rejected(setup, reply, 403, "voms.fqan_not_held", "token_exchange")
    [event] = [
        e
        for e in setup.events(operation="token_exchange", rule="voms.fqan_not_held")
        if _jti(token) in (e.detail or "")
    ]
    assert event.actor_dn == BOB and event.owner_dn == BOB
    certs = _proxy(setup.exchange(setup.token(sub="bob", **{"wlcg.groups": ["/dteam"]})))
    assert validate_chain(certs, setup.server.repo.trust).fqans == (
        "/dteam/Role=NULL/Capability=NULL",
    )


def test_bans_and_missing_credentials_are_refused_and_audited(setup: Setup) -> None:
    _rejected(setup, setup.exchange(setup.token(sub="carol")), 403, "ban.peer", "token_exchange")
    reply = setup.exchange(setup.token(sub="dave"))
    _rejected(setup, reply, 404, "credential.not_found", "token_exchange")
    reply = setup.exchange(setup.token(), credential="nonesuch")
    _rejected(setup, reply, 404, "credential.not_found", "token_exchange")


def test_a_pilot_identity_gets_nothing_for_a_token(setup: Setup) -> None:
    # I2: a token mapped to a pilot DN is a pilot principal, which never obtains a proxy.
    setup.server.repo.add_token_mapping(local_operator(), setup.issuer.url, "pilot", PILOT_DN)
    reply = setup.exchange(setup.token(sub="pilot", **{"wlcg.groups": None}))
    _rejected(setup, reply, 403, "pilot.restricted", "token_exchange")


def test_an_unmapped_owner_after_removal_is_refused_at_once(setup: Setup) -> None:
    repo = setup.server.repo
    repo.add_token_mapping(local_operator(), setup.issuer.url, "alice-2", ALICE)
    _proxy(setup.exchange(setup.token(sub="alice-2")))
    repo.remove_token_mapping(local_operator(), setup.issuer.url, "alice-2")
    reply = setup.exchange(setup.token(sub="alice-2"))
    _rejected(setup, reply, 403, "token.unmapped", "authenticate")


@pytest.mark.parametrize(
    ("fields", "error", "text"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type", "grant_type must be"),
        ({"subject_token_type": "urn:x"}, "invalid_request", "subject_token_type must be"),
        ({"requested_token_type": "urn:x"}, "invalid_request", "requested_token_type must be"),
        ({"csr": "nope"}, "invalid_request", "field 'csr'"),
        ({"lifetime": "-5"}, "invalid_request", "field 'lifetime'"),
        ({"credential": "a/b"}, "invalid_request", "'credential'"),
    ],
)
def test_a_malformed_request_is_a_400_in_both_shapes(
    setup: Setup, fields: dict[str, str], error: str, text: str
) -> None:
    reply = setup.exchange(setup.token(), **fields)
    assert reply.status == 400, reply.body
    assert reply.json["error"] == error and text in reply.json["error_description"]
    assert reply.json["rule"] == "token.bad_request"


def test_a_json_body_or_a_repeated_field_is_a_400(setup: Setup) -> None:
    reply = setup.client.request("POST", "/v1/token-exchange", {"grant_type": GRANT})
    assert reply.status == 400 and "x-www-form-urlencoded" in reply.json["detail"]
    raw = f"grant_type={GRANT}&grant_type={GRANT}".encode()
    reply = setup.client.request("POST", "/v1/token-exchange", raw=raw, headers=FORM)
    assert reply.status == 400 and "more than once" in reply.json["detail"]
    for charset, data in (("nonesuch", b"grant_type=x"), ("utf-8", b"grant_type=\xff\xfe")):
        form = {"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"}
        reply = setup.client.request("POST", "/v1/token-exchange", raw=data, headers=form)
        assert reply.status == 400 and reply.json["error"] == "invalid_request", reply.body


_FIELD = st.sampled_from(
    [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "csr",
        "credential",
        "username",
        "lifetime",
        "other",
    ]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fields=st.lists(st.tuples(_FIELD, st.text(max_size=80)), max_size=10),
    raw=st.binary(max_size=200),
    valid=st.booleans(),
)
def test_fuzzing_the_exchange_yields_no_5xx(
    setup: Setup, fields: list[tuple[str, str]], raw: bytes, valid: bool
) -> None:
    base = [("grant_type", GRANT), ("subject_token_type", ACCESS)] if valid else []
    body = urllib.parse.urlencode(base + fields).encode()
    for data in (body, raw, body + b"&" + raw):
        reply = setup.client.request("POST", "/v1/token-exchange", raw=data, headers=FORM)
        assert reply.status < 500, reply.body
        assert reply.json["status"] == reply.status or reply.status == 200


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "scope", "wlcg.groups", "jti"]),
        st.one_of(
            st.none(),
            st.integers(min_value=-(2**63), max_value=2**63),
            st.text(max_size=40),
            st.lists(st.text(max_size=20), max_size=3),
            st.floats(allow_nan=True),
        ),
        max_size=6,
    )
)
def test_signed_tokens_with_random_claims_yield_no_5xx(
    setup: Setup, claims: dict[str, Any]
) -> None:
    if claims.get("iss") is not None and not isinstance(claims["iss"], str):
        claims["iss"] = str(claims["iss"])  # pyjwt signs no other iss
    reply = setup.exchange(setup.token(**claims))
    assert reply.status in (200, 400, 401, 403, 404), reply.body
