"""Distinguished names the way grid tools write them.

Grid software prints and configures DNs in OpenSSL's one-line "slash" form
(`/C=XX/O=proxyd dev/CN=alice`), RDNs in encoding order. Trust directories
name files after OpenSSL's subject hash. Both live here so that every part
of the system spells a DN and finds an anchor the same way.
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .der import encode_tlv, read_tlv
from .errors import DistinguishedNameError

# OpenSSL short names, as X509_NAME_oneline prints them.
_SHORT_NAMES: dict[ObjectIdentifier, str] = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.STREET_ADDRESS: "street",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.PSEUDONYM: "pseudonym",
}
_BY_SHORT_NAME: dict[str, ObjectIdentifier] = {v.lower(): k for k, v in _SHORT_NAMES.items()}
_BY_SHORT_NAME["email"] = NameOID.EMAIL_ADDRESS
_BY_SHORT_NAME["e"] = NameOID.EMAIL_ADDRESS
_BY_SHORT_NAME["userid"] = NameOID.USER_ID

# A new RDN starts at a '/' followed by an attribute name and '='; a '/' inside
# a value (as in `CN=host/wms.example.org`) does not.
_KEY = r"(?:[A-Za-z][A-Za-z0-9\-]*|[0-9]+(?:\.[0-9]+)+)="
_RDN_START = re.compile(r"/(?=" + _KEY + ")")
_AVA_SPLIT = re.compile(r"\+(?=" + _KEY + ")")


def _attr_label(oid: ObjectIdentifier) -> str:
    return _SHORT_NAMES.get(oid, oid.dotted_string)


def _attr_value(attr: x509.NameAttribute[str | bytes]) -> str:
    value = attr.value
    if isinstance(value, bytes):
        return value.hex()
    return value


def dn_to_slash(name: x509.Name) -> str:
    """`/C=XX/O=proxyd dev/CN=alice` for a `cryptography` Name, RDNs in order."""
    parts = []
    for rdn in name.rdns:
        avas = [f"{_attr_label(a.oid)}={_attr_value(a)}" for a in rdn]
        parts.append("/" + "+".join(avas))
    return "".join(parts)


def slash_to_name(dn: str) -> x509.Name:
    """Parse a slash-form DN into a `cryptography` Name.

    Raises DistinguishedNameError naming the component that cannot be read.
    """
    try:
        return _slash_to_name(dn)
    except (ValueError, TypeError) as exc:  # cryptography refusing an OID, a value or a duplicate
        raise DistinguishedNameError(f"DN {dn!r}: {exc}") from None


def _slash_to_name(dn: str) -> x509.Name:
    if not dn.startswith("/"):
        raise DistinguishedNameError(
            f"DN {dn!r} does not start with '/' (expected /C=../O=../CN=..)"
        )
    rdns = []
    parts = _RDN_START.split(dn)
    if len(parts) == 1:
        raise DistinguishedNameError(f"DN {dn!r} has no components")
    if parts[0] != "":
        raise DistinguishedNameError(
            f"DN {dn!r}: {parts[0]!r} before the first /KEY=VALUE component"
        )
    for component in parts[1:]:
        avas = []
        for ava in _AVA_SPLIT.split(component):
            key, sep, value = ava.partition("=")
            if not sep or not key:
                raise DistinguishedNameError(f"DN {dn!r}: component {ava!r} is not KEY=VALUE")
            oid = _BY_SHORT_NAME.get(key.lower())
            if oid is None:
                if re.fullmatch(r"[0-9]+(\.[0-9]+)+", key):
                    oid = ObjectIdentifier(key)
                else:
                    raise DistinguishedNameError(f"DN {dn!r}: unknown attribute {key!r}")
            if not value:
                raise DistinguishedNameError(f"DN {dn!r}: attribute {key!r} has an empty value")
            try:
                avas.append(x509.NameAttribute(oid, value))
            except ValueError as exc:
                raise DistinguishedNameError(f"DN {dn!r}: attribute {key}: {exc}") from None
        rdns.append(x509.RelativeDistinguishedName(avas))
    if not rdns:
        raise DistinguishedNameError(f"DN {dn!r} has no components")
    return x509.Name(rdns)


# --- OpenSSL subject hash (X509_NAME_hash_ex) -------------------------------

_CANON_TAGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String (treated as Latin-1, as OpenSSL does)
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}
_SPACE = b" \t\n\v\f\r"


def _canon_value(tag: int, content: bytes) -> bytes:
    codec = _CANON_TAGS.get(tag)
    if codec is None:
        return encode_tlv(tag, content)
    raw = content.decode(codec, errors="replace").encode("utf-8")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n and raw[i] in _SPACE:
        i += 1
    while n > i and raw[n - 1] in _SPACE:
        n -= 1
    while i < n:
        b = raw[i]
        if b in _SPACE:
            out.append(0x20)
            while i < n and raw[i] in _SPACE:
                i += 1
            continue
        out.append(b + 32 if 65 <= b <= 90 else b)
        i += 1
    return encode_tlv(0x0C, bytes(out))


def canonical_name_der(name: x509.Name) -> bytes:
    """OpenSSL's canonical name encoding (x509_name_canon): the input to the hash."""
    der = name.public_bytes()
    _, pos, end = read_tlv(der, 0)
    out = bytearray()
    while pos < end:
        _, set_pos, set_end = read_tlv(der, pos)
        members = []
        while set_pos < set_end:
            _, atv_pos, atv_end = read_tlv(der, set_pos)
            _, _, oid_end = read_tlv(der, atv_pos)
            vtag, vstart, vend = read_tlv(der, oid_end)
            members.append(der[atv_pos:oid_end] + _canon_value(vtag, der[vstart:vend]))
            set_pos = atv_end
        # DER SET OF: members sorted by their complete encodings, as OpenSSL does.
        out += encode_tlv(0x31, b"".join(sorted(encode_tlv(0x30, m) for m in members)))
        pos = set_end
    return bytes(out)


def subject_hash(name: x509.Name) -> str:
    """The 8-hex-digit name hash of `openssl x509 -subject_hash` (`<hash>.0` files)."""
    digest = hashlib.sha1(canonical_name_der(name), usedforsecurity=False).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"
