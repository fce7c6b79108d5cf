"""Proxy certificates: RFC 3820, the GT3 draft, and legacy Globus 2 proxies.

`classify` says what a certificate is; `ProxyBuilder` makes new RFC 3820
proxies (or, for tests and old peers, draft and legacy ones). The builder is
immutable like `cryptography.x509.CertificateBuilder`: every setter returns
a new builder, and every wrong argument raises at the call that caused it.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from pyasn1.type import univ

from . import asn1
from .cache import BoundedCache
from .der import encode_tlv
from .errors import ProxyError
from .extensions import extension_problem
from .keys import retired_key_problem
from .names import dn_to_slash

BACKDATE = dt.timedelta(minutes=5)  # what the C tools do, for clock skew


class ProxyType(enum.StrEnum):
    RFC_IMPERSONATION = "rfc3820-impersonation"
    RFC_LIMITED = "rfc3820-limited"
    RFC_INDEPENDENT = "rfc3820-independent"
    DRAFT_IMPERSONATION = "draft-impersonation"
    DRAFT_LIMITED = "draft-limited"
    DRAFT_INDEPENDENT = "draft-independent"
    LEGACY_FULL = "legacy-full"
    LEGACY_LIMITED = "legacy-limited"
    EEC = "eec"
    CA = "ca"

    @property
    def is_proxy(self) -> bool:
        return self not in (ProxyType.EEC, ProxyType.CA)

    @property
    def is_limited(self) -> bool:
        return self in (ProxyType.RFC_LIMITED, ProxyType.DRAFT_LIMITED, ProxyType.LEGACY_LIMITED)

    @property
    def is_independent(self) -> bool:
        return self in (ProxyType.RFC_INDEPENDENT, ProxyType.DRAFT_INDEPENDENT)

    @property
    def description(self) -> str:
        """The words `grid-proxy-info -type` prints."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ProxyType.RFC_IMPERSONATION: "RFC 3820 compliant impersonation proxy",
    ProxyType.RFC_LIMITED: "RFC 3820 compliant limited proxy",
    ProxyType.RFC_INDEPENDENT: "RFC 3820 compliant independent proxy",
    ProxyType.DRAFT_IMPERSONATION: "Proxy draft (pre-RFC) compliant impersonation proxy",
    ProxyType.DRAFT_LIMITED: "Proxy draft (pre-RFC) compliant limited proxy",
    ProxyType.DRAFT_INDEPENDENT: "Proxy draft (pre-RFC) compliant independent proxy",
    ProxyType.LEGACY_FULL: "full legacy globus proxy",
    ProxyType.LEGACY_LIMITED: "limited legacy globus proxy",
    ProxyType.EEC: "end entity credential",
    ProxyType.CA: "certificate authority",
}

_POLICY_KIND = {
    asn1.OID_POLICY_INHERIT_ALL: "impersonation",
    asn1.OID_POLICY_LIMITED: "limited",
    asn1.OID_POLICY_INDEPENDENT: "independent",
}
_TYPES = {
    ("rfc", "impersonation"): ProxyType.RFC_IMPERSONATION,
    ("rfc", "limited"): ProxyType.RFC_LIMITED,
    ("rfc", "independent"): ProxyType.RFC_INDEPENDENT,
    ("draft", "impersonation"): ProxyType.DRAFT_IMPERSONATION,
    ("draft", "limited"): ProxyType.DRAFT_LIMITED,
    ("draft", "independent"): ProxyType.DRAFT_INDEPENDENT,
}
_LEGACY_CN = {"proxy": ProxyType.LEGACY_FULL, "limited proxy": ProxyType.LEGACY_LIMITED}


@dataclass(frozen=True)
class ProxyCertInfo:
    """The decoded ProxyCertInfo extension (RFC 3820 or draft)."""

    policy_language: str
    path_length: int | None = None
    policy: bytes | None = None
    draft: bool = False


@dataclass(frozen=True)
class CertificateKind:
    """What one certificate is, before any chain is considered."""

    type: ProxyType
    info: ProxyCertInfo | None = None


def _subject(cert: x509.Certificate) -> str:
    try:
        return dn_to_slash(cert.subject)
    except (ValueError, TypeError):
        return "<unreadable subject>"


def decode_proxy_cert_info(value: bytes, *, draft: bool = False) -> ProxyCertInfo:
    """Decode a ProxyCertInfo extension value (RFC 3820 order, or the draft order).

    Memoised by value: every proxy of one kind carries the same few bytes,
    and pyasn1 decoding costs more than the rest of `classify`.
    """
    return _decode_proxy_cert_info(bytes(value), draft)


