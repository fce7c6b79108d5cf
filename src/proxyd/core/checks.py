"""Checks of what clients send and of what is stored: CSR keys, lock messages, stored chains against CRLs."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from voms_ext import (
    TrustStore,
)
from voms_ext.keys import retired_key_problem
from voms_ext.names import dn_to_slash

from ..policy import Decision
from .errors import BadRequest

MIN_PASSPHRASE = 6  # what myproxy-server enforces


MIN_RSA_BITS = 2048


MAX_PENDING_PER_ACTOR = 100


MAX_LOCK_MESSAGE = 512


KEY_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\n?", re.DOTALL
)


def check_lock_message(message: str) -> str:
    """An operator's lock message: 1-512 printable characters (no control or format
    characters: it is shown in MyProxy ERROR lines, problem details and listings)."""
    if not message.strip():
        raise BadRequest("the lock message is empty")
    if len(message) > MAX_LOCK_MESSAGE:
        raise BadRequest(f"the lock message is longer than {MAX_LOCK_MESSAGE} characters")
    if not message.isprintable():
        raise BadRequest("the lock message may hold printable characters only, no control ones")
    return message


@dataclass(frozen=True)
class Verified:
    """A stored chain that validated against `trust`; the verdict holds from `start` to `end`."""

    trust: TrustStore
    start: dt.datetime
    end: dt.datetime


def _dn(name: x509.Name) -> str:
    try:
        return dn_to_slash(name)
    except (ValueError, TypeError):
        return "<unreadable name>"


def _signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _revoked_certificate(
    chain: Sequence[x509.Certificate], trust: TrustStore
) -> tuple[x509.Certificate, x509.Name] | None:
    """The first certificate of `chain`, or of the CA path above it in `trust`, that a CRL
    of `trust` revokes (a CRL whose signature verifies with its issuer's key), and that issuer."""
    if not trust.crls or not chain:
        return None
    path = list(chain)
    current = chain[-1]
    for _ in range(16):  # up the CA path, by name (validation has failed: no path to trust)
        issuer = next((a for a in trust.anchors if a.subject == current.issuer), None)
        if issuer is None or issuer.subject == issuer.issuer:
            break
        path.append(issuer)
        current = issuer
    signers = (*chain, *trust.anchors)
    for cert in path:
        for crl in trust.crls:
            if (
                crl.issuer == cert.issuer
                and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
                and any(c.subject == crl.issuer and _signed_by(crl, c) for c in signers)
            ):
                return cert, crl.issuer
    return None


def chain_refusal(
    chain: Sequence[x509.Certificate], trust: TrustStore, now: dt.datetime, problem: str
) -> tuple[str, str]:
    """Why a stored chain no longer validates: ("revoked" | "expired" | "untrusted", reason).

    The reason is shown to the client, which may not have authenticated yet (a passphrase
    GET is decided before the passphrase is tried): it names no owner and no server path.
    """
    revoked = _revoked_certificate(chain, trust)
    if revoked is not None:
        cert, issuer = revoked
        return "revoked", (
            f"the stored credential has been revoked: certificate serial {cert.serial_number} "
            f"was revoked by {_dn(issuer)}"
        )
    ended = [c.not_valid_after_utc for c in chain if c.not_valid_after_utc < now]
    if ended:
        return "expired", f"the stored credential expired at {min(ended):%Y-%m-%d %H:%M:%SZ}"
    for subject in sorted({_dn(c.subject) for c in chain}, key=len, reverse=True):
        problem = problem.replace(subject, "<stored certificate>")
    if trust.cert_dir is not None:
        problem = problem.replace(f" {trust.cert_dir}", "")
    return "untrusted", (
        f"the stored credential no longer validates against this server's trust store: {problem}"
    )


def check_public_key(csr: x509.CertificateSigningRequest) -> None:
    """A CSR whose signature verifies and whose key is strong enough to carry a credential."""
    retired = retired_key_problem(csr)
    if retired is not None:
        raise BadRequest(f"certificate request: {retired}")
    try:
        if not csr.is_signature_valid:
            raise BadRequest("certificate request: its signature does not verify")
        key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise BadRequest(f"certificate request: its public key cannot be used: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadRequest(
                f"certificate request: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed"
            )
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        raise BadRequest("certificate request: only RSA and EC keys are accepted")


def with_reason(detail: str | None, decision: Decision) -> str | None:
    """An audit detail that also gives a denial's reason."""
    return f"{detail}: {decision.reason}" if detail and not decision.allowed else detail


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
