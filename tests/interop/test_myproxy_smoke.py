"""Smoke test of the in-process server fixture with the real myproxy-info/logon."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from tests.support.server import running_server
from tests.support.tools import run_tool

pytestmark = pytest.mark.interop


def test_myproxy_init_then_logon(dev_pki: DevPKI, tmp_path: Path, workdir: Path) -> None:
    cert, key = dev_pki.user("alice")
    with running_server(dev_pki, tmp_path / "state") as server:
        env = server.myproxy_env() | {"X509_USER_CERT": str(cert), "X509_USER_KEY": str(key)}
        init = run_tool(
            ["myproxy-init", "-l", "alice", "-S", "-c", "1", "-t", "1"],
            env=env,
            input=b"secret123\n",
        )
        assert init.returncode == 0, init.stdout + init.stderr
        out = workdir / "got.pem"
        logon = run_tool(
            ["myproxy-logon", "-l", "alice", "-S", "-o", out],
            env=server.myproxy_env(),
            input=b"secret123\n",
        )
        assert logon.returncode == 0, logon.stdout + logon.stderr
        assert out.stat().st_mode & 0o077 == 0
        events = server.repo.audit.query(owner="/C=XX/O=proxyd dev/OU=Users/CN=alice")
        assert [e.event.rule for e in reversed(events)] == [
            "store.owner",  # delegation begun: key pair made, certificate request sent
            "store.owner",
            "retrieve.passphrase",
        ]