@functools.lru_cache(maxsize=256)
def _decode_proxy_cert_info(value: bytes, draft: bool) -> ProxyCertInfo:
    spec = asn1.ProxyCertInfoDraft() if draft else asn1.ProxyCertInfo()
    what = "draft ProxyCertInfo" if draft else "ProxyCertInfo"
    decoded = asn1.decode(value, spec, what)
    policy = decoded["proxyPolicy"]
    path_len = decoded["pCPathLenConstraint"]
    length = int(path_len) if path_len.isValue else None
    if length is not None and length < 0:
        raise ProxyError(f"{what}: negative path length constraint {length}")
    body = policy["policy"]
    return ProxyCertInfo(
        policy_language=str(policy["policyLanguage"]),
        path_length=length,
        policy=bytes(body) if body.isValue else None,
        draft=draft,
    )


def encode_proxy_cert_info(info: ProxyCertInfo) -> bytes:
    """The DER of a ProxyCertInfo; memoised (a signer encodes the same few values all day)."""
    return _encode_proxy_cert_info(info)


@functools.lru_cache(maxsize=256)
def _encode_proxy_cert_info(info: ProxyCertInfo) -> bytes:
    spec: univ.Sequence = asn1.ProxyCertInfoDraft() if info.draft else asn1.ProxyCertInfo()
    policy = spec["proxyPolicy"].clone()
    policy["policyLanguage"] = univ.ObjectIdentifier(info.policy_language)
    if info.policy is not None:
        policy["policy"] = info.policy
    spec["proxyPolicy"] = policy
    if info.path_length is not None:
        spec["pCPathLenConstraint"] = info.path_length
    return asn1.encode(spec)


def _extension_value(cert: x509.Certificate, oid: str) -> tuple[bytes, bool] | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise ProxyError(f"certificate {_subject(cert)}: malformed extensions: {exc}") from None
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else value.public_bytes()
    return raw, ext.critical


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1 and cert.subject == cert.issuer
    except ValueError:
        return False
    return bc.ca


_KINDS: BoundedCache[bytes, CertificateKind] = BoundedCache(4096)


