"""Slash-form DNs and OpenSSL subject hashes (voms_ext.names)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from tests.voms_ext.conftest import Kit
from voms_ext import DistinguishedNameError, VomsExtError, dn_to_slash, slash_to_name, subject_hash

A = x509.NameAttribute
RDN = x509.RelativeDistinguishedName


@pytest.mark.parametrize(
    "dn",
    [
        "/C=XX/O=proxyd dev/OU=Users/CN=alice",
        "/C=XX/O=proxyd dev/CN=proxyd dev CA",
        "/DC=org/DC=example/OU=Hosts/CN=host/wms.example.org",
        "/C=DE/O=GermanGrid/CN=Jörg Müller/emailAddress=Joerg@Example.ORG",
        "/C=XX/O=proxyd dev/OU=Users/CN=alice/CN=1234567/CN=987654",
        "/C=XX/O=proxyd dev/OU=Users/CN=alice/UID=alice01",
        "/C=XX/O=proxyd dev/CN=a+OU=b",
        "/C=XX/L=Geneva/ST=GE/O=CERN/CN=a=b",
        "/CN=host/a/b/c",
        "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=123456/CN=John Doe",
    ],
)
def test_slash_round_trip(dn: str) -> None:
    name = slash_to_name(dn)
    assert dn_to_slash(name) == dn
    # And through RFC 4514 text, which reverses the RDN order twice.
    assert dn_to_slash(x509.Name.from_rfc4514_string(name.rfc4514_string())) == dn


@pytest.mark.parametrize(
    ("dn", "rdns"),
    [
        (
            "/DC=org/DC=example/CN=host/wms.example.org",
            [
                [(NameOID.DOMAIN_COMPONENT, "org")],
                [(NameOID.DOMAIN_COMPONENT, "example")],
                [(NameOID.COMMON_NAME, "host/wms.example.org")],
            ],
        ),
        (
            "/O=x/CN=a/emailAddress=a@example.org",
            [
                [(NameOID.ORGANIZATION_NAME, "x")],
                [(NameOID.COMMON_NAME, "a")],
                [(NameOID.EMAIL_ADDRESS, "a@example.org")],
            ],
        ),
        # Short names are case-insensitive; E / Email are OpenSSL aliases.
        ("/cn=alice/E=a@b", [[(NameOID.COMMON_NAME, "alice")], [(NameOID.EMAIL_ADDRESS, "a@b")]]),
        ("/Email=a@b", [[(NameOID.EMAIL_ADDRESS, "a@b")]]),
        ("/CN=a+O=b", [[(NameOID.COMMON_NAME, "a"), (NameOID.ORGANIZATION_NAME, "b")]]),
        ("/CN=x+", [[(NameOID.COMMON_NAME, "x+")]]),
        ("/CN=a + O=b", [[(NameOID.COMMON_NAME, "a + O=b")]]),
    ],
)
def test_slash_to_name_components(
    dn: str, rdns: list[list[tuple[x509.ObjectIdentifier, str]]]
) -> None:
    name = slash_to_name(dn)
    assert [[(a.oid, a.value) for a in rdn] for rdn in name.rdns] == rdns


def test_string_types_follow_cryptography_defaults() -> None:
    name = slash_to_name("/C=XX/DC=org/CN=alice/emailAddress=a@b")
    types = [a._type for a in name]
    assert types == [
        _ASN1Type.PrintableString,
        _ASN1Type.IA5String,
        _ASN1Type.UTF8String,
        _ASN1Type.IA5String,
    ]


@pytest.mark.parametrize(
    ("dn", "phrase"),
    [
        ("", "does not start with '/'"),
        ("CN=alice", "does not start with '/'"),
        ("/", "has no components"),
        ("/ CN=alice", "has no components"),
        ("/FOO=bar", "unknown attribute 'FOO'"),
        ("/CN=alice/FOO=bar", "unknown attribute 'FOO'"),
        ("/CN=", "attribute 'CN' has an empty value"),
        ("/O=x/CN=", "attribute 'CN' has an empty value"),
        ("/C=XXX", "attribute C"),
        ("/CN=a/b=c", "unknown attribute 'b'"),
    ],
)
def test_slash_to_name_errors(dn: str, phrase: str) -> None:
    with pytest.raises(DistinguishedNameError) as info:
        slash_to_name(dn)
    assert phrase in str(info.value)
    assert repr(dn) in str(info.value)  # names the DN it could not read
    assert isinstance(info.value, VomsExtError)


def test_dn_to_slash_prints_unknown_attributes_as_dotted_oids() -> None:
    name = x509.Name([A(NameOID.COMMON_NAME, "x"), A(x509.ObjectIdentifier("1.2.3.4"), "foo")])
    assert dn_to_slash(name) == "/CN=x/1.2.3.4=foo"


def test_dotted_oid_attribute_round_trips() -> None:
    name = x509.Name([A(NameOID.COMMON_NAME, "x"), A(x509.ObjectIdentifier("1.2.3.4"), "foo")])
    assert slash_to_name(dn_to_slash(name)) == name


@pytest.mark.parametrize("dn", ["/1.2.3.4=foo/CN=x", "/garbage/CN=alice", "//CN=alice"])
def test_leading_junk_is_not_silently_dropped(dn: str) -> None:
    try:
        name = slash_to_name(dn)
    except DistinguishedNameError:
        return
    assert len(name.rdns) == 2, f"{dn!r} parsed as {dn_to_slash(name)!r}"


# Reference values: `openssl x509 -noout -subject_hash` (OpenSSL 3.0.19) on
# self-signed certificates made with `cryptography` carrying exactly these
# subjects (slash_to_name's string types: C PrintableString, DC and
# emailAddress IA5String, the rest UTF8String), computed when this test was
# written. OpenSSL canonicalises case and whitespace of ASCII only.
OPENSSL_SUBJECT_HASHES = [
    ("/C=XX/O=proxyd dev/CN=proxyd dev CA", "6e5b69cc"),
    ("/C=XX/O=proxyd dev/OU=Users/CN=alice", "1bf7c00d"),
    ("/C=XX/O=PROXYD DEV/OU=users/CN=ALICE", "1bf7c00d"),
    ("/C=xx/O= proxyd  dev /OU=Users/CN=alice\t", "1bf7c00d"),
    ("/DC=org/DC=example/OU=Hosts/CN=host/wms.example.org", "f727be4d"),
    ("/DC=ORG/DC=Example/OU=hosts/CN=HOST/WMS.example.org", "f727be4d"),
    ("/C=DE/O=GermanGrid/CN=Jörg Müller/emailAddress=Joerg@Example.ORG", "183af8f0"),
    ("/C=DE/O=germangrid/CN=JöRG MüLLER/emailAddress=joerg@example.org", "183af8f0"),
    # Non-ASCII letters are not case-folded by OpenSSL:
    ("/C=DE/O=germangrid/CN=JÖRG MÜLLER/emailAddress=joerg@example.org", "e6936984"),
    ("/C=XX/O=proxyd dev/OU=Users/CN=alice/CN=1234567", "eba11190"),
    ("/C=XX/O=proxyd dev/OU=Users/CN=alice/UID=alice01", "b8bfb855"),
    ("/CN=a+O=b", "d84763ce"),
]


@pytest.mark.parametrize(("dn", "expected"), OPENSSL_SUBJECT_HASHES)
def test_subject_hash_matches_openssl(dn: str, expected: str) -> None:
    assert subject_hash(slash_to_name(dn)) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # All PrintableString; BMPString + T61String: canonicalised to UTF-8 first.
        (
            x509.Name(
                [
                    A(NameOID.COUNTRY_NAME, "XX", _ASN1Type.PrintableString),
                    A(NameOID.ORGANIZATION_NAME, "proxyd dev", _ASN1Type.PrintableString),
                    A(NameOID.COMMON_NAME, "proxyd dev CA", _ASN1Type.PrintableString),
                ]
            ),
            "6e5b69cc",
        ),
        (
            x509.Name(
                [
                    A(NameOID.COUNTRY_NAME, "XX", _ASN1Type.PrintableString),
                    A(NameOID.ORGANIZATION_NAME, "proxyd dev", _ASN1Type.BMPString),
                    A(NameOID.COMMON_NAME, "proxyd dev CA", _ASN1Type.T61String),
                ]
            ),
            "6e5b69cc",
        ),
        (
            x509.Name(
                [
                    A(NameOID.COUNTRY_NAME, "xx"),
                    A(NameOID.ORGANIZATION_NAME, "  PROXYD   dev "),
                    A(NameOID.COMMON_NAME, "Proxyd\tDev  CA"),
                ]
            ),
            "6e5b69cc",
        ),
        (
            x509.Name([A(NameOID.COMMON_NAME, "x"), A(x509.ObjectIdentifier("1.2.3.4"), "foo")]),
            "5e5c463f",
        ),
        (x509.Name([]), "eea339da"),
    ],
    ids=["printable", "bmp-t61", "case-whitespace", "dotted-oid", "empty"],
)
def test_subject_hash_string_types(name: x509.Name, expected: str) -> None:
    assert subject_hash(name) == expected


def test_subject_hash_multi_valued_rdn_of_unequal_lengths() -> None:
    name = x509.Name(
        [
            RDN(
                [
                    A(NameOID.COMMON_NAME, "a very long common name value"),
                    A(NameOID.ORGANIZATION_NAME, "b"),
                ]
            )
        ]
    )
    # openssl x509 -subject_hash on a certificate with this subject: 6f229474
    assert subject_hash(name) == "6f229474"


def test_subject_hash_of_dev_ca_names_its_anchor_file(kit: Kit) -> None:
    h = subject_hash(kit.ca.cert.subject)
    assert (kit.pki.cert_dir / f"{h}.0").is_file()
    assert h == subject_hash(slash_to_name("/C=XX/O=proxyd dev/CN=proxyd dev CA")) == "6e5b69cc"
