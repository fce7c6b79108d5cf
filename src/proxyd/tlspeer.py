"""The verified peer chain of a TLS connection, as `cryptography` certificates.

Python 3.13 exposes `SSLObject.get_verified_chain()`; 3.11 and 3.12 only
have it on the private `_sslobj`. This is the one place that knows.
"""

from __future__ import annotations

import ssl
from typing import Any

from cryptography import x509


def verified_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[x509.Certificate]:
    """Leaf first, up to and including the trust anchor; empty for a peer without a certificate."""
    return [x509.load_der_x509_certificate(der) for der in verified_chain_der(ssl_object)]


def verified_chain_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[bytes]:
    """`verified_chain` as DER, unparsed (what `principal.PeerCache` is keyed by)."""
    if ssl_object is None or ssl_object.getpeercert(binary_form=True) is None:
        return []
    getter: Any = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        raise RuntimeError("this Python's ssl module cannot return the verified peer chain")
    chain = getter() or []
    return [
        cert if isinstance(cert, bytes) else cert.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        for cert in chain
    ]
