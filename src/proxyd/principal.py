"""Who an authenticated peer is. One place decides; every edge asks here.

A `Principal` is built from a chain that `voms_ext.validate_chain` has
already verified (or from nothing, for an anonymous peer). Its kind drives
the policy: pilots and hosts get different rules from users.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import fnmatch
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voms_ext import (
    TrustStore,
    ValidationResult,
    VomsExtError,
    dn_to_slash,
    normalise_fqan,
    validate_chain,
)
from voms_ext.cache import BoundedCache

from .config import PolicyConfig
from .patterns import any_dn_denied, any_matches

ANONYMOUS = "<anonymous>"


class PrincipalKind(enum.StrEnum):
    USER = "user"
    HOST = "host"
    PILOT = "pilot"
    ANONYMOUS = "anonymous"
    # The local `proxyd admin` command: its credential is access to the server's
    # configuration and database. Never built from a network peer.
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    identity: str
    kind: PrincipalKind
    limited: bool = False
    fqans: tuple[str, ...] = ()
    address: str | None = None
    not_after: dt.datetime | None = None
    # The certificate an AC issued to this peer would be bound to (its holder).
    end_entity: x509.Certificate | None = field(default=None, compare=False, repr=False)
    # Authenticated by a bearer token (its mapped owner DN), not by a certificate: policy
    # lets it do less (proxyd.policy.decide, token.bearer_restricted).
    bearer: bool = False

    @property
    def is_anonymous(self) -> bool:
        return self.kind is PrincipalKind.ANONYMOUS


def anonymous(address: str | None = None) -> Principal:
    return Principal(ANONYMOUS, PrincipalKind.ANONYMOUS, address=address)


def local_operator() -> Principal:
    import getpass

    return Principal(f"local-operator:{getpass.getuser()}", PrincipalKind.OPERATOR, address="local")


class IdentityRefused(VomsExtError):
    """A chain that verifies but that proxyd does not accept as an identity."""


def identity_of(result: ValidationResult) -> str:
    """The identity a verified chain speaks for: the subject of its end-entity certificate.

    A chain holding an independent proxy (RFC 3820 or pre-RFC draft) is refused.
    RFC 3820 gives such a proxy an identity of its own, the proxy's subject,
    which anyone holding a non-limited proxy can mint without any CA: under
    that identity no DN-keyed rule (bans, pilot classification,
    self-authorization, VO membership, ACLs) would recognise the person
    behind it. No grid client needs one (docs/security.md).
    """
    eec = dn_to_slash(result.end_entity.subject)
    if result.identity != eec:
        raise IdentityRefused(
            f"the chain holds an independent proxy ({result.identity}); proxyd accepts only "
            f"impersonation and limited proxies, which speak for the end-entity certificate "
            f"({eec})"
        )
    return eec


def is_pilot_identity(dn: str, fqans: tuple[str, ...], policy: PolicyConfig) -> bool:
    """Pilot by DN pattern, or by any FQAN matching a pilot FQAN pattern (e.g. `/*/Role=pilot`).

    A deny rule: the DN patterns match every spelling of the name (patterns.dn_denied).
    """
    return any_dn_denied(policy.pilot_dns, dn) or any(is_pilot_fqan(f, policy) for f in fqans)


def is_pilot_fqan(fqan: str, policy: PolicyConfig) -> bool:
    """Does `fqan` match a pilot FQAN pattern? Without regard to case: a deny rule errs on
    the side of matching (`/dteam/Role=Pilot` is a pilot role where `/*/Role=pilot` is)."""
    try:
        value = normalise_fqan(fqan).casefold()
    except VomsExtError:
        value = fqan.casefold()
    return any(fnmatch.fnmatchcase(value, p.casefold()) for p in policy.pilot_fqans)


def _looks_like_host(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH in eku:
            return True
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    last = str(cns[-1].value) if cns else ""
    return last.startswith(("host/", "service/"))


def classify(
    result: ValidationResult, policy: PolicyConfig, address: str | None = None
) -> Principal:
    """A Principal from a verified chain and the pilot/host settings of the policy.

    Raises IdentityRefused for a chain with an independent proxy (`identity_of`).
    """
    identity = identity_of(result)
    fqans = tuple(normalise_fqan(f) for f in result.fqans)
    if is_pilot_identity(identity, fqans, policy):
        kind = PrincipalKind.PILOT
    elif _looks_like_host(result.end_entity) or any_matches(
        (*policy.trusted_retrievers, *policy.full_delegation_hosts), identity, fqans
    ):
        kind = PrincipalKind.HOST
    else:
        kind = PrincipalKind.USER
    return Principal(
        identity=identity,
        kind=kind,
        limited=result.is_limited,
        fqans=fqans,
        address=address,
        not_after=result.not_after,
        end_entity=result.end_entity,
    )


def validity_window(result: ValidationResult, trust: TrustStore) -> tuple[dt.datetime, dt.datetime]:
    """The times at which every time-dependent check that `result` passed still passes.

    Those checks are the validity of each certificate of the chain and of its
    CA path, and the freshness (nextUpdate) of the CRLs of the CAs on that
    path. Within this window, validating the same chain against the same
    trust store gives the same result.
    """
    certs = (*result.chain, *result.ca_path)
    start = max(c.not_valid_before_utc for c in certs)
    end = min(c.not_valid_after_utc for c in certs)
    issuers = {ca.subject for ca in result.ca_path}
    for crl in trust.crls:
        next_update = crl.next_update_utc
        if next_update is not None and crl.issuer in issuers:
            end = min(end, next_update)
    return start, end


@dataclass(frozen=True)
class _Peer:
    principal: Principal  # without an address
    trust: TrustStore  # the store it was validated against
    start: dt.datetime
    end: dt.datetime

    def valid(self, trust: TrustStore, at: dt.datetime) -> bool:
        return trust is self.trust and self.start <= at <= self.end


class PeerCache:
    """`validate_chain` + `classify` of TLS peers, memoised per chain (bounded LRU).

    A WMS host or a keep-alive HTTPS client presents the same chain again and
    again; validating it (signatures, CA path, CRL lookups) and classifying
    it costs more than the rest of a request's policy work. An entry is used
    only while

    - the chain is byte for byte the same (the key is its DER certificates),
    - the trust store is the very object it was validated against (a reloaded
      trust directory is a new `TrustStore`, and empties the cache), and
    - the time is inside the window in which every certificate of the chain
      and its CA path is valid and every CRL on the path is fresh
      (`validity_window`).

    Only successes are kept, so a refusal is decided anew every time (a
    certificate that is not yet valid, or a stale CRL, may become fine).
    Chains carrying VOMS attributes are not kept either: their ACs and AA
    certificates have validities of their own, so they are validated each time.
    """

    def __init__(self, policy: PolicyConfig, maxsize: int = 1024) -> None:
        self.policy = policy
        self.maxsize = maxsize
        self._entries: BoundedCache[tuple[bytes, ...], _Peer] = BoundedCache(maxsize)
        self._trust: TrustStore | None = None  # the store of the entries kept
        self._lock = threading.Lock()  # for emptying the cache when the store changes

    def cached(
        self,
        chain_der: Sequence[bytes],
        trust: TrustStore,
        address: str | None = None,
        at: dt.datetime | None = None,
    ) -> Principal | None:
        """The remembered Principal for this chain, if one is still valid; never validates."""
        at = at or dt.datetime.now(dt.UTC)
        if trust is not self._trust:
            return None
        peer = self._entries.get(tuple(chain_der), lambda p: p.valid(trust, at))
        if peer is None:
            return None
        return dataclasses.replace(peer.principal, address=address)

    def principal(
        self,
        chain_der: Sequence[bytes],
        trust: TrustStore,
        address: str | None = None,
        at: dt.datetime | None = None,
    ) -> Principal:
        """The Principal of a verified TLS peer chain (leaf first); raises VomsExtError."""
        at = at or dt.datetime.now(dt.UTC)
        hit = self.cached(chain_der, trust, address, at)
        if hit is not None:
            return hit
        certs = [x509.load_der_x509_certificate(der) for der in chain_der]
        from .names import check_chain_names  # no control characters in any DN (issue 15, #5)

        check_chain_names(certs)  # raises names.UnsafeName, a VomsExtError
        result = validate_chain(certs, trust, at)
        principal = classify(result, self.policy)
        if not result.voms:
            start, end = validity_window(result, trust)
            with self._lock:
                if trust is not self._trust:
                    self._entries.clear()
                    self._trust = trust
                self._entries.put(tuple(chain_der), _Peer(principal, trust, start, end))
        return dataclasses.replace(principal, address=address)
