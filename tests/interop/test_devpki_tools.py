"""The real grid tools accept the development PKI."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from tests.support.tools import run_tool

pytestmark = pytest.mark.interop


def test_openssl_verifies_alice(dev_pki: DevPKI) -> None:
    proc = run_tool(["openssl", "verify", "-CApath", dev_pki.cert_dir, dev_pki.user("alice")[0]])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(": OK")


def test_grid_proxy_init_makes_a_proxy_from_alice(
    dev_pki: DevPKI, grid_env: dict[str, str], workdir: Path
) -> None:
    cert, key = dev_pki.user("alice")
    out = workdir / "x509up"
    proc = run_tool(
        ["grid-proxy-init", "-cert", cert, "-key", key, "-out", out, "-hours", "1"], env=grid_env
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    info = run_tool(["grid-proxy-info", "-file", out, "-identity", "-type"], env=grid_env)
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines() == [
        "/C=XX/O=proxyd dev/OU=Users/CN=alice",
        "RFC 3820 compliant impersonation proxy",
    ]
    verify = run_tool(
        [
            "openssl",
            "verify",
            "-allow_proxy_certs",
            "-CApath",
            dev_pki.cert_dir,
            "-untrusted",
            cert,
            out,
        ]
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
