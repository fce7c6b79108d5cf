"""What fuzzing found, pinned: one test per bug, at the parser and where it hurts the service.

A test for an open bug is `xfail(strict=True)` and its input is listed in
`tests.fuzz.targets.KNOWN_BUGS` (the fuzzers tolerate listed bugs so a run
can find the next one); once the bug is fixed the marker and the entry go.
All of them are fixed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import importlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from proxyd.config import ConfigError, load_config, parse_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.myproxy import protocol as p
from proxyd.myproxy.client import ClientCredential, MyProxyClient, MyProxyClientError
from proxyd.myproxy.conversation import CertificateRequest, Chain
from proxyd.myproxy.renewal import ChallengeError, parse_challenge_reply
from proxyd.repository import BadRequest, check_public_key
from tests.fuzz import targets
from tests.support.grid import Identity, csr_for, load_identity, make_proxy, spare_key, trust_of
from tests.support.https import ApiClient
from tests.support.server import RunningServer, running_server
from voms_ext import (
    ChainError,
    Credential,
    DistinguishedNameError,
    FqanError,
    ProxyError,
    TrustStore,
    VomsExtError,
    classify,
    parse_credential_pem,
    parse_fqan,
    slash_to_name,
    validate_chain,
    write_credential_file,
)
from voms_ext.der import children, encode_tlv, read_tlv

ALICE = user_dn("alice")
PASS = "regression pass"
GET_REQUEST = b"VERSION=MYPROXYv2\nCOMMAND=0\nUSERNAME=alice-reg\nPASSPHRASE=regression pass\n"
RSA_OID = bytes.fromhex("06092a864886f70d0101010500")  # rsaEncryption, NULL parameters
UNKNOWN_KEY_OID = bytes.fromhex("06092a864886f70d0101020500")  # md2WithRSA: not a key type


def _unloadable_key(der: bytes) -> bytes:
    """The same DER with the SubjectPublicKeyInfo algorithm changed to a non-key OID."""
    assert der.count(RSA_OID) == 1
    return der.replace(RSA_OID, UNKNOWN_KEY_OID)


def _version(der: bytes, old: bytes, new: bytes) -> bytes:
    """The same DER with its version INTEGER (the first `old` bytes) replaced."""
    return der.replace(old, new, 1)


def _bad_version_cert(cert: x509.Certificate) -> bytes:
    """A certificate claiming X.509 version 6 (cryptography knows v1 and v3)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return _version(der, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x05")


def _bad_version_csr() -> bytes:
    """A PKCS#10 request claiming version 4 (only version 1, encoded 0, exists)."""
    der = csr_for(spare_key(3)).public_bytes(serialization.Encoding.DER)
    at = der.index(b"\x02\x01\x00")
    return der[:at] + b"\x02\x01\x03" + der[at + 3 :]


def _duplicate_extension(cert: x509.Certificate) -> x509.Certificate:
    """The certificate with its first extension repeated at the end (signature not redone)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    _, start, end = read_tlv(der, 0)
    outer = list(children(der, start, end))
    _, _, tbs_content, tbs_end = outer[0]
    tbs = [der[s:e] for _, s, _, e in children(der, tbs_content, tbs_end)]
    _, wrapped_start, wrapped_end = read_tlv(tbs[-1], 0)  # [3] { SEQUENCE OF Extension }
    seq = tbs[-1][wrapped_start:wrapped_end]
    _, seq_start, seq_end = read_tlv(seq, 0)
    extensions = [seq[s:e] for _, s, _, e in children(seq, seq_start, seq_end)]
    tbs[-1] = encode_tlv(0xA3, encode_tlv(0x30, b"".join([*extensions, extensions[0]])))
    rest = b"".join(der[s:e] for _, s, _, e in outer[1:])
    return x509.load_der_x509_certificate(encode_tlv(0x30, encode_tlv(0x30, b"".join(tbs)) + rest))


def _bitstring_subject(cert: x509.Certificate) -> x509.Certificate:
    """The certificate with its subject's countryName re-tagged as a BIT STRING."""
    der = cert.public_bytes(serialization.Encoding.DER)
    at = der.rindex(b"\x13\x02XX")  # the subject's C=XX (the issuer's comes first)
    return x509.load_der_x509_certificate(der[:at] + b"\x03\x02\x00X" + der[at + 4 :])


# --- the codec and the parsers ------------------------------------------------------------------

EXACT_INPUTS: dict[str, tuple[str, bytes]] = {
    # bug id: (target id, smallest input we know, as the fuzzer target receives it)
    "lifetime-unicode-digit": (
        "myproxy_codec.parse_request",
        GET_REQUEST + "LIFETIME=\u00b2\nCOMMAND=0\n".encode() + b"\0",
    ),
    "slash-to-name-valueerror": ("voms_ext.slash_to_name", b"/O=0+O=0"),
    "fqan-trailing-newline": ("voms_ext.parse_fqan", b"/dteam\n"),
    "config-duration-overflow": (
        "config.parse_config",
        b'[server]\nhost_cert = "c"\nhost_key = "k"\n[policy]\nmax_proxy_lifetime = 99999999999999999\n',
    ),
    "config-voms-entry-not-table": (
        "config.parse_config",
        b'voms = [1]\n[server]\nhost_cert = "c"\nhost_key = "k"\n',
    ),
    "config-path-home": (
        "config.parse_config",
        b'[server]\nhost_cert = "~nosuchuser-proxyd/c"\nhost_key = "k"\n',
    ),
    "config-toml-recursion": ("config.parse_config", b"x = " + b"[" * 1000 + b"]" * 1000),
    "config-path-nul": (
        "config.parse_config",
        b'[server]\nhost_cert = "c\\u0000"\nhost_key = "k"\n',
    ),
}


@pytest.mark.parametrize("bug_id", sorted(EXACT_INPUTS))
def test_known_bug_inputs_are_classified_by_the_harness(bug_id: str) -> None:
    """The fuzz harness now refuses each pinned input cleanly (the bugs are fixed)."""
    target_id, data = EXACT_INPUTS[bug_id]
    outcome = targets.call(targets.target(target_id), data)
    assert outcome == "refused", outcome


def _regression_problems(bugs: tuple[targets.KnownBug, ...]) -> list[str]:
    """Why listed bugs are not pinned by a strict xfail test in this module (empty: all are)."""
    module = importlib.import_module(__name__)
    problems = []
    for bug in bugs:
        path, _, name = bug.regression.partition("::")
        test = getattr(module, name, None)
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "xfail"]
        if path != "tests/reliability/test_fuzz_regressions.py":
            problems.append(f"{bug.id}: its regression test is not in this module ({path})")
        elif test is None:
            problems.append(f"{bug.id}: no test {name}")
        elif not (marks and marks[0].kwargs.get("strict") is True):
            problems.append(f"{bug.id}: {name} is not xfail(strict)")
    return problems


