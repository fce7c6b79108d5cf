"""WLCG tokens, inbound: the profile's named rules, signatures against a real HTTPS issuer,
key rotation at the issuer and at proxyd (issue 19)."""

from __future__ import annotations

import datetime as dt
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxyd.devpki import DevPKI
from proxyd.tokens.keys import TokenKeyring
from proxyd.tokens.profile import TokenRefused, TrustedIssuer, validate_claims
from proxyd.tokens.verify import IssuerKeys, verify_token
from tests.tokens.support import LocalIssuer, local_issuer

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ISS = TrustedIssuer("https://iam.example.org/", ("proxyd",), "proxyd.retrieve", "dteam")


def _claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS.url,
        "sub": "a1b2c3",
        "aud": "proxyd",
        "wlcg.ver": "1.0",
        "exp": int((NOW + dt.timedelta(hours=1)).timestamp()),
        "iat": int(NOW.timestamp()),
        "nbf": int(NOW.timestamp()),
        "scope": "proxyd.retrieve storage.read:/",
        "wlcg.groups": ["/dteam", "/dteam/prod"],
        "jti": "t-1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_a_valid_token_gives_its_facts() -> None:
    issuer, facts = validate_claims(_claims(), [ISS], NOW)
    assert issuer is ISS
    assert (facts.subject, facts.jti, facts.groups) == ("a1b2c3", "t-1", ("/dteam", "/dteam/prod"))
    assert facts.scopes == ("proxyd.retrieve", "storage.read:/")


HOUR = 3600


@pytest.mark.parametrize(
    ("over", "rule"),
    [
        ({"iss": "https://evil.example.org/"}, "token.issuer"),
        ({"iss": None}, "token.issuer"),
        ({"aud": "someone-else"}, "token.audience"),
        ({"aud": ["a", "b"]}, "token.audience"),
        ({"exp": int(NOW.timestamp()) - HOUR}, "token.expired"),
        ({"nbf": int(NOW.timestamp()) + HOUR}, "token.not_yet_valid"),
        ({"iat": int(NOW.timestamp()) + HOUR}, "token.not_yet_valid"),
        ({"scope": "storage.read:/"}, "token.scope"),
        ({"scope": None}, "token.scope"),
        ({"wlcg.ver": None}, "token.profile"),
        ({"wlcg.ver": "2.0"}, "token.profile"),
        ({"sub": ""}, "token.profile"),
        ({"exp": None}, "token.profile"),
        ({"exp": "tomorrow"}, "token.profile"),
        ({"exp": 10**20}, "token.profile"),
        ({"wlcg.groups": ["dteam"]}, "token.profile"),
        ({"wlcg.groups": [1]}, "token.profile"),
        ({"scope": ["proxyd.retrieve"]}, "token.profile"),
    ],
)
def test_each_failure_has_its_rule(over: dict[str, Any], rule: str) -> None:
    with pytest.raises(TokenRefused) as exc:
        validate_claims(_claims(**over), [ISS], NOW)
    assert exc.value.rule == rule


def test_the_leeway_is_bounded() -> None:
    just_expired = _claims(exp=int(NOW.timestamp()) - 30)
    validate_claims(just_expired, [ISS], NOW)  # within the default 60 s
    long_expired = _claims(exp=int(NOW.timestamp()) - 3600)
    with pytest.raises(TokenRefused):
        validate_claims(long_expired, [ISS], NOW, leeway=dt.timedelta(days=1))  # capped at 5 min


@pytest.fixture
def issuer(dev_pki: DevPKI, tmp_path: Path) -> Iterator[LocalIssuer]:
    with local_issuer(dev_pki, tmp_path / "issuer-keys") as i:
        yield i


def _trusted(issuer: LocalIssuer) -> TrustedIssuer:
    return TrustedIssuer(issuer.url, ("proxyd",), "proxyd.retrieve", "dteam")


def test_a_token_signed_by_a_trusted_issuer_verifies_over_https(
    issuer: LocalIssuer, dev_pki: DevPKI
) -> None:
    keys = IssuerKeys(ca_path=str(dev_pki.cert_dir))
    token = issuer.mint(**_claims(iss=issuer.url))
    _, facts = verify_token(token, [_trusted(issuer)], keys, NOW)
    assert facts.subject == "a1b2c3"
    verify_token(token, [_trusted(issuer)], keys, NOW)
    assert issuer.fetches == ["/.well-known/openid-configuration", "/jwks"]  # cached after


