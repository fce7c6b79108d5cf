"""RFC 3820 path validation with VOMS ACs (voms_ext.validate_chain)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.voms_ext.conftest import AA_URI, LIMITED, VOMS_EXT_OID, Kit, Party
from voms_ext import (
    AttributeCertificateError,
    ChainError,
    ProxyBuilder,
    ProxyError,
    ProxyType,
    TrustStore,
    VomsExtError,
    classify,
    dn_to_slash,
    subject_hash,
    validate_chain,
)
from voms_ext.proxy import ProxyCertInfo, encode_proxy_cert_info

HOUR = dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)
ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
CA = "/C=XX/O=proxyd dev/CN=proxyd dev CA"


def _cn(value: str) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, value)])


# --- chains that validate -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_chains_of_depth(kit: Kit, depth: int) -> None:
    lifetimes = [12, 6, 9, 1][:depth]  # hours; each proxy is capped by the one above
    party, chain = kit.alice, (kit.alice.cert,)
    for level, hours in enumerate(lifetimes):
        party, chain = kit.proxy(
            party, chain[1:], key_index=level, builder=lambda b, h=hours: b.lifetime(h * HOUR)
        )
    result = validate_chain(chain, kit.trust, kit.now)
    assert result.identity == ALICE
    assert result.issuer == CA
    assert result.proxy_type is ProxyType.RFC_IMPERSONATION
    assert not result.is_limited
    assert result.proxy_depth == depth
    assert result.chain == chain
    assert result.end_entity == kit.alice.cert
    assert result.ca_path == (kit.ca.cert,)
    assert result.not_after == kit.now + min(lifetimes) * HOUR
    assert result.voms == ()
    assert result.fqans == ()
    assert result.time_left(kit.now) == min(lifetimes) * HOUR
    assert result.time_left(kit.now + 2 * 365 * 24 * HOUR) == dt.timedelta(0)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("limited_at", [0, 1, 2, 3])
def test_limited_anywhere_makes_the_rest_limited(kit: Kit, depth: int, limited_at: int) -> None:
    party, chain = kit.alice, (kit.alice.cert,)
    for level in range(depth):
        party, chain = kit.proxy(
            party,
            chain[1:],
            key_index=level,
            builder=(lambda b: b.limited()) if level == limited_at else (lambda b: b),
        )
    result = validate_chain(chain, kit.trust, kit.now)
    limited = limited_at < depth
    assert result.is_limited is limited
    assert result.proxy_type is (ProxyType.RFC_LIMITED if limited else ProxyType.RFC_IMPERSONATION)
    assert result.identity == ALICE


@pytest.mark.parametrize(
    ("configure", "kind"),
    [
        (lambda b: b.draft(), ProxyType.DRAFT_IMPERSONATION),
        (lambda b: b.draft().limited(), ProxyType.DRAFT_LIMITED),
        (lambda b: b.legacy(), ProxyType.LEGACY_FULL),
        (lambda b: b.legacy().limited(), ProxyType.LEGACY_LIMITED),
    ],
)
@pytest.mark.parametrize("depth", [1, 2])
def test_older_forms_validate(kit: Kit, configure, kind: ProxyType, depth: int) -> None:  # type: ignore[no-untyped-def]
    _, chain = kit.proxy_chain(depth, builder=configure)
    result = validate_chain(chain, kit.trust, kit.now)
    assert result.proxy_type is kind
    assert result.is_limited is kind.is_limited
    assert result.identity == ALICE


@pytest.mark.parametrize(
    ("policies", "speaker"),
    [
        (["independent"], 0),
        (["independent", "independent"], 0),
        (["independent", "impersonation"], 1),
    ],
    ids=["one", "two", "independent-then-impersonation"],
)
def test_independent_proxy_speaks_for_itself(kit: Kit, policies: list[str], speaker: int) -> None:
    """ValidationResult: below an independent proxy, the identity is that proxy's subject."""
    party, chain = kit.alice, (kit.alice.cert,)
    for level, policy in enumerate(policies):
        party, chain = kit.proxy(
            party, chain[1:], key_index=level, builder=lambda b, p=policy: getattr(b, p)()
        )
    result = validate_chain(chain, kit.trust, kit.now)
    assert result.proxy_type is ProxyType(f"rfc3820-{policies[-1]}")
    assert result.identity == dn_to_slash(chain[speaker].subject)
    assert result.issuer == CA
    assert result.end_entity == kit.alice.cert


