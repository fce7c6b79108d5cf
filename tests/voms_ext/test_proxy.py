"""ProxyBuilder and classify (voms_ext.proxy) against PROTOCOLS.md §2."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.voms_ext.conftest import (
    INDEPENDENT,
    LIMITED,
    PCI_DRAFT_OID,
    PCI_OID,
    VOMS_EXT_OID,
    Kit,
)
from voms_ext import (
    DecodeError,
    ProxyBuilder,
    ProxyError,
    ProxyType,
    classify,
    parse_voms_extension,
)
from voms_ext.proxy import ProxyCertInfo, encode_proxy_cert_info

HOUR = dt.timedelta(hours=1)

# DER bodies from PROTOCOLS.md §2 (checked there against the C tools).
PCI_INHERIT_ALL = "300c300a06082b06010505071501"
PCI_LIMITED = "300f300d060b2b060104019b5001010109"


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


def _pci_hex(cert: x509.Certificate, oid: x509.ObjectIdentifier = PCI_OID) -> str:
    ext = _ext(cert, oid)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return ext.value.value.hex()


@pytest.fixture(scope="module")
def builder(kit: Kit) -> ProxyBuilder:
    return ProxyBuilder(kit.alice.cert).public_key(kit.keys[0].public_key())


# --- immutability and argument validation ----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda b, k: b.public_key(k.keys[1]),
        lambda b, k: b.lifetime(HOUR),
        lambda b, k: b.not_before(k.now),
        lambda b, k: b.limited(),
        lambda b, k: b.impersonation(),
        lambda b, k: b.independent(),
        lambda b, k: b.draft(),
        lambda b, k: b.legacy(),
        lambda b, k: b.path_length(3),
        lambda b, k: b.serial_number(42),
        lambda b, k: b.attribute_certificates([b"\x30\x00"]),
        lambda b, k: b.add_extension(x509.SubjectAlternativeName([x509.DNSName("a")]), False),
    ],
    ids=[
        "public_key",
        "lifetime",
        "not_before",
        "limited",
        "impersonation",
        "independent",
        "draft",
        "legacy",
        "path_length",
        "serial_number",
        "attribute_certificates",
        "add_extension",
    ],
)
def test_setters_return_new_builders(builder: ProxyBuilder, kit: Kit, call) -> None:  # type: ignore[no-untyped-def]
    snapshot = dataclasses.replace(builder)
    new = call(builder, kit)
    assert isinstance(new, ProxyBuilder)
    assert new is not builder
    assert builder == snapshot  # the original is untouched


def test_shared_half_built_builder_is_safe(builder: ProxyBuilder, kit: Kit) -> None:
    limited = builder.limited().sign(kit.alice.key, now=kit.now)
    full = builder.sign(kit.alice.key, now=kit.now)
    assert classify(limited).type is ProxyType.RFC_LIMITED
    assert classify(full).type is ProxyType.RFC_IMPERSONATION
    with pytest.raises(dataclasses.FrozenInstanceError):
        builder._policy = "limited"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("call", "exc", "phrase"),
    [
        (lambda b: b.lifetime(-HOUR), ValueError, "lifetime must be a positive timedelta"),
        (lambda b: b.lifetime(dt.timedelta(0)), ValueError, "lifetime"),
        (lambda b: b.lifetime(3600), ValueError, "lifetime"),
        (lambda b: b.not_before(dt.datetime(2030, 1, 1)), ValueError, "timezone-aware"),
        (lambda b: b.path_length(-1), ValueError, "path_length must be a non-negative int"),
        (lambda b: b.path_length("1"), ValueError, "path_length"),
        (lambda b: b.path_length(1.0), ValueError, "path_length"),
        (lambda b: b.serial_number(0), ValueError, "serial_number must be a positive int"),
        (lambda b: b.serial_number(-5), ValueError, "serial_number"),
        (lambda b: b.serial_number(2**159), ValueError, "serial_number"),
        (lambda b: b.serial_number("7"), ValueError, "serial_number"),
        (lambda b: b.public_key("not a key"), TypeError, "public_key must be an RSA or EC key"),
        (lambda b: b.attribute_certificates([1]), TypeError, "attribute_certificates"),
        (lambda b: b.attribute_certificates(["x"]), TypeError, "attribute_certificates"),
        (lambda b: b.from_csr(b"not a csr"), TypeError, "from_csr"),
    ],
)
def test_bad_arguments_raise_at_the_call(builder: ProxyBuilder, call, exc, phrase) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as info:
        call(builder)
    assert phrase in str(info.value)


def test_issuer_must_be_a_certificate() -> None:
    with pytest.raises(TypeError, match=r"issuer_cert must be a cryptography x509\.Certificate"):
        ProxyBuilder(b"pem")  # type: ignore[arg-type]


def test_not_before_wrong_type(builder: ProxyBuilder) -> None:
    with pytest.raises(TypeError):
        builder.not_before("2030-01-01T00:00:00Z")  # type: ignore[arg-type]


def test_add_extension_wrong_type(builder: ProxyBuilder) -> None:
    with pytest.raises(TypeError):
        builder.add_extension("x", True)  # type: ignore[arg-type]


SAN = x509.SubjectAlternativeName([x509.DNSName("a")])


def test_duplicate_extension_raises_at_the_call(builder: ProxyBuilder) -> None:
    once = builder.add_extension(SAN, False)
    with pytest.raises(ValueError):
        once.add_extension(SAN, False)


def test_extension_the_builder_sets_is_refused_at_the_call(builder: ProxyBuilder) -> None:
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    with pytest.raises((ValueError, ProxyError)):
        builder.add_extension(usage, True)


def test_sign_without_public_key(kit: Kit) -> None:
    with pytest.raises(ProxyError, match="no public key set"):
        ProxyBuilder(kit.alice.cert).sign(kit.alice.key)


def test_signing_with_the_wrong_key(builder: ProxyBuilder, kit: Kit) -> None:
    with pytest.raises(ProxyError) as info:
        builder.sign(kit.bob.key)
    assert "does not belong to /C=XX/O=proxyd dev/OU=Users/CN=alice" in str(info.value)


# --- the certificate it makes -----------------------------------------------------------------


def test_subject_serial_validity_and_key_usage(builder: ProxyBuilder, kit: Kit) -> None:
    cert = builder.sign(kit.alice.key, now=kit.now)
    assert 2**30 <= cert.serial_number < 2**31  # random 31-bit, positive
    assert cert.issuer == kit.alice.cert.subject
    assert cert.subject == x509.Name(
        [
            *kit.alice.cert.subject.rdns,
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.COMMON_NAME, str(cert.serial_number))]
            ),
        ]
    )
    assert cert.not_valid_before_utc == kit.now - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == kit.now + dt.timedelta(hours=12)
    assert cert.public_key() == kit.keys[0].public_key()
    cert.verify_directly_issued_by(kit.alice.cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    usage = _ext(cert, x509.oid.ExtensionOID.KEY_USAGE)
    assert usage.critical
    assert usage.value == x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    assert [e.oid for e in cert.extensions] == [x509.oid.ExtensionOID.KEY_USAGE, PCI_OID]


def test_default_clock_backdates_five_minutes(builder: ProxyBuilder, kit: Kit) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = builder.lifetime(HOUR).sign(kit.alice.key)
    after = dt.datetime.now(dt.UTC)
    five = dt.timedelta(minutes=5)
    assert before - five <= cert.not_valid_before_utc <= after - five
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == HOUR + five


def test_serials_differ(builder: ProxyBuilder, kit: Kit) -> None:
    serials = {builder.sign(kit.alice.key, now=kit.now).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_explicit_serial_and_not_before(builder: ProxyBuilder, kit: Kit) -> None:
    start = kit.now - HOUR
    cert = builder.serial_number(987654321).not_before(start).sign(kit.alice.key, now=kit.now)
    assert cert.serial_number == 987654321
    assert cert.subject.rdns[-1] == x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, "987654321")]
    )
    assert cert.not_valid_before_utc == start


@pytest.mark.parametrize(
    ("configure", "pci", "kind"),
    [
        (lambda b: b, PCI_INHERIT_ALL, ProxyType.RFC_IMPERSONATION),
        (lambda b: b.impersonation(), PCI_INHERIT_ALL, ProxyType.RFC_IMPERSONATION),
        (lambda b: b.limited(), PCI_LIMITED, ProxyType.RFC_LIMITED),
        (lambda b: b.independent(), "300c300a06082b06010505071502", ProxyType.RFC_INDEPENDENT),
        (
            lambda b: b.path_length(0),
            "300f020100300a06082b06010505071501",
            ProxyType.RFC_IMPERSONATION,
        ),
        (
            lambda b: b.limited().path_length(2),
            "3012020102300d060b2b060104019b5001010109",
            ProxyType.RFC_LIMITED,
        ),
    ],
    ids=["default", "impersonation", "limited", "independent", "pathlen0", "limited-pathlen2"],
)
def test_proxy_cert_info_der(
    builder: ProxyBuilder, kit: Kit, configure, pci: str, kind: ProxyType
) -> None:  # type: ignore[no-untyped-def]
    cert = configure(builder).sign(kit.alice.key, now=kit.now)
    assert _pci_hex(cert) == pci
    assert classify(cert).type is kind


@pytest.mark.parametrize(
    ("configure", "pci", "kind", "path_length"),
    [
        (lambda b: b.draft(), PCI_INHERIT_ALL, ProxyType.DRAFT_IMPERSONATION, None),
        (lambda b: b.draft().limited(), PCI_LIMITED, ProxyType.DRAFT_LIMITED, None),
        (
            lambda b: b.draft().independent(),
            "300c300a06082b06010505071502",
            ProxyType.DRAFT_INDEPENDENT,
            None,
        ),
        # GT3 draft order: policy first, then [1] EXPLICIT INTEGER.
        (
            lambda b: b.draft().path_length(2),
            "3011300a06082b06010505071501a103020102",
            ProxyType.DRAFT_IMPERSONATION,
            2,
        ),
    ],
    ids=["draft", "draft-limited", "draft-independent", "draft-pathlen2"],
)
def test_draft_proxies(
    builder: ProxyBuilder, kit: Kit, configure, pci: str, kind: ProxyType, path_length: int | None
) -> None:  # type: ignore[no-untyped-def]
    cert = configure(builder).sign(kit.alice.key, now=kit.now)
    assert _pci_hex(cert, PCI_DRAFT_OID) == pci
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, PCI_OID)
    found = classify(cert)
    assert found.type is kind
    assert found.info is not None and found.info.draft and found.info.path_length == path_length


@pytest.mark.parametrize(
    ("configure", "cn", "kind"),
    [
        (lambda b: b.legacy(), "proxy", ProxyType.LEGACY_FULL),
        (lambda b: b.legacy().limited(), "limited proxy", ProxyType.LEGACY_LIMITED),
    ],
)
def test_legacy_proxies(
    builder: ProxyBuilder, kit: Kit, configure, cn: str, kind: ProxyType
) -> None:  # type: ignore[no-untyped-def]
    cert = configure(builder).sign(kit.alice.key, now=kit.now)
    assert cert.subject.rdns[-1] == x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    assert [e.oid for e in cert.extensions] == [x509.oid.ExtensionOID.KEY_USAGE]
    assert classify(cert).type is kind
    assert classify(cert).info is None


def test_legacy_independent_is_refused(builder: ProxyBuilder, kit: Kit) -> None:
    with pytest.raises(ProxyError, match="legacy proxies cannot be independent"):
        builder.legacy().independent().sign(kit.alice.key)


@pytest.mark.parametrize(
    ("kind", "words", "is_proxy", "is_limited"),
    [
        (ProxyType.RFC_IMPERSONATION, "RFC 3820 compliant impersonation proxy", True, False),
        (ProxyType.RFC_LIMITED, "RFC 3820 compliant limited proxy", True, True),
        (
            ProxyType.DRAFT_IMPERSONATION,
            "Proxy draft (pre-RFC) compliant impersonation proxy",
            True,
            False,
        ),
        (ProxyType.DRAFT_LIMITED, "Proxy draft (pre-RFC) compliant limited proxy", True, True),
        (ProxyType.LEGACY_FULL, "full legacy globus proxy", True, False),
        (ProxyType.LEGACY_LIMITED, "limited legacy globus proxy", True, True),
        (ProxyType.EEC, "end entity credential", False, False),
        (ProxyType.CA, "certificate authority", False, False),
    ],
)
def test_type_descriptions(kind: ProxyType, words: str, is_proxy: bool, is_limited: bool) -> None:
    assert kind.description == words  # what grid-proxy-info -type prints
    assert kind.is_proxy is is_proxy
    assert kind.is_limited is is_limited


def test_classify_eec_and_ca(kit: Kit) -> None:
    assert classify(kit.alice.cert).type is ProxyType.EEC
    assert classify(kit.aa.cert).type is ProxyType.EEC
    assert classify(kit.ca.cert).type is ProxyType.CA


@pytest.mark.parametrize(
    ("pci", "critical", "phrase"),
    [
        (PCI_INHERIT_ALL, False, "must be critical"),
        (
            "3007300506032a0304",
            True,
            "unknown proxy policy language 1.2.3.4 ",
        ),
        ("3010020101300b06092a864886f70d010101", True, "unknown proxy policy language"),
        ("3003020101", True, "not valid DER"),
        ("30", True, "not valid DER"),
        ("300f0201ff300a06082b06010505071501", True, "negative path length constraint -1"),
    ],
)
def test_classify_rejects_bad_proxy_cert_info(
    kit: Kit, pci: str, critical: bool, phrase: str
) -> None:
    cert = kit.raw_proxy(kit.alice, pci=bytes.fromhex(pci), pci_critical=critical).cert
    with pytest.raises((ProxyError, DecodeError)) as info:
        classify(cert)
    assert phrase in str(info.value)


# --- lifetimes and inherited limitation -------------------------------------------------------


def test_lifetime_is_capped_at_the_issuer(kit: Kit) -> None:
    first, chain = kit.proxy(kit.alice, builder=lambda b: b.lifetime(HOUR))
    second, _ = kit.proxy(first, chain[1:], key_index=1, builder=lambda b: b.lifetime(12 * HOUR))
    assert first.cert.not_valid_after_utc == kit.now + HOUR
    assert second.cert.not_valid_after_utc == first.cert.not_valid_after_utc


def test_lifetime_is_capped_by_the_issuer_chain(kit: Kit) -> None:
    # Raw proxies do not cap: p2 outlives p1, so only issuer_chain can cap the next one.
    p1 = kit.raw_proxy(kit.alice, not_after=kit.now + HOUR)
    p2 = kit.raw_proxy(p1, key_index=1, serial=555, not_after=kit.now + 10 * HOUR)
    p3 = (
        ProxyBuilder(p2.cert, (p1.cert, kit.alice.cert))
        .public_key(kit.keys[2])
        .sign(p2.key, now=kit.now)
    )
    assert p3.not_valid_after_utc == kit.now + HOUR


def test_lifetime_is_capped_at_the_eec(kit: Kit) -> None:
    party, _ = kit.proxy(kit.shortlived, builder=lambda b: b.lifetime(dt.timedelta(days=7)))
    assert party.cert.not_valid_after_utc == kit.shortlived.cert.not_valid_after_utc


def test_expired_issuer(builder: ProxyBuilder, kit: Kit) -> None:
    later = kit.alice.cert.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(ProxyError, match="issuer /C=XX/O=proxyd dev/OU=Users/CN=alice expired at"):
        builder.sign(kit.alice.key, now=later)


def test_future_not_before_with_short_lifetime(builder: ProxyBuilder, kit: Kit) -> None:
    try:
        cert = (
            builder.not_before(kit.now + 2 * HOUR).lifetime(HOUR).sign(kit.alice.key, now=kit.now)
        )
    except ProxyError as exc:
        assert "expired" not in str(exc), str(exc)
        return
    assert cert.not_valid_after_utc == kit.now + 3 * HOUR


@pytest.mark.parametrize(
    "configure",
    [lambda b: b.impersonation(), lambda b: b.independent(), lambda b: b],
    ids=["impersonation", "independent", "default"],
)
@pytest.mark.parametrize("style", ["rfc", "draft", "legacy"])
def test_a_proxy_of_a_limited_proxy_is_limited(kit: Kit, configure, style: str) -> None:  # type: ignore[no-untyped-def]
    styles = {"rfc": lambda b: b, "draft": lambda b: b.draft(), "legacy": lambda b: b.legacy()}
    limited, chain = kit.proxy(kit.alice, builder=lambda b: styles[style](b.limited()))
    assert classify(limited.cert).type.is_limited
    child, _ = kit.proxy(limited, chain[1:], key_index=1, builder=configure)
    assert classify(child.cert).type is ProxyType.RFC_LIMITED
    assert _pci_hex(child.cert) == PCI_LIMITED


# --- from_csr ------------------------------------------------------------------------------------


def _csr(kit: Kit) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil CA")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(PCI_OID, encode_proxy_cert_info(ProxyCertInfo(INDEPENDENT))),
            critical=True,
        )
        .sign(kit.keys[3], hashes.SHA256())
    )


def test_from_csr_takes_only_the_public_key(kit: Kit) -> None:
    csr = _csr(kit)
    cert = ProxyBuilder(kit.alice.cert).from_csr(csr).limited().sign(kit.alice.key, now=kit.now)
    assert cert.public_key() == kit.keys[3].public_key()
    assert cert.subject.rdns[:-1] == kit.alice.cert.subject.rdns
    assert cert.subject.rdns[-1] == x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, str(cert.serial_number))]
    )
    assert [e.oid for e in cert.extensions] == [x509.oid.ExtensionOID.KEY_USAGE, PCI_OID]
    assert _pci_hex(cert) == PCI_LIMITED
    assert classify(cert).type is ProxyType.RFC_LIMITED


def test_from_csr_rejects_a_bad_self_signature(kit: Kit) -> None:
    der = bytearray(_csr(kit).public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01  # inside the signature BIT STRING
    csr = x509.load_der_x509_csr(bytes(der))
    assert not csr.is_signature_valid
    with pytest.raises(ProxyError, match="self-signature does not verify"):
        ProxyBuilder(kit.alice.cert).from_csr(csr)


def test_from_csr_with_an_ec_key(kit: Kit) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    cert = ProxyBuilder(kit.alice.cert).from_csr(csr).sign(kit.alice.key, now=kit.now)
    assert cert.public_key() == key.public_key()


# --- VOMS ACs in the proxy ------------------------------------------------------------------------


def test_attribute_certificates_are_embedded(kit: Kit) -> None:
    acs = [kit.ac(fqans=["/dteam"]), kit.ac(fqans=["/ops"], vo="ops", uri="voms.localhost:15001")]
    party, _ = kit.proxy(kit.alice, acs=acs)
    ext = _ext(party.cert, VOMS_EXT_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    value = ext.value.value
    # SEQUENCE OF SEQUENCE OF AttributeCertificate with exactly one inner sequence.
    body = acs[0].der + acs[1].der
    inner = b"\x30" + _len(len(body)) + body
    assert value == b"\x30" + _len(len(inner)) + inner
    assert [a.der for a in parse_voms_extension(value)] == [a.der for a in acs]
    assert [e.oid for e in party.cert.extensions][-1] == VOMS_EXT_OID


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(size)]) + size


def test_attribute_certificates_accepts_der_bytes(kit: Kit) -> None:
    ac = kit.ac()
    by_object = ProxyBuilder(kit.alice.cert).attribute_certificates([ac])
    by_der = ProxyBuilder(kit.alice.cert).attribute_certificates([ac.der])
    assert by_object == by_der


def test_chain_property(kit: Kit) -> None:
    first, chain = kit.proxy(kit.alice)
    assert ProxyBuilder(first.cert, chain[1:]).chain == chain
    assert isinstance(ProxyBuilder(first.cert, [kit.alice.cert]).issuer_chain, tuple)


def test_limited_policy_oid(kit: Kit) -> None:
    party, _ = kit.proxy(kit.alice, builder=lambda b: b.limited())
    info = classify(party.cert).info
    assert info == ProxyCertInfo(LIMITED, None, None, False)
