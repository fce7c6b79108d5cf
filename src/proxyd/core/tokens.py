"""proxyd as a WLCG token issuer: a token for every payload, beside its proxy (issue 19).

A payload token is decided exactly as the payload's proxy is (`payload.*`
rules, Operation.PAYLOAD_TOKEN): only the pilot instance the task is matched
to, only while the assignment is live, never for a pilot-owned credential,
and its lifetime is capped as the proxy's is (the assignment's time left
plus `payload_lifetime_margin`, the stored credential, the server's
maximum and `[tokens] max_lifetime`), so it never outlives that proxy. Its
`jti` is in the audit event; the token itself is never stored or logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from voms_ext import parse_fqan

from .. import policy
from ..policy import Decision, Operation
from ..principal import Principal
from ..taskqueue.base import TaskQueue
from ..tokens.keys import TokenKeyring
from .issuance import Issuance

WLCG_ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires: dt.datetime


def wlcg_groups(fqans: tuple[str, ...]) -> tuple[str, ...]:
    """The group paths of FQANs ("/dteam/prod/Role=x" -> "/dteam/prod"), in order, once each."""
    out: list[str] = []
    for f in fqans:
        group = parse_fqan(f).group
        if group not in out:
            out.append(group)
    return tuple(out)


class TokenIssuance(Issuance):
    """Payload tokens and the key set relying parties verify them with."""

    _token_keys: TokenKeyring | None = None

    @property
    def token_keys(self) -> TokenKeyring:
        if self._token_keys is None:
            directory = self.config.tokens.key_dir or self.config.server.state_dir / "token-keys"
            self._token_keys = TokenKeyring.load_or_create(directory)
        return self._token_keys

    def openid_configuration(self) -> dict[str, Any] | None:
        """The discovery document relying parties read (None: this server issues no tokens)."""
        iss = self.config.tokens.issuer
        if iss is None:
            return None
        return {
            "issuer": iss,
            "jwks_uri": f"{iss}/v1/tokens/jwks",
            "token_endpoint": f"{iss}/v1/token-exchange",
            "id_token_signing_alg_values_supported": ["ES256"],
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        }

    def jwks(self) -> dict[str, Any]:
        # A retired key is published as long as a token it signed can live.
        return self.token_keys.jwks(self.clock(), self.config.tokens.max_lifetime)

    def rotate_token_key(self, principal: Principal) -> str:
        """A new signing key; the old one stays published until its tokens have expired."""
        decision = self.gate.decide(principal, policy.Request(Operation.ADMIN), None, name=None)
        with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=None) as act:
            kid = self.token_keys.rotate(self.clock())
            act.detail = f"rotate the token signing key: new kid {kid}"
        self.token_keys.prune(self.clock(), self.config.tokens.max_lifetime)
        return kid

    def payload_token(self, principal: Principal, task_id: int, queue: TaskQueue) -> IssuedToken:
        """A WLCG access token of a task's owner, for the pilot the task is matched to (I2)."""
        op = Operation.PAYLOAD_TOKEN
        tokens = self.config.tokens
        if tokens.issuer is None:
            raise self.gate.refuse(
                principal,
                op,
                Decision(False, "token.not_issuing", "this server issues no tokens"),
                owner=None,
                name=None,
            )
        spec, plan, _, decision = self._payload_decision(
            principal, op, task_id, queue, tokens.max_lifetime
        )
        fqans = tuple(f for _, explicit, _ in plan for f in explicit)
        decision = dataclasses.replace(decision, limited=True)
        assert decision.lifetime is not None  # an issuing decision always has one (I4)
        now = self.clock().replace(microsecond=0)
        expires = now + decision.lifetime
        jti = str(uuid.uuid4())
        claims = {
            "iss": tokens.issuer,
            "sub": spec.owner,
            "aud": WLCG_ANY_AUDIENCE,
            "wlcg.ver": "1.0",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": jti,
            "scope": " ".join(tokens.scopes.get(spec.vo, ())),
            "wlcg.groups": list(wlcg_groups(fqans or (f"/{spec.vo}",))),
        }
        token = self.token_keys.sign(claims)
        self.gate.allow(
            principal,
            op,
            decision,
            owner=spec.owner,
            name=spec.credential_name,
            lifetime=decision.lifetime,
            fqans=fqans,
            detail=f"task {task_id}: token jti {jti}",
        )
        return IssuedToken(token, jti, expires)