def test_eec_alone_validates(kit: Kit) -> None:
    result = validate_chain([kit.alice.cert], kit.trust, kit.now)
    assert result.proxy_type is ProxyType.EEC
    assert result.proxy_depth == 0
    assert result.not_after == kit.alice.cert.not_valid_after_utc


def test_path_length_allows_exactly_that_many(kit: Kit) -> None:
    _, ok = kit.proxy_chain(2, builder=lambda b: b.path_length(1))
    assert validate_chain(ok, kit.trust, kit.now).proxy_depth == 2


# --- VOMS -------------------------------------------------------------------------------------------------


def test_voms_attributes_of_the_leaf(kit: Kit) -> None:
    dteam = (
        kit.ac_builder(fqans=["/dteam/Role=production", "/dteam"])
        .generic_attribute("n", "v", "q")
        .target("wms.localhost")
        .serial_number(77)
        .sign(kit.aa.cert, kit.aa.key)
    )
    ops = kit.ac(fqans=["/ops"], vo="ops", uri="voms.localhost:15001")
    _, chain = kit.proxy_chain(1, acs=[dteam, ops], builder=lambda b: b.limited())
    result = validate_chain(chain, kit.trust, kit.now)
    assert [v.vo for v in result.voms] == ["dteam", "ops"]
    first = result.voms[0]
    assert first.uri == AA_URI
    assert first.fqans == (
        "/dteam/Role=production/Capability=NULL",
        "/dteam/Role=NULL/Capability=NULL",
    )
    assert first.primary_fqan == "/dteam/Role=production/Capability=NULL"
    assert [(g.name, g.value, g.qualifier) for g in first.generic_attributes] == [("n", "v", "q")]
    assert first.issuer == "/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
    assert first.serial_number == 77
    assert first.targets == ("wms.localhost",)
    assert (first.not_before, first.not_after) == (dteam.not_before, dteam.not_after)
    assert first.ac == dteam
    assert result.fqans == (*first.fqans, "/ops/Role=NULL/Capability=NULL")


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_acs_found_on_an_intermediate_proxy(kit: Kit, depth: int) -> None:
    ac = kit.ac(fqans=["/dteam/analysis"])
    _, chain = kit.proxy_chain(depth, acs=[ac])
    assert all(VOMS_EXT_OID not in [e.oid for e in cert.extensions] for cert in chain[: depth - 1])
    result = validate_chain(chain, kit.trust, kit.now)
    assert result.fqans == ("/dteam/analysis/Role=NULL/Capability=NULL",)


