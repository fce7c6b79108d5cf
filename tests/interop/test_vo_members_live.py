"""Acceptance (issue 17): members changed with `proxyd admin vo` take effect without a restart.

A running proxyd; the real `proxyd admin` command in another process changes
dteam's members in the database. The real `myproxy-logon -m dteam` of a WMS
and the HTTPS AC request go from refused to served with the FQAN, and back to
refused, with the server never restarted. The admin API does the same.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from tests.interop.test_myproxy_clients import Clients, ok, refused
from tests.support.grid import load_identity
from tests.support.https import ApiClient
from tests.support.server import RunningServer, running_server, write_config
from tests.support.vomscheck import check_proxy
from voms_ext import Credential, parse_attribute_certificate, write_credential_file

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

CAROL = user_dn("carol")
BOB = user_dn("bob")
ROOT = "/dteam/Role=NULL/Capability=NULL"
PRODUCTION = "/dteam/Role=production/Capability=NULL"


def proxyd_admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `proxyd admin` command, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "proxyd.cli.main", "admin", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def api_client(server: RunningServer, pki: DevPKI, who: str, out: Path) -> ApiClient:
    ident = load_identity(pki, who)
    path = out / f"{who}-api.pem"
    write_credential_file(path, Credential(ident.certificates, ident.key))
    return ApiClient(server.api_port, pki.cert_dir, path)


def ac_fqans(reply_json: dict[str, list[str]]) -> list[tuple[str, ...]]:
    return [parse_attribute_certificate(base64.b64decode(a)).fqans for a in reply_json["acs"]]


def test_members_changed_by_proxyd_admin_apply_without_a_restart(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, voms_checker: Path
) -> None:
    base = load_config(dev_pki.config).policy
    policy = dataclasses.replace(base, admins=(BOB,))
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        # The command's configuration: the same database and master key as the server's.
        config = write_config(dev_pki, tmp_path / "state", server.myproxy_port, server.api_port)
        c = Clients(server, dev_pki, workdir)
        carol_api = api_client(server, dev_pki, "carol", workdir)
        c.init("carol", "-n -Z wms.localhost")

        # carol is no dteam member (only ops, in the TOML seed): refused.
        refused(
            c.logon("-n -m dteam", c.out("before"), username="carol", who="wms"),
            "the owner does not hold: /dteam",
            "voms.fqan_not_held",
        )
        before = carol_api.request("POST", "/v1/voms/ac", {"voms": ["dteam"]})
        assert (before.status, before.json["rule"]) == (403, "voms.not_member")

        added = proxyd_admin(
            config, "vo", "add-member", "dteam", CAROL, "/dteam", "/dteam/Role=production"
        )
        assert added.returncode == 0, added.stderr
        assert f"added {CAROL} to VO dteam: /dteam /dteam/Role=production" in added.stdout

        served = c.out("served")
        ok(c.logon("-n -m dteam:/dteam/Role=production", served, username="carol", who="wms"))
        verdict = check_proxy(voms_checker, served, dev_pki.cert_dir, dev_pki.voms_dir)
        assert verdict.ok, verdict.error
        assert [(ac.vo, ac.fqans, ac.holder) for ac in verdict.acs] == [
            ("dteam", (PRODUCTION, ROOT), CAROL)
        ]
        reply = carol_api.request("POST", "/v1/voms/ac", {"voms": ["dteam"]})
        assert reply.status == 200, reply.body
        assert ac_fqans(reply.json) == [(ROOT,)]

        listed = proxyd_admin(config, "vo", "list", "dteam", "--json")
        assert listed.returncode == 0, listed.stderr
        members = {m["dn"]: m["fqans"] for m in json.loads(listed.stdout)["members"]}
        assert members[CAROL] == ["/dteam", "/dteam/Role=production"]

        removed = proxyd_admin(config, "vo", "remove-member", "dteam", CAROL)
        assert removed.returncode == 0, removed.stderr
        refused(
            c.logon("-n -m dteam", c.out("after"), username="carol", who="wms"),
            "voms.fqan_not_held",
        )
        after = carol_api.request("POST", "/v1/voms/ac", {"voms": ["dteam"]})
        assert (after.status, after.json["rule"]) == (403, "voms.not_member")

        again = proxyd_admin(config, "vo", "remove-member", "dteam", CAROL)
        assert again.returncode == 1
        assert "is not a member of VO dteam [rule vo.not_member]" in again.stderr
        assert "Traceback" not in again.stderr

        # Every change is in the log, under the member's DN, committed with it (I6).
        changes = server.repo.audit.query(owner=CAROL, operation="vo_members", newest_first=False)
        assert [(e.event.decision, e.event.rule, e.event.fqans) for e in changes] == [
            ("allow", "admin.local_operator", ("/dteam", "/dteam/Role=production")),
            ("allow", "admin.local_operator", ()),
            ("deny", "vo.not_member", ()),
        ]
        assert server.repo.audit.verify().ok


def test_the_admin_api_changes_members_for_admins_only(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    base = load_config(dev_pki.config).policy
    with running_server(
        dev_pki, tmp_path / "state", policy=dataclasses.replace(base, admins=(BOB,))
    ) as server:
        bob = api_client(server, dev_pki, "bob", workdir)
        carol = api_client(server, dev_pki, "carol", workdir)
        path = "/v1/vos/dteam/members"

        denied = carol.request("POST", path, {"dn": CAROL, "fqans": ["/dteam"]})
        assert (denied.status, denied.json["rule"]) == (403, "vo_members.admins")
        assert carol.request("GET", path).json["rule"] == "vo_members.admins"

        added = bob.request("POST", path, {"dn": CAROL})
        assert (added.status, added.json) == (
            201,
            {"vo": "dteam", "dn": CAROL, "fqans": ["/dteam"]},
        )
        assert ac_fqans(carol.request("POST", "/v1/voms/ac", {"voms": ["dteam"]}).json) == [(ROOT,)]
        twice = bob.request("POST", path, {"dn": CAROL})
        assert (twice.status, twice.json["rule"]) == (400, "vo.already_member")

        granted = bob.request(
            "POST", f"{path}/grant", {"dn": CAROL, "fqan": "/dteam/Role=production"}
        )
        assert granted.json["fqans"] == ["/dteam", "/dteam/Role=production"], granted.body
        role = carol.request("POST", "/v1/voms/ac", {"voms": ["dteam:/dteam/Role=production"]})
        assert ac_fqans(role.json) == [(PRODUCTION, ROOT)]
        revoked = bob.request(
            "POST", f"{path}/revoke", {"dn": CAROL, "fqan": "/dteam/Role=production"}
        )
        assert revoked.json["fqans"] == ["/dteam"]
        role = carol.request("POST", "/v1/voms/ac", {"voms": ["dteam:/dteam/Role=production"]})
        assert (role.status, role.json["rule"]) == (403, "voms.fqan_not_held")

        listed = bob.request("GET", path)
        assert listed.status == 200
        assert {m["dn"]: m["fqans"] for m in listed.json["members"]}[CAROL] == ["/dteam"]
        assert all(m["vo"] == "dteam" for m in listed.json["members"])

        bad = bob.request("POST", path, {"dn": "/CN=x", "fqans": ["/ops"]})
        assert (bad.status, bad.json["rule"]) == (400, "vo.bad_fqan")
        unknown = bob.request("GET", "/v1/vos/atlas/members")
        assert (unknown.status, unknown.json["rule"]) == (400, "voms.unknown_vo")
        malformed = bob.request("POST", f"{path}/remove", {"dn": 5})
        assert malformed.status == 400

        gone = bob.request("POST", f"{path}/remove", {"dn": CAROL})
        assert (gone.status, gone.json["fqans"]) == (200, ["/dteam"])
        after = carol.request("POST", "/v1/voms/ac", {"voms": ["dteam"]})
        assert (after.status, after.json["rule"]) == (403, "voms.not_member")
        missing = bob.request("POST", f"{path}/remove", {"dn": CAROL})
        assert (missing.status, missing.json["rule"]) == (404, "vo.not_member")
