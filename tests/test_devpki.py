"""The development PKI: layout, modes, names, and that it is idempotent."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxyd.config import load_config
from proxyd.devpki import PKCS12_PASSPHRASE, DevPKI, generate, user_dn
from tests.support.https import ApiClient
from tests.support.server import running_server
from voms_ext import Credential, write_credential_file
from voms_ext.names import dn_to_slash, subject_hash

EXPECTED_FILES = [
    "ca/ca.pem",
    "ca/ca.key",
    "host/hostcert.pem",
    "host/hostkey.pem",
    "wms/hostcert.pem",
    "wms/hostkey.pem",
    "aa/vomscert.pem",
    "aa/vomskey.pem",
    "vomsdir/dteam/voms.localhost.lsc",
    "vomsdir/ops/voms.localhost.lsc",
    "users/alice/usercert.pem",
    "users/alice/userkey.pem",
    "users/bob/usercert.pem",
    "users/bob/userkey.pem",
    "users/carol/usercert.pem",
    "users/carol/userkey.pem",
    "pilot/usercert.pem",
    "pilot/userkey.pem",
    "users/auditor/usercert.pem",
    "users/auditor/userkey.pem",
    "users/auditor/usercred.p12",
    "users/admin/usercert.pem",
    "users/admin/userkey.pem",
    "users/admin/usercred.p12",
    "proxyd.toml",
]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_layout_is_complete(dev_pki: DevPKI) -> None:
    for rel in EXPECTED_FILES:
        assert (dev_pki.root / rel).is_file(), rel
    h = subject_hash(_cert(dev_pki.ca_cert).subject)
    for suffix in ("0", "signing_policy", "namespaces"):
        assert (dev_pki.cert_dir / f"{h}.{suffix}").is_file()
    assert (dev_pki.root / "state").is_dir()


def test_private_keys_are_0600_and_certs_readable(dev_pki: DevPKI) -> None:
    for path in dev_pki.root.rglob("*"):
        if not path.is_file():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if "key" in path.name or path.suffix == ".p12":
            assert mode == 0o600, f"{path} is {oct(mode)}"
        else:
            assert mode & 0o077 in (0o044, 0o000) or mode == 0o644, f"{path} is {oct(mode)}"


def test_names_follow_the_grid_conventions(dev_pki: DevPKI) -> None:
    assert dn_to_slash(_cert(dev_pki.user("alice")[0]).subject) == (
        "/C=XX/O=proxyd dev/OU=Users/CN=alice"
    )
    assert dn_to_slash(_cert(dev_pki.host("host")[0]).subject) == (
        "/C=XX/O=proxyd dev/OU=Hosts/CN=localhost"
    )
    assert dn_to_slash(_cert(dev_pki.host("wms")[0]).subject) == (
        "/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"
    )
    host = _cert(dev_pki.host("host")[0])
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = _cert(dev_pki.ca_cert)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > __import__("datetime").timedelta(
        days=3649
    )


def test_lsc_names_the_aa_and_its_ca(dev_pki: DevPKI) -> None:
    aa = _cert(dev_pki.host("aa")[0])
    lines = (dev_pki.voms_dir / "dteam" / "voms.localhost.lsc").read_text().splitlines()
    assert lines == [dn_to_slash(aa.subject), dn_to_slash(aa.issuer)]


def test_subject_hash_matches_openssl(dev_pki: DevPKI) -> None:
    for path in (dev_pki.ca_cert, dev_pki.user("alice")[0], dev_pki.host("aa")[0]):
        out = subprocess.run(
            ["openssl", "x509", "-noout", "-subject_hash", "-in", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert subject_hash(_cert(path).subject) == out


def test_config_loads_and_wires_the_pki(dev_pki: DevPKI) -> None:
    config = load_config(dev_pki.config)
    assert config.server.host_cert == dev_pki.host("host")[0]
    assert config.server.cert_dir == dev_pki.cert_dir
    assert config.server.database == f"sqlite:///{dev_pki.root / 'state' / 'proxyd.db'}"
    assert str(config.myproxy.listen) == "127.0.0.1:7512"
    assert str(config.api.listen) == "127.0.0.1:8443"
    assert config.policy.trusted_retrievers == ("/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost",)
    assert config.policy.pilot_dns == ("/C=XX/O=proxyd dev/OU=Pilots/CN=pilot",)
    dteam = config.vo("dteam")
    assert dteam is not None and dteam.uri == "voms.localhost:15000"
    assert dteam.members["/C=XX/O=proxyd dev/OU=Users/CN=alice"] == (
        "/dteam",
        "/dteam/analysis",
        "/dteam/Role=production",
    )
    assert dteam.members["/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"] == ("/dteam/Role=pilot",)
    ops = config.vo("ops")
    assert ops is not None and ops.members == {"/C=XX/O=proxyd dev/OU=Users/CN=carol": ("/ops",)}


def test_generate_is_idempotent_and_force_replaces(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    first = generate(out)
    ca_before = first.ca_cert.read_bytes()
    (out / "state" / "marker").write_text("x")
    again = generate(out)
    assert again.ca_cert.read_bytes() == ca_before
    assert (out / "state" / "marker").exists()
    generate(out, force=True)
    assert first.ca_cert.read_bytes() != ca_before
    assert not (out / "state" / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pki"], "scratch directories left behind"


def test_cli_dev_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proxyd.cli.main import main

    assert main(["dev-pki", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "proxyd.toml").is_file()
    out = capsys.readouterr().out
    pki = DevPKI(tmp_path / "c")
    assert f"auditor:       {pki.pkcs12('auditor')}" in out
    assert f"PKCS#12 passphrase: {PKCS12_PASSPHRASE}" in out
    assert f"CA to trust:   {pki.ca_cert}" in out


def test_make_run_tells_how_to_open_the_dashboard() -> None:
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    run = makefile[makefile.index("\nrun: pki") :].split("\n\n")[0]
    assert "https://localhost:8443/ui/" in run
    assert "$(PKI)/users/auditor/usercred.p12" in run
    assert f"passphrase {PKCS12_PASSPHRASE}" in run
    assert "$(PKI)/ca/ca.pem" in run


@pytest.mark.parametrize("name", ["auditor", "admin"])
def test_pkcs12_holds_the_certificate_key_and_ca(dev_pki: DevPKI, name: str) -> None:
    data = dev_pki.pkcs12(name).read_bytes()
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, b"wrong")
    loaded = pkcs12.load_pkcs12(data, PKCS12_PASSPHRASE.encode())
    assert loaded.cert is not None and loaded.key is not None
    cert = _cert(dev_pki.user(name)[0])
    assert loaded.cert.certificate == cert
    assert dn_to_slash(cert.subject) == user_dn(name)
    assert loaded.key.public_key() == cert.public_key()
    assert [c.certificate for c in loaded.additional_certs] == [_cert(dev_pki.ca_cert)]
    # OpenSSL, which browsers' importers and curl resemble, reads it with the same passphrase.
    subject = subprocess.run(
        [
            *("openssl", "pkcs12", "-in", str(dev_pki.pkcs12(name)), "-nokeys", "-clcerts"),
            *("-passin", f"pass:{PKCS12_PASSPHRASE}"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"CN = {name}" in subject or f"CN={name}" in subject


def test_config_names_the_auditor_and_the_admin(dev_pki: DevPKI) -> None:
    policy = load_config(dev_pki.config).policy
    assert policy.auditors == (user_dn("auditor"),)
    assert policy.admins == (user_dn("admin"),)


def test_the_auditor_opens_the_dashboard_and_others_do_not(dev_pki: DevPKI, tmp_path: Path) -> None:
    """The dev config as written (no policy override): the auditor's PKCS#12, unpacked into
    the PEM our TLS client takes, reads /ui/ over real mutual TLS; alice and the admin get
    the 403 page that names the rule."""
    loaded = pkcs12.load_pkcs12(dev_pki.pkcs12("auditor").read_bytes(), PKCS12_PASSPHRASE.encode())
    assert loaded.cert is not None and loaded.key is not None
    creds = {"auditor": tmp_path / "auditor.pem"}
    write_credential_file(creds["auditor"], Credential((loaded.cert.certificate,), loaded.key))
    for who in ("alice", "admin"):
        cert, key = dev_pki.user(who)
        creds[who] = tmp_path / f"{who}.pem"
        write_credential_file(
            creds[who], Credential((_cert(cert),), load_pem_private_key(key.read_bytes(), None))
        )
    with running_server(dev_pki, tmp_path / "state") as server:

        def get(who: str) -> tuple[int, str]:
            client = ApiClient(server.api_port, dev_pki.cert_dir, creds[who])
            reply = client.request("GET", "/ui/")
            return reply.status, reply.body.decode()

        status, page = get("auditor")
        assert status == 200 and "<title>Overview · proxyd audit</title>" in page
        assert "CN=auditor" in page
        for who in ("alice", "admin"):
            status, page = get(who)
            assert status == 403 and "audit_read.auditors" in page, who


@pytest.mark.parametrize("name", ["alice", "bob", "carol", "pilot"])
def test_user_certs_are_end_entities(dev_pki: DevPKI, name: str) -> None:
    cert = _cert(dev_pki.user(name)[0])
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign


def test_the_pki_issues_more_identities_from_its_ca(dev_pki: DevPKI) -> None:
    """`DevPKI.issue`: the one place tests make identities the PKI does not have."""
    from voms_ext import TrustStore, validate_chain

    cert, key = dev_pki.issue("/C=XX/O=proxyd dev/OU=Users/CN=dave")
    result = validate_chain((cert,), TrustStore.from_dirs(dev_pki.cert_dir))
    assert result.identity == "/C=XX/O=proxyd dev/OU=Users/CN=dave"
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    host, _ = dev_pki.issue(
        "/C=XX/O=proxyd dev/OU=Hosts/CN=se.example.org",
        server=True,
        sans=[x509.DNSName("se.example.org")],
        key=key,
    )
    assert host.public_key() == key.public_key()  # a given key is used, not a new one
    eku = host.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in list(eku)
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["se.example.org"]
