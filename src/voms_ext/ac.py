"""VOMS attribute certificates: build, sign, parse and verify.

The AC is an RFC 5755 AttributeCertificate filled the way VOMS fills it
(PROTOCOLS.md §3): a baseCertificateID holder naming the end-entity
certificate, a v2Form issuer, one IetfAttrSyntax attribute of FQANs with a
`vo://host:port` policy authority, and the VOMS extensions in VOMS order.
Verification follows libvomsapi: find the AA through the `.lsc` file (or a
certificate in the vomsdir), check the signature, the holder, the validity
and the critical extensions, and fail with the reason.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import univ, useful
from pyasn1_modules import rfc5280, rfc5755

from . import asn1
from .der import children, encode_tlv, read_tlv
from .errors import AttributeCertificateError, DecodeError, FqanError, VomsExtError
from .fqan import parse_fqan
from .keys import retired_key_problem
from .names import dn_to_slash
from .trust import TrustStore

CLOCK_SKEW = dt.timedelta(seconds=300)  # what libvomsapi allows either side

_SIG_HASHES: dict[str, hashes.HashAlgorithm] = {
    "1.2.840.113549.1.1.5": hashes.SHA1(),  # noqa: S303 - old VOMS servers signed ACs with SHA-1
    "1.2.840.113549.1.1.11": hashes.SHA256(),
    "1.2.840.113549.1.1.12": hashes.SHA384(),
    "1.2.840.113549.1.1.13": hashes.SHA512(),
}
_SIG_OIDS = {
    "sha1": "1.2.840.113549.1.1.5",
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_KNOWN_EXTENSIONS = {
    asn1.OID_VOMS_GENERIC_ATTRIBUTES,
    asn1.OID_VOMS_AA_CERTS,
    asn1.OID_NO_REV_AVAIL,
    asn1.OID_AUTHORITY_KEY_ID,
    asn1.OID_TARGET_INFORMATION,
}
_STRING_CODECS = {
    0x0C: "utf-8",
    0x13: "latin-1",
    0x14: "latin-1",
    0x16: "latin-1",
    0x1A: "latin-1",
    0x1C: "utf-32-be",
    0x1E: "utf-16-be",
}
_URI = re.compile(r"(?P<host>[^:/\s]+):(?P<port>\d{1,5})\Z")


@dataclass(frozen=True)
class GenericAttribute:
    name: str
    value: str
    qualifier: str = ""


@dataclass(frozen=True)
class AttributeCertificate:
    """A parsed VOMS AC. Parsing checks structure only; `verify_attribute_certificate` trusts."""

    der: bytes
    vo: str
    uri: str
    fqans: tuple[str, ...]
    generic_attributes: tuple[GenericAttribute, ...]
    issuer: x509.Name
    serial_number: int
    holder_issuer: x509.Name
    holder_serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    targets: tuple[str, ...]
    aa_chain: tuple[x509.Certificate, ...]
    extensions: tuple[tuple[str, bool], ...]
    signature_algorithm: str
    tbs_der: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def host(self) -> str:
        return self.uri.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def describe(self) -> str:
        return f"VOMS AC for VO {self.vo} from {self.uri} (serial {self.serial_number})"


# --- small conversions ---------------------------------------------------------------


def _name_to_asn1(name: x509.Name) -> rfc5280.Name:
    return asn1.decode(name.public_bytes(), rfc5280.Name(), "name")


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


def _gtime(value: dt.datetime) -> useful.GeneralizedTime:
    return useful.GeneralizedTime(value.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ"))


def _parse_gtime(value: univ.Asn1Item, what: str) -> dt.datetime:
    text = str(value)
    try:
        return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise AttributeCertificateError(
            f"AC {what} {text!r} is not a GeneralizedTime YYYYMMDDHHMMSSZ without fractions"
        ) from None


def _directory_general_name(name: x509.Name) -> rfc5280.GeneralName:
    gn = rfc5280.GeneralName()
    gn["directoryName"]["rdnSequence"] = _name_to_asn1(name)["rdnSequence"]
    return gn


def _uri_general_name(uri: str) -> rfc5280.GeneralName:
    gn = rfc5280.GeneralName()
    gn["uniformResourceIdentifier"] = uri
    return gn


# --- building ------------------------------------------------------------------------------


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
        if not isinstance(host_port, str) or not _URI.match(host_port):
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
        sig_oid = _SIG_OIDS.get(
            getattr(aa_cert.signature_hash_algorithm, "name", ""), _SIG_OIDS["sha256"]
        )
        digest = _SIG_HASHES[sig_oid]
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


# --- parsing ----------------------------------------------------------------------------------


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
    if not sep or not vo or not _URI.match(uri):
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


# --- verification -----------------------------------------------------------------------------


def _slash(name: x509.Name) -> str:
    try:
        return dn_to_slash(name)
    except ValueError:
        return "<unreadable name>"


def _signature_ok(ac: AttributeCertificate, cert: x509.Certificate) -> bool:
    if retired_key_problem(cert) is not None:
        return False
    key = cert.public_key()
    digest = _SIG_HASHES.get(ac.signature_algorithm)
    if digest is None or not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(ac.signature, ac.tbs_der, padding.PKCS1v15(), digest)
    except InvalidSignature:
        return False
    return True


def _lsc_matches(lines: Sequence[str], chain: Sequence[x509.Certificate]) -> bool:
    if len(lines) != len(chain) + 1:
        return False
    for index, cert in enumerate(chain):
        if lines[index] != _slash(cert.subject) or lines[index + 1] != _slash(cert.issuer):
            return False
    return True


def find_aa_certificate(
    ac: AttributeCertificate, trust: TrustStore, at: dt.datetime
) -> x509.Certificate:
    """The AA certificate that signed `ac`, found the way libvomsapi finds it."""
    if trust.voms_dir is None:
        raise AttributeCertificateError(
            f"{ac.describe()}: no VOMS directory (X509_VOMS_DIR) to find its AA in"
        )
    alternatives = trust.lsc.get((ac.vo, ac.host))
    if alternatives is not None:
        lsc = f"{trust.voms_dir}/{ac.vo}/{ac.host}.lsc"
        if not ac.aa_chain:
            raise AttributeCertificateError(
                f"{ac.describe()}: carries no AA certificate chain, which {lsc} requires"
            )
        if not any(_lsc_matches(lines, ac.aa_chain) for lines in alternatives):
            raise AttributeCertificateError(
                f"{ac.describe()}: AA chain {[_slash(c.subject) for c in ac.aa_chain]} "
                f"does not match {lsc}"
            )
        signer = ac.aa_chain[0]
        if not _signature_ok(ac, signer):
            raise AttributeCertificateError(
                f"{ac.describe()}: signature does not verify with AA certificate {_slash(signer.subject)}"
            )
        for lower, upper in zip(ac.aa_chain, ac.aa_chain[1:], strict=False):
            try:
                lower.verify_directly_issued_by(upper)
            except (ValueError, TypeError, InvalidSignature):
                raise AttributeCertificateError(
                    f"{ac.describe()}: AA chain link {_slash(lower.subject)} is not signed by "
                    f"{_slash(upper.subject)}"
                ) from None
        for cert in ac.aa_chain:
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                raise AttributeCertificateError(
                    f"{ac.describe()}: AA certificate {_slash(cert.subject)} is not valid at "
                    f"{at:%Y-%m-%d %H:%M:%SZ}"
                )
        try:
            trust.build_ca_path(ac.aa_chain[-1], at, ac.aa_chain[1:])
        except VomsExtError as exc:
            raise AttributeCertificateError(f"{ac.describe()}: AA not trusted: {exc}") from None
        return signer
    for cert in trust.aa_certificates(ac.vo):
        if cert.subject == ac.issuer and _signature_ok(ac, cert):
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                raise AttributeCertificateError(
                    f"{ac.describe()}: AA certificate {_slash(cert.subject)} is not valid at "
                    f"{at:%Y-%m-%d %H:%M:%SZ}"
                )
            return cert
    raise AttributeCertificateError(
        f"{ac.describe()}: cannot verify the AC signature: AA {_slash(ac.issuer)} is not trusted "
        f"(no {trust.voms_dir}/{ac.vo}/{ac.host}.lsc and no matching certificate in {trust.voms_dir})"
    )


def verify_attribute_certificate(
    ac: AttributeCertificate,
    holder: x509.Certificate,
    trust: TrustStore,
    at: dt.datetime | None = None,
) -> x509.Certificate:
    """Check `ac` as libvomsapi does (VERIFY_FULL without targets); return the AA certificate."""
    try:
        return _verify(ac, holder, trust, at)
    except ValueError as exc:  # `cryptography` refusing to read a name or key inside
        raise AttributeCertificateError(
            f"{ac.describe()}: unreadable certificate data: {exc}"
        ) from None


def _verify(
    ac: AttributeCertificate,
    holder: x509.Certificate,
    trust: TrustStore,
    at: dt.datetime | None,
) -> x509.Certificate:
    at = at or dt.datetime.now(dt.UTC)
    for oid, critical in ac.extensions:
        if critical and oid != asn1.OID_TARGET_INFORMATION:
            raise AttributeCertificateError(f"{ac.describe()}: unknown critical extension {oid}")
    oids = {oid for oid, _ in ac.extensions}
    if asn1.OID_NO_REV_AVAIL not in oids or asn1.OID_AUTHORITY_KEY_ID not in oids:
        raise AttributeCertificateError(
            f"{ac.describe()}: required extensions missing (noRevAvail and authorityKeyIdentifier)"
        )
    if ac.holder_serial != holder.serial_number or ac.holder_issuer not in (
        holder.issuer,
        holder.subject,
    ):
        raise AttributeCertificateError(
            f"{ac.describe()}: granted to a different certificate (holder {_slash(ac.holder_issuer)} "
            f"serial {ac.holder_serial}) than {_slash(holder.subject)} serial {holder.serial_number}"
        )
    if at + CLOCK_SKEW < ac.not_before:
        raise AttributeCertificateError(
            f"{ac.describe()}: not yet valid (starts {ac.not_before:%Y-%m-%d %H:%M:%SZ})"
        )
    if at - CLOCK_SKEW > ac.not_after:
        raise AttributeCertificateError(
            f"{ac.describe()}: not valid anymore (expired {ac.not_after:%Y-%m-%d %H:%M:%SZ})"
        )
    signer = find_aa_certificate(ac, trust, at)
    if signer.subject != ac.issuer:
        raise AttributeCertificateError(
            f"{ac.describe()}: issuer {_slash(ac.issuer)} is not the signing AA {_slash(signer.subject)}"
        )
    return signer
