"""The development PKI: layout, modes, names, and that it is idempotent."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from proxyd.config import load_config
from proxyd.devpki import DevPKI, generate
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
        if "key" in path.name:
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


def test_cli_dev_pki(tmp_path: Path) -> None:
    from proxyd.cli.main import main

    assert main(["dev-pki", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "proxyd.toml").is_file()


@pytest.mark.parametrize("name", ["alice", "bob", "carol", "pilot"])
def test_user_certs_are_end_entities(dev_pki: DevPKI, name: str) -> None:
    cert = _cert(dev_pki.user(name)[0])
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
