"""Property tests: round trips through files and validation; parsers on hostile bytes.

Keys come from the session key pool (`Kit.keys`); no example generates one.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.voms_ext.conftest import PCI_DRAFT_OID, PCI_OID, Kit
from voms_ext import (
    Credential,
    CredentialFileError,
    TrustStore,
    VomsExtError,
    classify,
    credential_to_pem,
    dn_to_slash,
    load_credential_file,
    parse_attribute_certificate,
    parse_credential_pem,
    parse_fqan,
    parse_voms_extension,
    slash_to_name,
    validate_chain,
    verify_attribute_certificate,
    write_credential_file,
)
from voms_ext.der import encode_tlv
from voms_ext.trust import parse_lsc

# Derandomized: the same examples every run, so CI is reproducible. The fuzzers of
# the reliability work explore further; what they find becomes a fixed test here.
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -----------------------------------------------------------------------------------

GROUP = st.sampled_from(["analysis", "prod", "sub-1", "g_2", "x.y"])
ROLE = st.sampled_from([None, "production", "pilot", "lcgadmin"])


@st.composite
def dteam_fqans(draw: st.DrawFn) -> list[str]:
    out: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 5))):
        groups = draw(st.lists(GROUP, max_size=3))
        role = draw(ROLE)
        text = "/" + "/".join(["dteam", *groups]) + (f"/Role={role}" if role else "")
        out.setdefault(parse_fqan(text).long, text)
    return list(out.values())


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with 1-4 random byte flips, insertions, deletions or overwrites."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        if not buf:
            op = "insert"
        index = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip":
            buf[index] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            buf.insert(index, draw(st.integers(0, 255)))
        elif op == "delete":
            del buf[index]
        else:
            buf[index] = draw(st.integers(0, 255))
    return bytes(buf)


@pytest.fixture(scope="module")
def ac_der(kit: Kit) -> bytes:
    return (
        kit.ac_builder(fqans=["/dteam", "/dteam/Role=production"])
        .generic_attribute("n", "v", "q")
        .target("wms.localhost")
        .serial_number(4242)
        .sign(kit.aa.cert, kit.aa.key)
        .der
    )


@pytest.fixture(scope="module")
def proxy_pem(kit: Kit) -> bytes:
    leaf, chain = kit.proxy_chain(2, acs=[kit.ac()])
    return credential_to_pem(Credential(chain, leaf.key))


# --- build → serialise → parse → validate ------------------------------------------------------------


@SETTINGS
@given(
    fqans=dteam_fqans(),
    lifetimes=st.lists(st.integers(60, 7 * 24 * 3600), min_size=1, max_size=4),
    limited=st.lists(st.booleans(), min_size=4, max_size=4),
    short_eec=st.booleans(),
    ac_level=st.integers(0, 3),
    via_file=st.booleans(),
)
def test_round_trip_through_pem_and_validation(
    kit: Kit,
    fqans: list[str],
    lifetimes: list[int],
    limited: list[bool],
    short_eec: bool,
    ac_level: int,
    via_file: bool,
) -> None:
    eec = kit.shortlived if short_eec else kit.alice
    ac = kit.ac(eec, fqans)
    depth = len(lifetimes)
    ac_level = min(ac_level, depth - 1)
    party, chain = eec, (eec.cert,)
    for level, seconds in enumerate(lifetimes):
        configure = (lambda b: b.limited()) if limited[level] else (lambda b: b)
        party, chain = kit.proxy(
            party,
            chain[1:],
            key_index=level,
            builder=lambda b, s=seconds, c=configure: c(b.lifetime(dt.timedelta(seconds=s))),
            acs=[ac] if level == ac_level else (),
        )

    credential = Credential(chain, party.key)
    if via_file:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "x509up_u1000"
            write_credential_file(path, credential)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            loaded = load_credential_file(path)
    else:
        loaded = parse_credential_pem(credential_to_pem(credential))
    assert loaded.certificates == chain
    assert isinstance(loaded.private_key, rsa.RSAPrivateKey)
    assert loaded.private_key.private_numbers() == party.key.private_numbers()
    assert loaded.certificate == chain[0] and loaded.chain == chain[1:]

    result = validate_chain(loaded.certificates, kit.trust, kit.now)
    expected_end = min(kit.now + dt.timedelta(seconds=min(lifetimes)), eec.cert.not_valid_after_utc)
    assert result.not_after == expected_end
    assert chain[0].not_valid_after_utc == expected_end
    assert result.identity == dn_to_slash(eec.cert.subject)
    assert result.proxy_depth == depth
    assert result.is_limited is any(limited[:depth])
    assert result.proxy_type.is_limited is any(limited[:depth])
    assert result.fqans == tuple(parse_fqan(f).long for f in fqans)
    assert [v.vo for v in result.voms] == ["dteam"]


# --- hostile input: only VomsExtError ------------------------------------------------------------------


def _parse_ac_checked(kit: Kit, data: bytes) -> None:
    try:
        ac = parse_attribute_certificate(data)
    except VomsExtError:
        return
    with contextlib.suppress(VomsExtError):
        verify_attribute_certificate(ac, kit.alice.cert, kit.trust, kit.now)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_ac_parser_on_random_bytes(kit: Kit, data: bytes) -> None:
    _parse_ac_checked(kit, data)
    _parse_ac_checked(kit, encode_tlv(0x30, data))


@SETTINGS
@given(data=st.data())
def test_ac_parser_on_mutated_der(kit: Kit, ac_der: bytes, data: st.DataObject) -> None:
    _parse_ac_checked(kit, data.draw(mutated(ac_der)))


@SETTINGS
@given(data=st.data())
def test_voms_extension_parser(ac_der: bytes, data: st.DataObject) -> None:
    valid = encode_tlv(0x30, encode_tlv(0x30, ac_der + ac_der))
    candidate = data.draw(st.one_of(st.binary(max_size=200), mutated(valid)))
    try:
        acs = parse_voms_extension(candidate)
    except VomsExtError:
        return
    assert acs


@SETTINGS
@given(data=st.data())
def test_credential_pem_parser(kit: Kit, proxy_pem: bytes, data: st.DataObject) -> None:
    candidate = data.draw(st.one_of(st.binary(max_size=300), mutated(proxy_pem)))
    try:
        credential = parse_credential_pem(candidate)
    except VomsExtError:
        return
    assert credential.certificates
    with contextlib.suppress(VomsExtError):
        validate_chain(credential.certificates, kit.trust, kit.now)


@SETTINGS
@given(content=st.binary(max_size=400))
def test_load_credential_file_on_random_content(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cred.pem"
        path.write_bytes(content)
        with contextlib.suppress(VomsExtError):
            load_credential_file(path)


@SETTINGS
@given(
    value=st.binary(max_size=60),
    draft=st.booleans(),
    critical=st.booleans(),
)
def test_classify_with_random_proxy_cert_info(
    kit: Kit, value: bytes, draft: bool, critical: bool
) -> None:
    cn = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*kit.alice.cert.subject.rdns, cn]))
        .issuer_name(kit.alice.cert.subject)
        .public_key(kit.keys[0].public_key())
        .serial_number(1)
        .not_valid_before(kit.now)
        .not_valid_after(kit.now + dt.timedelta(hours=1))
        .add_extension(
            x509.UnrecognizedExtension(PCI_DRAFT_OID if draft else PCI_OID, value),
            critical=critical,
        )
        .sign(kit.alice.key, hashes.SHA256())
    )
    try:
        kind = classify(cert)
    except VomsExtError:
        return
    assert kind.type.is_proxy and critical
    assert kind.info is not None and kind.info.draft is draft


DN_PIECES = st.sampled_from(
    [
        "/",
        "CN",
        "C",
        "O",
        "=",
        "+",
        "x",
        " ",
        "1.2.3",
        "emailAddress",
        "é",
        "\x00",
        "XX",
        "DC",
        "\ud800",
    ]
)


@SETTINGS
@given(text=st.one_of(st.text(max_size=40), st.lists(DN_PIECES, max_size=12).map("".join)))
def test_slash_to_name_on_random_text(text: str) -> None:
    try:
        name = slash_to_name(text)
    except VomsExtError:
        return
    assert name.rdns


@SETTINGS
@given(text=st.text(max_size=40))
def test_parse_fqan_on_random_text(text: str) -> None:
    with contextlib.suppress(VomsExtError):
        parse_fqan(text)


VALUE = st.text(alphabet=st.sampled_from("abcXYZ019 .-_@/+é"), min_size=1, max_size=12)
ATTRS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.DOMAIN_COMPONENT,
    NameOID.EMAIL_ADDRESS,
    NameOID.USER_ID,
]


@st.composite
def names(draw: st.DrawFn) -> x509.Name:
    rdns = []
    if draw(st.booleans()):
        rdns.append(
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(
                        NameOID.COUNTRY_NAME, draw(st.sampled_from(["XX", "DE", "ch"]))
                    )
                ]
            )
        )
    for _ in range(draw(st.integers(1, 5))):
        oids = draw(st.lists(st.sampled_from(ATTRS), min_size=1, max_size=2, unique=True))
        values = [
            draw(VALUE.filter(lambda v: v.isascii()))
            if oid in (NameOID.DOMAIN_COMPONENT, NameOID.EMAIL_ADDRESS)
            else draw(VALUE)
            for oid in oids
        ]
        rdns.append(
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(o, v) for o, v in zip(oids, values, strict=True)]
            )
        )
    return x509.Name(rdns)


@SETTINGS
@given(name=names())
def test_slash_form_round_trip(name: x509.Name) -> None:
    assert slash_to_name(dn_to_slash(name)) == name


@SETTINGS
@given(text=st.text(max_size=200))
def test_parse_lsc_on_random_text(text: str) -> None:
    chains = parse_lsc(text)
    assert all(chain and all(line == line.strip() and line for line in chain) for chain in chains)


@SETTINGS
@given(lsc=st.binary(max_size=200), other=st.binary(max_size=200))
def test_trust_store_on_random_vomsdir_files(
    kit: Kit, ac_der: bytes, lsc: bytes, other: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vomsdir = Path(tmp)
        (vomsdir / "dteam").mkdir()
        (vomsdir / "dteam" / "voms.localhost.lsc").write_bytes(lsc)
        (vomsdir / "dteam" / "aa.pem").write_bytes(other)
        (vomsdir / "root.pem").write_bytes(
            b"-----BEGIN CERTIFICATE-----\n" + other + b"\n-----END CERTIFICATE-----\n"
        )
        try:
            trust = TrustStore.from_dirs(kit.pki.cert_dir, vomsdir)
        except VomsExtError:
            return
        ac = parse_attribute_certificate(ac_der)
        with contextlib.suppress(VomsExtError):
            verify_attribute_certificate(ac, kit.alice.cert, trust, kit.now)


def test_pem_key_is_pkcs1(proxy_pem: bytes) -> None:
    pem = proxy_pem
    assert pem.count(b"-----BEGIN RSA PRIVATE KEY-----") == 1
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 3
    assert pem.index(b"RSA PRIVATE KEY") > pem.index(b"-----END CERTIFICATE-----")
    assert serialization.load_pem_private_key(pem[pem.index(b"-----BEGIN RSA") :], None)


# --- credential files: fixed examples ------------------------------------------------------------------


def test_write_credential_file_replaces_a_readable_file_with_0600(kit: Kit, tmp_path: Path) -> None:
    path = tmp_path / "proxy.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    leaf, chain = kit.proxy_chain(1)
    write_credential_file(path, Credential(chain, leaf.key))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credential_file(path).certificates == chain
    assert [p.name for p in tmp_path.iterdir()] == ["proxy.pem"]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "no PEM CERTIFICATE block found"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "PEM block 1 (CERTIFICATE) is not a valid certificate",
        ),
    ],
)
def test_load_credential_file_errors(tmp_path: Path, content: bytes, phrase: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(CredentialFileError) as info:
        load_credential_file(path)
    assert str(path) in str(info.value) and phrase in str(info.value)


def test_load_credential_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CredentialFileError, match="cannot read credential file"):
        load_credential_file(tmp_path / "absent.pem")


def test_two_private_keys_are_refused(kit: Kit, proxy_pem: bytes) -> None:
    key = kit.keys[1].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(CredentialFileError, match="more than one private key"):
        parse_credential_pem(proxy_pem + key)


def test_encrypted_key_needs_a_passphrase(kit: Kit) -> None:
    key = kit.keys[1].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    pem = kit.alice.cert.public_bytes(serialization.Encoding.PEM) + key
    with pytest.raises(
        CredentialFileError, match="the private key is encrypted; a passphrase is needed"
    ):
        parse_credential_pem(pem)
    loaded = parse_credential_pem(pem, password=b"secret")
    assert isinstance(loaded.private_key, rsa.RSAPrivateKey)


def test_passphrase_for_an_unencrypted_key_is_reported_as_such(proxy_pem: bytes) -> None:
    with pytest.raises(CredentialFileError) as info:
        parse_credential_pem(proxy_pem, password=b"secret")
    assert "is encrypted" not in str(info.value)


def test_unknown_key_algorithm_is_a_credential_file_error(kit: Kit) -> None:
    pkcs8 = kit.keys[1].private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    rsa_encryption = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
    assert pkcs8.count(rsa_encryption) == 1
    unknown = pkcs8.replace(rsa_encryption, bytes.fromhex("2a864886f70d010102"))
    body = base64.encodebytes(unknown)
    pem = kit.alice.cert.public_bytes(serialization.Encoding.PEM) + (
        b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(CredentialFileError):
        parse_credential_pem(pem)