def _pinned_example() -> None:
    pass


_pinned_example.pytestmark = [pytest.mark.xfail(strict=True)]  # type: ignore[attr-defined]


def test_every_known_bug_has_a_regression_test() -> None:
    assert _regression_problems(targets.KNOWN_BUGS) == []


def test_the_known_bug_check_finds_unpinned_bugs() -> None:
    """The check above can fail: it names a missing test and a test that is not a strict xfail."""

    def bug(regression: str) -> targets.KnownBug:
        return targets.KnownBug("b1", ("t",), (ValueError,), "x", "example", regression)

    here = "tests/reliability/test_fuzz_regressions.py::"
    assert _regression_problems((bug(here + "_pinned_example"),)) == []
    assert _regression_problems((bug(here + "no_such_test"),)) == ["b1: no test no_such_test"]
    assert _regression_problems((bug(here + "test_every_known_bug_has_a_regression_test"),)) == [
        "b1: test_every_known_bug_has_a_regression_test is not xfail(strict)"
    ]
    assert _regression_problems((bug("tests/elsewhere.py::x"),)) == [
        "b1: its regression test is not in this module (tests/elsewhere.py)"
    ]


def test_lifetime_with_a_non_ascii_digit_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_request(GET_REQUEST + "LIFETIME=\u00b2\n".encode() + b"\0")


def test_csr_with_an_unloadable_key_is_a_bad_request() -> None:
    der = _unloadable_key(csr_for(spare_key(3)).public_bytes(serialization.Encoding.DER))
    with pytest.raises((p.ProtocolError, BadRequest)):
        check_public_key(p.parse_csr(der))