def test_the_leafs_acs_win_over_an_intermediate(kit: Kit) -> None:
    upper, chain = kit.proxy(kit.alice, acs=[kit.ac(fqans=["/dteam"])])
    _, chain = kit.proxy(
        upper, chain[1:], key_index=1, acs=[kit.ac(fqans=["/dteam/Role=production"])]
    )
    assert validate_chain(chain, kit.trust, kit.now).fqans == (
        "/dteam/Role=production/Capability=NULL",
    )


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda k: k.ac(k.bob), "granted to a different certificate"),
        (lambda k: k.ac(not_after=k.now - HOUR, not_before=k.now - 2 * HOUR), "not valid anymore"),
        (
            lambda k: k.resign_ac(k.ac(), lambda info: None, key=k.keys[3]),
            "signature does not verify",
        ),
    ],
    ids=["wrong-holder", "expired", "bad-signature"],
)
def test_a_failing_ac_fails_the_chain_unless_voms_is_off(kit: Kit, make, phrase: str) -> None:  # type: ignore[no-untyped-def]
    ac = make(kit)
    _, chain = kit.proxy_chain(2, acs=[ac])
    with pytest.raises(AttributeCertificateError) as info:
        validate_chain(chain, kit.trust, kit.now)
    assert phrase in str(info.value)
    result = validate_chain(chain, kit.trust, kit.now, check_voms=False)
    assert result.voms == ()
    assert result.identity == ALICE


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (b"\x30\x00", "must hold exactly one SEQUENCE OF AttributeCertificate"),
        (b"\x01", "DER truncated"),
        (b"\x30\x04\x30\x02\x30\x00", "not valid DER"),
    ],
)
def test_malformed_voms_extension_is_an_ac_error(kit: Kit, value: bytes, phrase: str) -> None:
    ext = x509.UnrecognizedExtension(VOMS_EXT_OID, value)
    _, chain = kit.proxy_chain(1, builder=lambda b: b.add_extension(ext, False))
    with pytest.raises(AttributeCertificateError) as info:
        validate_chain(chain, kit.trust, kit.now)
    assert phrase in str(info.value)
    assert validate_chain(chain, kit.trust, kit.now, check_voms=False).voms == ()


# --- RFC 3820 rejections ------------------------------------------------------------------------------------


def _raw(kit: Kit, **kw: object) -> tuple[x509.Certificate, ...]:
    proxy = kit.raw_proxy(kit.alice, **kw)  # type: ignore[arg-type]
    return (proxy.cert, kit.alice.cert)


def _reject(
    chain: tuple[x509.Certificate, ...],
    kit: Kit,
    exc: type[VomsExtError],
    phrase: str,
    at: dt.datetime | None = None,
) -> str:
    with pytest.raises(exc) as info:
        validate_chain(chain, kit.trust, at or kit.now)
    assert phrase in str(info.value), str(info.value)
    return str(info.value)


def test_subject_not_extending_the_issuer(kit: Kit) -> None:
    bob_like = x509.Name([*kit.bob.cert.subject.rdns, _cn("123456789")])
    _reject(
        _raw(kit, subject=bob_like),
        kit,
        ProxyError,
        "subject must be its issuer's subject plus one CN",
    )


def test_extra_rdn(kit: Kit) -> None:
    subject = x509.Name([*kit.alice.cert.subject.rdns, _cn("1"), _cn("2")])
    _reject(
        _raw(kit, subject=subject),
        kit,
        ProxyError,
        "subject must be its issuer's subject plus one CN (RFC 3820 §3.4)",
    )


def test_multi_valued_last_rdn(kit: Kit) -> None:
    last = x509.RelativeDistinguishedName(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "1"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"),
        ]
    )
    subject = x509.Name([*kit.alice.cert.subject.rdns, last])
    _reject(_raw(kit, subject=subject), kit, ProxyError, "the last RDN must be a single CN")


def test_last_rdn_not_a_cn(kit: Kit) -> None:
    last = x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "1")]
    )
    subject = x509.Name([*kit.alice.cert.subject.rdns, last])
    _reject(_raw(kit, subject=subject), kit, ProxyError, "the last RDN must be a single CN")


def test_path_length_exceeded(kit: Kit) -> None:
    _, chain = kit.proxy_chain(2, builder=lambda b: b.path_length(0))
    message = _reject(
        chain, kit, ProxyError, "exceeds the path length constraint of a proxy above it"
    )
    assert message.startswith(f"proxy {ALICE}/CN=")


def test_path_length_is_the_tightest_above(kit: Kit) -> None:
    party, chain = kit.alice, (kit.alice.cert,)
    for level, limit in enumerate([2, 5, None, None]):
        party, chain = kit.proxy(
            party, chain[1:], key_index=level, builder=lambda b, n=limit: b.path_length(n)
        )
    validate_chain(chain[1:], kit.trust, kit.now)  # three proxies: fine
    _reject(chain, kit, ProxyError, "exceeds the path length constraint")