def test_a_rotation_needs_no_refetch_and_unknown_kids_are_rate_limited(
    issuer: LocalIssuer, dev_pki: DevPKI, tmp_path: Path
) -> None:
    keys = IssuerKeys(ca_path=str(dev_pki.cert_dir))
    verify_token(issuer.mint(**_claims(iss=issuer.url)), [_trusted(issuer)], keys, NOW)
    # The issuer's next key was published with the first: after a rotation, tokens it signs
    # verify from the cached key set (relying parties cache key sets for minutes).
    issuer.keyring.rotate(dt.datetime.now(dt.UTC))
    time.sleep(1.1)  # the keyring notices a rotation by its index file, once a second
    verify_token(issuer.mint(**_claims(iss=issuer.url)), [_trusted(issuer)], keys, NOW)
    assert issuer.fetches.count("/jwks") == 1
    # A kid the issuer never published makes one refetch at most a minute: a stream of
    # made-up kids cannot turn proxyd into a load on the issuer.
    stranger = TokenKeyring.load_or_create(tmp_path / "stranger")
    for _ in range(3):
        with pytest.raises(TokenRefused) as exc:
            verify_token(stranger.sign(_claims(iss=issuer.url)), [_trusted(issuer)], keys, NOW)
        assert exc.value.rule == "token.signature"
    assert issuer.fetches.count("/jwks") == 1


def test_signature_failures(issuer: LocalIssuer, dev_pki: DevPKI) -> None:
    keys = IssuerKeys(ca_path=str(dev_pki.cert_dir))
    trusted = [_trusted(issuer)]
    good = issuer.mint(**_claims(iss=issuer.url))
    head, _, sig = good.split(".")
    tampered_claims = _claims(iss=issuer.url, sub="someone-else")
    forged_body = jwt.utils.base64url_encode(json.dumps(tampered_claims).encode()).decode()
    cases = {
        "token.signature": [
            f"{head}.{forged_body}.{sig}",
            jwt.encode(
                _claims(iss=issuer.url),
                ec.generate_private_key(ec.SECP256R1()),
                algorithm="ES256",
                headers={"kid": issuer.keyring.current_kid},
            ),
            jwt.encode(_claims(iss=issuer.url), "s" * 32, algorithm="HS256"),
            jwt.encode(_claims(iss=issuer.url), None, algorithm="none"),
        ],
        "token.malformed": ["", "not.a.jwt", "x" * 20000],
        "token.issuer": [
            jwt.encode(
                _claims(),
                ec.generate_private_key(ec.SECP256R1()),
                algorithm="ES256",
                headers={"kid": "k"},
            )
        ],
    }
    for rule, tokens in cases.items():
        for token in tokens:
            with pytest.raises(TokenRefused) as exc:
                verify_token(token, trusted, keys, NOW)
            assert exc.value.rule == rule, (token[:60], exc.value.reason)


def test_an_unreachable_issuer_is_its_own_rule(dev_pki: DevPKI, tmp_path: Path) -> None:
    ring = TokenKeyring.load_or_create(tmp_path / "k")
    gone = TrustedIssuer("https://localhost:9", ("proxyd",))
    token = ring.sign(_claims(iss=gone.url, scope="x"))
    with pytest.raises(TokenRefused) as exc:
        verify_token(token, [gone], IssuerKeys(ca_path=str(dev_pki.cert_dir)), NOW)
    assert exc.value.rule == "token.issuer_unreachable"


def test_proxyds_keyring_publishes_the_next_key_and_old_keys_while_needed(
    tmp_path: Path,
) -> None:
    t0 = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    ring = TokenKeyring.load_or_create(tmp_path / "keys", t0)
    first = ring.current_kid
    assert stat.S_IMODE((tmp_path / "keys" / f"{first}.pem").stat().st_mode) == 0o600
    window = dt.timedelta(hours=12)
    [current, upcoming] = [k["kid"] for k in ring.jwks(t0, window)["keys"]]
    assert current == first and upcoming != first  # the next key is out before it signs
    token = ring.sign({"sub": "x"})
    second = ring.rotate(t0 + dt.timedelta(hours=1))
    assert second == upcoming and ring.current_kid == second
    published = [k["kid"] for k in ring.jwks(t0 + dt.timedelta(hours=2), window)["keys"]]
    assert published[0] == second and published[2] == first and len(published) == 3
    third = published[1]  # the new next key
    # The old token still verifies with the published old key.
    old = jwt.PyJWK(ring.jwks(t0 + dt.timedelta(hours=2), window)["keys"][2])
    assert jwt.decode(token, old, algorithms=["ES256"])["sub"] == "x"
    later = t0 + dt.timedelta(hours=14)
    assert [k["kid"] for k in ring.jwks(later, window)["keys"]] == [second, third]
    assert ring.prune(later, window) == [first]
    assert not (tmp_path / "keys" / f"{first}.pem").exists()
    # Another process's keyring sees the rotation without a restart.
    other = TokenKeyring.load_or_create(tmp_path / "keys")
    assert ring.rotate(later) == third
    time.sleep(1.1)
    assert other.current_kid == third
