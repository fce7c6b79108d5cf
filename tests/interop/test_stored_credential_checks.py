"""A revoked or locked stored credential, seen by the real `myproxy-logon` as the WMS (issue 15).

A real `proxyd serve` process on its own copy of the dev trust directory.
The revocation is a real CRL signed by the dev CA, dropped into the
server's X509_CERT_DIR as `<hash>.r0` (as fetch-crl does) and picked up on
SIGHUP; the lock is set with the real `proxyd admin lock` command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI, host_dn, user_dn
from proxyd.repository import Repository
from tests.reliability.support import ServeProcess
from tests.support.grid import install_crl, load_identity
from tests.support.tools import require_tool, run_tool

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

ALICE = user_dn("alice")
WMS = host_dn("wms.localhost")
PASS = "secret123"
TIMEOUT = 30
MESSAGE = "Locked by grid security (ticket 4711): mail grid-security@example.org"


@pytest.fixture
def server(dev_pki: DevPKI, tmp_path: Path) -> Iterator[ServeProcess]:
    """`proxyd serve` whose X509_CERT_DIR is a copy this test may change; reloads on SIGHUP."""
    require_tool("myproxy-logon")
    cert_dir = tmp_path / "certificates"
    shutil.copytree(dev_pki.cert_dir, cert_dir)
    proc = ServeProcess(dev_pki, tmp_path / "state")
    text = proc.config.read_text()
    assert 'cert_dir = "certificates"' in text
    proc.config.write_text(
        text.replace(
            'cert_dir = "certificates"',
            f'cert_dir = "{cert_dir}"\ntrust_reload_interval = "1h"',  # only SIGHUP reloads
        )
    )
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


def client(
    server: ServeProcess, workdir: Path, who: str, *args: str | Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A real MyProxy client as `who` ("wms" or a user), trusting the dev CA."""
    cert, key = server.pki.host(who) if who == "wms" else server.pki.user(who)
    env = {
        "X509_CERT_DIR": str(server.pki.cert_dir),
        "X509_VOMS_DIR": str(server.pki.voms_dir),
        "X509_USER_CERT": str(cert),
        "X509_USER_KEY": str(key),
        "X509_USER_PROXY": str(workdir / "no-such-proxy"),
        "MYPROXY_SERVER": "localhost",
        "MYPROXY_SERVER_PORT": str(server.myproxy_port),
        "HOME": str(workdir),
        "RANDFILE": "/dev/null",
    }
    return run_tool(
        args, env=env, input=None if stdin is None else f"{stdin}\n".encode(), timeout=TIMEOUT
    )


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"[exit {proc.returncode}]\n{proc.stdout}{proc.stderr}"


def audit_of(server: ServeProcess, rule: str) -> list[tuple[str, str, str | None, str]]:
    repo = Repository.open(load_config(server.config))
    try:
        events = repo.audit.query(rule=rule, newest_first=False)
        assert repo.audit.verify().ok
        return [
            (e.event.operation, e.event.actor_dn, e.event.owner_dn, e.event.detail or "")
            for e in events
        ]
    finally:
        repo.engine.dispose()


def test_a_revoked_credential_is_refused_to_the_real_myproxy_logon(
    server: ServeProcess, dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    stored = client(server, workdir, "alice", "myproxy-init", "-l", "alice", "-c", "1", "-t", "1",
                    "-n", "-Z", "wms.localhost")  # fmt: skip
    assert stored.returncode == 0, output(stored)
    before = workdir / "before.pem"
    got = client(server, workdir, "wms", "myproxy-logon", "-l", "alice", "-n", "-o", before)
    assert got.returncode == 0 and before.exists(), output(got)

    # fetch-crl drops a CRL of the dev CA revoking alice's certificate; the server reloads.
    reloads = server.log().count("trust directories reloaded")
    install_crl(
        dev_pki, tmp_path / "certificates", load_identity(dev_pki, "alice").cert.serial_number
    )
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while server.log().count("trust directories reloaded") == reloads:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)

    after = workdir / "after.pem"
    refused = client(server, workdir, "wms", "myproxy-logon", "-l", "alice", "-n", "-o", after)
    text = output(refused)
    assert refused.returncode != 0 and not after.exists(), text
    assert "credential.revoked" in text and "the stored credential has been revoked" in text, text
    serial = str(load_identity(dev_pki, "alice").cert.serial_number)
    assert serial in text
    [(operation, actor, owner, detail)] = audit_of(server, "credential.revoked")
    assert (operation, actor, owner) == ("retrieve", WMS, ALICE)
    assert "has been revoked" in detail


def test_a_locked_credential_shows_the_operator_message_to_the_real_myproxy_logon(
    server: ServeProcess, workdir: Path
) -> None:
    trusted = client(server, workdir, "alice", "myproxy-init", "-l", "alice", "-c", "1", "-t", "1",
                     "-n", "-Z", "wms.localhost")  # fmt: skip
    assert trusted.returncode == 0, output(trusted)
    secret = client(server, workdir, "alice", "myproxy-init", "-l", "alice", "-k", "pp",
                    "-c", "1", "-t", "1", "-S", stdin=PASS)  # fmt: skip
    assert secret.returncode == 0, output(secret)

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxyd.cli.main", "admin", "--config", str(server.config), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    locked = admin("lock", "--username", "alice", "--message", MESSAGE)
    assert locked.returncode == 0, locked.stderr
    listing = admin("list")
    assert listing.stdout.count(f"locked: {MESSAGE}") == 2, listing.stdout

    wms_out, pass_out = workdir / "wms.pem", workdir / "pass.pem"
    by_wms = client(server, workdir, "wms", "myproxy-logon", "-l", "alice", "-n", "-o", wms_out)
    by_pass = client(server, workdir, "wms", "myproxy-logon", "-l", "alice", "-k", "pp", "-S",
                     "-o", pass_out, stdin=PASS)  # fmt: skip
    for refused, out in ((by_wms, wms_out), (by_pass, pass_out)):
        text = output(refused)
        assert refused.returncode != 0 and not out.exists(), text
        assert f"credential locked: {MESSAGE}" in text and "credential.locked" in text, text

    unlocked = admin("unlock", "--username", "alice", "--name", "default")
    assert unlocked.returncode == 0, unlocked.stderr
    again = client(server, workdir, "wms", "myproxy-logon", "-l", "alice", "-n", "-o", wms_out)
    assert again.returncode == 0 and wms_out.exists(), output(again)
    still = client(server, workdir, "wms", "myproxy-logon", "-l", "alice", "-k", "pp", "-S",
                   "-o", pass_out, stdin=PASS)  # fmt: skip
    assert still.returncode != 0 and MESSAGE in output(still), output(still)

    denials = audit_of(server, "credential.locked")
    assert [(op, actor) for op, actor, _, _ in denials] == [
        ("retrieve", WMS),
        ("retrieve", WMS),
        ("retrieve", WMS),
    ]
    admin_events = [d for _, _, _, d in audit_of(server, "admin.local_operator")]
    assert admin_events == [  # one decision, one event, naming every credential it changed
        f"lock alice/default, alice/pp: {MESSAGE}",
        "list credentials",  # `proxyd admin list`: a read, decided and recorded too
        "unlock alice/default",
    ]