def test_limited_proxy_signing_a_full_one(kit: Kit) -> None:
    limited, chain = kit.proxy(kit.alice, builder=lambda b: b.limited())
    # ProxyBuilder would force `limited`, so the child is made by hand.
    child = kit.raw_proxy(limited, key_index=1, serial=424242)
    _reject(
        (child.cert, *chain),
        kit,
        ProxyError,
        "a limited proxy may not sign a RFC 3820 compliant impersonation proxy",
    )


def test_limited_proxy_signing_a_limited_one_by_hand(kit: Kit) -> None:
    limited, chain = kit.proxy(kit.alice, builder=lambda b: b.limited())
    child = kit.raw_proxy(
        limited, key_index=1, serial=424243, pci=encode_proxy_cert_info(ProxyCertInfo(LIMITED))
    )
    assert validate_chain((child.cert, *chain), kit.trust, kit.now).is_limited


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        (
            {"pci": encode_proxy_cert_info(ProxyCertInfo("1.2.3.4"))},
            "unknown proxy policy language 1.2.3.4",
        ),
        ({"pci_critical": False}, "the ProxyCertInfo extension must be critical"),
        (
            {"extensions": [(x509.SubjectAlternativeName([x509.DNSName("x.example")]), False)]},
            "must not carry 2.5.29.17",
        ),
        (
            {"extensions": [(x509.IssuerAlternativeName([x509.DNSName("x.example")]), False)]},
            "must not carry 2.5.29.18",
        ),
        (
            {"extensions": [(x509.BasicConstraints(ca=True, path_length=None), True)]},
            "basicConstraints cA must not be true",
        ),
        (
            {
                "extensions": [
                    (
                        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
                        True,
                    )
                ]
            },
            "unknown critical extension 1.2.3.4",
        ),
    ],
    ids=[
        "policy-language",
        "non-critical-pci",
        "san",
        "ian",
        "basic-constraints-ca",
        "unknown-critical",
    ],
)
def test_proxy_rejections(kit: Kit, kw: dict[str, object], phrase: str) -> None:
    message = _reject(_raw(kit, **kw), kit, ProxyError, phrase)
    assert message.startswith(f"proxy {ALICE}/CN=123456789: ")


def test_proxy_signed_by_another_key(kit: Kit) -> None:
    message = _reject(
        _raw(kit, signer=kit.bob.key), kit, ProxyError, "signature does not verify with the key of"
    )
    assert message.endswith(f"the key of {ALICE}")


def test_key_cert_sign_on_a_proxy(kit: Kit) -> None:
    usage = x509.KeyUsage(True, False, True, True, False, True, False, False, False)
    proxy = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*kit.alice.cert.subject.rdns, _cn("5")]))
        .issuer_name(kit.alice.cert.subject)
        .public_key(kit.keys[0].public_key())
        .serial_number(5)
        .not_valid_before(kit.now - HOUR)
        .not_valid_after(kit.now + HOUR)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),
                bytes.fromhex("300c300a06082b06010505071501"),
            ),
            critical=True,
        )
        .sign(kit.alice.key, hashes.SHA256())
    )
    _reject((proxy, kit.alice.cert), kit, ProxyError, "keyUsage must not allow keyCertSign")


def test_issuer_name_mismatch(kit: Kit) -> None:
    first, _ = kit.proxy(kit.alice)
    # Signed by alice's key but placed under bob.
    _reject(
        (first.cert, kit.bob.cert),
        kit,
        ProxyError,
        "its issuer name is not the subject of the next certificate",
    )


def test_proxy_without_proxy_cert_info_is_not_an_eec(kit: Kit) -> None:
    fake = kit.raw_proxy(kit.alice, pci=None)
    _reject(
        (fake.cert, kit.alice.cert), kit, ChainError, "is not a CA (basicConstraints cA is not set)"
    )


# --- time --------------------------------------------------------------------------------------------------------


def test_expired_proxy(kit: Kit) -> None:
    leaf, chain = kit.proxy_chain(2, builder=lambda b: b.lifetime(HOUR))
    at = leaf.cert.not_valid_after_utc + SECOND
    message = _reject(chain, kit, ChainError, "expired", at)
    assert message.startswith(f"proxy {ALICE}/CN=")
    validate_chain(chain, kit.trust, at - SECOND)  # the last second still counts