@pytest.mark.parametrize("dn", ["/3.5=x", "/O=0+O=0"])
def test_slash_to_name_errors_are_dn_errors(dn: str) -> None:
    with pytest.raises(DistinguishedNameError):
        slash_to_name(dn)


def test_fqan_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(FqanError):
        parse_fqan("/dteam\n")


@pytest.mark.parametrize("where", ["parse_csr", "parse_certificates", "parse_credential_pem"])
def test_unknown_x509_version_is_a_parse_error(dev_pki: DevPKI, where: str) -> None:
    cert_der = _bad_version_cert(load_identity(dev_pki, "alice").cert)
    if where == "parse_csr":
        with pytest.raises(p.ProtocolError):
            p.parse_csr(_bad_version_csr())
    elif where == "parse_certificates":
        with pytest.raises(p.ProtocolError):
            p.parse_certificates(bytes([1]) + cert_der)
    else:
        pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(cert_der)
        with pytest.raises(VomsExtError):
            parse_credential_pem(pem + b"-----END CERTIFICATE-----\n")


def test_certificate_with_a_bitstring_name_attribute_is_a_voms_ext_error(
    dev_pki: DevPKI,
) -> None:
    cert = _bitstring_subject(load_identity(dev_pki, "alice").cert)
    with pytest.raises(ProxyError):
        classify(cert)
    with pytest.raises(ChainError):
        validate_chain([cert], trust_of(dev_pki))


def test_certificate_with_a_duplicate_extension_is_a_voms_ext_error(dev_pki: DevPKI) -> None:
    cert = _duplicate_extension(load_identity(dev_pki, "alice").cert)
    with pytest.raises(ProxyError, match=r"extension [\d.]+ appears more than once"):
        classify(cert)
    with pytest.raises(ChainError, match=r"certificate 1 of the chain .*appears more than once"):
        validate_chain([cert], trust_of(dev_pki))


def test_trust_anchor_with_a_duplicate_extension_is_skipped_and_reported(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "certificates"
    shutil.copytree(dev_pki.cert_dir, cert_dir)
    ca = x509.load_pem_x509_certificate(dev_pki.ca_cert.read_bytes())
    broken = _duplicate_extension(ca)
    (cert_dir / "deadbeef.0").write_bytes(broken.public_bytes(serialization.Encoding.PEM))
    trust = TrustStore.from_dirs(cert_dir, dev_pki.voms_dir)
    assert any("deadbeef.0" in p and "appears more than once" in p for p in trust.problems)
    # the good copy of the CA still anchors alice's chain
    validate_chain([load_identity(dev_pki, "alice").cert], trust)


def _issued_by(issuer: Identity, key: rsa.RSAPublicKey, cn: str) -> x509.Certificate:
    """A plain (non-proxy) certificate named below `issuer`, signed by it: voms_ext calls it an EEC."""
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            *issuer.cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(issuer.key, hashes.SHA256())
    )


def test_chain_with_an_unknown_key_type_issuer_is_a_chain_error(dev_pki: DevPKI) -> None:
    alice = load_identity(dev_pki, "alice")
    leaf = _issued_by(alice, spare_key(3).public_key(), "not a proxy")
    bogus_alice = x509.load_der_x509_certificate(
        _unloadable_key(alice.cert.public_bytes(serialization.Encoding.DER))
    )
    with pytest.raises(ChainError):
        validate_chain([leaf, bogus_alice], trust_of(dev_pki))


def test_renewal_reply_with_an_unloadable_key_is_a_challenge_error(dev_pki: DevPKI) -> None:
    alice = load_identity(dev_pki, "alice")
    bad = _unloadable_key(alice.cert.public_bytes(serialization.Encoding.DER))
    reply = bytes([4, 0, 0, 0, 0, 0, 0, 4]) + b"sign" + bytes([1]) + bad
    with pytest.raises(ChallengeError):
        parse_challenge_reply(reply, targets.CHALLENGES)


CONFIG_HEAD = '[server]\nhost_cert = "c"\nhost_key = "k"\n'


@pytest.mark.parametrize(
    "text",
    [
        CONFIG_HEAD + "[policy]\nmax_proxy_lifetime = 99999999999999999\n",
        CONFIG_HEAD + '[policy]\nlockout_max = "999999999999d"\n',
    ],
    ids=["integer", "string"],
)
def test_config_huge_duration_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text)


