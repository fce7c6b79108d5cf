"""Read and write grid credential files.

A grid proxy file holds, in this order: the proxy certificate, its private
key, then the rest of the chain up to and including the end-entity
certificate. Files holding a private key are created 0600 and replaced
atomically, because the Globus tools refuse group- or world-readable keys
and a half-written proxy file is worse than none.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .errors import CredentialFileError
from .keys import retired_key_pem_problem, retired_key_problem

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
# DSA is listed so that its key is refused with a reason (voms_ext.keys), not skipped.
_KEY_LABELS = {
    b"RSA PRIVATE KEY",
    b"PRIVATE KEY",
    b"EC PRIVATE KEY",
    b"ENCRYPTED PRIVATE KEY",
    b"DSA PRIVATE KEY",
}


@dataclass(frozen=True)
class Credential:
    """Certificates leaf first, and the leaf's private key when the file holds one."""

    certificates: tuple[x509.Certificate, ...]
    private_key: PrivateKeyTypes | None = None

    @property
    def certificate(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Everything after the leaf."""
        return self.certificates[1:]


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` with `mode`, atomically: a reader sees the old or the new file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parse_credential_pem(
    data: bytes, *, password: bytes | None = None, source: str = "<memory>"
) -> Credential:
    """Parse PEM text holding certificates and at most one private key."""
    certs: list[x509.Certificate] = []
    key_block: tuple[int, bytes, bytes] | None = None
    for number, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        label = match.group(1)
        block = match.group(0)
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except (ValueError, x509.InvalidVersion) as exc:
                raise CredentialFileError(
                    f"{source}: PEM block {number} (CERTIFICATE) is not a valid certificate: {exc}"
                ) from None
        elif label in _KEY_LABELS:
            if key_block is not None:
                raise CredentialFileError(f"{source}: holds more than one private key")
            key_block = (number, label, block)
    if not certs:
        raise CredentialFileError(f"{source}: no PEM CERTIFICATE block found")
    for position, cert in enumerate(certs, start=1):
        problem = retired_key_problem(cert)
        if problem is not None:
            raise CredentialFileError(f"{source}: certificate {position}: {problem}")
    key = None if key_block is None else _load_key(*key_block, password=password, source=source)
    return Credential(tuple(certs), key)


def _load_key(
    number: int, label: bytes, block: bytes, *, password: bytes | None, source: str
) -> PrivateKeyTypes:
    problem = retired_key_pem_problem(block)
    if problem is not None:
        raise CredentialFileError(f"{source}: PEM block {number}: {problem}")
    try:
        return serialization.load_pem_private_key(block, password=password)
    except TypeError:
        raise CredentialFileError(
            f"{source}: the private key is encrypted; a passphrase is needed"
            if password is None
            else f"{source}: the private key is not encrypted, but a passphrase was given"
        ) from None
    except UnsupportedAlgorithm as exc:
        raise CredentialFileError(
            f"{source}: PEM block {number} ({label.decode()}) uses an unsupported key algorithm: {exc}"
        ) from None
    except ValueError as exc:
        raise CredentialFileError(
            f"{source}: PEM block {number} ({label.decode()}) is not a usable key: {exc}"
        ) from None


def load_credential_file(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> Credential:
    """Load a PEM grid credential (proxy file, usercert+key, host cert) from disk."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CredentialFileError(f"{path}: cannot read credential file: {exc.strerror}") from None
    return parse_credential_pem(data, password=password, source=str(path))


def credential_to_pem(credential: Credential) -> bytes:
    """Proxy certificate, its key (PKCS#1 as the C tools write it), then the chain."""
    out = [credential.certificate.public_bytes(serialization.Encoding.PEM)]
    if credential.private_key is not None:
        out.append(private_key_to_pem(credential.private_key))
    out.extend(c.public_bytes(serialization.Encoding.PEM) for c in credential.chain)
    return b"".join(out)


def private_key_to_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def write_credential_file(path: str | os.PathLike[str], credential: Credential) -> None:
    """Write a grid proxy file, 0600, atomically."""
    write_atomic(path, credential_to_pem(credential), 0o600)
