"""Forging and tampering helpers for proxy files, to feed strict relying parties.

A proxy file is PEM: the leaf certificate, its private key, then the chain.
These helpers rewrite only the leaf and keep every other block verbatim.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from voms_ext.names import slash_to_name

VOMS_AC_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)

PathLike = str | os.PathLike[str]


def read_pem_blocks(path: PathLike) -> list[bytes]:
    """Every PEM block of a file, in order, each ending with a newline."""
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(Path(path).read_bytes())]
    if not blocks:
        raise ValueError(f"no PEM block in {path}")
    return [b if b.endswith(b"\n") else b + b"\n" for b in blocks]


def _leaf_index(blocks: list[bytes]) -> int:
    for i, block in enumerate(blocks):
        if block.startswith(b"-----BEGIN CERTIFICATE-----"):
            return i
    raise ValueError("no CERTIFICATE block")


def load_leaf(path: PathLike) -> x509.Certificate:
    """The first certificate of a proxy file."""
    blocks = read_pem_blocks(path)
    return x509.load_pem_x509_certificate(blocks[_leaf_index(blocks)])


def extension_value(
    cert_or_path: x509.Certificate | PathLike, oid: x509.ObjectIdentifier = VOMS_AC_OID
) -> bytes:
    """The DER contents of the extnValue OCTET STRING of an extension of the leaf."""
    cert = cert_or_path if isinstance(cert_or_path, x509.Certificate) else load_leaf(cert_or_path)
    value = cert.extensions.get_extension_for_oid(oid).value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return value.public_bytes()


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    """`data` with bit `bit` of byte `index` (negative counts from the end) inverted."""
    buf = bytearray(data)
    buf[index] ^= 1 << bit
    return bytes(buf)


def write_proxy(out_path: PathLike, leaf: x509.Certificate | bytes, proxy_path: PathLike) -> None:
    """Write `proxy_path`'s blocks to `out_path` (mode 0600) with the leaf replaced.

    `leaf` is a certificate or its DER encoding (which need not parse).
    """
    blocks = read_pem_blocks(proxy_path)
    der = leaf if isinstance(leaf, bytes) else leaf.public_bytes(serialization.Encoding.DER)
    blocks[_leaf_index(blocks)] = _pem("CERTIFICATE", der)
    out = Path(out_path)
    out.unlink(missing_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(blocks))


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    body = b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n".encode() + body + f"-----END {label}-----\n".encode()


def patch_leaf_bytes(proxy_path: PathLike, out_path: PathLike, old: bytes, new: bytes) -> None:
    """Replace the single occurrence of `old` in the leaf's DER by `new` (same length).

    The leaf is not re-signed, so its own signature no longer verifies.
    """
    if len(old) != len(new):
        raise ValueError("patch_leaf_bytes keeps lengths: old and new must be equally long")
    der = load_leaf(proxy_path).public_bytes(serialization.Encoding.DER)
    if der.count(old) != 1:
        raise ValueError(f"pattern occurs {der.count(old)} times in the leaf, expected once")
    write_proxy(out_path, der.replace(old, new), proxy_path)


def _load_private_key(path: PathLike) -> rsa.RSAPrivateKey:
    for block in read_pem_blocks(path):
        if b"PRIVATE KEY-----" in block.split(b"\n", 1)[0]:
            key = serialization.load_pem_private_key(block, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TypeError(f"{path}: not an RSA key")
            return key
    raise ValueError(f"no private key in {path}")


def rebuild_leaf_with_extension(
    proxy_path: PathLike,
    out_path: PathLike,
    ext_oid: x509.ObjectIdentifier,
    new_value_der: bytes,
    signer_key_path: PathLike,
) -> None:
    """Re-issue the leaf of `proxy_path` with extension `ext_oid` set to `new_value_der`.

    Subject, issuer, serial, validity, public key and all other extensions
    (in order, with their criticality) are copied; the extension is replaced
    in place (or appended if absent) and the certificate is signed with the
    key in `signer_key_path` (for a proxy: the issuing user's key) using the
    original signature hash. The key and chain blocks are kept.
    """
    leaf = load_leaf(proxy_path)
    key = _load_private_key(signer_key_path)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
        .public_key(leaf.public_key())
    )
    replaced = False
    for ext in leaf.extensions:
        value: x509.ExtensionType = ext.value
        if ext.oid == ext_oid:
            value, replaced = x509.UnrecognizedExtension(ext_oid, new_value_der), True
        builder = builder.add_extension(value, critical=ext.critical)
    if not replaced:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ext_oid, new_value_der), critical=False
        )
    algorithm = leaf.signature_hash_algorithm
    if not isinstance(algorithm, hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512):
        raise TypeError(f"unsupported leaf signature hash {algorithm!r}")
    write_proxy(out_path, builder.sign(key, algorithm), proxy_path)


def make_aa_certificate(
    out_dir: PathLike,
    subject_dn: str,
    *,
    ca_cert_path: PathLike | None = None,
    ca_key_path: PathLike | None = None,
    issuer_dn: str | None = None,
) -> tuple[Path, Path]:
    """A VOMS AA certificate and key (`vomscert.pem`, `vomskey.pem`, 0600) in `out_dir`.

    Issued by the CA in `ca_cert_path`/`ca_key_path`, or else self-signed;
    `issuer_dn` overrides the issuer name written into a self-signed
    certificate (a forged "issued by the trusted CA" certificate).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = slash_to_name(subject_dn)
    if ca_cert_path is not None:
        if ca_key_path is None:
            raise ValueError("ca_key_path is required with ca_cert_path")
        ca_cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
        signer, issuer, signer_public = (
            _load_private_key(ca_key_path),
            ca_cert.subject,
            ca_cert.public_key(),
        )
    else:
        signer, signer_public = key, key.public_key()
        issuer = slash_to_name(issuer_dn) if issuer_dn else subject
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if not isinstance(signer_public, rsa.RSAPublicKey):
        raise TypeError("CA key must be RSA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    cert_path, key_path = out / "vomscert.pem", out / "vomskey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path