@pytest.mark.parametrize("entry", ["1", '"vo"'])
def test_config_voms_entry_that_is_not_a_table_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(f"voms = [{entry}]\n" + CONFIG_HEAD)


def test_config_nested_too_deep_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config("x = " + "[" * 1000 + "]" * 1000 + "\n" + CONFIG_HEAD)


def test_config_path_of_unknown_user_home_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config('[server]\nhost_cert = "~nosuchuser-proxyd/c"\nhost_key = "k"\n')


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nhost_cert = "c\\u0000"\nhost_key = "k"\n',
        CONFIG_HEAD + 'database = "sqlite:///db\\u0000"\n',
    ],
    ids=["host_cert", "database"],
)
def test_config_path_with_nul_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text)


# --- where the parser bugs reach the running service -----------------------------------------------


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, passphrase_attempts=1_000_000)
    with running_server(dev_pki, tmp_path_factory.mktemp("reg") / "state", policy=policy) as srv:
        yield srv


@pytest.fixture(scope="module")
def alice_files(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("reg-creds")
    directory.chmod(0o700)
    local = make_proxy(load_identity(server.pki, "alice"))
    path = directory / "alice.pem"
    write_credential_file(path, Credential(local.certificates, local.key))
    client = MyProxyClient(
        "localhost",
        server.myproxy_port,
        cert_dir=server.pki.cert_dir,
        credential=ClientCredential(str(path)),
    )
    client.put("alice-reg", PASS, (local.cert, local.key, local.chain))
    client.put("alice-renew", "", (local.cert, local.key, local.chain), renewer="*")
    return path


def _raw(server: RunningServer, chunks: list[bytes], cred: Path | None = None) -> bytes:
    client = MyProxyClient(
        "localhost",
        server.myproxy_port,
        cert_dir=server.pki.cert_dir,
        credential=ClientCredential(str(cred)) if cred else None,
    )
    return client.raw(chunks)


def test_myproxy_lifetime_with_a_non_ascii_digit_is_answered_as_a_parse_error(
    server: RunningServer, alice_files: Path
) -> None:
    out = _raw(server, [b"0", GET_REQUEST + "LIFETIME=\u00b2\n".encode() + b"\0"])
    assert b"RESPONSE=1" in out
    assert b"internal server error" not in out
    assert b"ERROR=error parsing request" in out


@pytest.mark.parametrize("broken", ["unloadable-key", "version-4"])
def test_myproxy_get_with_a_broken_csr_is_refused_and_audited(
    server: RunningServer, alice_files: Path, broken: str
) -> None:
    before = len(server.repo.audit.query(owner=ALICE, operation="retrieve", limit=1000))
    if broken == "unloadable-key":
        csr = _unloadable_key(csr_for(spare_key(3)).public_bytes(serialization.Encoding.DER))
    else:
        csr = _bad_version_csr()
    out = _raw(server, [b"0", GET_REQUEST + b"LIFETIME=3600\n\0", csr])
    assert b"internal server error" not in out
    after = server.repo.audit.query(owner=ALICE, operation="retrieve", limit=1000)
    assert len(after) == before + 1, "the authorized GET left no audit event"


def test_api_proxy_with_an_unloadable_csr_key_is_a_400(
    server: RunningServer, alice_files: Path
) -> None:
    der = _unloadable_key(csr_for(spare_key(3)).public_bytes(serialization.Encoding.DER))
    pem = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()
    reply = ApiClient(server.api_port, server.pki.cert_dir).request(
        "POST", "/v1/credentials/default/proxy?username=alice-reg", {"csr": pem, "passphrase": PASS}
    )
    assert reply.status == 400, reply.body


@pytest.mark.parametrize(
    "broken",
    [
        "unloadable-key",
        "bitstring-subject",
        "duplicate-extension",
    ],
)
def test_myproxy_renewal_with_a_broken_proof_is_refused_and_audited(
    server: RunningServer, alice_files: Path, tmp_path: Path, broken: str
) -> None:
    alice = load_identity(server.pki, "alice")
    if broken == "unloadable-key":
        der = _unloadable_key(alice.cert.public_bytes(serialization.Encoding.DER))
        leaf = x509.load_der_x509_certificate(der)  # its key is only parsed when used
    elif broken == "bitstring-subject":
        leaf = _bitstring_subject(alice.cert)  # same key: the signature verifies
    else:
        leaf = _duplicate_extension(alice.cert)  # same key: the signature verifies
    # bob may renew (authorized_renewers = *) and is not a trusted retriever: he is challenged
    bob = make_proxy(load_identity(server.pki, "bob"))
    bob_path = tmp_path / "bob.pem"
    write_credential_file(bob_path, Credential(bob.certificates, bob.key))
    client = MyProxyClient(
        "localhost",
        server.myproxy_port,
        cert_dir=server.pki.cert_dir,
        credential=ClientCredential(str(bob_path)),
    )
    before = len(server.repo.audit.query(rule="renew.challenge_failed", limit=1000))
    try:
        client.get("alice-renew", renewal=(alice.key, [leaf]), key=spare_key(3))
        pytest.fail("the broken renewal proof was accepted")
    except MyProxyClientError as exc:
        refused = exc
    assert not any("internal server error" in e for e in refused.errors), refused
    assert len(server.repo.audit.query(rule="renew.challenge_failed", limit=1000)) == before + 1


@pytest.mark.parametrize("edge", ["myproxy", "api"])
def test_delegated_chain_with_an_unknown_version_is_refused_cleanly(
    server: RunningServer, alice_files: Path, edge: str
) -> None:
    alice = load_identity(server.pki, "alice")
    bad = _bad_version_cert(alice.cert)
    if edge == "myproxy":
        request = b"VERSION=MYPROXYv2\nCOMMAND=1\nUSERNAME=alice-v6\nPASSPHRASE=\nLIFETIME=3600\n\0"
        out = _raw(server, [b"0", request, bytes([1]) + bad], alice_files)
        assert b"RESPONSE=1" in out and b"internal server error" not in out, out[-200:]
    else:
        api = ApiClient(server.api_port, server.pki.cert_dir, alice_files)
        started = api.request("POST", "/v1/delegations", {"name": "v6"})
        assert started.status == 201, started.body
        pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bad)
        pem += b"-----END CERTIFICATE-----\n"
        reply = api.request("PUT", f"/v1/delegations/{started.json['id']}", {"chain": pem.decode()})
        assert reply.status == 400, reply.body


