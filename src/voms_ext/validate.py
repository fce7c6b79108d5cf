"""RFC 3820 path validation on top of a trust store.

Given a credential's certificates (leaf first, as in a proxy file or a TLS
peer chain), find the end-entity certificate, validate it to a trusted CA,
check every proxy link the way RFC 3820 §4 says, and verify the VOMS ACs
the chain carries. The result says who the credential speaks for and with
which attributes; anything wrong raises a VomsExtError with the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID, NameOID

from . import asn1
from .ac import (
    AttributeCertificate,
    GenericAttribute,
    parse_voms_extension,
    verify_attribute_certificate,
)
from .errors import AttributeCertificateError, ChainError, ProxyError, VomsExtError
from .extensions import extension_problem
from .keys import retired_key_problem
from .names import dn_to_slash
from .proxy import CertificateKind, ProxyType, classify
from .trust import TrustStore

MAX_PROXY_DEPTH = 20


@dataclass(frozen=True)
class VomsAttributes:
    """One verified VOMS AC, as a relying party uses it."""

    vo: str
    uri: str
    fqans: tuple[str, ...]
    generic_attributes: tuple[GenericAttribute, ...]
    issuer: str
    serial_number: int
    not_before: dt.datetime
    not_after: dt.datetime
    targets: tuple[str, ...]
    ac: AttributeCertificate

    @property
    def primary_fqan(self) -> str:
        return self.fqans[0]


@dataclass(frozen=True)
class ValidationResult:
    """`identity` is the end-entity subject (or, below an independent proxy, that proxy's own)."""

    identity: str
    issuer: str
    chain: tuple[x509.Certificate, ...]
    proxy_type: ProxyType
    is_limited: bool
    not_after: dt.datetime
    voms: tuple[VomsAttributes, ...]
    end_entity: x509.Certificate
    ca_path: tuple[x509.Certificate, ...]
    proxy_depth: int

    @property
    def fqans(self) -> tuple[str, ...]:
        return tuple(f for v in self.voms for f in v.fqans)

    def time_left(self, at: dt.datetime | None = None) -> dt.timedelta:
        at = at or dt.datetime.now(dt.UTC)
        return max(self.not_after - at, dt.timedelta(0))


def _slash(cert: x509.Certificate) -> str:
    try:
        return dn_to_slash(cert.subject)
    except (ValueError, TypeError):
        return "<unreadable subject>"


def _time(at: dt.datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%SZ}"


def _check_validity(cert: x509.Certificate, at: dt.datetime, what: str) -> None:
    if at < cert.not_valid_before_utc:
        raise ChainError(
            f"{what} {_slash(cert)} is not yet valid (starts {_time(cert.not_valid_before_utc)})"
        )
    if at > cert.not_valid_after_utc:
        raise ChainError(f"{what} {_slash(cert)} expired {_time(cert.not_valid_after_utc)}")


def _check_proxy_link(
    proxy: x509.Certificate, kind: CertificateKind, issuer: x509.Certificate, at: dt.datetime
) -> None:
    """RFC 3820 §3-4 rules for one proxy and the certificate that signed it."""
    name = _slash(proxy)
    if proxy.issuer != issuer.subject:
        raise ProxyError(
            f"proxy {name}: its issuer name is not the subject of the next certificate"
        )
    try:
        proxy.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise ProxyError(
            f"proxy {name}: signature does not verify with the key of {_slash(issuer)}"
        ) from None
    rdns = proxy.subject.rdns
    if len(rdns) != len(issuer.subject.rdns) + 1 or x509.Name(rdns[:-1]) != issuer.subject:
        raise ProxyError(
            f"proxy {name}: subject must be its issuer's subject plus one CN (RFC 3820 §3.4)"
        )
    last = list(rdns[-1])
    if len(last) != 1 or last[0].oid != NameOID.COMMON_NAME:
        raise ProxyError(f"proxy {name}: the last RDN must be a single CN (RFC 3820 §3.4)")
    for ext in proxy.extensions:
        if ext.oid in (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.ISSUER_ALTERNATIVE_NAME):
            raise ProxyError(
                f"proxy {name}: must not carry {ext.oid.dotted_string} (RFC 3820 §3.5-3.6)"
            )
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise ProxyError(f"proxy {name}: basicConstraints cA must not be true (RFC 3820 §3.7)")
        if isinstance(value, x509.KeyUsage) and value.key_cert_sign:
            raise ProxyError(f"proxy {name}: keyUsage must not allow keyCertSign (RFC 3820 §3.7)")
        if ext.critical and not _understood(ext.oid.dotted_string):
            raise ProxyError(f"proxy {name}: unknown critical extension {ext.oid.dotted_string}")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.digital_signature:
        raise ProxyError(
            f"proxy {name}: its issuer {_slash(issuer)} has no digitalSignature key usage (RFC 3820 §3.1)"
        )
    _check_validity(proxy, at, "proxy")


_UNDERSTOOD_CRITICAL = {
    asn1.OID_PROXY_CERT_INFO,
    asn1.OID_PROXY_CERT_INFO_DRAFT,
    ExtensionOID.KEY_USAGE.dotted_string,
    ExtensionOID.BASIC_CONSTRAINTS.dotted_string,
    ExtensionOID.EXTENDED_KEY_USAGE.dotted_string,
}


def _understood(oid: str) -> bool:
    return oid in _UNDERSTOOD_CRITICAL


def verified_voms_attributes(
    chain: Sequence[x509.Certificate], eec: x509.Certificate, trust: TrustStore, at: dt.datetime
) -> tuple[VomsAttributes, ...]:
    """Verified ACs of the first certificate (leaf first) that carries any, each verified at
    `at` (validate_chain's step; proxy-info also uses it to judge an expired proxy's ACs now)."""
    oid = x509.ObjectIdentifier(asn1.OID_VOMS_AC_SEQ)
    for cert in chain:
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        value = ext.value.value  # type: ignore[attr-defined]
        out = []
        for ac in parse_voms_extension(value):
            signer = verify_attribute_certificate(ac, eec, trust, at)
            out.append(
                VomsAttributes(
                    vo=ac.vo,
                    uri=ac.uri,
                    fqans=ac.fqans,
                    generic_attributes=ac.generic_attributes,
                    issuer=dn_to_slash(signer.subject),
                    serial_number=ac.serial_number,
                    not_before=ac.not_before,
                    not_after=ac.not_after,
                    targets=ac.targets,
                    ac=ac,
                )
            )
        return tuple(out)
    return ()


def validate_chain(
    certificates: Sequence[x509.Certificate],
    trust: TrustStore,
    at: dt.datetime | None = None,
    *,
    check_voms: bool = True,
) -> ValidationResult:
    """Validate a credential chain (leaf first); see the module docstring.

    With `check_voms` false, ACs are neither parsed nor verified and
    `voms` is empty (for TLS peer authentication where attributes are not
    used). Otherwise an AC that does not verify raises
    AttributeCertificateError: a relying party must not drop it silently.
    """
    if not certificates:
        raise ChainError("empty certificate chain")
    try:
        return _validate(tuple(certificates), trust, at or dt.datetime.now(dt.UTC), check_voms)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # `cryptography` refusing to read a name, an extension or a key type
        raise ChainError(f"unreadable certificate in the chain: {exc}") from None


def _validate(
    certs: tuple[x509.Certificate, ...], trust: TrustStore, at: dt.datetime, check_voms: bool
) -> ValidationResult:
    for position, cert in enumerate(certs, start=1):
        try:
            cert.subject, cert.issuer  # noqa: B018 - cryptography parses names lazily
        except (ValueError, TypeError) as exc:
            if position < len(certs):  # before the last: a proxy, in a proxy chain
                raise ProxyError(
                    f"proxy <unreadable subject> (certificate {position} of the chain): {exc}"
                ) from None
            raise ChainError(
                f"certificate {position} of the chain has an unreadable name: {exc}"
            ) from None
        problem = extension_problem(cert) or retired_key_problem(cert)
        if problem is not None:
            raise ChainError(f"certificate {position} of the chain ({_slash(cert)}): {problem}")
    kinds: list[CertificateKind] = []
    for cert in certs:
        kind = classify(cert)
        kinds.append(kind)
        if not kind.type.is_proxy:
            break
    eec_index = len(kinds) - 1
    eec = certs[eec_index]
    if kinds[-1].type.is_proxy:
        raise ChainError(
            f"chain ends with proxy {_slash(certs[-1])}: the end-entity certificate that issued it is missing"
        )
    if kinds[-1].type == ProxyType.CA:
        raise ChainError(f"{_slash(eec)} is a CA certificate, not a user or host credential")
    if eec_index > MAX_PROXY_DEPTH:
        raise ProxyError(f"chain has {eec_index} proxies; at most {MAX_PROXY_DEPTH} are accepted")

    _check_validity(eec, at, "certificate")
    ca_path = trust.build_ca_path(eec, at, certs[eec_index + 1 :])

    # Walk proxies from the one the EEC signed down to the leaf.
    identity = eec.subject
    remaining: int | None = None  # proxies still allowed below, by pCPathLenConstraint
    limited = False
    for index in range(eec_index - 1, -1, -1):
        proxy, kind, issuer = certs[index], kinds[index], certs[index + 1]
        _check_proxy_link(proxy, kind, issuer, at)
        if remaining is not None:
            if remaining <= 0:
                raise ProxyError(
                    f"proxy {_slash(proxy)}: exceeds the path length constraint of a proxy above it"
                )
            remaining -= 1
        if kind.info is not None and kind.info.path_length is not None:
            remaining = (
                kind.info.path_length
                if remaining is None
                else min(remaining, kind.info.path_length)
            )
        if limited and not kind.type.is_limited:
            raise ProxyError(
                f"proxy {_slash(proxy)}: a limited proxy may not sign a {kind.type.description}"
            )
        limited = limited or kind.type.is_limited
        if kind.type.is_independent:
            # RFC 3820 §3.8: an independent proxy inherits no rights from its
            # issuer; it speaks for itself (grid-proxy-info -identity agrees).
            identity = proxy.subject

    try:
        voms = (
            verified_voms_attributes(certs[: eec_index + 1], eec, trust, at) if check_voms else ()
        )
    except VomsExtError as exc:
        if isinstance(exc, AttributeCertificateError):
            raise
        raise AttributeCertificateError(str(exc)) from None

    relevant = (*certs[: eec_index + 1], *ca_path)
    return ValidationResult(
        identity=dn_to_slash(identity),
        issuer=dn_to_slash(eec.issuer),
        chain=certs[: eec_index + 1],
        proxy_type=kinds[0].type,
        is_limited=limited,
        not_after=min(c.not_valid_after_utc for c in relevant),
        voms=voms,
        end_entity=eec,
        ca_path=ca_path,
        proxy_depth=eec_index,
    )
