"""VOMS attribute certificates: build, sign, parse and verify.

The AC is an RFC 5755 AttributeCertificate filled the way VOMS fills it
(PROTOCOLS.md §3): a baseCertificateID holder naming the end-entity
certificate, a v2Form issuer, one IetfAttrSyntax attribute of FQANs with a
`vo://host:port` policy authority, and the VOMS extensions in VOMS order.
Verification follows libvomsapi: find the AA through the `.lsc` file (or a
certificate in the vomsdir), check the signature, the holder, the validity
and the critical extensions, and fail with the reason.

Modules: `model` (the AC as a value), `build` (building and signing),
`parse` (structure), `verify` (trust).
"""

from __future__ import annotations

from .build import AttributeCertificateBuilder
from .model import AttributeCertificate, GenericAttribute
from .parse import parse_attribute_certificate, parse_voms_extension
from .verify import CLOCK_SKEW, find_aa_certificate, verify_attribute_certificate

__all__ = [
    "CLOCK_SKEW",
    "AttributeCertificate",
    "AttributeCertificateBuilder",
    "GenericAttribute",
    "find_aa_certificate",
    "parse_attribute_certificate",
    "parse_voms_extension",
    "verify_attribute_certificate",
]
