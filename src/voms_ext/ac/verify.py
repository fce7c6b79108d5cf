"""Verifying VOMS ACs as libvomsapi does: the AA through its `.lsc` file or the vomsdir."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .. import asn1
from ..errors import AttributeCertificateError, VomsExtError
from ..keys import retired_key_problem
from ..names import dn_to_slash
from ..trust import TrustStore
from .model import SIG_HASHES, AttributeCertificate

CLOCK_SKEW = dt.timedelta(seconds=300)  # what libvomsapi allows either side


def _slash(name: x509.Name) -> str:
    try:
        return dn_to_slash(name)
    except ValueError:
        return "<unreadable name>"


def _signature_ok(ac: AttributeCertificate, cert: x509.Certificate) -> bool:
    if retired_key_problem(cert) is not None:
        return False
    key = cert.public_key()
    digest = SIG_HASHES.get(ac.signature_algorithm)
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
