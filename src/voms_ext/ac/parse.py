"""Parsing VOMS ACs: structure only, each refusal naming what is wrong (`verify` trusts)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import univ
from pyasn1_modules import rfc5755

from .. import asn1
from ..der import children, read_tlv
from ..errors import AttributeCertificateError, DecodeError, FqanError, VomsExtError
from ..fqan import parse_fqan
from .model import HOST_PORT, AttributeCertificate, GenericAttribute

_STRING_CODECS = {
    0x0C: "utf-8",
    0x13: "latin-1",
    0x14: "latin-1",
    0x16: "latin-1",
    0x1A: "latin-1",
    0x1C: "utf-32-be",
    0x1E: "utf-16-be",
}


def _asn1_to_name(value: univ.Asn1Item) -> x509.Name:
    der = asn1.encode(value)
    if der[:1] == b"\xa4":  # directoryName is [4] EXPLICIT: step inside the tag
        _, start, end = read_tlv(der, 0)
        der = der[start:end]
    return _name_from_der(der)


def _name_from_der(der: bytes) -> x509.Name:
    _, start, end = read_tlv(der, 0)
    rdns = []
    for _, _, set_start, set_end in children(der, start, end):
        attrs = []
        for _, _, atv_start, atv_end in children(der, set_start, set_end):
            items = list(children(der, atv_start, atv_end))
            if len(items) != 2 or items[0][0] != 0x06:
                raise DecodeError("name: AttributeTypeAndValue is not {OID, value}")
            oid_der = der[items[0][1] : items[0][3]]
            oid = str(der_decoder.decode(oid_der, asn1Spec=univ.ObjectIdentifier())[0])
            vtag, _, vstart, vend = items[1]
            raw = der[vstart:vend]
            codec = _STRING_CODECS.get(vtag)
            if codec is None:
                raise DecodeError(f"name: attribute {oid} has unsupported string type {vtag:#x}")
            attrs.append(x509.NameAttribute(x509.ObjectIdentifier(oid), raw.decode(codec)))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def _general_names_dir(names: univ.Asn1Item, what: str) -> x509.Name:
    if len(names) != 1 or names[0].getName() != "directoryName":
        raise AttributeCertificateError(f"{what} must be exactly one directoryName")
    return _asn1_to_name(names[0]["directoryName"])


def _parse_gtime(value: univ.Asn1Item, what: str) -> dt.datetime:
    text = str(value)
    try:
        return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise AttributeCertificateError(
            f"AC {what} {text!r} is not a GeneralizedTime YYYYMMDDHHMMSSZ without fractions"
        ) from None


def _decode_targets(value: bytes) -> tuple[str, ...]:
    """Target URIs from targetInformation in VOMS form, RFC 5755 form, or the empty list."""
    uris: list[str] = []

    def walk(start: int, end: int, depth: int) -> None:
        if depth > 6:
            raise DecodeError("targetInformation nests too deeply")
        for tag, _, cstart, cend in children(value, start, end):
            if tag == 0x86:
                uris.append(value[cstart:cend].decode("ascii", "replace"))
            elif tag & 0x20:
                walk(cstart, cend, depth + 1)
            elif not tag & 0x80:
                raise DecodeError(f"targetInformation: unexpected element with tag {tag:#x}")
            # other GeneralName forms (DNS names, ...) are legal targets we do not report

    tag, start, end = read_tlv(value, 0)
    if tag != 0x30 or end != len(value):
        raise DecodeError("targetInformation is not one SEQUENCE")
    walk(start, end, 0)
    return tuple(uris)


def _decode_aa_chain(value: bytes) -> tuple[x509.Certificate, ...]:
    # Walked with `der`, not decoded with a pyasn1 spec: each certificate is
    # loaded from its own bytes, which its signature covers.
    tag, start, end = read_tlv(value, 0)
    inner_tag, istart, iend = read_tlv(value, start)
    if tag != 0x30 or inner_tag != 0x30 or end != len(value) or iend != end:
        raise DecodeError(
            "AA certificate chain extension is not SEQUENCE { SEQUENCE OF Certificate }"
        )
    certs = []
    for _, estart, _, eend in children(value, istart, iend):
        try:
            certs.append(x509.load_der_x509_certificate(value[estart:eend]))
        except ValueError as exc:
            raise DecodeError(
                f"AA certificate chain holds an unreadable certificate: {exc}"
            ) from None
    return tuple(certs)


def _decode_generic(value: bytes) -> tuple[GenericAttribute, ...]:
    full = asn1.decode(value, asn1.FullAttributes(), "generic attributes extension")
    out = []
    for provider in full["providers"]:
        for item in provider["attributes"]:
            out.append(
                GenericAttribute(
                    bytes(item["name"]).decode("utf-8", "replace"),
                    bytes(item["value"]).decode("utf-8", "replace"),
                    bytes(item["qualifier"]).decode("utf-8", "replace"),
                )
            )
    return tuple(out)


def parse_attribute_certificate(der: bytes) -> AttributeCertificate:
    """Parse one DER AC; raise AttributeCertificateError (or DecodeError) naming what is wrong."""
    if not isinstance(der, bytes | bytearray):
        raise TypeError("parse_attribute_certificate takes DER bytes")
    der = bytes(der)
    try:
        return _parse(der)
    except VomsExtError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise AttributeCertificateError(
            f"AC: malformed ({exc.__class__.__name__}: {exc})"
        ) from None
    except Exception as exc:  # pyasn1 raises its own hierarchy from deep inside
        raise AttributeCertificateError(
            f"AC: malformed ({exc.__class__.__name__}: {exc})"
        ) from None


def _parse(der: bytes) -> AttributeCertificate:
    ac = asn1.decode(der, rfc5755.AttributeCertificate(), "attribute certificate")
    _, start, _end = read_tlv(der, 0)
    _, tbs_start, _, tbs_end = next(children(der, start, _end))
    tbs_der = der[tbs_start:tbs_end]
    info = ac["acinfo"]
    if int(info["version"]) != 1:
        raise AttributeCertificateError(f"AC: version must be v2 (1), got {int(info['version'])}")
    outer_alg = str(ac["signatureAlgorithm"]["algorithm"])
    inner_alg = str(info["signature"]["algorithm"])
    if outer_alg != inner_alg:
        raise AttributeCertificateError(
            f"AC: signature algorithm {outer_alg} differs from the one inside ({inner_alg})"
        )
    holder = info["holder"]
    base = holder["baseCertificateID"]
    if not base.isValue:
        raise AttributeCertificateError(
            "AC: holder has no baseCertificateID (entityName-only holders are not accepted)"
        )
    holder_issuer = _general_names_dir(base["issuer"], "AC holder issuer")
    issuer_choice = info["issuer"]
    if issuer_choice.getName() != "v2Form":
        raise AttributeCertificateError("AC: issuer must use v2Form")
    issuer = _general_names_dir(issuer_choice["v2Form"]["issuerName"], "AC issuer")
    serial = int(info["serialNumber"])
    if serial <= 0 or serial.bit_length() > 160:
        raise AttributeCertificateError(
            f"AC: serial number {serial} must be positive and at most 20 octets"
        )
    validity = info["attrCertValidityPeriod"]
    not_before = _parse_gtime(validity["notBeforeTime"], "notBefore")
    not_after = _parse_gtime(validity["notAfterTime"], "notAfter")

    voms_attrs = [a for a in info["attributes"] if str(a["type"]) == asn1.OID_VOMS_ATTRIBUTES]
    if len(voms_attrs) != 1 or len(voms_attrs[0]["values"]) != 1:
        raise AttributeCertificateError(
            "AC: must carry exactly one VOMS attribute (1.3.6.1.4.1.8005.100.100.4) with one value"
        )
    ietf = asn1.decode(
        bytes(voms_attrs[0]["values"][0]), rfc5755.IetfAttrSyntax(), "VOMS IetfAttrSyntax"
    )
    authorities = ietf["policyAuthority"]
    if (
        not authorities.isValue
        or len(authorities) != 1
        or authorities[0].getName() != "uniformResourceIdentifier"
    ):
        raise AttributeCertificateError(
            "AC: policyAuthority must be exactly one URI vo://host:port"
        )
    authority = str(authorities[0]["uniformResourceIdentifier"])
    vo, sep, uri = authority.partition("://")
    if not sep or not vo or not HOST_PORT.match(uri):
        raise AttributeCertificateError(f"AC: policyAuthority {authority!r} is not vo://host:port")
    fqans = []
    for value in ietf["values"]:
        if value.getName() != "octets":
            raise AttributeCertificateError("AC: FQAN values must be OCTET STRINGs")
        text = bytes(value["octets"]).decode("utf-8")
        try:
            parsed = parse_fqan(text)
        except FqanError as exc:
            raise AttributeCertificateError(f"AC for VO {vo}: {exc}") from None
        if parsed.vo != vo:
            raise AttributeCertificateError(f"AC for VO {vo}: FQAN {text!r} belongs to another VO")
        fqans.append(text)
    # An empty FQAN list is odd (real VOMS servers always grant the VO's root
    # group) but libvomsapi accepts it, and a relying party must agree with it.

    extensions: list[tuple[str, bool]] = []
    generic: tuple[GenericAttribute, ...] = ()
    targets: tuple[str, ...] = ()
    chain: tuple[x509.Certificate, ...] = ()
    if info["extensions"].isValue:
        for ext in info["extensions"]:
            oid = str(ext["extnID"])
            critical = bool(ext["critical"])
            value = bytes(ext["extnValue"])
            extensions.append((oid, critical))
            if oid == asn1.OID_VOMS_GENERIC_ATTRIBUTES:
                generic = _decode_generic(value)
            elif oid == asn1.OID_TARGET_INFORMATION:
                targets = _decode_targets(value)
            elif oid == asn1.OID_VOMS_AA_CERTS:
                chain = _decode_aa_chain(value)
    sig_bits = ac["signatureValue"]
    return AttributeCertificate(
        der=der,
        vo=vo,
        uri=uri,
        fqans=tuple(fqans),
        generic_attributes=generic,
        issuer=issuer,
        serial_number=serial,
        holder_issuer=holder_issuer,
        holder_serial=int(base["serial"]),
        not_before=not_before,
        not_after=not_after,
        targets=targets,
        aa_chain=chain,
        extensions=tuple(extensions),
        signature_algorithm=outer_alg,
        tbs_der=tbs_der,
        signature=sig_bits.asOctets(),
    )


def parse_voms_extension(value: bytes) -> tuple[AttributeCertificate, ...]:
    """The ACs inside a proxy's 1.3.6.1.4.1.8005.100.100.5 extension value."""
    tag, start, end = read_tlv(value, 0)
    if tag != 0x30 or end != len(value):
        raise AttributeCertificateError("VOMS extension is not one SEQUENCE")
    inner = list(children(value, start, end))
    if len(inner) != 1 or inner[0][0] != 0x30:
        raise AttributeCertificateError(
            "VOMS extension must hold exactly one SEQUENCE OF AttributeCertificate "
            f"(found {len(inner)} inner elements)"
        )
    _, _, istart, iend = inner[0]
    acs = tuple(
        parse_attribute_certificate(value[s:e]) for _, s, _, e in children(value, istart, iend)
    )
    if not acs:
        raise AttributeCertificateError("VOMS extension holds no attribute certificate")
    return acs
