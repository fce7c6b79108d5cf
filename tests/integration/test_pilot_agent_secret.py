"""proxyd-pilot keeps its assignment secret in memory only and sends it on every call of the task."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxyd.devpki import DevPKI
from proxyd.pilot.agent import PilotAgent, PilotSettings
from proxyd.pilot.identity import IdentitySwitch
from tests.support.grid import load_identity
from voms_ext import ProxyBuilder

SECRET = "s3cr3t-of-this-instance-0123456789abcdefghijk"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"  # what the pilot must pass on


class FakeProxyd:
    """Answers the pilot's calls for one task; records what it was sent."""

    def __init__(self, dev_pki: DevPKI, command: list[str]) -> None:
        self.owner = load_identity(dev_pki, "alice")
        self.command = command
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.matched = False

    def request(self, method: str, path: str, body: Any = None, *, query: Any = None) -> Any:
        self.calls.append((method, path, dict(body or {})))
        if path == "/v1/pilot/match":
            if self.matched:
                return None
            self.matched = True
            return {
                "id": 7,
                "owner": "/C=XX/O=proxyd dev/OU=Users/CN=alice",
                "payload": {"command": self.command[0], "args": self.command[1:]},
                "requirements": {"memory_mb": 0},
                "max_wall_s": 60,
                "max_cpu_s": 60,
                "assignment_secret": SECRET,
            }
        if path.endswith("/proxy"):
            csr = x509.load_pem_x509_csr(body["csr"].encode())
            proxy = (
                ProxyBuilder(self.owner.cert, self.owner.chain)
                .from_csr(csr)
                .lifetime(dt.timedelta(minutes=30))
                .limited()
                .sign(self.owner.key)
            )
            pem = b"".join(
                c.public_bytes(serialization.Encoding.PEM)
                for c in (proxy, *self.owner.certificates)
            )
            return {"chain": pem.decode()}
        if path.endswith("/token"):
            ends = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
            return {
                "access_token": TOKEN,
                "token_type": "Bearer",
                "jti": "j-1",
                "expires_at": ends.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        return {"id": 7, "state": "running"}


def test_the_pilot_sends_its_secret_on_every_call_and_keeps_it_off_disk(
    dev_pki: DevPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.chmod(0o700)
    seen = tmp_path / "seen"
    seen.mkdir()
    # The payload records its environment and every file its work directory holds.
    script = (
        "import os, sys\n"
        "out = sys.argv[1]\n"
        "open(os.path.join(out, 'env'), 'w').write(repr(dict(os.environ)))\n"
        "files = b''.join(open(os.path.join(r, f), 'rb').read()\n"
        "                 for r, _, fs in os.walk('.') for f in fs)\n"
        "open(os.path.join(out, 'files'), 'wb').write(files)\n"
        "import time; time.sleep(1.5)\n"
    )
    api = FakeProxyd(dev_pki, [sys.executable, "-c", script, str(seen)])
    work = tmp_path / "work"
    work.mkdir()
    settings = PilotSettings(
        site="SITE-A", pilot_id="p-1", workdir_root=work, heartbeat_s=0.5, max_tasks=1
    )
    with caplog.at_level(logging.DEBUG):
        summary = PilotAgent(api, settings, IdentitySwitch("none")).run()
    assert summary.done == 1, summary.reasons
    task_calls = [(path, body) for _, path, body in api.calls if path.startswith("/v1/tasks/7/")]
    verbs = [path.rsplit("/", 1)[1] for path, _ in task_calls]
    assert verbs[:3] == ["proxy", "token", "start"], verbs
    assert verbs[-1] == "complete" and "heartbeat" in verbs, verbs
    assert all(body.get("assignment_secret") == SECRET for _, body in task_calls), task_calls
    assert all("assignment_secret" not in body for _, p, body in api.calls if "match" in p)
    assert SECRET not in caplog.text
    assert SECRET not in (seen / "env").read_text()
    assert SECRET.encode() not in (seen / "files").read_bytes()
    assert b"BEGIN CERTIFICATE" in (seen / "files").read_bytes()  # the proxy was there
    assert TOKEN.encode() in (seen / "files").read_bytes()  # and the token beside it
    assert "'BEARER_TOKEN_FILE': " in (seen / "env").read_text()
    assert list(work.iterdir()) == []
