"""The MyProxy certificate-authorization challenge (renewal), sans-I/O.

From the gct sources (myproxy_authorization.c) and captures of the real
clients: the server offers one random 16-byte challenge per method as 32
lowercase hex characters; the client answers in one message:

    byte 0: method id (4 = X509_certificate_SHA256, 2 = X509_certificate), bytes 1-3: zero
    uint32 big-endian signature length
    signature: RSA PKCS#1 v1.5 over the ASCII hex challenge, SHA-256 (method 4) or SHA-1 (2)
    1 byte N, then N DER certificates: the signing credential's leaf first, then its chain
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from voms_ext.keys import retired_key_problem

from . import protocol as p

METHOD_CERT = 2
METHOD_CERT_SHA256 = 4
_NAMES = {METHOD_CERT: "X509_certificate", METHOD_CERT_SHA256: "X509_certificate_SHA256"}
MAX_SIGNATURE = 2048


class ChallengeError(Exception):
    """A challenge reply that is malformed or does not prove possession."""


@dataclass(frozen=True)
class Challenge:
    method_id: int
    hex: str

    @property
    def method(self) -> str:
        return _NAMES[self.method_id]


def _digest(method_id: int) -> hashes.HashAlgorithm:
    # SHA-1 only when the client picked the SHA-1 method that old servers offered.
    return hashes.SHA256() if method_id == METHOD_CERT_SHA256 else hashes.SHA1()  # noqa: S303


def make_challenges() -> tuple[Challenge, ...]:
    return tuple(Challenge(m, secrets.token_hex(16)) for m in (METHOD_CERT, METHOD_CERT_SHA256))


def reply_length(buffer: bytes) -> int | None:
    """Length of a complete challenge reply at the start of `buffer`, or None if more is needed."""
    if len(buffer) < 8:
        return None
    size = int.from_bytes(buffer[4:8], "big")
    if size == 0 or size > MAX_SIGNATURE:
        raise p.ProtocolError(f"authorization reply: signature length {size} refused")
    rest = p.chain_length(buffer[8 + size :]) if len(buffer) > 8 + size else None
    return None if rest is None else 8 + size + rest


def parse_challenge_reply(data: bytes, challenges: tuple[Challenge, ...]) -> list[x509.Certificate]:
    """Check the signature over our challenge; return the signer's chain (leaf first)."""
    if len(data) < 9:
        raise ChallengeError("authorization reply too short")
    method_id = data[0]
    offered = {c.method_id: c for c in challenges}
    challenge = offered.get(method_id)
    if challenge is None:
        raise ChallengeError(f"authorization method {method_id} was not offered")
    size = int.from_bytes(data[4:8], "big")
    signature = data[8 : 8 + size]
    try:
        chain = p.parse_certificates(data[8 + size :])
    except p.ProtocolError as exc:
        raise ChallengeError(str(exc)) from None
    digest = _digest(method_id)
    retired = retired_key_problem(chain[0])
    if retired is not None:
        raise ChallengeError(f"the renewal credential: {retired}")
    try:
        key = chain[0].public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise ChallengeError(f"the renewal credential's key cannot be used: {exc}") from None
    message = challenge.hex.encode("ascii")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(digest))
        else:
            raise ChallengeError("the renewal credential has an unsupported key type")
    except InvalidSignature:
        raise ChallengeError("the challenge signature does not verify") from None
    return chain


def sign_challenge(
    challenge: Challenge, key: rsa.RSAPrivateKey, chain: list[x509.Certificate]
) -> bytes:
    """The client side (our client and tests): answer `challenge` with `key` and `chain`."""
    digest = _digest(challenge.method_id)
    signature = key.sign(challenge.hex.encode("ascii"), padding.PKCS1v15(), digest)
    return (
        bytes([challenge.method_id, 0, 0, 0])
        + len(signature).to_bytes(4, "big")
        + signature
        + p.encode_certificates(chain)
    )