def test_not_yet_valid_proxy(kit: Kit) -> None:
    leaf, chain = kit.proxy_chain(1)
    at = leaf.cert.not_valid_before_utc - SECOND
    _reject(chain, kit, ChainError, "is not yet valid (starts", at)


def test_expired_eec(kit: Kit) -> None:
    _, chain = kit.proxy_chain(1)
    at = kit.alice.cert.not_valid_after_utc + SECOND
    _reject(chain, kit, ChainError, f"certificate {ALICE} expired", at)


def test_not_yet_valid_eec(kit: Kit) -> None:
    _, chain = kit.proxy_chain(1)
    at = kit.alice.cert.not_valid_before_utc - SECOND
    _reject(chain, kit, ChainError, f"certificate {ALICE} is not yet valid", at)


# --- the end-entity certificate and its CA ---------------------------------------------------------------------


def test_eec_from_an_unknown_ca(kit: Kit) -> None:
    other = kit.self_signed_ca("/C=XX/O=elsewhere/CN=other CA", 4)
    mallory = kit.ca_issue(other, "/C=XX/O=elsewhere/CN=mallory", 5)
    _, chain = kit.proxy_chain(1, mallory)
    _reject(
        chain,
        kit,
        ChainError,
        "was issued by /C=XX/O=elsewhere/CN=other CA, which is not a trusted CA",
    )


def test_eec_forging_the_dev_ca_name(kit: Kit) -> None:
    impostor = Party(kit.ca.cert, kit.keys[4])  # right name, wrong key
    mallory = kit.ca_issue(impostor, "/C=XX/O=proxyd dev/OU=Users/CN=mallory", 5)
    _, chain = kit.proxy_chain(1, mallory)
    _reject(chain, kit, ChainError, f"does not verify with {CA}")


def test_untrusted_ca_shipped_in_the_chain(kit: Kit) -> None:
    other = kit.self_signed_ca("/C=XX/O=elsewhere/CN=other CA", 4)
    mallory = kit.ca_issue(other, "/C=XX/O=elsewhere/CN=mallory", 5)
    _, chain = kit.proxy_chain(1, mallory)
    _reject(
        (*chain, other.cert), kit, ChainError, "root CA /C=XX/O=elsewhere/CN=other CA is not in"
    )


def test_chain_missing_the_eec(kit: Kit) -> None:
    _, chain = kit.proxy_chain(2)
    _reject(chain[:-1], kit, ChainError, "the end-entity certificate that issued it is missing")


def test_ca_certificate_as_credential(kit: Kit) -> None:
    _reject((kit.ca.cert,), kit, ChainError, "is a CA certificate, not a user or host credential")


def test_empty_chain(kit: Kit) -> None:
    _reject((), kit, ChainError, "empty certificate chain")