def classify(cert: x509.Certificate) -> CertificateKind:
    """Say whether `cert` is a CA, an end-entity certificate, or which kind of proxy.

    Raises ProxyError for a ProxyCertInfo that cannot be decoded, is not
    critical, or names a policy language this library does not understand,
    and for names `cryptography` cannot read.

    The answer depends on the certificate's bytes alone, so it is memoised
    by DER (bounded; refusals are not kept): servers classify the same
    stored and peer certificates on every request.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    kind = _KINDS.get(der)
    if kind is not None:
        return kind
    try:
        kind = _classify(cert)
    except (ValueError, TypeError) as exc:
        raise ProxyError(f"certificate {_subject(cert)}: unreadable: {exc}") from None
    _KINDS.put(der, kind)
    return kind


def _classify(cert: x509.Certificate) -> CertificateKind:
    problem = extension_problem(cert)
    if problem is not None:
        raise ProxyError(f"certificate {_subject(cert)}: {problem}")
    for oid, draft in ((asn1.OID_PROXY_CERT_INFO, False), (asn1.OID_PROXY_CERT_INFO_DRAFT, True)):
        found = _extension_value(cert, oid)
        if found is None:
            continue
        raw, critical = found
        try:
            info = decode_proxy_cert_info(raw, draft=draft)
        except ProxyError as exc:
            raise ProxyError(f"proxy {_subject(cert)}: {exc}") from None
        if not critical:
            raise ProxyError(
                f"proxy {_subject(cert)}: the ProxyCertInfo extension must be critical (RFC 3820 §3.8)"
            )
        kind = _POLICY_KIND.get(info.policy_language)
        if kind is None:
            raise ProxyError(
                f"proxy {_subject(cert)}: unknown proxy policy language {info.policy_language} "
                "(only impersonation, independent and limited are understood)"
            )
        return CertificateKind(_TYPES[("draft" if draft else "rfc", kind)], info)
    if _is_ca(cert):
        return CertificateKind(ProxyType.CA)
    rdns = cert.subject.rdns
    if len(rdns) >= 2 and x509.Name(rdns[:-1]) == cert.issuer:
        last = list(rdns[-1])
        if len(last) == 1 and last[0].oid == NameOID.COMMON_NAME and last[0].value in _LEGACY_CN:
            return CertificateKind(_LEGACY_CN[str(last[0].value)])
    return CertificateKind(ProxyType.EEC)


# --- building ------------------------------------------------------------------------

_STYLE_RFC, _STYLE_DRAFT, _STYLE_LEGACY = "rfc", "draft", "legacy"
_BUILDER_SETS = {
    x509.oid.ExtensionOID.KEY_USAGE,
    x509.ObjectIdentifier(asn1.OID_PROXY_CERT_INFO),
    x509.ObjectIdentifier(asn1.OID_PROXY_CERT_INFO_DRAFT),
}
_VOMS_OID = x509.ObjectIdentifier(asn1.OID_VOMS_AC_SEQ)
_LANGUAGES = {
    "impersonation": asn1.OID_POLICY_INHERIT_ALL,
    "limited": asn1.OID_POLICY_LIMITED,
    "independent": asn1.OID_POLICY_INDEPENDENT,
}


def _public_key_of(key: object) -> CertificatePublicKeyTypes:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key.public_key()
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    raise TypeError(f"public_key must be an RSA or EC key, got {type(key).__name__}")


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class ProxyBuilder:
    """Build a proxy certificate for a public key, signed by the issuer's key.

    >>> proxy = (ProxyBuilder(user_cert).public_key(pub).limited()
    ...          .lifetime(dt.timedelta(hours=12)).sign(user_key))

    The issuer is the certificate whose key signs: an end-entity certificate
    or another proxy. The proxy never outlives the issuer or anything in
    `issuer_chain`; a proxy made from a limited proxy is always limited.
    """

    issuer_cert: x509.Certificate
    issuer_chain: Sequence[x509.Certificate] = ()
    _public_key: CertificatePublicKeyTypes | None = None
    _lifetime: dt.timedelta = dt.timedelta(hours=12)
    _not_before: dt.datetime | None = None
    _policy: str = "impersonation"
    _style: str = _STYLE_RFC
    _path_length: int | None = None
    _serial: int | None = None
    _acs_der: tuple[bytes, ...] = ()
    _extra: tuple[x509.Extension[x509.ExtensionType], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.issuer_cert, x509.Certificate):
            raise TypeError("issuer_cert must be a cryptography x509.Certificate")
        object.__setattr__(self, "issuer_chain", tuple(self.issuer_chain))

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """What follows a new proxy in a credential file: its issuer, then the issuer's chain."""
        return (self.issuer_cert, *self.issuer_chain)

    def public_key(self, key: CertificatePublicKeyTypes | object) -> ProxyBuilder:
        return replace(self, _public_key=_public_key_of(key))

    def from_csr(self, csr: x509.CertificateSigningRequest) -> ProxyBuilder:
        """Take only the public key of a CSR; its subject and extensions are ignored.

        The issuer decides the proxy's name, type and lifetime, never the
        requester (a CSR asking for an unlimited proxy gets what policy says).
        """
        if not isinstance(csr, x509.CertificateSigningRequest):
            raise TypeError("from_csr needs an x509.CertificateSigningRequest")
        retired = retired_key_problem(csr)
        if retired is not None:
            raise ProxyError(f"certificate request: {retired}")
        if not csr.is_signature_valid:
            raise ProxyError("certificate request: its self-signature does not verify")
        return self.public_key(csr.public_key())

    def lifetime(self, value: dt.timedelta) -> ProxyBuilder:
        if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
            raise ValueError(f"lifetime must be a positive timedelta, got {value!r}")
        return replace(self, _lifetime=value)

    def not_before(self, value: dt.datetime) -> ProxyBuilder:
        """Start of validity (default: now minus 5 minutes, as the C tools do).

        With an explicit start, the lifetime counts from it; by default it
        counts from the moment of signing, as the C tools do.
        """
        if not isinstance(value, dt.datetime):
            raise TypeError(f"not_before must be a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("not_before must be timezone-aware")
        return replace(self, _not_before=value)

    def limited(self) -> ProxyBuilder:
        return replace(self, _policy="limited")

    def impersonation(self) -> ProxyBuilder:
        return replace(self, _policy="impersonation")

    def independent(self) -> ProxyBuilder:
        return replace(self, _policy="independent")

    def draft(self) -> ProxyBuilder:
        """GT3 pre-RFC form (for interoperability tests with old peers)."""
        return replace(self, _style=_STYLE_DRAFT)

    def legacy(self) -> ProxyBuilder:
        """Globus 2 form: `CN=proxy` / `CN=limited proxy`, no ProxyCertInfo."""
        return replace(self, _style=_STYLE_LEGACY)

    def path_length(self, value: int | None) -> ProxyBuilder:
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise ValueError(f"path_length must be a non-negative int or None, got {value!r}")
        return replace(self, _path_length=value)

    def serial_number(self, value: int) -> ProxyBuilder:
        if not isinstance(value, int) or not 0 < value < 2**159:
            raise ValueError("serial_number must be a positive int below 2**159")
        return replace(self, _serial=value)

    def attribute_certificates(self, acs: Iterable[object]) -> ProxyBuilder:
        """Embed VOMS ACs (objects with a `.der` attribute, or DER bytes)."""
        ders: list[bytes] = []
        for ac in acs:
            der = ac if isinstance(ac, bytes) else getattr(ac, "der", None)
            if not isinstance(der, bytes):
                raise TypeError("attribute_certificates takes AttributeCertificate objects or DER")
            ders.append(der)
        if ders and any(e.oid == _VOMS_OID for e in self._extra):
            raise ValueError("a VOMS extension was already added with add_extension()")
        return replace(self, _acs_der=tuple(ders))

    def add_extension(self, ext: x509.ExtensionType, critical: bool) -> ProxyBuilder:
        """Any further extension (e.g. for tests that need unusual proxies)."""
        if not isinstance(ext, x509.ExtensionType):
            raise TypeError(f"add_extension takes an x509.ExtensionType, got {type(ext).__name__}")
        if ext.oid in _BUILDER_SETS:
            raise ValueError(f"extension {ext.oid.dotted_string} is set by ProxyBuilder itself")
        if any(e.oid == ext.oid for e in self._extra) or (ext.oid == _VOMS_OID and self._acs_der):
            raise ValueError(f"extension {ext.oid.dotted_string} has already been added")
        return replace(self, _extra=(*self._extra, x509.Extension(ext.oid, critical, ext)))

    def _effective_policy(self) -> str:
        try:
            issuer_kind = classify(self.issuer_cert).type
        except ProxyError:
            issuer_kind = ProxyType.EEC
        return "limited" if issuer_kind.is_limited else self._policy

    def _key_usage(self) -> x509.KeyUsage:
        try:
            ku = self.issuer_cert.extensions.get_extension_for_class(x509.KeyUsage).value
            ds, ke, de, ka = (
                ku.digital_signature,
                ku.key_encipherment,
                ku.data_encipherment,
                ku.key_agreement,
            )
        except x509.ExtensionNotFound:
            ds, ke, de, ka = True, True, False, False
        return x509.KeyUsage(
            digital_signature=ds,
            content_commitment=False,
            key_encipherment=ke,
            data_encipherment=de,
            key_agreement=ka,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )

    def sign(
        self, issuer_key: CertificateIssuerPrivateKeyTypes, *, now: dt.datetime | None = None
    ) -> x509.Certificate:
        if self._public_key is None:
            raise ProxyError("ProxyBuilder: no public key set (call public_key() or from_csr())")
        if _spki(_public_key_of(issuer_key)) != _spki(self.issuer_cert.public_key()):
            raise ProxyError(
                f"ProxyBuilder: the signing key does not belong to {_subject(self.issuer_cert)}"
            )
        if isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            algorithm = None
        else:
            algorithm = hashes.SHA256()
        now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        if self._not_before is not None:
            not_before = self._not_before.replace(microsecond=0)
            start = not_before
        else:
            not_before, start = now - BACKDATE, now
        ceiling = min(c.not_valid_after_utc for c in self.chain)
        not_after = min(start + self._lifetime, ceiling)
        if not_after <= not_before:
            raise ProxyError(
                f"ProxyBuilder: issuer {_subject(self.issuer_cert)} expired at {ceiling:%Y-%m-%d %H:%M:%SZ}"
            )
        serial = self._serial or (secrets.randbits(31) | (1 << 30))
        policy = self._effective_policy()
        if self._style == _STYLE_LEGACY:
            cn = "limited proxy" if policy == "limited" else "proxy"
            if policy == "independent":
                raise ProxyError("ProxyBuilder: legacy proxies cannot be independent")
        else:
            cn = str(serial)
        subject = x509.Name(
            [
                *self.issuer_cert.subject.rdns,
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuer_cert.subject)
            .public_key(self._public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(self._key_usage(), critical=True)
        )
        if self._style != _STYLE_LEGACY:
            draft = self._style == _STYLE_DRAFT
            pci = encode_proxy_cert_info(
                ProxyCertInfo(_LANGUAGES[policy], self._path_length, None, draft)
            )
            oid = asn1.OID_PROXY_CERT_INFO_DRAFT if draft else asn1.OID_PROXY_CERT_INFO
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), pci), critical=True
            )
        if self._acs_der:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(asn1.OID_VOMS_AC_SEQ), encode_ac_sequence(self._acs_der)
                ),
                critical=False,
            )
        for ext in self._extra:
            builder = builder.add_extension(ext.value, ext.critical)
        return builder.sign(issuer_key, algorithm)


def encode_ac_sequence(acs_der: Sequence[bytes]) -> bytes:
    """SEQUENCE OF SEQUENCE OF AttributeCertificate, with exactly one inner sequence."""
    return encode_tlv(0x30, encode_tlv(0x30, b"".join(acs_der)))
