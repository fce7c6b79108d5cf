"""Trust configuration: X509_CERT_DIR anchors and CRLs, X509_VOMS_DIR.

A `TrustStore` is loaded once and then only read; validating a chain is a
separate act (`voms_ext.validate`), as in certvalidator's ValidationContext.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from .errors import ChainError, TrustStoreError
from .extensions import extension_problem
from .keys import retired_key_problem
from .names import dn_to_slash

_ANCHOR_FILE = re.compile(r"^[0-9a-f]{8}\.\d+$")
_CRL_FILE = re.compile(r"^[0-9a-f]{8}\.r\d+$")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)
_LSC_SEPARATOR = re.compile(r"^-+\s*NEXT CHAIN\s*-+$")
MAX_CA_DEPTH = 10
_SHA256 = hashes.SHA256()


def _slash(name: x509.Name) -> str:
    try:
        return dn_to_slash(name)
    except (ValueError, TypeError):
        return "<unreadable name>"


def _load_pem_certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            return []
    return [x509.load_pem_x509_certificate(b) for b in blocks]


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    if b"-----BEGIN X509 CRL-----" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def parse_lsc(text: str) -> tuple[tuple[str, ...], ...]:
    """The alternative AA chains of a `.lsc` file: DN lines, subject then issuer."""
    chains: list[tuple[str, ...]] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _LSC_SEPARATOR.match(line):
            if current:
                chains.append(tuple(current))
            current = []
            continue
        current.append(line)
    if current:
        chains.append(tuple(current))
    return tuple(chains)


def is_ca_certificate(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        # X.509 v1 roots predate basicConstraints; only a self-signed one counts.
        return cert.version == x509.Version.v1 and cert.subject == cert.issuer


@dataclass(frozen=True)
class TrustStore:
    """CA anchors and CRLs from a grid certificates directory, plus a vomsdir."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    cert_dir: Path | None = None
    voms_dir: Path | None = None
    lsc: Mapping[tuple[str, str], tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    voms_certs: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @classmethod
    def from_dirs(
        cls,
        cert_dir: str | os.PathLike[str],
        voms_dir: str | os.PathLike[str] | None = None,
    ) -> TrustStore:
        """Load `X509_CERT_DIR` (`*.0` anchors, `*.r0` CRLs) and optionally `X509_VOMS_DIR`.

        Unreadable files are listed in `problems` rather than aborting: one
        broken CA file in a directory of hundreds must not stop a site.
        """
        cdir = Path(cert_dir)
        if not cdir.is_dir():
            raise TrustStoreError(f"trust directory {cdir} does not exist or is not a directory")
        anchors: list[x509.Certificate] = []
        crls: list[x509.CertificateRevocationList] = []
        problems: list[str] = []
        for path in sorted(cdir.iterdir()):
            try:
                if _ANCHOR_FILE.match(path.name):
                    certs = _load_pem_certs(path)
                    if not certs:
                        problems.append(f"{path}: no certificate in file")
                    for cert in certs:
                        problem = extension_problem(cert)
                        if problem is None:
                            anchors.append(cert)
                        else:
                            problems.append(f"{path}: {problem}; the certificate is not used")
                elif _CRL_FILE.match(path.name):
                    crls.append(_load_crl(path))
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
        if not anchors:
            raise TrustStoreError(f"trust directory {cdir} holds no CA certificates (*.0 files)")
        lsc: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {}
        voms_certs: dict[str, list[x509.Certificate]] = {}
        vdir = Path(voms_dir) if voms_dir is not None else None
        if vdir is not None:
            if not vdir.is_dir():
                raise TrustStoreError(f"VOMS directory {vdir} does not exist or is not a directory")
            for path in sorted(vdir.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(vdir).parts
                vo = rel[0] if len(rel) == 2 else ""
                if len(rel) > 2:
                    continue
                try:
                    if path.suffix == ".lsc":
                        if vo:
                            lsc[(vo, path.stem)] = parse_lsc(path.read_text())
                    else:
                        voms_certs.setdefault(vo, []).extend(_load_pem_certs(path))
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    problems.append(f"{path}: {exc}")
        return cls(
            anchors=tuple(anchors),
            crls=tuple(crls),
            cert_dir=cdir,
            voms_dir=vdir,
            lsc=lsc,
            voms_certs={k: tuple(v) for k, v in voms_certs.items()},
            problems=tuple(problems),
        )

    @classmethod
    def from_certificates(
        cls,
        anchors: Iterable[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] = (),
    ) -> TrustStore:
        return cls(anchors=tuple(anchors), crls=tuple(crls))

    def _where(self) -> str:
        return f"the trust directory {self.cert_dir}" if self.cert_dir else "the trust store"

    def aa_certificates(self, vo: str) -> tuple[x509.Certificate, ...]:
        """Certificates in `<vomsdir>/<vo>/` then `<vomsdir>/`: candidate AA signers."""
        return self.voms_certs.get(vo, ()) + self.voms_certs.get("", ())

    def _check_revocation(
        self, cert: x509.Certificate, issuer: x509.Certificate, at: dt.datetime
    ) -> None:
        for crl in self.crls:
            if crl.issuer != issuer.subject:
                continue
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                raise ChainError(f"the CRL of {_slash(issuer.subject)} has an invalid signature")
            next_update = crl.next_update_utc
            if next_update is not None and next_update < at:
                raise ChainError(
                    f"the CRL of {_slash(issuer.subject)} expired at "
                    f"{next_update:%Y-%m-%d %H:%M:%SZ}; refresh CRLs (fetch-crl)"
                )
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise ChainError(
                    f"certificate {_slash(cert.subject)} (serial {cert.serial_number}) "
                    f"has been revoked by {_slash(issuer.subject)}"
                )

    def build_ca_path(
        self,
        cert: x509.Certificate,
        at: dt.datetime,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> tuple[x509.Certificate, ...]:
        """Path from `cert` (excluded) up to a self-signed anchor in this store.

        Checks signatures, validity at `at`, CA flags, path length
        constraints and CRLs. Raises ChainError naming the certificate and
        the reason.
        """
        anchor_ids = {a.fingerprint(_SHA256) for a in self.anchors}
        path: list[x509.Certificate] = []
        current = cert
        while True:
            if len(path) > MAX_CA_DEPTH:
                raise ChainError(
                    f"certificate {_slash(cert.subject)}: CA chain longer than {MAX_CA_DEPTH}"
                )
            issuer = self._find_issuer(current, [*self.anchors, *intermediates], at)
            if issuer is None:
                raise ChainError(
                    f"certificate {_slash(current.subject)} was issued by "
                    f"{_slash(current.issuer)}, which is not a trusted CA in {self._where()}"
                )
            self._check_revocation(current, issuer, at)
            path.append(issuer)
            if issuer.subject == issuer.issuer:
                if issuer.fingerprint(_SHA256) not in anchor_ids:
                    raise ChainError(f"root CA {_slash(issuer.subject)} is not in {self._where()}")
                break
            current = issuer
        # basicConstraints pathLen: number of CAs allowed below each CA.
        for index, ca in enumerate(path):
            try:
                limit = ca.extensions.get_extension_for_class(
                    x509.BasicConstraints
                ).value.path_length
            except x509.ExtensionNotFound:
                limit = None
            if limit is not None and index > limit:
                raise ChainError(
                    f"CA {_slash(ca.subject)} allows {limit} intermediate CA(s) below it, "
                    f"the chain has {index}"
                )
        return tuple(path)

    def _find_issuer(
        self, cert: x509.Certificate, candidates: Sequence[x509.Certificate], at: dt.datetime
    ) -> x509.Certificate | None:
        problem: str | None = None
        for cand in candidates:
            if cand.subject != cert.issuer:
                continue
            retired = retired_key_problem(cand)
            if retired is not None:
                problem = f"CA {_slash(cand.subject)}: {retired}"
                continue
            try:
                cert.verify_directly_issued_by(cand)
            except (ValueError, TypeError, InvalidSignature):
                problem = f"signature of {_slash(cert.subject)} does not verify with {_slash(cand.subject)}"
                continue
            if not is_ca_certificate(cand):
                problem = f"{_slash(cand.subject)} is not a CA (basicConstraints cA is not set)"
                continue
            if not cand.not_valid_before_utc <= at <= cand.not_valid_after_utc:
                problem = f"CA {_slash(cand.subject)} is not valid at {at:%Y-%m-%d %H:%M:%SZ}"
                continue
            return cand
        if problem is not None:
            raise ChainError(problem)
        return None
