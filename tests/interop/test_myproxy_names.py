"""Issue 15, finding 5 with the real clients: credential names and the real myproxy-info.

A name with a comma or a newline used to split `ADDL_CREDS` (a comma-
separated list) or a `CRED_<name>_*` line, and the real myproxy-info then
hid the owner's other credentials. New names are refused with a precise
error (here by the real myproxy-init); names stored before the rules
existed are shown escaped, and every credential is still listed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import update

from proxyd.devpki import DevPKI
from proxyd.repository import StoreOptions
from proxyd.store.models import CredentialRow
from tests.support.grid import delegate, load_identity
from tests.support.rows import stored_credentials
from tests.support.server import RunningServer, running_server
from tests.support.tools import run_tool

pytestmark = pytest.mark.interop

ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
PASS = "secret123"
# Names real users have: the default, a WMS name, a CRAB hash, user@vo, and the other
# allowed punctuation.
GOOD = ("wms-use", "e3b0c44298fc1c149afbf4c8996fb924", "alice@dteam", "x+y", "k:v", "a.b_c")
# Names stored by an older proxyd, before the rules: they must not hide the others.
LEGACY = {"legacy-comma": "a,b", "legacy-newline": "c\nCRED_OWNER=/CN=mallory", "legacy-eq": "e=f"}


def _env(server: RunningServer, workdir: Path, who: str) -> dict[str, str]:
    cert, key = server.pki.user(who)
    return server.myproxy_env() | {
        "HOME": str(workdir),
        "X509_USER_PROXY": str(workdir / "no-such-proxy"),
        "X509_USER_CERT": str(cert),
        "X509_USER_KEY": str(key),
    }


def test_real_myproxy_info_lists_every_credential(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    tmp_path.chmod(0o700)
    with running_server(dev_pki, tmp_path / "state") as server:
        alice = load_identity(dev_pki, "alice")
        for name in ("default", *GOOD, *LEGACY):
            delegate(server.repo, alice, StoreOptions("alice", name=name, passphrase=PASS))
        with server.repo.engine.begin() as conn:
            for placeholder, legacy in LEGACY.items():
                conn.execute(
                    update(CredentialRow)
                    .where(CredentialRow.name == placeholder)
                    .values(name=legacy, description=f"stored\nlong ago ({placeholder})")
                )
        info = run_tool(["myproxy-info", "-l", "alice"], env=_env(server, workdir, "alice"))
        out = info.stdout + info.stderr
        assert info.returncode == 0, out
        listed = re.findall(r"^\s*name: (.*)$", out, re.MULTILINE)
        assert set(GOOD) <= set(listed), out
        # Legacy names escaped, each on its own line; the default has no name line.
        assert {"a\\x2cb", "c\\x0aCRED_OWNER\\x3d/CN\\x3dmallory", "e\\x3df"} <= set(listed), out
        assert len(listed) == len(GOOD) + len(LEGACY), out
        owners = re.findall(r"^owner: (.*)$", out, re.MULTILINE)
        assert owners == [ALICE] * (1 + len(GOOD) + len(LEGACY)), out
        assert out.count("description: stored\\x0along ago") == len(LEGACY), out


@pytest.mark.parametrize(
    "name", ["wms,default", "abc\u202etxt", "n" * 100], ids=["comma", "rtl", "100-chars"]
)
def test_real_myproxy_init_is_told_why_a_name_is_refused(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, name: str
) -> None:
    tmp_path.chmod(0o700)
    with running_server(dev_pki, tmp_path / "state") as server:
        init = run_tool(
            ["myproxy-init", "-l", "alice", "-k", name, "-c", "1", "-t", "1", "-S"],
            env=_env(server, workdir, "alice"),
            input=f"{PASS}\n".encode(),
        )
        out = init.stdout + init.stderr
        assert init.returncode != 0, out
        assert "CRED_NAME" in out and "credential name is 1 to 64" in out, out
        assert stored_credentials(server.repo) == 0
