"""VOMS attribute certificates (voms_ext.ac) against PROTOCOLS.md §3."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ
from pyasn1_modules import rfc5280, rfc5755

from tests.voms_ext.conftest import AA_URI, Kit, ac_extensions, set_ac_extensions
from voms_ext import (
    AttributeCertificate,
    AttributeCertificateBuilder,
    AttributeCertificateError,
    DecodeError,
    FqanError,
    GenericAttribute,
    TrustStore,
    VomsExtError,
    parse_attribute_certificate,
    parse_voms_extension,
    verify_attribute_certificate,
)
from voms_ext.der import encode_tlv

OID_GENERIC = "1.3.6.1.4.1.8005.100.100.11"
OID_AA_CERTS = "1.3.6.1.4.1.8005.100.100.10"
OID_NO_REV_AVAIL = "2.5.29.56"
OID_AKI = "2.5.29.35"
OID_TARGETS = "2.5.29.55"
SHA256_RSA_ALG = bytes.fromhex("300d06092a864886f70d01010b0500")  # with NULL parameters
HOUR = dt.timedelta(hours=1)
SKEW = dt.timedelta(seconds=300)


def _seq(*parts: bytes) -> bytes:
    return encode_tlv(0x30, b"".join(parts))


def _uri_target(uri: str) -> bytes:
    return encode_tlv(0xA0, encode_tlv(0x86, uri.encode()))


@pytest.fixture(scope="module")
def full_ac(kit: Kit) -> AttributeCertificate:
    return (
        kit.ac_builder(
            fqans=["/dteam", "/dteam/analysis", "/dteam/Role=production"],
            not_before=kit.now.replace(microsecond=123456) - HOUR,
            not_after=kit.now.replace(microsecond=999999) + 12 * HOUR,
        )
        .generic_attribute("nickname", "alice")
        .generic_attribute("größe", "value with spaces", "qualifier/x")
        .target("https://wms.localhost:7443")
        .target("wms2.localhost")
        .serial_number(2**159 - 1)
        .sign(kit.aa.cert, kit.aa.key)
    )


@pytest.fixture(scope="module")
def plain_ac(kit: Kit) -> AttributeCertificate:
    return kit.ac()


# --- building and parsing ---------------------------------------------------------------------


def test_round_trip_of_every_field(kit: Kit, full_ac: AttributeCertificate) -> None:
    ac = parse_attribute_certificate(full_ac.der)
    assert ac == full_ac
    assert ac.vo == "dteam"
    assert ac.uri == AA_URI
    assert (ac.host, ac.port) == ("voms.localhost", 15000)
    assert ac.fqans == (
        "/dteam/Role=NULL/Capability=NULL",
        "/dteam/analysis/Role=NULL/Capability=NULL",
        "/dteam/Role=production/Capability=NULL",
    )
    assert ac.generic_attributes == (
        GenericAttribute("nickname", "alice", ""),
        GenericAttribute("größe", "value with spaces", "qualifier/x"),
    )
    assert ac.targets == ("https://wms.localhost:7443", "wms2.localhost")
    assert ac.holder_issuer == kit.alice.cert.issuer
    assert ac.holder_serial == kit.alice.cert.serial_number
    assert ac.issuer == kit.aa.cert.subject
    assert ac.serial_number == 2**159 - 1
    assert ac.not_before == kit.now - HOUR  # to the second: fractions are dropped
    assert ac.not_after == kit.now + 12 * HOUR
    assert ac.aa_chain == (kit.aa.cert,)
    assert ac.signature_algorithm == "1.2.840.113549.1.1.11"
    assert ac.describe() == f"VOMS AC for VO dteam from {AA_URI} (serial {2**159 - 1})"


def test_legacy_holder_names_the_eec_subject(kit: Kit) -> None:
    ac = kit.ac_builder().holder(kit.alice.cert, legacy=True).sign(kit.aa.cert, kit.aa.key)
    assert ac.holder_issuer == kit.alice.cert.subject
    assert ac.holder_serial == kit.alice.cert.serial_number
    assert verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now) == kit.aa.cert


def test_default_serial_is_random_and_positive(kit: Kit) -> None:
    serials = {kit.ac().serial_number for _ in range(3)}
    assert len(serials) == 3
    assert all(0 < s < 2**160 for s in serials)


def test_der_is_strict_and_version_is_v2(full_ac: AttributeCertificate) -> None:
    decoded, rest = der_decoder.decode(full_ac.der, asn1Spec=rfc5755.AttributeCertificate())
    assert rest == b""
    assert der_encoder.encode(decoded) == full_ac.der
    info = decoded["acinfo"]
    assert int(info["version"]) == 1
    assert info["holder"]["baseCertificateID"].isValue
    assert not info["holder"]["entityName"].isValue
    assert info["issuer"].getName() == "v2Form"
    assert len(info["issuer"]["v2Form"]["issuerName"]) == 1
    validity = info["attrCertValidityPeriod"]
    assert str(validity["notBeforeTime"]).endswith("Z") and "." not in str(
        validity["notBeforeTime"]
    )
    [attribute] = info["attributes"]
    assert str(attribute["type"]) == "1.3.6.1.4.1.8005.100.100.4"
    ietf, _ = der_decoder.decode(bytes(attribute["values"][0]), asn1Spec=rfc5755.IetfAttrSyntax())
    assert str(ietf["policyAuthority"][0]["uniformResourceIdentifier"]) == f"dteam://{AA_URI}"
    assert [bytes(v["octets"]) for v in ietf["values"]] == [
        b"/dteam/Role=NULL/Capability=NULL",
        b"/dteam/analysis/Role=NULL/Capability=NULL",
        b"/dteam/Role=production/Capability=NULL",
    ]


def test_signature_algorithm_inside_equals_outside(full_ac: AttributeCertificate) -> None:
    decoded, _ = der_decoder.decode(full_ac.der, asn1Spec=rfc5755.AttributeCertificate())
    assert der_encoder.encode(decoded["signatureAlgorithm"]) == SHA256_RSA_ALG
    assert der_encoder.encode(decoded["acinfo"]["signature"]) == SHA256_RSA_ALG


@pytest.mark.parametrize(
    ("generic", "targets", "expected"),
    [
        (False, False, [(OID_AA_CERTS, False), (OID_NO_REV_AVAIL, False), (OID_AKI, False)]),
        (
            True,
            False,
            [
                (OID_GENERIC, False),
                (OID_AA_CERTS, False),
                (OID_NO_REV_AVAIL, False),
                (OID_AKI, False),
            ],
        ),
        (
            False,
            True,
            [
                (OID_AA_CERTS, False),
                (OID_NO_REV_AVAIL, False),
                (OID_AKI, False),
                (OID_TARGETS, True),
            ],
        ),
        (
            True,
            True,
            [
                (OID_GENERIC, False),
                (OID_AA_CERTS, False),
                (OID_NO_REV_AVAIL, False),
                (OID_AKI, False),
                (OID_TARGETS, True),
            ],
        ),
    ],
)
def test_extension_order(
    kit: Kit, generic: bool, targets: bool, expected: list[tuple[str, bool]]
) -> None:
    builder = kit.ac_builder()
    if generic:
        builder = builder.generic_attribute("a", "b")
    if targets:
        builder = builder.target("wms.localhost")
    ac = builder.sign(kit.aa.cert, kit.aa.key)
    assert list(ac.extensions) == expected
    assert [(o, c) for o, c, _ in ac_extensions(ac.der)] == expected


def test_extension_values(kit: Kit, full_ac: AttributeCertificate) -> None:
    values = {oid: value for oid, _, value in ac_extensions(full_ac.der)}
    assert values[OID_NO_REV_AVAIL] == b"\x05\x00"
    aa_der = kit.aa.cert.public_bytes(serialization.Encoding.DER)
    assert values[OID_AA_CERTS] == _seq(_seq(aa_der))
    # VOMS form: an extra SEQUENCE around each target.
    assert values[OID_TARGETS] == _seq(
        _seq(_seq(_uri_target("https://wms.localhost:7443")), _seq(_uri_target("wms2.localhost")))
    )


def test_aki_is_sha1_of_the_aa_public_key_bits(kit: Kit, full_ac: AttributeCertificate) -> None:
    spki_der = kit.aa.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki, _ = der_decoder.decode(spki_der, asn1Spec=rfc5280.SubjectPublicKeyInfo())
    expected = hashlib.sha1(spki["subjectPublicKey"].asOctets()).digest()  # noqa: S324
    value = {oid: v for oid, _, v in ac_extensions(full_ac.der)}[OID_AKI]
    aki, rest = der_decoder.decode(value, asn1Spec=rfc5280.AuthorityKeyIdentifier())
    assert rest == b""
    assert bytes(aki["keyIdentifier"]) == expected
    assert not aki["authorityCertIssuer"].isValue
    assert not aki["authorityCertSerialNumber"].isValue


# --- builder validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "phrase"),
    [
        (lambda b, k: b.vo("d team"), ValueError, "vo must be a VO name"),
        (lambda b, k: b.vo(""), ValueError, "vo must be a VO name"),
        (lambda b, k: b.uri("voms.localhost"), ValueError, "uri must be HOST:PORT"),
        (lambda b, k: b.uri("dteam://voms.localhost:15000"), ValueError, "uri must be HOST:PORT"),
        (lambda b, k: b.fqans([]), ValueError, "fqans must not be empty"),
        (lambda b, k: b.fqans(["/dteam", "/dteam/Role=NULL"]), ValueError, "duplicates"),
        (lambda b, k: b.fqans(["dteam"]), FqanError, "must start with '/'"),
        (lambda b, k: b.holder(b"pem"), TypeError, "holder must be the end-entity"),
        (
            lambda b, k: b.validity(dt.datetime(2030, 1, 1), dt.datetime(2030, 1, 2)),
            ValueError,
            "timezone-aware",
        ),
        (lambda b, k: b.validity(k.now, k.now), ValueError, "not_after must be later"),
        (lambda b, k: b.target(""), ValueError, "target must be a non-empty URI"),
        (lambda b, k: b.serial_number(0), ValueError, "serial_number must be a positive int"),
        (lambda b, k: b.serial_number(2**159), ValueError, "serial_number"),
    ],
)
def test_builder_rejects_bad_arguments(kit: Kit, call, exc, phrase) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as info:
        call(AttributeCertificateBuilder(), kit)
    assert phrase in str(info.value)


def test_validity_wrong_type() -> None:
    with pytest.raises(TypeError):
        AttributeCertificateBuilder().validity("2030-01-01", "2030-01-02")  # type: ignore[arg-type]


def test_builder_is_immutable(kit: Kit) -> None:
    base = kit.ac_builder()
    snapshot = dataclasses.replace(base)
    for new in (
        base.vo("ops"),
        base.uri("h:1"),
        base.fqans(["/ops"]),
        base.generic_attribute("a", "b"),
        base.holder(kit.bob.cert),
        base.validity(kit.now, kit.now + HOUR),
        base.target("x"),
        base.serial_number(5),
    ):
        assert new is not base
        assert new != base
    assert base == snapshot


@pytest.mark.parametrize(
    ("builder", "phrase"),
    [
        (lambda k: AttributeCertificateBuilder(), "set vo, uri, holder, validity before sign()"),
        (lambda k: AttributeCertificateBuilder().vo("dteam").uri(AA_URI), "set holder, validity"),
        (
            lambda k: k.ac_builder().vo("ops"),
            "FQAN /dteam/Role=NULL/Capability=NULL does not belong to VO ops",
        ),
    ],
)
def test_sign_checks_completeness(kit: Kit, builder, phrase: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AttributeCertificateError) as info:
        builder(kit).sign(kit.aa.cert, kit.aa.key)
    assert phrase in str(info.value)


def test_sign_needs_an_rsa_key(kit: Kit) -> None:
    with pytest.raises(TypeError, match="RSA"):
        kit.ac_builder().sign(kit.aa.cert, ec.generate_private_key(ec.SECP256R1()))


# --- verification -----------------------------------------------------------------------------------


def test_verify_success_through_the_lsc(kit: Kit, full_ac: AttributeCertificate) -> None:
    assert (kit.pki.voms_dir / "dteam" / "voms.localhost.lsc").is_file()
    assert verify_attribute_certificate(full_ac, kit.alice.cert, kit.trust, kit.now) == kit.aa.cert


def test_verify_uses_now_by_default(kit: Kit, plain_ac: AttributeCertificate) -> None:
    assert verify_attribute_certificate(plain_ac, kit.alice.cert, kit.trust) == kit.aa.cert


def test_wrong_holder(kit: Kit, plain_ac: AttributeCertificate) -> None:
    with pytest.raises(AttributeCertificateError) as info:
        verify_attribute_certificate(plain_ac, kit.bob.cert, kit.trust, kit.now)
    message = str(info.value)
    assert "granted to a different certificate" in message
    assert "/C=XX/O=proxyd dev/OU=Users/CN=bob" in message


def test_same_serial_other_issuer_is_a_wrong_holder(kit: Kit) -> None:
    other_ca = kit.self_signed_ca("/C=XX/O=elsewhere/CN=other CA", 4)
    ac = kit.ac()
    # An EEC with alice's serial from another CA.
    twin = (
        x509.CertificateBuilder()
        .subject_name(kit.alice.cert.subject)
        .issuer_name(other_ca.cert.subject)
        .public_key(kit.keys[0].public_key())
        .serial_number(kit.alice.cert.serial_number)
        .not_valid_before(kit.now - HOUR)
        .not_valid_after(kit.now + HOUR)
        .sign(other_ca.key, kit.alice.cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    with pytest.raises(AttributeCertificateError, match="granted to a different certificate"):
        verify_attribute_certificate(ac, twin, kit.trust, kit.now)


@pytest.mark.parametrize(
    ("offset", "phrase"),
    [
        (lambda ac: ac.not_after + SKEW - dt.timedelta(seconds=1), None),
        (lambda ac: ac.not_after + SKEW, None),
        (lambda ac: ac.not_after + SKEW + dt.timedelta(seconds=1), "not valid anymore (expired"),
        (lambda ac: ac.not_after + dt.timedelta(days=1), "not valid anymore"),
        (lambda ac: ac.not_before - SKEW + dt.timedelta(seconds=1), None),
        (lambda ac: ac.not_before - SKEW, None),
        (lambda ac: ac.not_before - SKEW - dt.timedelta(seconds=1), "not yet valid (starts"),
    ],
    ids=[
        "expired-within-skew",
        "expired-at-skew",
        "expired-beyond-skew",
        "expired-a-day",
        "early-within-skew",
        "early-at-skew",
        "early-beyond-skew",
    ],
)
def test_validity_with_clock_skew(
    kit: Kit, plain_ac: AttributeCertificate, offset, phrase: str | None
) -> None:  # type: ignore[no-untyped-def]
    at = offset(plain_ac)
    if phrase is None:
        assert verify_attribute_certificate(plain_ac, kit.alice.cert, kit.trust, at) == kit.aa.cert
    else:
        with pytest.raises(AttributeCertificateError) as info:
            verify_attribute_certificate(plain_ac, kit.alice.cert, kit.trust, at)
        assert phrase in str(info.value)


def _extensions_of(info: univ.Sequence) -> list[tuple[str, bool, bytes]]:
    return [
        (str(e["extnID"]), bool(e["critical"]), bytes(e["extnValue"])) for e in info["extensions"]
    ]


def _without(oid: str):  # type: ignore[no-untyped-def]
    def mutate(info: univ.Sequence) -> None:
        kept = [(o, c, v) for o, c, v in _extensions_of(info) if o != oid]
        set_ac_extensions(kept)(info)

    return mutate


def _plus(oid: str, critical: bool, value: bytes = b"\x05\x00"):  # type: ignore[no-untyped-def]
    def mutate(info: univ.Sequence) -> None:
        set_ac_extensions([*_extensions_of(info), (oid, critical, value)])(info)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "phrase"),
    [
        (_plus("1.2.3.4", True), "unknown critical extension 1.2.3.4"),
        (
            _without(OID_NO_REV_AVAIL),
            "required extensions missing (noRevAvail and authorityKeyIdentifier)",
        ),
        (_without(OID_AKI), "required extensions missing"),
    ],
    ids=["unknown-critical", "no-noRevAvail", "no-AKI"],
)
def test_extension_failures(kit: Kit, mutate, phrase: str) -> None:  # type: ignore[no-untyped-def]
    ac = parse_attribute_certificate(kit.resign_ac(kit.ac(), mutate))
    with pytest.raises(AttributeCertificateError) as info:
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)
    assert phrase in str(info.value)


def test_unknown_non_critical_extension_and_critical_targets_are_accepted(kit: Kit) -> None:
    ac = parse_attribute_certificate(
        kit.resign_ac(
            kit.ac_builder().target("x").sign(kit.aa.cert, kit.aa.key), _plus("1.2.3.4", False)
        )
    )
    assert ac.extensions[-1] == ("1.2.3.4", False)
    assert (OID_TARGETS, True) in ac.extensions
    assert verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now) == kit.aa.cert


def test_resigned_unchanged_ac_still_verifies(kit: Kit) -> None:
    """The surgery helper itself is sound: a no-op mutation verifies."""
    ac = parse_attribute_certificate(kit.resign_ac(kit.ac(), lambda info: None))
    assert verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now) == kit.aa.cert


def test_tampered_fqan_fails_the_signature(kit: Kit) -> None:
    der = kit.ac(fqans=["/dteam/Role=production"]).der
    tampered = der.replace(b"/dteam/Role=production", b"/dteam/Role=productioX")
    ac = parse_attribute_certificate(tampered)
    with pytest.raises(AttributeCertificateError) as info:
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)
    assert (
        "signature does not verify with AA certificate /C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
        in str(info.value)
    )


def test_signed_by_another_key(kit: Kit) -> None:
    ac = parse_attribute_certificate(kit.resign_ac(kit.ac(), lambda info: None, key=kit.keys[2]))
    with pytest.raises(AttributeCertificateError, match="signature does not verify"):
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)


def _vomsdir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    root = tmp_path / "vomsdir"
    (root / "dteam").mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_aa_unknown_without_lsc_or_certificate(
    kit: Kit, plain_ac: AttributeCertificate, tmp_path: Path
) -> None:
    trust = TrustStore.from_dirs(kit.pki.cert_dir, _vomsdir(tmp_path, {}))
    with pytest.raises(AttributeCertificateError) as info:
        verify_attribute_certificate(plain_ac, kit.alice.cert, trust, kit.now)
    message = str(info.value)
    assert "cannot verify the AC signature" in message
    assert "AA /C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost is not trusted" in message
    assert "dteam/voms.localhost.lsc" in message


def test_no_vomsdir_at_all(kit: Kit, plain_ac: AttributeCertificate) -> None:
    trust = TrustStore.from_dirs(kit.pki.cert_dir)
    with pytest.raises(AttributeCertificateError, match=r"no VOMS directory \(X509_VOMS_DIR\)"):
        verify_attribute_certificate(plain_ac, kit.alice.cert, trust, kit.now)


@pytest.mark.parametrize("where", ["dteam/aa.pem", "aa.pem"], ids=["vo-dir", "vomsdir-root"])
def test_aa_certificate_in_vomsdir_without_lsc(
    kit: Kit, plain_ac: AttributeCertificate, tmp_path: Path, where: str
) -> None:
    trust = TrustStore.from_dirs(kit.pki.cert_dir, _vomsdir(tmp_path, {where: _pem(kit.aa.cert)}))
    assert trust.lsc == {}
    assert verify_attribute_certificate(plain_ac, kit.alice.cert, trust, kit.now) == kit.aa.cert


def test_other_certificate_in_vomsdir_is_not_the_aa(
    kit: Kit, plain_ac: AttributeCertificate, tmp_path: Path
) -> None:
    trust = TrustStore.from_dirs(
        kit.pki.cert_dir, _vomsdir(tmp_path, {"dteam/x.pem": _pem(kit.bob.cert)})
    )
    with pytest.raises(AttributeCertificateError, match="is not trusted"):
        verify_attribute_certificate(plain_ac, kit.alice.cert, trust, kit.now)


AA_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
CA_DN = "/C=XX/O=proxyd dev/CN=proxyd dev CA"


@pytest.mark.parametrize(
    ("lsc", "ok"),
    [
        (f"{AA_DN}\n{CA_DN}\n", True),
        (f"# comment\n\n  {AA_DN}  \n{CA_DN}\n", True),
        (f"/CN=other\n{CA_DN}\n------ NEXT CHAIN ------\n{AA_DN}\n{CA_DN}\n", True),
        (f"/C=XX/O=proxyd dev/OU=Hosts/CN=other.localhost\n{CA_DN}\n", False),
        (f"{AA_DN}\n/C=XX/O=other/CN=CA\n", False),
        (f"{AA_DN}\n", False),
        (f"{AA_DN}\n{CA_DN}\n{CA_DN}\n", False),
    ],
    ids=[
        "exact",
        "comments-and-blanks",
        "second-alternative",
        "other-subject",
        "other-issuer",
        "short",
        "long",
    ],
)
def test_lsc_matching(
    kit: Kit, plain_ac: AttributeCertificate, tmp_path: Path, lsc: str, ok: bool
) -> None:
    # The AA certificate is also there: a mismatching .lsc must still win.
    vomsdir = _vomsdir(
        tmp_path, {"dteam/voms.localhost.lsc": lsc.encode(), "dteam/aa.pem": _pem(kit.aa.cert)}
    )
    trust = TrustStore.from_dirs(kit.pki.cert_dir, vomsdir)
    if ok:
        assert verify_attribute_certificate(plain_ac, kit.alice.cert, trust, kit.now) == kit.aa.cert
    else:
        with pytest.raises(AttributeCertificateError) as info:
            verify_attribute_certificate(plain_ac, kit.alice.cert, trust, kit.now)
        assert "does not match" in str(info.value)
        assert "voms.localhost.lsc" in str(info.value)


def test_lsc_needs_the_aa_chain_extension(kit: Kit) -> None:
    ac = parse_attribute_certificate(kit.resign_ac(kit.ac(), _without(OID_AA_CERTS)))
    assert ac.aa_chain == ()
    with pytest.raises(AttributeCertificateError, match="carries no AA certificate chain"):
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)


def test_lsc_chain_must_reach_a_trusted_ca(kit: Kit, tmp_path: Path) -> None:
    """An AA certificate with the right names, self-signed: the .lsc names match, the CA does not."""
    forged_name = kit.aa.cert.subject
    forged = (
        x509.CertificateBuilder()
        .subject_name(forged_name)
        .issuer_name(kit.ca.cert.subject)
        .public_key(kit.keys[1].public_key())
        .serial_number(7)
        .not_valid_before(kit.now - HOUR)
        .not_valid_after(kit.now + HOUR)
        .sign(kit.keys[1], kit.aa.cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    ac = kit.ac_builder().sign(forged, kit.keys[1])
    with pytest.raises(AttributeCertificateError) as info:
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)
    assert "AA not trusted" in str(info.value)


# --- targets ------------------------------------------------------------------------------------------


def _with_targets(value: bytes):  # type: ignore[no-untyped-def]
    def mutate(info: univ.Sequence) -> None:
        set_ac_extensions([*_extensions_of(info), (OID_TARGETS, True, value)])(info)

    return mutate


@pytest.mark.parametrize(
    ("value", "targets"),
    [
        (
            _seq(_seq(_seq(_uri_target("a.example")), _seq(_uri_target("b.example")))),
            ("a.example", "b.example"),
        ),
        (
            _seq(_seq(_uri_target("a.example"), _uri_target("b.example"))),
            ("a.example", "b.example"),
        ),
        (bytes.fromhex("30023000"), ()),
    ],
    ids=["voms-form", "rfc5755-form", "empty-list"],
)
def test_target_information_forms(kit: Kit, value: bytes, targets: tuple[str, ...]) -> None:
    ac = parse_attribute_certificate(kit.resign_ac(kit.ac(), _with_targets(value)))
    assert ac.targets == targets
    assert verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now) == kit.aa.cert


@pytest.mark.parametrize(
    "value",
    [bytes.fromhex("3000") + b"\x00", bytes.fromhex("0400"), _seq(_seq(encode_tlv(0x04, b"x")))],
    ids=["trailing", "not-a-sequence", "octet-string-inside"],
)
def test_bad_target_information(kit: Kit, value: bytes) -> None:
    with pytest.raises((AttributeCertificateError, DecodeError)):
        parse_attribute_certificate(kit.resign_ac(kit.ac(), _with_targets(value)))


# --- parse errors ----------------------------------------------------------------------------------------


def _set_version(info: univ.Sequence) -> None:
    info["version"] = 0


def _authority(uri: str):  # type: ignore[no-untyped-def]
    def mutate(info: univ.Sequence) -> None:
        ietf = rfc5755.IetfAttrSyntax()
        gn = rfc5280.GeneralName()
        gn["uniformResourceIdentifier"] = uri
        ietf["policyAuthority"].append(gn)
        choice = ietf["values"].componentType.clone()
        choice["octets"] = b"/dteam/Role=NULL/Capability=NULL"
        ietf["values"].append(choice)
        info["attributes"][0]["values"][0] = univ.Any(der_encoder.encode(ietf))

    return mutate


def _fqan_value(text: bytes):  # type: ignore[no-untyped-def]
    def mutate(info: univ.Sequence) -> None:
        ietf, _ = der_decoder.decode(
            bytes(info["attributes"][0]["values"][0]), asn1Spec=rfc5755.IetfAttrSyntax()
        )
        ietf["values"][0]["octets"] = text
        info["attributes"][0]["values"][0] = univ.Any(der_encoder.encode(ietf))

    return mutate


def _entity_name_holder(info: univ.Sequence) -> None:
    holder = info["holder"].clone()
    gn = rfc5280.GeneralName()
    gn["uniformResourceIdentifier"] = "x"
    holder["entityName"].append(gn)
    info["holder"] = holder


@pytest.mark.parametrize(
    ("mutate", "phrase"),
    [
        (_set_version, "version must be v2 (1), got 0"),
        (_authority("dteam://voms.localhost"), "is not vo://host:port"),
        (_authority("voms.localhost:15000"), "is not vo://host:port"),
        (_fqan_value(b"/ops"), "belongs to another VO"),
        (_fqan_value(b"dteam"), "must start with '/'"),
        (_entity_name_holder, "holder has no baseCertificateID"),
    ],
    ids=[
        "version",
        "authority-without-port",
        "authority-without-vo",
        "other-vo",
        "bad-fqan",
        "entity-name",
    ],
)
def test_parse_rejects(kit: Kit, mutate, phrase: str) -> None:  # type: ignore[no-untyped-def]
    der = kit.resign_ac(kit.ac(), mutate)
    with pytest.raises(AttributeCertificateError) as info:
        parse_attribute_certificate(der)
    assert phrase in str(info.value)


def test_parse_rejects_outer_inner_algorithm_mismatch(plain_ac: AttributeCertificate) -> None:
    sha384 = bytes.fromhex("300d06092a864886f70d01010c0500")
    head, _, tail = plain_ac.der.rpartition(SHA256_RSA_ALG)  # the outer one is last
    with pytest.raises(AttributeCertificateError, match="differs from the one inside"):
        parse_attribute_certificate(head + sha384 + tail)


@pytest.mark.parametrize("data", [b"", b"\x30\x00", b"\x04\x00", b"not der"])
def test_parse_rejects_junk(data: bytes) -> None:
    with pytest.raises(VomsExtError):
        parse_attribute_certificate(data)


def test_parse_rejects_trailing_bytes(plain_ac: AttributeCertificate) -> None:
    with pytest.raises(DecodeError, match="trailing bytes"):
        parse_attribute_certificate(plain_ac.der + b"\x00")


def test_parse_needs_bytes() -> None:
    with pytest.raises(TypeError):
        parse_attribute_certificate("30 00")  # type: ignore[arg-type]


# --- the proxy extension -----------------------------------------------------------------------------------


def test_voms_extension_one_inner_sequence(kit: Kit) -> None:
    a, b = kit.ac(), kit.ac(fqans=["/dteam/Role=production"])
    assert [x.der for x in parse_voms_extension(_seq(_seq(a.der, b.der)))] == [a.der, b.der]


@pytest.mark.parametrize(
    ("shape", "exc", "phrase"),
    [
        (
            "two-inner",
            AttributeCertificateError,
            "exactly one SEQUENCE OF AttributeCertificate (found 2 inner elements)",
        ),
        ("empty-inner", AttributeCertificateError, "holds no attribute certificate"),
        ("no-inner", AttributeCertificateError, "(found 0 inner elements)"),
        ("trailing", AttributeCertificateError, "is not one SEQUENCE"),
        ("not-sequence", AttributeCertificateError, "is not one SEQUENCE"),
    ],
)
def test_voms_extension_shapes(
    plain_ac: AttributeCertificate, shape: str, exc: type[Exception], phrase: str
) -> None:
    der = plain_ac.der
    value = {
        "two-inner": _seq(_seq(der), _seq(der)),
        "empty-inner": _seq(_seq()),
        "no-inner": _seq(),
        "trailing": _seq(_seq(der)) + b"\x00",
        "not-sequence": encode_tlv(0x31, _seq(der)),
    }[shape]
    with pytest.raises(exc) as info:
        parse_voms_extension(value)
    assert phrase in str(info.value)


@pytest.mark.parametrize("count", [1, 2])
def test_voms_extension_one_level_only_is_rejected(kit: Kit, count: int) -> None:
    """SEQUENCE OF AttributeCertificate without the outer list (libvomsapi rejects it)."""
    acs = [kit.ac().der for _ in range(count)]
    with pytest.raises(VomsExtError) as info:
        parse_voms_extension(_seq(*acs))
    assert isinstance(info.value, AttributeCertificateError | DecodeError)


def test_vomsdir_copy_is_independent(kit: Kit, tmp_path: Path) -> None:
    """A copied vomsdir behaves like the original (used by the validate tests)."""
    copy = tmp_path / "v"
    shutil.copytree(kit.pki.voms_dir, copy)
    trust = TrustStore.from_dirs(kit.pki.cert_dir, copy)
    assert trust.lsc == kit.trust.lsc
    assert set(trust.lsc) == {("dteam", "voms.localhost"), ("ops", "voms.localhost")}


def test_unreadable_aa_chain_certificate_is_an_ac_error(kit: Kit) -> None:
    aa_der = kit.aa.cert.public_bytes(serialization.Encoding.DER)
    needle = b"\x0c\x0dproxyd dev CA"  # the AA certificate's issuer name
    assert aa_der.count(needle) == 1
    broken = aa_der.replace(needle, b"\x0c\x0dproxyd d\xffv CA")
    ac = parse_attribute_certificate(kit.ac().der.replace(aa_der, broken))
    with pytest.raises(AttributeCertificateError):
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)
