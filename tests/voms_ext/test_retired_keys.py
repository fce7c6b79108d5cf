"""DSA is refused everywhere with a sentence, and never makes `cryptography` warn.

The DSA material is made by the real `openssl` (cryptography would warn while
making it). Under pytest's `filterwarnings = error` a DSA key object created
anywhere on these paths fails the test with CryptographyDeprecationWarning,
so each test proves both the refusal and the absence of the warning.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from proxyd.devpki import DevPKI
from tests.support.tools import run_tool
from voms_ext import (
    ChainError,
    CredentialFileError,
    ProxyBuilder,
    ProxyError,
    TrustStore,
    parse_credential_pem,
    validate_chain,
)
from voms_ext.keys import retired_key_pem_problem, retired_key_problem


def _openssl(*args: str | Path) -> None:
    proc = run_tool(["openssl", *args])
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def dsa(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DSA key, a CSR for it, and a user certificate for it signed by the (RSA) dev CA."""
    out = tmp_path_factory.mktemp("dsa")
    out.chmod(0o700)
    _openssl("genpkey", "-genparam", "-algorithm", "DSA", "-pkeyopt", "dsa_paramgen_bits:2048",
             "-out", out / "params.pem")  # fmt: skip
    _openssl("genpkey", "-paramfile", out / "params.pem", "-out", out / "key.pem")
    _openssl("req", "-new", "-key", out / "key.pem", "-subj", "/DC=org/DC=example/CN=dsa user",
             "-out", out / "req.pem")  # fmt: skip
    _openssl("x509", "-req", "-in", out / "req.pem", "-CA", dev_pki.ca_cert, "-CAkey",
             dev_pki.ca_key, "-set_serial", "4242", "-days", "2", "-out", out / "cert.pem")  # fmt: skip
    # The same key in OpenSSL's traditional form, whose label names the algorithm.
    _openssl("pkey", "-in", out / "key.pem", "-traditional", "-out", out / "key-traditional.pem")
    (out / "key.pem").chmod(0o600)
    (out / "key-traditional.pem").chmod(0o600)
    return out


def test_a_dsa_certificate_is_named_as_retired(dsa: Path) -> None:
    cert = x509.load_pem_x509_certificate((dsa / "cert.pem").read_bytes())
    problem = retired_key_problem(cert)
    assert problem is not None and "DSA" in problem and "RSA" in problem


def test_a_dsa_request_is_named_as_retired(dsa: Path) -> None:
    csr = x509.load_pem_x509_csr((dsa / "req.pem").read_bytes())
    assert "DSA" in (retired_key_problem(csr) or "")


def test_rsa_material_is_not_retired(dev_pki: DevPKI) -> None:
    cert = x509.load_pem_x509_certificate(dev_pki.user("alice")[0].read_bytes())
    assert retired_key_problem(cert) is None
    assert retired_key_pem_problem(dev_pki.user("alice")[1].read_bytes()) is None


@pytest.mark.parametrize("key_file", ["key.pem", "key-traditional.pem"])
def test_a_dsa_credential_file_is_refused_before_its_key_is_loaded(
    dsa: Path, key_file: str
) -> None:
    pem = (dsa / "cert.pem").read_bytes() + (dsa / key_file).read_bytes()
    with pytest.raises(CredentialFileError, match="DSA key is no longer accepted"):
        parse_credential_pem(pem, source="usercred.pem")


def test_a_dsa_key_alone_is_refused_by_its_label(dev_pki: DevPKI, dsa: Path) -> None:
    # An RSA certificate with a traditional DSA key block: the label decides.
    pem = dev_pki.user("alice")[0].read_bytes() + (dsa / "key-traditional.pem").read_bytes()
    with pytest.raises(CredentialFileError, match="DSA private key is no longer accepted"):
        parse_credential_pem(pem, source="usercred.pem")


def test_a_chain_with_a_dsa_end_entity_does_not_validate(dev_pki: DevPKI, dsa: Path) -> None:
    cert = x509.load_pem_x509_certificate((dsa / "cert.pem").read_bytes())
    trust = TrustStore.from_dirs(dev_pki.cert_dir, dev_pki.voms_dir)
    with pytest.raises(ChainError, match="DSA key is no longer accepted"):
        validate_chain([cert], trust, at=dt.datetime.now(dt.UTC))


def test_a_dsa_request_gets_no_proxy(dev_pki: DevPKI, dsa: Path) -> None:
    alice = x509.load_pem_x509_certificate(dev_pki.user("alice")[0].read_bytes())
    csr = x509.load_pem_x509_csr((dsa / "req.pem").read_bytes())
    with pytest.raises(ProxyError, match="DSA key is no longer accepted"):
        ProxyBuilder(alice).from_csr(csr)


def test_proxy_init_refuses_a_dsa_user_key_in_one_line(dsa: Path, tmp_path: Path) -> None:
    """What a user sees: one sentence on stderr, no Python warning, no traceback."""
    proxy_init = Path(sys.executable).with_name("proxy-init")
    proc = subprocess.run(
        [str(proxy_init), "--cert", str(dsa / "cert.pem"), "--key", str(dsa / "key.pem"),
         "--out", str(tmp_path / "proxy.pem")],
        env={**os.environ, "PYTHONWARNINGS": "default"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "DSA key is no longer accepted" in proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "proxy.pem").exists()
