"""The issue-6 scenario end to end, through the console scripts and a `proxyd serve` process.

alice stores with proxy-init; the WMS host gets a limited VOMS proxy over the API;
proxy-info and voms-proxy-info agree on it; proxyd-audit lists both events,
verifies the chain, and names the row after one is edited.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.devpki import DevPKI, user_dn
from tests.support.grid import csr_for, spare_key
from tests.support.https import ApiClient
from tests.support.server import free_port, write_config
from tests.support.tools import run_tool
from voms_ext import Credential, parse_credential_pem, write_credential_file

pytestmark = pytest.mark.interop
ALICE = user_dn("alice")
BIN = Path(sys.executable).parent


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "proxyd exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


def test_store_fetch_inspect_audit(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, grid_env: dict[str, str]
) -> None:
    mp, api = free_port(), free_port()
    state = tmp_path / "state"
    config = write_config(dev_pki, state, mp, api)
    server = subprocess.Popen(
        [str(BIN / "proxyd"), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(api, server)
        cert, key = dev_pki.user("alice")
        env = grid_env | {
            "X509_USER_CERT": str(cert),
            "X509_USER_KEY": str(key),
            "X509_USER_PROXY": str(workdir / "alice.pem"),
            "PROXYD_URL": f"https://localhost:{api}",
            "HOME": str(workdir),
        }
        stored = run_tool(
            [
                BIN / "proxy-init",
                "--store",
                "--no-passphrase",
                "--trusted-retrievers",
                "*/CN=wms.localhost",
                "-q",
            ],
            env=env,
        )
        assert stored.returncode == 0, stored.stdout + stored.stderr

        wms_cred = workdir / "wms.pem"
        host_cert, host_key = dev_pki.host("wms")
        write_credential_file(
            wms_cred,
            Credential(
                parse_credential_pem(Path(host_cert).read_bytes()).certificates,
                serialization.load_pem_private_key(Path(host_key).read_bytes(), None),  # type: ignore[arg-type]
            ),
        )
        client = ApiClient(api, dev_pki.cert_dir, wms_cred)
        reply = client.request(
            "POST",
            f"/v1/credentials/default/proxy?username={urllib.parse.quote(ALICE)}",
            {
                "csr": csr_for(spare_key(7)).public_bytes(serialization.Encoding.PEM).decode(),
                "voms": ["dteam"],
            },
        )
        assert reply.status == 200, reply.body
        got = workdir / "wms-proxy.pem"
        write_credential_file(
            got,
            Credential(
                parse_credential_pem(reply.json["chain"].encode()).certificates, spare_key(7)
            ),
        )

        info = run_tool(
            [BIN / "proxy-info", "--file", got, "--type", "--identity", "--fqan"], env=grid_env
        )
        assert info.returncode == 0, info.stderr
        assert info.stdout.splitlines() == [
            "RFC 3820 compliant limited proxy",
            ALICE,
            "/dteam/Role=NULL/Capability=NULL",
            "/dteam/analysis/Role=NULL/Capability=NULL",
        ]
        theirs = run_tool(["voms-proxy-info", "-all", "-file", got], env=grid_env)
        assert theirs.returncode == 0
        lines = [re.sub(r"\s+:\s+", " : ", line) for line in theirs.stdout.splitlines()]
        # voms-proxy-info does not tell limited from full ("RFC compliant proxy"); grid-proxy-info does.
        assert "type : RFC compliant proxy" in lines
        assert f"subject : {ALICE}" in lines and "VO : dteam" in lines  # the AC holder
        assert [x for x in lines if x.startswith("attribute : ")] == [
            "attribute : /dteam/Role=NULL/Capability=NULL",
            "attribute : /dteam/analysis/Role=NULL/Capability=NULL",
        ]
        gpi = run_tool(["grid-proxy-info", "-file", got, "-type"], env=grid_env)
        assert gpi.stdout.strip() == "RFC 3820 compliant limited proxy"
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)

    audit = [str(BIN / "proxyd-audit"), "--config", str(config)]
    query = run_tool([*audit, "query", "--owner", ALICE, "--json"])
    assert query.returncode == 0, query.stderr
    events = [json.loads(line) for line in query.stdout.splitlines()]
    assert [(e["operation"], e["decision"], e["rule"]) for e in events] == [
        ("retrieve", "allow", "retrieve.trusted"),
        ("store", "allow", "store.owner"),  # delegation begun (key made, CSR sent)
        ("store", "allow", "store.owner"),
    ]
    issued = events[0]
    assert issued["serial"] and issued["fqans"] and issued["actor_dn"].endswith("CN=wms.localhost")

    assert run_tool([*audit, "verify"]).returncode == 0
    with sqlite3.connect(state / "proxyd.db") as db:
        db.execute(
            "UPDATE audit_events SET lifetime_s = lifetime_s + 3600 WHERE seq = ?", (issued["seq"],)
        )
    broken = run_tool([*audit, "verify"])
    assert broken.returncode == 1
    assert f"audit chain BROKEN at row {issued['seq']}" in broken.stdout
