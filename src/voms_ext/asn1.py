"""ASN.1 specifications that neither `cryptography` nor pyasn1-modules define.

The attribute certificate itself comes from `pyasn1_modules.rfc5755`; here
live the proxy and VOMS-private structures that travel inside it or beside
it. Each is documented with the ASN.1 it encodes.

The two VOMS containers of whole certificates -- the proxy extension's
SEQUENCE OF SEQUENCE OF AttributeCertificate and the AC's AA chain
extension SEQUENCE { SEQUENCE OF Certificate } -- have no spec here on
purpose: they are built and read with `der` so that every certificate
inside keeps its exact bytes, which its signature covers whatever encoder
its producer used (`proxy.encode_ac_sequence`, `ac.parse`).
"""

from __future__ import annotations

from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, tag, univ
from pyasn1_modules import rfc5280

from .errors import DecodeError

# --- object identifiers -----------------------------------------------------

OID_PROXY_CERT_INFO = "1.3.6.1.5.5.7.1.14"  # RFC 3820
OID_PROXY_CERT_INFO_DRAFT = "1.3.6.1.4.1.3536.1.222"  # GT3 pre-RFC draft
OID_POLICY_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
OID_POLICY_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
OID_POLICY_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"  # Globus limited proxy

OID_VOMS_AC_SEQ = "1.3.6.1.4.1.8005.100.100.5"  # proxy extension holding the ACs
OID_VOMS_ATTRIBUTES = "1.3.6.1.4.1.8005.100.100.4"  # AC attribute: IetfAttrSyntax of FQANs
OID_VOMS_AA_CERTS = "1.3.6.1.4.1.8005.100.100.10"  # AC extension: the AA chain
OID_VOMS_GENERIC_ATTRIBUTES = "1.3.6.1.4.1.8005.100.100.11"  # AC extension
OID_NO_REV_AVAIL = "2.5.29.56"
OID_AUTHORITY_KEY_ID = "2.5.29.35"
OID_TARGET_INFORMATION = "2.5.29.55"


# --- RFC 3820 ProxyCertInfo --------------------------------------------------


class ProxyPolicy(univ.Sequence):
    """ProxyPolicy ::= SEQUENCE { policyLanguage OID, policy OCTET STRING OPTIONAL }"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("policyLanguage", univ.ObjectIdentifier()),
        namedtype.OptionalNamedType("policy", univ.OctetString()),
    )


class ProxyCertInfo(univ.Sequence):
    """ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL, proxyPolicy }"""

    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("pCPathLenConstraint", univ.Integer()),
        namedtype.NamedType("proxyPolicy", ProxyPolicy()),
    )


class ProxyCertInfoDraft(univ.Sequence):
    """The GT3 draft order: SEQUENCE { proxyPolicy, pCPathLenConstraint [1] EXPLICIT INTEGER OPTIONAL }.

    Observed in `grid-proxy-init -draft -path-length 2` output.
    """

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("proxyPolicy", ProxyPolicy()),
        namedtype.OptionalNamedType(
            "pCPathLenConstraint",
            univ.Integer().subtype(
                explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 1)
            ),
        ),
    )


# --- VOMS structures -----------------------------------------------------------


class GenericAttribute(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("name", univ.OctetString()),
        namedtype.NamedType("value", univ.OctetString()),
        namedtype.NamedType("qualifier", univ.OctetString()),
    )


class GenericAttributeList(univ.SequenceOf):
    componentType = GenericAttribute()


class AttributeHolder(univ.Sequence):
    """One provider: SEQUENCE { grantor GeneralNames, attributes SEQUENCE OF GenericAttribute }."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("grantor", rfc5280.GeneralNames()),
        namedtype.NamedType("attributes", GenericAttributeList()),
    )


class AttributeHolders(univ.SequenceOf):
    componentType = AttributeHolder()


class FullAttributes(univ.Sequence):
    """AC extension 1.3.6.1.4.1.8005.100.100.11: SEQUENCE { SEQUENCE OF AttributeHolder }."""

    componentType = namedtype.NamedTypes(namedtype.NamedType("providers", AttributeHolders()))


# --- helpers ---------------------------------------------------------------------


def decode(data: bytes, spec: univ.Asn1Item, what: str) -> univ.Asn1Item:
    """Strict DER decode of exactly one value; DecodeError names `what` on failure."""
    try:
        value, rest = der_decoder.decode(data, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DecodeError(f"{what}: not valid DER ({exc.__class__.__name__}: {exc})") from None
    if rest:
        raise DecodeError(f"{what}: {len(rest)} unexpected trailing bytes after the DER value")
    return value


def encode(value: univ.Asn1Item) -> bytes:
    return bytes(der_encoder.encode(value))
