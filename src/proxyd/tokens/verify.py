"""A token's signature, against the key set of an issuer proxyd trusts, then the WLCG profile.

Keys come from the issuer's `/.well-known/openid-configuration` → `jwks_uri`,
over HTTPS with the issuer's certificate verified, and are cached; an
unknown `kid` makes one refresh (at most one a minute per issuer). Only
configured issuers are ever contacted: the unverified `iss` of a token
selects among them and is never used as a URL otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt

from .profile import TokenFacts, TokenRefused, TrustedIssuer, validate_claims

ALGORITHMS = ("RS256", "ES256")  # what the WLCG profile and SciTokens issuers use
MAX_TOKEN = 16 * 1024
FETCH_TIMEOUT = 10.0
REFRESH_AFTER = 3600.0  # a key set is re-read hourly
MIN_REFETCH = 60.0  # an unknown kid re-reads it at most once a minute

KeySets = Callable[[TrustedIssuer, bool], Mapping[str, Any]]  # (issuer, force) -> JWKS


class IssuerKeys:
    """The key sets of the configured issuers, fetched over HTTPS and cached."""

    def __init__(self, ca_file: str | None = None, ca_path: str | None = None) -> None:
        # The system's CAs (an IAM behind a public web CA) and the grid's (cert_dir).
        self._ctx = ssl.create_default_context()
        if ca_file is not None or ca_path is not None:
            self._ctx.load_verify_locations(cafile=ca_file, capath=ca_path)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Mapping[str, Any]]] = {}

    def _get(self, url: str) -> Any:
        if not url.startswith("https://"):
            raise TokenRefused("token.issuer_unreachable", f"{url[:200]} is not an https:// URL")
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT, context=self._ctx) as reply:  # noqa: S310
                return json.loads(reply.read(1024 * 1024))
        except (urllib.error.URLError, OSError, ValueError, ssl.SSLError) as exc:
            raise TokenRefused(
                "token.issuer_unreachable", f"cannot read {url[:200]}: {exc}"
            ) from None

    def __call__(self, issuer: TrustedIssuer, force: bool) -> Mapping[str, Any]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(issuer.url)
        if cached is not None:
            fetched, keys = cached
            fresh = now - fetched < REFRESH_AFTER
            if fresh and (not force or now - fetched < MIN_REFETCH):
                return keys
        discovery = self._get(issuer.url.rstrip("/") + "/.well-known/openid-configuration")
        jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
        if not isinstance(jwks_uri, str):
            raise TokenRefused("token.issuer_unreachable", f"{issuer.url}: no jwks_uri")
        keys = self._get(jwks_uri)
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise TokenRefused("token.issuer_unreachable", f"{jwks_uri[:200]}: not a JWK set")
        with self._lock:
            self._cache[issuer.url] = (now, keys)
        return keys


def _key_for(jwks: Mapping[str, Any], kid: str | None) -> jwt.PyJWK | None:
    for entry in jwks.get("keys", []):
        if isinstance(entry, dict) and entry.get("kid") == kid:
            try:
                return jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                return None
    return None


def verify_token(
    token: str,
    issuers: Sequence[TrustedIssuer],
    key_sets: KeySets,
    now: dt.datetime,
    *,
    leeway: dt.timedelta = dt.timedelta(seconds=60),
) -> tuple[TrustedIssuer, TokenFacts]:
    """The trusted issuer and facts of a valid token; TokenRefused with the rule otherwise."""
    if not token or len(token) > MAX_TOKEN:
        raise TokenRefused("token.malformed", f"a token is 1 to {MAX_TOKEN} characters")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenRefused("token.malformed", f"not a signed JWT: {exc}") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise TokenRefused("token.signature", f"the algorithm {str(alg)[:20]!r} is not accepted")
    issuer = next((i for i in issuers if i.url == unverified.get("iss")), None)
    if issuer is None:
        iss = str(unverified.get("iss"))[:200]
        raise TokenRefused("token.issuer", f"the issuer {iss!r} is not trusted")
    kid = header.get("kid")
    key = _key_for(key_sets(issuer, False), kid)
    if key is None:  # rotated at the issuer since we last looked
        key = _key_for(key_sets(issuer, True), kid)
    if key is None:
        raise TokenRefused("token.signature", f"no key {str(kid)[:64]!r} in {issuer.url}'s key set")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise TokenRefused("token.signature", f"the signature does not verify: {exc}") from None
    return validate_claims(claims, [issuer], now, leeway=leeway)
