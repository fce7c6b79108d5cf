"""Which key algorithms a credential may use, decided from OIDs alone.

DSA is refused everywhere: no IGTF CA issues DSA certificates any more, and
`cryptography` prints a deprecation warning whenever a DSA key object is made
(loading one, verifying a signature with one). Deciding from the algorithm OID,
before any key object exists, refuses DSA with a sentence a person can act on
and keeps that warning from ever reaching a user or the service log.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import PublicKeyAlgorithmOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc2986

_RETIRED = {PublicKeyAlgorithmOID.DSA: "DSA"}

#: PEM labels of private keys that name a retired algorithm outright.
_RETIRED_KEY_LABELS = {b"DSA PRIVATE KEY": "DSA"}

_ADVICE = "is no longer accepted; use an RSA (2048 bits or more) or EC key"


def retired_key_problem(item: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    """Why the public key of a certificate or request is refused, or None when it is not."""
    try:
        oid = (
            item.public_key_algorithm_oid
            if isinstance(item, x509.Certificate)
            else _request_key_algorithm(item)
        )
    except (ValueError, PyAsn1Error):
        return None  # unreadable keys are reported by whoever uses the key
    name = _RETIRED.get(oid)
    return None if name is None else f"its {name} key {_ADVICE}"


def _request_key_algorithm(csr: x509.CertificateSigningRequest) -> x509.ObjectIdentifier:
    # Read by cryptography where it can (no key object is made, so no DSA warning): the
    # pyasn1 decode below costs ~1 ms, on every GET's certificate request.
    oid: x509.ObjectIdentifier | None = getattr(csr, "public_key_algorithm_oid", None)
    if oid is not None:
        return oid
    info, _ = der_decoder.decode(
        csr.tbs_certrequest_bytes, asn1Spec=rfc2986.CertificationRequestInfo()
    )
    return x509.ObjectIdentifier(str(info["subjectPKInfo"]["algorithm"]["algorithm"]))


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def retired_key_pem_problem(pem: bytes) -> str | None:
    """Why a PEM private key block is refused from its label alone, or None."""
    match = _PEM_LABEL.search(pem)
    name = _RETIRED_KEY_LABELS.get(match.group(1)) if match else None
    return None if name is None else f"a {name} private key {_ADVICE}"
