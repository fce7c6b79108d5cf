"""Tokens in: a WLCG access token for a limited proxy (RFC 8693), and bearer principals.

A token is verified against the configured `[[tokens.issuers]]` (signature
with the issuer's published keys, then the WLCG profile: `tokens.verify`),
and its (iss, sub) is looked up in the administrators' token mappings
(`TokenMaps`); the result is a `Principal` of the mapped owner DN marked
`bearer`, which policy lets do less than a certificate holder
(`token.bearer_restricted`). proxyd's own tokens (`[tokens] issuer`) are
never accepted back: a payload must not turn its token into a proxy or a
new task (a pilot never renews itself).

The exchange is decided as Operation.TOKEN_EXCHANGE and issued by the one
issuance path (`complete_retrieval`): a limited proxy of the owner's stored
credential, whose AC carries exactly the token's groups the owner holds
(`wlcg.groups` ∩ held, no default groups added), living no longer than the
token, the request and the policy's caps (I4). The audit event names the
token's `jti`, issuer and subject, never the token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from sqlalchemy import select

from voms_ext import AttributeCertificate, FqanError, parse_fqan

from .. import policy
from ..issuer import AttributeAuthority, IssuedProxy
from ..policy import Decision, Operation
from ..principal import Principal, PrincipalKind, is_pilot_identity
from ..store.models import CredentialRow
from ..tokens.profile import TokenFacts, TokenRefused, TrustedIssuer
from ..tokens.verify import IssuerKeys, verify_token
from .checks import check_public_key
from .issuance import AcPlan, Issuance
from .token_map import TokenMaps
from .values import DEFAULT_NAME, Retrieval

__all__ = ["TokenExchange", "TokenIdentity"]


@dataclasses.dataclass(frozen=True)
class TokenIdentity:
    """A verified, mapped token: the principal it authenticates and what it says."""

    principal: Principal
    issuer: TrustedIssuer
    facts: TokenFacts

    @property
    def detail(self) -> str:
        f = self.facts
        return f"token jti={f.jti or '-'} iss={f.issuer} sub={f.subject}"[:400]


class _Exactly(AttributeAuthority):
    """A VO's authority that issues exactly the FQANs asked (no default groups added):
    an exchanged proxy's AC carries the token's groups the owner holds, nothing more."""

    def __init__(self, aa: AttributeAuthority) -> None:  # shares aa's state, loads nothing
        self._aa = aa
        self.config = aa.config

    def held_fqans(self, dn: str) -> tuple[str, ...]:
        return self._aa.held_fqans(dn)

    def default_fqans(
        self, dn: str, requested: Sequence[str] = (), held: Sequence[str] | None = None
    ) -> tuple[str, ...]:
        return tuple(requested)

    def issue(
        self,
        holder: x509.Certificate,
        fqans: Sequence[str],
        not_after: dt.datetime,
        now: dt.datetime,
    ) -> AttributeCertificate:
        return self._aa.issue(holder, fqans, not_after, now)


class TokenExchange(Issuance, TokenMaps):
    """Tokens of trusted issuers: authenticated, mapped, and exchanged for limited proxies."""

    _issuer_keys: IssuerKeys | None = None

    @property
    def issuer_keys(self) -> IssuerKeys:
        """The trusted issuers' key sets, fetched over HTTPS with the grid CA directory as
        trust (an issuer's certificate from a public CA needs it there too); one cache per
        repository."""
        if self._issuer_keys is None:
            self._issuer_keys = IssuerKeys(ca_path=str(self.config.server.cert_dir))
        return self._issuer_keys

    def _trusted_issuers(self) -> tuple[TrustedIssuer, ...]:
        own = self.config.tokens.issuer
        return tuple(
            i for i in self.config.tokens.issuers if own is None or i.url.rstrip("/") != own
        )

    def token_identity(self, token: str, address: str | None) -> TokenIdentity:
        """The principal a token authenticates; TokenRefused with the rule otherwise
        (the edge audits it as a failed authentication, as for certificates)."""
        issuers = self._trusted_issuers()
        if not issuers:
            raise TokenRefused("token.issuer", "this server trusts no token issuer")
        issuer, facts = verify_token(
            token, issuers, self.issuer_keys, self.clock(), leeway=self.config.tokens.leeway
        )
        owner = self.token_owner(facts.issuer, facts.subject)
        if owner is None:
            raise TokenRefused(
                "token.unmapped",
                f"subject {facts.subject[:100]!r} of {facts.issuer} is mapped to no owner "
                f"(token jti={facts.jti or '-'}; an administrator maps it: "
                "proxyd admin token-map add)",
            )
        pilot = is_pilot_identity(owner, (), self.config.policy)
        principal = Principal(
            owner,
            PrincipalKind.PILOT if pilot else PrincipalKind.USER,
            address=address,
            not_after=facts.expires,
            bearer=True,
        )
        return TokenIdentity(principal, issuer, facts)

    def _token_groups(self, identity: TokenIdentity) -> tuple[str, ...]:
        """The token's groups in its issuer's VO, normalised; () when the issuer has no VO."""
        vo = identity.issuer.vo
        out: list[str] = []
        for group in identity.facts.groups if vo else ():
            try:
                fqan = str(parse_fqan(group))
            except FqanError:
                continue  # not an FQAN-shaped group: nothing an AC could carry
            if fqan.split("/")[1] == vo and fqan not in out:
                out.append(fqan)
        return tuple(out)

    def _owner_credential(self, owner: str, username: str | None, name: str) -> str | None:
        """The username of the owner's credential `name`: the one given, else the one
        stored under the owner's DN (the API's default), else the one that lasts longest."""
        query = select(CredentialRow.username, CredentialRow.not_after).where(
            CredentialRow.owner_dn == owner, CredentialRow.name == name
        )
        if username is not None:
            query = query.where(CredentialRow.username == username)
        with self._session() as session:
            rows = list(session.execute(query))
        if not rows:
            return None
        if any(r.username == owner for r in rows):
            return owner
        return str(max(rows, key=lambda r: (r.not_after, r.username)).username)

    def exchange_token(
        self,
        identity: TokenIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        name: str | None = None,
        username: str | None = None,
        lifetime: dt.timedelta | None = None,
    ) -> IssuedProxy:
        """A limited proxy of the token owner's credential for the CSR's key (see module)."""
        check_public_key(csr)
        principal, op = identity.principal, Operation.TOKEN_EXCHANGE
        name = name or DEFAULT_NAME
        detail = identity.detail
        owner = principal.identity
        now = self.clock()
        left = identity.facts.expires - now
        lifetime = min(lifetime, left) if lifetime is not None else left
        found = self._owner_credential(owner, username, name)
        row, bans = self._lookup(found, name) if found is not None else (None, None)
        if row is None:
            request = policy.Request(op, owner=owner, name=name, username=username)
            self.gate.decide(principal, request, None, name=name, detail=detail, bans=bans)
            raise AssertionError("policy allowed an exchange of no credential")  # pragma: no cover
        groups = self._token_groups(identity)
        plan: AcPlan = []
        held: tuple[str, ...] = ()
        wanted: tuple[str, ...] = ()
        vo = identity.issuer.vo
        if groups and vo is not None:
            upstream = self.upstreams.get(vo)
            aa = self.authorities.get(vo)
            if upstream is not None:  # the VO's own server decides what the owner holds
                held = wanted = groups
                plan = [(upstream, groups, groups)]
            elif aa is not None:
                held = aa.held_fqans(row.owner_dn)
                wanted = tuple(g for g in groups if g in held)
                plan = [(_Exactly(aa), wanted, held)] if wanted else []
            else:
                raise self.gate.refuse(
                    principal,
                    op,
                    Decision(False, "voms.unknown_vo", f"VO {vo} is not served by this proxyd"),
                    owner=row.owner_dn,
                    name=name,
                    detail=detail,
                )
        facts, chain = self._facts_in_use(row)
        request = policy.Request(
            op,
            owner=row.owner_dn,
            name=name,
            username=row.username,
            lifetime=lifetime,
            fqans=wanted,
            held_fqans=held,
            token_groups=groups,
        )
        decision = self.gate.decide(principal, request, facts, name=name, detail=detail, bans=bans)
        decision = dataclasses.replace(decision, limited=True)  # I1, whatever policy may become
        key = self._open_key(principal, op, row, None)
        upstream_acs = self._upstream_acs(
            principal, op, row.owner_dn, name, chain, key, plan, decision
        )
        retrieval = Retrieval(
            principal,
            op,
            decision,
            row.owner_dn,
            name,
            chain,
            key,
            tuple(plan),
            # "limited" also tells the issuance metrics what kind of proxy this was.
            detail=f"{detail} (limited)",
            upstream_acs=upstream_acs,
        )
        return self.complete_retrieval(retrieval, csr, csr_checked=True)
