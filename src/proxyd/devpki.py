"""A development PKI for proxyd: a CA, hosts, users, a pilot, a VOMS AA, an auditor and an admin.

`proxyd dev-pki` writes it; the test suite builds one per session. Everything
is generated with `cryptography` in a scratch directory and moved into place
in one rename, so an interrupted run leaves either nothing or a complete PKI.

The auditor and the admin also get a PKCS#12 file (`usercred.p12`, the Globus
name) for a browser to import: the dev config names the auditor in
`[policy] auditors`, so the dashboard at /ui/ opens with it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from voms_ext.files import private_key_to_pem, write_atomic
from voms_ext.names import dn_to_slash, slash_to_name, subject_hash

BASE_DN = "/C=XX/O=proxyd dev"
CA_DN = f"{BASE_DN}/CN=proxyd dev CA"
USERS = ("alice", "bob", "carol")
# The people who look after the service: the auditor reads the dashboard and the audit log,
# the admin uses the admin API. Separate identities, as the policy keeps the roles apart.
STAFF = ("auditor", "admin")
# The PKCS#12 passphrase. It protects nothing the PEM key beside it (0600, unencrypted) does
# not already give away; it is not empty because some key stores (macOS Keychain, for
# one) refuse to import a PKCS#12 without one. Fixed, so the docs and `make run` can name it.
PKCS12_PASSPHRASE = "proxyd-dev"  # noqa: S105 - a published dev value, see above
PILOT_DN = f"{BASE_DN}/OU=Pilots/CN=pilot"
SERVICE_HOST = "localhost"
WMS_HOST = "wms.localhost"
AA_HOST = "voms.localhost"
VO_PORTS = {"dteam": 15000, "ops": 15001}
# Where the dev config's [aa] endpoint listens once enabled; vomses/ points voms-proxy-init at it.
AA_LISTEN_PORT = 15000
MEMBERS: dict[str, dict[str, list[str]]] = {
    "dteam": {
        f"{BASE_DN}/OU=Users/CN=alice": ["/dteam", "/dteam/analysis", "/dteam/Role=production"],
        f"{BASE_DN}/OU=Users/CN=bob": ["/dteam"],
        PILOT_DN: ["/dteam/Role=pilot"],
    },
    "ops": {
        f"{BASE_DN}/OU=Users/CN=carol": ["/ops"],
    },
}
KEY_BITS = 2048


def user_dn(name: str) -> str:
    return f"{BASE_DN}/OU=Users/CN={name}"


def host_dn(fqdn: str) -> str:
    return f"{BASE_DN}/OU=Hosts/CN={fqdn}"


@dataclass(frozen=True)
class DevPKI:
    """Paths of a generated development PKI."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def cert_dir(self) -> Path:
        return self.root / "certificates"

    @property
    def voms_dir(self) -> Path:
        return self.root / "vomsdir"

    @property
    def config(self) -> Path:
        return self.root / "proxyd.toml"

    @property
    def vomses(self) -> Path:
        """vomses files (one per VO) naming proxyd's [aa] endpoint, for voms-proxy-init --vomses."""
        return self.root / "vomses"

    def host(self, kind: str = "host") -> tuple[Path, Path]:
        """(cert, key) of `host` (the service), `wms` or `aa`."""
        if kind == "aa":
            return self.root / "aa" / "vomscert.pem", self.root / "aa" / "vomskey.pem"
        return self.root / kind / "hostcert.pem", self.root / kind / "hostkey.pem"

    def user(self, name: str) -> tuple[Path, Path]:
        """(cert, key) of a user (alice, bob, carol, auditor, admin) or of `pilot`."""
        base = self.root / "pilot" if name == "pilot" else self.root / "users" / name
        return base / "usercert.pem", base / "userkey.pem"

    def issue(
        self,
        dn: str,
        *,
        server: bool = False,
        sans: Sequence[x509.GeneralName] = (),
        key: rsa.RSAPrivateKey | None = None,
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """A new end-entity certificate from this PKI's CA, valid two years (client auth, and
        server auth when `server`): identities the PKI does not have, for tests and demos."""
        return _Issuer.load(self).issue(dn, server=server, sans=sans, key=key)

    def pkcs12(self, name: str) -> Path:
        """The PKCS#12 file (certificate, key and the dev CA) of `auditor` or `admin`,
        encrypted with PKCS12_PASSPHRASE."""
        return self.root / "users" / name / "usercred.p12"


class _Issuer:
    """The dev CA, issuing end-entity certificates."""

    @classmethod
    def load(cls, pki: DevPKI) -> _Issuer:
        """The CA of a PKI `generate` made, read back from its files."""
        ca = cls.__new__(cls)
        ca.now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        ca.cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError(f"{pki.ca_key}: the dev CA key is not RSA")
        ca.key = key
        return ca

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.key = _new_key()
        name = slash_to_name(CA_DN)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        dn: str,
        *,
        server: bool = False,
        sans: Sequence[x509.GeneralName] = (),
        key: rsa.RSAPrivateKey | None = None,
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = key or _new_key()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(slash_to_name(dn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=2 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
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


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_pair(
    directory: Path, cert_name: str, key_name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / cert_name, _pem(cert), 0o644)
    write_atomic(directory / key_name, private_key_to_pem(key), 0o600)


def _pkcs12(name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey, ca: _Issuer) -> bytes:
    # The CA goes in too, so a browser that imports the file shows a complete chain.
    return pkcs12.serialize_key_and_certificates(
        f"proxyd dev {name}".encode(),
        key,
        cert,
        [ca.cert],
        serialization.BestAvailableEncryption(PKCS12_PASSPHRASE.encode()),
    )


def _signing_policy(ca_dn: str) -> str:
    return (
        f"# Globus signing policy for the proxyd development CA\n"
        f"access_id_CA  X509  '{ca_dn}'\n"
        f"pos_rights    globus  CA:sign\n"
        f"cond_subjects globus  '\"{BASE_DN}/*\"'\n"
    )


def _namespaces(ca_dn: str) -> str:
    return (
        "# EUGridPMA namespaces for the proxyd development CA\n"
        f'TO Issuer "{ca_dn}" \\\n'
        f'  PERMIT Subject "{BASE_DN}/.*"\n'
    )


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _config_text() -> str:
    wms = host_dn(WMS_HOST)
    lines = [
        "# proxyd development configuration, written by `proxyd dev-pki`.",
        "# Relative paths are relative to this file's directory.",
        "",
        "[server]",
        'host_cert = "host/hostcert.pem"',
        'host_key = "host/hostkey.pem"',
        'cert_dir = "certificates"',
        'voms_dir = "vomsdir"',
        'state_dir = "state"',
        '# database = "sqlite:///state/proxyd.db"   (the default)',
        'master_key_file = "state/master.key"',
        "",
        "[myproxy]",
        'listen = "127.0.0.1:7512"',
        "",
        "[api]",
        'listen = "127.0.0.1:8443"',
        "",
        "# proxyd as the VOMS server of the VOs below, for voms-proxy-init --vomses vomses",
        "# (off by default; docs/operator.md, 'proxyd as the VO's AA'):",
        "# [aa]",
        f'# listen = "127.0.0.1:{AA_LISTEN_PORT}"',
        "",
        "[policy]",
        'max_proxy_lifetime = "12h"',
        'max_stored_lifetime = "7d"',
        f"trusted_retrievers = {_toml_list([wms])}",
        'authorized_retrievers = ["*"]',
        'authorized_renewers = ["*"]',
        "full_delegation_hosts = []",
        f"pilot_dns = {_toml_list([PILOT_DN])}",
        'pilot_fqans = ["/*/Role=pilot"]',
        "banned_dns = []",
        "# The dashboard (/ui/) and the audit API are for auditors; users/auditor/usercred.p12",
        "# is that identity for a browser. The admin API (bans, VO members, sites) is for admins.",
        f"auditors = {_toml_list([user_dn('auditor')])}",
        f"admins = {_toml_list([user_dn('admin')])}",
    ]
    for vo, port in VO_PORTS.items():
        lines += [
            "",
            "[[voms]]",
            f"vo = {_toml_str(vo)}",
            f'uri = "{AA_HOST}:{port}"',
            'aa_cert = "aa/vomscert.pem"',
            'aa_key = "aa/vomskey.pem"',
            'max_lifetime = "24h"',
            "[voms.members]",
        ]
        lines += [f"{_toml_str(dn)} = {_toml_list(fqans)}" for dn, fqans in MEMBERS[vo].items()]
    return "\n".join(lines) + "\n"


def _build(root: Path) -> None:
    ca = _Issuer()
    _write_pair(root / "ca", "ca.pem", "ca.key", ca.cert, ca.key)

    certdir = root / "certificates"
    certdir.mkdir()
    h = subject_hash(ca.cert.subject)
    ca_dn = dn_to_slash(ca.cert.subject)
    write_atomic(certdir / f"{h}.0", _pem(ca.cert), 0o644)
    write_atomic(certdir / f"{h}.signing_policy", _signing_policy(ca_dn).encode(), 0o644)
    write_atomic(certdir / f"{h}.namespaces", _namespaces(ca_dn).encode(), 0o644)

    host_sans: list[x509.GeneralName] = [
        x509.DNSName(SERVICE_HOST),
        x509.IPAddress(IPv4Address("127.0.0.1")),
    ]
    for kind, fqdn, sans in (
        ("host", SERVICE_HOST, host_sans),
        ("wms", WMS_HOST, [x509.DNSName(WMS_HOST)]),
    ):
        cert, key = ca.issue(host_dn(fqdn), server=True, sans=sans)
        _write_pair(root / kind, "hostcert.pem", "hostkey.pem", cert, key)

    aa_cert, aa_key = ca.issue(host_dn(AA_HOST), server=True, sans=[x509.DNSName(AA_HOST)])
    _write_pair(root / "aa", "vomscert.pem", "vomskey.pem", aa_cert, aa_key)
    lsc = f"{dn_to_slash(aa_cert.subject)}\n{ca_dn}\n"
    for vo in VO_PORTS:
        (root / "vomsdir" / vo).mkdir(parents=True)
        write_atomic(root / "vomsdir" / vo / f"{AA_HOST}.lsc", lsc.encode(), 0o644)
    # voms-proxy-init connects to the host and port of a vomses line and does not check the DN;
    # the DN is that of proxyd's host certificate, which answers on [aa].
    (root / "vomses").mkdir()
    for vo in VO_PORTS:
        line = f'"{vo}" "{SERVICE_HOST}" "{AA_LISTEN_PORT}" "{host_dn(SERVICE_HOST)}" "{vo}"\n'
        write_atomic(root / "vomses" / f"{vo}-{SERVICE_HOST}", line.encode(), 0o644)

    for name in USERS:
        cert, key = ca.issue(user_dn(name))
        _write_pair(root / "users" / name, "usercert.pem", "userkey.pem", cert, key)
    for name in STAFF:
        cert, key = ca.issue(user_dn(name))
        _write_pair(root / "users" / name, "usercert.pem", "userkey.pem", cert, key)
        write_atomic(root / "users" / name / "usercred.p12", _pkcs12(name, cert, key, ca), 0o600)
    cert, key = ca.issue(PILOT_DN)
    _write_pair(root / "pilot", "usercert.pem", "userkey.pem", cert, key)

    (root / "state").mkdir(mode=0o700)
    write_atomic(root / "proxyd.toml", _config_text().encode(), 0o644)


def generate(out: str | os.PathLike[str] = "certs-dev", *, force: bool = False) -> DevPKI:
    """Create the development PKI in `out` unless a complete one is there already.

    With `force`, an existing one (including its `state/`) is replaced.
    """
    root = Path(out).absolute()
    pki = DevPKI(root)
    if pki.config.exists() and not force:
        return pki
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        os.chmod(scratch, 0o755)  # noqa: S103 - public certificates; keys are 0600
        _build(scratch)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.replace(root, old / root.name)
            os.replace(scratch, root)
            shutil.rmtree(old)
        else:
            os.replace(scratch, root)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return pki
