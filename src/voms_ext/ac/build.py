"""Building and signing VOMS ACs the way a VOMS server fills them (PROTOCOLS.md §3)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from pyasn1.type import univ, useful
from pyasn1_modules import rfc5280, rfc5755

from .. import asn1
from ..der import encode_tlv
from ..errors import AttributeCertificateError
from ..fqan import parse_fqan
from .model import HOST_PORT, SIG_HASHES, SIG_OIDS, AttributeCertificate, GenericAttribute
from .parse import parse_attribute_certificate


def _name_to_asn1(name: x509.Name) -> rfc5280.Name:
    return asn1.decode(name.public_bytes(), rfc5280.Name(), "name")


def _gtime(value: dt.datetime) -> useful.GeneralizedTime:
    return useful.GeneralizedTime(value.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ"))


def _directory_general_name(name: x509.Name) -> rfc5280.GeneralName:
    gn = rfc5280.GeneralName()
    gn["directoryName"]["rdnSequence"] = _name_to_asn1(name)["rdnSequence"]
    return gn


def _uri_general_name(uri: str) -> rfc5280.GeneralName:
    gn = rfc5280.GeneralName()
    gn["uniformResourceIdentifier"] = uri
    return gn


@dataclass(frozen=True)
class AttributeCertificateBuilder:
    """Build and sign a VOMS AC; immutable, every setter returns a new builder.

    >>> ac = (AttributeCertificateBuilder().vo("dteam").uri("voms.example.org:15000")
    ...       .fqans(["/dteam", "/dteam/Role=production"]).holder(user_eec)
    ...       .validity(start, end).sign(aa_cert, aa_key))
    """

    _vo: str | None = None
    _uri: str | None = None
    _fqans: tuple[str, ...] = ()
    _generic: tuple[GenericAttribute, ...] = ()
    _holder: x509.Certificate | None = None
    _legacy_holder: bool = False
    _not_before: dt.datetime | None = None
    _not_after: dt.datetime | None = None
    _targets: tuple[str, ...] = ()
    _serial: int | None = None

    def vo(self, name: str) -> AttributeCertificateBuilder:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"vo must be a VO name (letters, digits, '_', '.', '-'), got {name!r}")
        return replace(self, _vo=name)

    def uri(self, host_port: str) -> AttributeCertificateBuilder:
        if not isinstance(host_port, str) or not HOST_PORT.match(host_port):
            raise ValueError(
                f"uri must be HOST:PORT (libvomsapi needs the port), got {host_port!r}"
            )
        return replace(self, _uri=host_port)

    def fqans(self, values: Iterable[str]) -> AttributeCertificateBuilder:
        """FQANs in order; the first is the primary FQAN. Written in the long form."""
        longs = tuple(parse_fqan(v).long for v in values)
        if not longs:
            raise ValueError("fqans must not be empty")
        if len(set(longs)) != len(longs):
            raise ValueError(f"fqans contains duplicates: {list(values)}")
        return replace(self, _fqans=longs)

    def generic_attribute(
        self, name: str, value: str, qualifier: str = ""
    ) -> AttributeCertificateBuilder:
        return replace(self, _generic=(*self._generic, GenericAttribute(name, value, qualifier)))

    def holder(self, eec: x509.Certificate, *, legacy: bool = False) -> AttributeCertificateBuilder:
        """The end-entity certificate the AC is bound to (issuer + serial; `legacy`: subject + serial)."""
        if not isinstance(eec, x509.Certificate):
            raise TypeError("holder must be the end-entity x509.Certificate")
        return replace(self, _holder=eec, _legacy_holder=legacy)

    def validity(
        self, not_before: dt.datetime, not_after: dt.datetime
    ) -> AttributeCertificateBuilder:
        if not isinstance(not_before, dt.datetime) or not isinstance(not_after, dt.datetime):
            raise TypeError("validity takes two timezone-aware datetimes")
        if not_before.tzinfo is None or not_after.tzinfo is None:
            raise ValueError("validity times must be timezone-aware")
        if not_after <= not_before:
            raise ValueError("validity: not_after must be later than not_before")
        return replace(self, _not_before=not_before, _not_after=not_after)

    def target(self, uri: str) -> AttributeCertificateBuilder:
        if not isinstance(uri, str) or not uri:
            raise ValueError("target must be a non-empty URI string")
        return replace(self, _targets=(*self._targets, uri))

    def serial_number(self, value: int) -> AttributeCertificateBuilder:
        if not isinstance(value, int) or not 0 < value < 2**159:
            raise ValueError("serial_number must be a positive int of at most 20 octets")
        return replace(self, _serial=value)

    def sign(
        self,
        aa_cert: x509.Certificate,
        aa_key: CertificateIssuerPrivateKeyTypes,
        aa_chain: Sequence[x509.Certificate] = (),
    ) -> AttributeCertificate:
        missing = [
            n
            for n, v in (
                ("vo", self._vo),
                ("uri", self._uri),
                ("holder", self._holder),
                ("validity", self._not_after),
            )
            if v is None
        ]
        if missing or not self._fqans:
            raise AttributeCertificateError(
                f"AttributeCertificateBuilder: set {', '.join(missing or ['fqans'])} before sign()"
            )
        if not isinstance(aa_key, rsa.RSAPrivateKey):
            raise TypeError("VOMS ACs are signed with RSA keys (libvomsapi accepts nothing else)")
        assert self._holder is not None and self._vo is not None and self._uri is not None
        assert self._not_before is not None and self._not_after is not None
        for fq in self._fqans:
            if parse_fqan(fq).vo != self._vo:
                raise AttributeCertificateError(f"FQAN {fq} does not belong to VO {self._vo}")
        sig_oid = SIG_OIDS.get(
            getattr(aa_cert.signature_hash_algorithm, "name", ""), SIG_OIDS["sha256"]
        )
        digest = SIG_HASHES[sig_oid]
        authority = f"{self._vo}://{self._uri}"

        info = rfc5755.AttributeCertificateInfo()
        info["version"] = 1
        holder_name = self._holder.subject if self._legacy_holder else self._holder.issuer
        base = info["holder"]["baseCertificateID"]
        base["issuer"].append(_directory_general_name(holder_name))
        base["serial"] = self._holder.serial_number
        info["issuer"]["v2Form"]["issuerName"].append(_directory_general_name(aa_cert.subject))
        info["signature"]["algorithm"] = univ.ObjectIdentifier(sig_oid)
        info["signature"]["parameters"] = univ.Any(b"\x05\x00")
        info["serialNumber"] = self._serial or x509.random_serial_number()
        info["attrCertValidityPeriod"]["notBeforeTime"] = _gtime(self._not_before)
        info["attrCertValidityPeriod"]["notAfterTime"] = _gtime(self._not_after)

        ietf = rfc5755.IetfAttrSyntax()
        ietf["policyAuthority"].append(_uri_general_name(authority))
        for fq in self._fqans:
            choice = ietf["values"].componentType.clone()
            choice["octets"] = fq.encode()
            ietf["values"].append(choice)
        attribute = rfc5755.Attribute()
        attribute["type"] = univ.ObjectIdentifier(asn1.OID_VOMS_ATTRIBUTES)
        attribute["values"].append(univ.Any(asn1.encode(ietf)))
        info["attributes"].append(attribute)

        exts: list[tuple[str, bool, bytes]] = []
        if self._generic:
            holder_attrs = asn1.AttributeHolder()
            holder_attrs["grantor"].append(_uri_general_name(authority))
            for ga in self._generic:
                item = asn1.GenericAttribute()
                item["name"] = ga.name.encode()
                item["value"] = ga.value.encode()
                item["qualifier"] = ga.qualifier.encode()
                holder_attrs["attributes"].append(item)
            full = asn1.FullAttributes()
            full["providers"].append(holder_attrs)
            exts.append((asn1.OID_VOMS_GENERIC_ATTRIBUTES, False, asn1.encode(full)))
        # The certificates' own DER, concatenated: no re-encoding can touch signed bytes.
        chain_der = b"".join(
            c.public_bytes(serialization.Encoding.DER) for c in (aa_cert, *aa_chain)
        )
        exts.append((asn1.OID_VOMS_AA_CERTS, False, encode_tlv(0x30, encode_tlv(0x30, chain_der))))
        exts.append((asn1.OID_NO_REV_AVAIL, False, b"\x05\x00"))
        aki = x509.AuthorityKeyIdentifier(
            x509.SubjectKeyIdentifier.from_public_key(aa_cert.public_key()).digest,
            None,
            None,
        )
        exts.append((asn1.OID_AUTHORITY_KEY_ID, False, aki.public_bytes()))
        if self._targets:
            targets = b"".join(
                encode_tlv(0x30, encode_tlv(0xA0, encode_tlv(0x86, t.encode())))
                for t in self._targets
            )
            exts.append(
                (asn1.OID_TARGET_INFORMATION, True, encode_tlv(0x30, encode_tlv(0x30, targets)))
            )
        for oid, critical, value in exts:
            ext = rfc5280.Extension()
            ext["extnID"] = univ.ObjectIdentifier(oid)
            ext["critical"] = critical
            ext["extnValue"] = value
            info["extensions"].append(ext)

        tbs = asn1.encode(info)
        signature = aa_key.sign(tbs, padding.PKCS1v15(), digest)
        alg_der = asn1.encode(info["signature"])
        bits = encode_tlv(0x03, b"\x00" + signature)
        return parse_attribute_certificate(encode_tlv(0x30, tbs + alg_der + bits))
