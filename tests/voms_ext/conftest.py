"""Fixtures for the voms_ext tests: the dev PKI loaded once, a key pool, and a kit.

Key generation is slow, so every key a test needs beyond the dev PKI comes
from `Kit.keys`, generated once per session and reused (hypothesis examples
never generate keys). The `kit` fixture is session-scoped so hypothesis
tests can use it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ
from pyasn1_modules import rfc5280, rfc5755

from proxyd.devpki import DevPKI
from voms_ext import (
    AttributeCertificate,
    AttributeCertificateBuilder,
    ProxyBuilder,
    TrustStore,
    slash_to_name,
)
from voms_ext.der import encode_tlv
from voms_ext.proxy import ProxyCertInfo, encode_proxy_cert_info

PCI_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
PCI_DRAFT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
VOMS_EXT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
INDEPENDENT = "1.3.6.1.5.5.7.21.2"
AA_URI = "voms.localhost:15000"
KEY_POOL_SIZE = 6


@dataclass(frozen=True)
class Party:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _load(cert_path: Path, key_path: Path) -> Party:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Party(cert, key)


def ku(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=not cert_sign,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Kit:
    """Everything the tests build credentials from; all methods are deterministic in time."""

    pki: DevPKI
    now: dt.datetime
    ca: Party
    alice: Party
    bob: Party
    aa: Party
    shortlived: Party  # an EEC of the dev CA that expires in 3 days
    keys: tuple[rsa.RSAPrivateKey, ...]
    trust: TrustStore

    # --- VOMS ACs -----------------------------------------------------------------

    def ac_builder(
        self,
        holder: Party | None = None,
        fqans: Sequence[str] = ("/dteam",),
        *,
        vo: str = "dteam",
        uri: str = AA_URI,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> AttributeCertificateBuilder:
        nb = not_before or self.now - dt.timedelta(minutes=5)
        na = not_after or self.now + dt.timedelta(hours=12)
        return (
            AttributeCertificateBuilder()
            .vo(vo)
            .uri(uri)
            .fqans(fqans)
            .holder((holder or self.alice).cert)
            .validity(nb, na)
        )

    def ac(
        self, holder: Party | None = None, fqans: Sequence[str] = ("/dteam",), **kw: object
    ) -> AttributeCertificate:
        return self.ac_builder(holder, fqans, **kw).sign(self.aa.cert, self.aa.key)  # type: ignore[arg-type]

    def resign_ac(
        self,
        ac: AttributeCertificate | bytes,
        mutate: Callable[[rfc5755.AttributeCertificateInfo], None],
        key: rsa.RSAPrivateKey | None = None,
    ) -> bytes:
        """DER of `ac` with its acinfo changed by `mutate`, re-signed with the AA key."""
        der = ac if isinstance(ac, bytes) else ac.der
        decoded, rest = der_decoder.decode(der, asn1Spec=rfc5755.AttributeCertificate())
        assert not rest
        info = decoded["acinfo"]
        mutate(info)
        tbs = der_encoder.encode(info)
        signature = (key or self.aa.key).sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        alg = der_encoder.encode(decoded["signatureAlgorithm"])
        return encode_tlv(0x30, tbs + alg + encode_tlv(0x03, b"\x00" + signature))

    # --- proxies ------------------------------------------------------------------

    def proxy(
        self,
        issuer: Party,
        chain: Sequence[x509.Certificate] = (),
        *,
        key_index: int = 0,
        builder: Callable[[ProxyBuilder], ProxyBuilder] = lambda b: b,
        acs: Sequence[AttributeCertificate] = (),
    ) -> tuple[Party, tuple[x509.Certificate, ...]]:
        """A proxy of `issuer` (whose own chain is `chain`) and the new leaf-first chain."""
        key = self.keys[key_index % len(self.keys)]
        b = ProxyBuilder(issuer.cert, chain).public_key(key.public_key())
        if acs:
            b = b.attribute_certificates(acs)
        cert = builder(b).sign(issuer.key, now=self.now)
        return Party(cert, key), (cert, issuer.cert, *chain)

    def proxy_chain(
        self,
        depth: int,
        eec: Party | None = None,
        *,
        acs: Sequence[AttributeCertificate] = (),
        builder: Callable[[ProxyBuilder], ProxyBuilder] = lambda b: b,
    ) -> tuple[Party, tuple[x509.Certificate, ...]]:
        """`depth` proxies on top of `eec` (alice), `acs` in the first one; chain leaf first."""
        party = eec or self.alice
        chain: tuple[x509.Certificate, ...] = (party.cert,)
        for level in range(depth):
            party, chain = self.proxy(
                party, chain[1:], key_index=level, builder=builder, acs=acs if level == 0 else ()
            )
        return party, chain

    def raw_proxy(
        self,
        issuer: Party,
        *,
        key_index: int = 0,
        subject: x509.Name | None = None,
        serial: int = 123456789,
        pci: bytes | None = encode_proxy_cert_info(ProxyCertInfo(INHERIT_ALL)),
        pci_critical: bool = True,
        pci_oid: x509.ObjectIdentifier = PCI_OID,
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        signer: rsa.RSAPrivateKey | None = None,
    ) -> Party:
        """A proxy made with cryptography's own builder, for shapes ProxyBuilder refuses."""
        key = self.keys[key_index % len(self.keys)]
        if subject is None:
            cn = x509.NameAttribute(NameOID.COMMON_NAME, str(serial))
            subject = x509.Name([*issuer.cert.subject.rdns, x509.RelativeDistinguishedName([cn])])
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before or self.now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or self.now + dt.timedelta(hours=12))
            .add_extension(ku(), critical=True)
        )
        if pci is not None:
            b = b.add_extension(x509.UnrecognizedExtension(pci_oid, pci), critical=pci_critical)
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return Party(b.sign(signer or issuer.key, hashes.SHA256()), key)

    def ca_issue(
        self,
        ca: Party,
        dn: str,
        key_index: int,
        *,
        days: float = 365,
        ca_flag: bool = False,
    ) -> Party:
        key = self.keys[key_index % len(self.keys)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(slash_to_name(dn))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
            .add_extension(ku(cert_sign=ca_flag), critical=True)
            .sign(ca.key, hashes.SHA256())
        )
        return Party(cert, key)

    def self_signed_ca(self, dn: str, key_index: int) -> Party:
        key = self.keys[key_index % len(self.keys)]
        name = slash_to_name(dn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ku(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return Party(cert, key)


def ac_extensions(der: bytes) -> list[tuple[str, bool, bytes]]:
    """(oid, critical, value DER) of every extension of an AC, in order."""
    decoded, _ = der_decoder.decode(der, asn1Spec=rfc5755.AttributeCertificate())
    return [
        (str(e["extnID"]), bool(e["critical"]), bytes(e["extnValue"]))
        for e in decoded["acinfo"]["extensions"]
    ]


def set_ac_extensions(exts: Sequence[tuple[str, bool, bytes]]) -> Callable[[univ.Sequence], None]:
    """A `Kit.resign_ac` mutation that replaces the extension list."""

    def mutate(info: univ.Sequence) -> None:
        extensions = info["extensions"]
        extensions.clear()
        for oid, critical, value in exts:
            ext = rfc5280.Extension()
            ext["extnID"] = univ.ObjectIdentifier(oid)
            ext["critical"] = critical
            ext["extnValue"] = value
            extensions.append(ext)

    return mutate


@pytest.fixture(scope="session")
def kit(dev_pki: DevPKI) -> Kit:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    keys = tuple(
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(KEY_POOL_SIZE)
    )
    ca = _load(dev_pki.ca_cert, dev_pki.ca_key)
    partial = Kit(
        pki=dev_pki,
        now=now,
        ca=ca,
        alice=_load(*dev_pki.user("alice")),
        bob=_load(*dev_pki.user("bob")),
        aa=_load(*dev_pki.host("aa")),
        shortlived=ca,  # replaced below
        keys=keys,
        trust=TrustStore.from_dirs(dev_pki.cert_dir, dev_pki.voms_dir),
    )
    shortlived = partial.ca_issue(ca, "/C=XX/O=proxyd dev/OU=Users/CN=dave", 5, days=3)
    return replace(partial, shortlived=shortlived)