def test_myproxy_put_with_an_unknown_key_type_issuer_is_refused_cleanly(
    server: RunningServer, alice_files: Path
) -> None:
    alice = load_identity(server.pki, "alice")
    bogus_alice = x509.load_der_x509_certificate(
        _unloadable_key(alice.cert.public_bytes(serialization.Encoding.DER))
    )
    client = MyProxyClient(
        "localhost",
        server.myproxy_port,
        cert_dir=server.pki.cert_dir,
        credential=ClientCredential(str(alice_files)),
    )
    with client._start(p.Request(p.Command.PUT, "alice-bogus", "", 3600)) as conn:
        assert conn.response().type is p.ResponseType.OK
        csr = conn.receive(CertificateRequest).csr
        key = csr.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        conn.send(Chain((_issued_by(alice, key, "not a proxy"), bogus_alice)))
        response = conn.response()
    assert response.type is p.ResponseType.ERROR
    assert not any("internal server error" in e for e in response.errors), response.errors


def test_api_deeply_nested_json_is_a_400(server: RunningServer) -> None:
    reply = ApiClient(server.api_port, server.pki.cert_dir).request(
        "POST", "/v1/delegations", raw=b"[" * 60000
    )
    assert reply.status == 400, reply.body


def test_the_server_still_answers_after_the_regressions(
    server: RunningServer, alice_files: Path
) -> None:
    chain = MyProxyClient("localhost", server.myproxy_port, cert_dir=server.pki.cert_dir).get(
        "alice-reg", PASS, key=spare_key(3)
    )
    assert validate_chain(chain, server.repo.trust).identity == ALICE


def test_voms_ext_errors_are_one_hierarchy() -> None:
    """The contract the targets rely on: every voms_ext refusal is a VomsExtError."""
    assert issubclass(DistinguishedNameError, VomsExtError)
    assert issubclass(ChainError, VomsExtError) and issubclass(ProxyError, VomsExtError)
