"""Who an authenticated peer is. One place decides; every edge asks here.

A `Principal` is built from a chain that `voms_ext.validate_chain` has
already verified (or from nothing, for an anonymous peer). Its kind drives
the policy: pilots and hosts get different rules from users.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voms_ext import ValidationResult, fqan_matches, normalise_fqan

from .config import PolicyConfig
from .patterns import any_dn_matches

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

    @property
    def is_anonymous(self) -> bool:
        return self.kind is PrincipalKind.ANONYMOUS


def anonymous(address: str | None = None) -> Principal:
    return Principal(ANONYMOUS, PrincipalKind.ANONYMOUS, address=address)


def local_operator() -> Principal:
    import getpass

    return Principal(f"local-operator:{getpass.getuser()}", PrincipalKind.OPERATOR, address="local")


def is_pilot_identity(dn: str, fqans: tuple[str, ...], policy: PolicyConfig) -> bool:
    """Pilot by DN pattern, or by any FQAN matching a pilot FQAN pattern (e.g. `/*/Role=pilot`)."""
    if any_dn_matches(policy.pilot_dns, dn):
        return True
    return any(fqan_matches(p, f) for p in policy.pilot_fqans for f in fqans)


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
    """A Principal from a verified chain and the pilot/host settings of the policy."""
    fqans = tuple(normalise_fqan(f) for f in result.fqans)
    if is_pilot_identity(result.identity, fqans, policy):
        kind = PrincipalKind.PILOT
    elif _looks_like_host(result.end_entity) or any_dn_matches(
        (*policy.trusted_retrievers, *policy.full_delegation_hosts), result.identity
    ):
        kind = PrincipalKind.HOST
    else:
        kind = PrincipalKind.USER
    return Principal(
        identity=result.identity,
        kind=kind,
        limited=result.is_limited,
        fqans=fqans,
        address=address,
        not_after=result.not_after,
        end_entity=result.end_entity,
    )
