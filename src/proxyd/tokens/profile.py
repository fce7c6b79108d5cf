"""The WLCG common JWT profile (v1.0), checked as a pure function of the claims and the time.

Every refusal is a `TokenRefused` with a stable rule name, written to the
audit log and shown to the client, as policy decisions are. Only what the
profile and proxyd's use of it need is checked; unknown claims are ignored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WLCG_VERSIONS = frozenset({"1.0"})
MAX_LEEWAY = dt.timedelta(minutes=5)


class TokenRefused(Exception):
    """A token proxyd does not accept; `rule` names why (proxyd.rules)."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer whose access tokens proxyd accepts ([[tokens.issuers]])."""

    url: str
    audiences: tuple[str, ...]
    required_scope: str | None = None  # e.g. "proxyd.retrieve"
    vo: str | None = None  # the VO whose groups its wlcg.groups name


@dataclass(frozen=True)
class TokenFacts:
    """What a valid token says, as policy may use it (never the token itself)."""

    issuer: str
    subject: str
    jti: str | None
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    groups: tuple[str, ...]  # wlcg.groups, as FQAN-shaped group names ("/dteam/prod")
    expires: dt.datetime
    issued_at: dt.datetime | None


def _time(claims: Mapping[str, Any], name: str, required: bool) -> dt.datetime | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenRefused("token.profile", f"the token has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefused("token.profile", f"'{name}' must be a number of seconds since 1970")
    try:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise TokenRefused("token.profile", f"'{name}' is out of range") from None


def _strings(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TokenRefused("token.profile", f"'{name}' must be a string or a list of strings")


def validate_claims(
    claims: Mapping[str, Any],
    issuers: Sequence[TrustedIssuer],
    now: dt.datetime,
    *,
    leeway: dt.timedelta = dt.timedelta(seconds=60),
) -> tuple[TrustedIssuer, TokenFacts]:
    """The issuer it is trusted as and the token's facts; TokenRefused with the rule otherwise."""
    leeway = min(leeway, MAX_LEEWAY)
    iss = claims.get("iss")
    issuer = next((i for i in issuers if i.url == iss), None)
    if issuer is None:
        raise TokenRefused("token.issuer", f"the issuer {str(iss)[:200]!r} is not trusted")
    version = claims.get("wlcg.ver")
    if version not in WLCG_VERSIONS:
        raise TokenRefused(
            "token.profile", f"'wlcg.ver' must be one of {sorted(WLCG_VERSIONS)}, got {version!r}"
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise TokenRefused("token.profile", "'sub' must be a string of 1 to 255 characters")
    expires = _time(claims, "exp", required=True)
    assert expires is not None
    if expires + leeway <= now:
        raise TokenRefused("token.expired", f"the token expired at {expires.isoformat()}")
    not_before = _time(claims, "nbf", required=False)
    issued_at = _time(claims, "iat", required=False)
    for name, t in (("nbf", not_before), ("iat", issued_at)):
        if t is not None and t - leeway > now:
            raise TokenRefused("token.not_yet_valid", f"'{name}' is in the future: {t.isoformat()}")
    audiences = _strings(claims, "aud")
    if not set(audiences) & set(issuer.audiences):
        raise TokenRefused(
            "token.audience",
            f"the token is for {list(audiences)[:5]!r}, not for {list(issuer.audiences)!r}",
        )
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise TokenRefused("token.profile", "'scope' must be a space-separated string")
    scopes = tuple(scope.split())
    if issuer.required_scope is not None and issuer.required_scope not in scopes:
        raise TokenRefused(
            "token.scope", f"the token's scope does not include {issuer.required_scope!r}"
        )
    groups = _strings(claims, "wlcg.groups")
    for g in groups:
        if not g.startswith("/") or "//" in g or len(g) > 255:
            raise TokenRefused("token.profile", f"'wlcg.groups' holds a malformed group {g[:80]!r}")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or len(jti) > 255):
        raise TokenRefused("token.profile", "'jti' must be a string of at most 255 characters")
    return issuer, TokenFacts(
        issuer=issuer.url,
        subject=sub,
        jti=jti,
        audiences=audiences,
        scopes=scopes,
        groups=groups,
        expires=expires,
        issued_at=issued_at,
    )
