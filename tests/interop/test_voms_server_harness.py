"""The voms-server harness works: the real voms-proxy-init gets a verifiable AC from it.

voms-proxy-init writes its output file even when it fails, so every call
checks the exit code; the AC is judged by libvomsapi (vomscheck), never by
voms-proxy-info.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proxyd.devpki import CA_DN, DevPKI, user_dn
from tests.support.tools import run_tool
from tests.support.voms_server import (
    VomsServer,
    require_voms_server,
    run_sql,
    running_voms_server,
)
from tests.support.vomscheck import check_proxy

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

ALICE, BOB, CAROL = user_dn("alice"), user_dn("bob"), user_dn("carol")


def voms_proxy_init(
    server: VomsServer, pki: DevPKI, who: str, out: Path, voms: str = "dteam"
) -> tuple[int, str]:
    cert, key = pki.user(who)
    proc = run_tool(
        ["voms-proxy-init", "--voms", voms, "--vomses", server.vomses, "--cert", cert,
         "--key", key, "--out", out, "--valid", "1:00", "--timeout", "20"],
        env={"X509_CERT_DIR": str(pki.cert_dir), "X509_VOMS_DIR": str(server.voms_dir),
             "RANDFILE": "/dev/null"},
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_a_member_gets_an_ac_that_verifies_strictly(
    voms_server: VomsServer, dev_pki: DevPKI, voms_checker: Path, tmp_path: Path
) -> None:
    voms_server.add_member(ALICE, CA_DN, ["/dteam/analysis", "/dteam/Role=production"])
    out = tmp_path / "alice.pem"
    code, output = voms_proxy_init(
        voms_server, dev_pki, "alice", out, "dteam:/dteam/Role=production"
    )
    assert code == 0, output

    verdict = check_proxy(voms_checker, out, dev_pki.cert_dir, voms_server.voms_dir)
    assert verdict.ok, verdict.error
    (ac,) = verdict.acs
    assert ac.vo == "dteam"
    assert ac.issuer == voms_server.host_dn
    assert ac.holder == ALICE
    assert ac.uri == f"{voms_server.host}:{voms_server.port}"
    assert ac.fqans[0] == "/dteam/Role=production/Capability=NULL"
    assert set(ac.fqans) == {
        "/dteam/Role=production/Capability=NULL",
        "/dteam/Role=NULL/Capability=NULL",
        "/dteam/analysis/Role=NULL/Capability=NULL",
    }
    # without this server's .lsc the same AC does not verify: the check has teeth
    verdict = check_proxy(voms_checker, out, dev_pki.cert_dir, dev_pki.voms_dir)
    assert not verdict.ok


def test_a_non_member_is_refused(voms_server: VomsServer, dev_pki: DevPKI, tmp_path: Path) -> None:
    code, output = voms_proxy_init(voms_server, dev_pki, "carol", tmp_path / "carol.pem")
    assert code != 0
    assert "User unknown to this VO" in output


def test_a_role_not_held_is_refused(
    voms_server: VomsServer, dev_pki: DevPKI, tmp_path: Path
) -> None:
    voms_server.add_member(BOB, CA_DN)
    out = tmp_path / "bob.pem"
    assert voms_proxy_init(voms_server, dev_pki, "bob", out)[0] == 0
    code, output = voms_proxy_init(
        voms_server, dev_pki, "bob", tmp_path / "bob-role.pem", "dteam:/dteam/Role=production"
    )
    assert code != 0
    assert "Unable to satisfy B/dteam:production request" in output


def test_a_suspended_member_is_refused(
    voms_server: VomsServer, dev_pki: DevPKI, tmp_path: Path
) -> None:
    voms_server.add_member(BOB, CA_DN)
    voms_server.suspend(BOB, "policy violation")
    try:
        code, output = voms_proxy_init(voms_server, dev_pki, "bob", tmp_path / "bob.pem")
    finally:
        voms_server.reinstate(BOB)
    assert code != 0
    assert "User is currently suspended" in output
    assert "policy violation" in output


def test_the_server_is_stopped_and_its_database_dropped(dev_pki: DevPKI, tmp_path: Path) -> None:
    require_voms_server()
    with running_voms_server(dev_pki, tmp_path) as server:
        pid, database = server.pid, server.database
        assert Path(f"/proc/{pid}").exists()
        assert (server.voms_dir / "dteam" / f"{server.host}.lsc").read_text() == (
            f"{server.host_dn}\n{server.ca_dn}\n"
        )
    assert not Path(f"/proc/{pid}").exists()
    assert database not in run_sql("SHOW DATABASES;").split()


def test_a_killed_run_s_database_is_dropped_by_the_next(dev_pki: DevPKI, tmp_path: Path) -> None:
    require_voms_server()
    dead_pid = _finished_pid()
    orphan, orphan_user = f"proxyd_voms_dteam_{dead_pid}_deadbeef", f"pv_{dead_pid}_deadbeef"
    run_sql(f"CREATE DATABASE `{orphan}`; CREATE USER '{orphan_user}'@'localhost';")
    with running_voms_server(dev_pki, tmp_path):
        assert orphan not in run_sql("SHOW DATABASES;").split()
        assert orphan_user not in run_sql("SELECT user FROM mysql.user;").split()


def _finished_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