def _crl(kit: Kit, *, revoked: list[int], last: dt.datetime, next_: dt.datetime, key=None) -> bytes:  # type: ignore[no-untyped-def]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(kit.ca.cert.subject)
        .last_update(last)
        .next_update(next_)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build()
        )
    crl = builder.sign(key or kit.ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def _trust_with_crl(kit: Kit, tmp_path: Path, crl: bytes) -> TrustStore:
    cert_dir = tmp_path / "certificates"
    shutil.copytree(kit.pki.cert_dir, cert_dir)
    (cert_dir / f"{subject_hash(kit.ca.cert.subject)}.r0").write_bytes(crl)
    trust = TrustStore.from_dirs(cert_dir, kit.pki.voms_dir)
    assert len(trust.crls) == 1 and trust.problems == ()
    return trust


def test_revoked_eec(kit: Kit, tmp_path: Path) -> None:
    crl = _crl(
        kit,
        revoked=[1, kit.alice.cert.serial_number],
        last=kit.now - HOUR,
        next_=kit.now + 24 * HOUR,
    )
    trust = _trust_with_crl(kit, tmp_path, crl)
    _, chain = kit.proxy_chain(1)
    with pytest.raises(ChainError) as info:
        validate_chain(chain, trust, kit.now)
    assert (
        f"certificate {ALICE} (serial {kit.alice.cert.serial_number}) has been revoked by {CA}"
        in str(info.value)
    )
    _, bobs = kit.proxy_chain(1, kit.bob)
    assert validate_chain(bobs, trust, kit.now).identity.endswith("CN=bob")


def test_expired_crl(kit: Kit, tmp_path: Path) -> None:
    crl = _crl(kit, revoked=[], last=kit.now - 48 * HOUR, next_=kit.now - HOUR)
    trust = _trust_with_crl(kit, tmp_path, crl)
    _, chain = kit.proxy_chain(1)
    with pytest.raises(ChainError) as info:
        validate_chain(chain, trust, kit.now)
    assert f"the CRL of {CA} expired at" in str(info.value)
    assert "fetch-crl" in str(info.value)


def test_crl_with_a_bad_signature(kit: Kit, tmp_path: Path) -> None:
    crl = _crl(kit, revoked=[], last=kit.now - HOUR, next_=kit.now + HOUR, key=kit.keys[4])
    trust = _trust_with_crl(kit, tmp_path, crl)
    _, chain = kit.proxy_chain(1)
    with pytest.raises(ChainError, match=r"CRL of .* has an invalid signature"):
        validate_chain(chain, trust, kit.now)


def test_current_crl_without_alice(kit: Kit, tmp_path: Path) -> None:
    crl = _crl(kit, revoked=[12345], last=kit.now - HOUR, next_=kit.now + HOUR)
    trust = _trust_with_crl(kit, tmp_path, crl)
    _, chain = kit.proxy_chain(1)
    assert validate_chain(chain, trust, kit.now).identity == ALICE


def test_validate_uses_now_by_default(kit: Kit) -> None:
    chain = (
        ProxyBuilder(kit.alice.cert).public_key(kit.keys[0]).lifetime(HOUR).sign(kit.alice.key),
        kit.alice.cert,
    )
    assert validate_chain(chain, kit.trust).identity == ALICE


# --- unreadable names -------------------------------------------------------------------------------------------

UTF8_ALICE = b"\x0c\x05alice"  # UTF8String "alice"
UTF8_CA = b"\x0c\x0dproxyd dev CA"


def _break_name(cert: x509.Certificate, needle: bytes) -> x509.Certificate:
    """`cert` with the first occurrence of `needle` turned into invalid UTF-8 (loads lazily)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    assert needle in der
    broken = needle[:4] + b"\xff" + needle[5:]
    return x509.load_der_x509_certificate(der.replace(needle, broken, 1))


@pytest.mark.parametrize("which", ["proxy-issuer", "eec-issuer", "eec-classify"])
def test_unreadable_issuer_name_is_a_voms_ext_error(kit: Kit, which: str) -> None:
    leaf, _ = kit.proxy_chain(1)
    with pytest.raises(VomsExtError):
        if which == "proxy-issuer":
            # The first UTF8String "alice" in a proxy is in its issuer name.
            validate_chain([_break_name(leaf.cert, UTF8_ALICE), kit.alice.cert], kit.trust, kit.now)
        elif which == "eec-issuer":
            validate_chain([_break_name(kit.alice.cert, UTF8_CA)], kit.trust, kit.now)
        else:
            classify(_break_name(kit.alice.cert, UTF8_CA))


def test_unreadable_proxy_subject_is_reported(kit: Kit) -> None:
    leaf, _ = kit.proxy_chain(1)
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    at = der.rindex(UTF8_ALICE)  # the subject comes after the issuer
    broken = x509.load_der_x509_certificate(der[:at] + b"\x0c\x05al\xffce" + der[at + 7 :])
    with pytest.raises(ProxyError, match="proxy <unreadable subject>"):
        validate_chain([broken, kit.alice.cert], kit.trust, kit.now)
