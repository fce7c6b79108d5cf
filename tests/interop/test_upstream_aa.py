"""The VO's real VOMS server as the source of proxyd's ACs ([[voms]] vomses), judged by libvomsapi.

Debian 12's voms-server is dteam's attribute authority; proxyd holds no key
of that VO. A WMS's myproxy-logon (and the HTTPS API) gets a limited proxy
whose AC proxyd fetched from that server as the credential's owner; the
server's refusals reach the client with their rule names and are audited.
Debian's REST handler closes without answering, so every AC here came
through the legacy fallback, which the log of the fetch shows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.config import Config
from proxyd.devpki import CA_DN, DevPKI, user_dn
from proxyd.vomsaa.vomses import UpstreamVoConfig, load_vomses
from tests.interop.test_myproxy_clients import (
    LIMITED,
    Clients,
    assert_proxy_of,
    ok,
    refused,
    trail,
)
from tests.support.grid import csr_for, spare_key
from tests.support.https import ApiClient
from tests.support.server import RunningServer, running_server
from tests.support.voms_server import VomsServer
from tests.support.vomscheck import check_proxy
from voms_ext import Credential, parse_credential_pem, write_credential_file

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

ALICE, BOB, CAROL = user_dn("alice"), user_dn("bob"), user_dn("carol")
WMS = "/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"
ROOT = "/dteam/Role=NULL/Capability=NULL"
ANALYSIS = "/dteam/analysis/Role=NULL/Capability=NULL"
PRODUCTION = "/dteam/Role=production/Capability=NULL"


def upstream_dteam(voms: VomsServer) -> Callable[[Config], Config]:
    """dteam's ACs from `voms` (proxyd's own dteam AA removed), its vomsdir as proxyd's."""

    def configure(config: Config) -> Config:
        upstream = UpstreamVoConfig(
            "dteam", voms.vomses, load_vomses(voms.vomses, "dteam"), dt.timedelta(seconds=20)
        )
        return dataclasses.replace(
            config,
            voms=tuple(v for v in config.voms if v.vo != "dteam"),
            upstream_voms=(upstream,),
            server=dataclasses.replace(config.server, voms_dir=voms.voms_dir),
        )

    return configure


@pytest.fixture(scope="module")
def members(voms_server: VomsServer) -> VomsServer:
    voms_server.add_member(ALICE, CA_DN, ["/dteam/analysis", "/dteam/Role=production"])
    voms_server.add_member(CAROL, CA_DN)
    voms_server.suspend(CAROL, "left the experiment")
    return voms_server


@pytest.fixture
def server(dev_pki: DevPKI, tmp_path: Path, members: VomsServer) -> Iterator[RunningServer]:
    with running_server(dev_pki, tmp_path / "state", configure=upstream_dteam(members)) as s:
        yield s


def fetches(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "proxyd.vomsaa"]


def test_wms_logon_gets_the_vo_servers_ac(
    server: RunningServer,
    members: VomsServer,
    dev_pki: DevPKI,
    workdir: Path,
    voms_checker: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxyd.vomsaa")
    c = Clients(server, dev_pki, workdir)
    c.init("alice", "-n -Z wms.localhost")

    groups = c.out("wms-groups")
    ok(c.logon("-n -m dteam", groups, who="wms"))
    assert_proxy_of(groups, ALICE, LIMITED)
    verdict = check_proxy(voms_checker, groups, dev_pki.cert_dir, members.voms_dir)
    assert verdict.ok, verdict.error
    (ac,) = verdict.acs
    assert ac.issuer == members.host_dn  # the VO's server signed it, not proxyd
    assert ac.uri == f"{members.host}:{members.port}"
    assert ac.holder == ALICE
    assert set(ac.fqans) == {ROOT, ANALYSIS}
    # Debian 12's REST handler closes without an answer: the legacy protocol was used.
    (fetch,) = fetches(caplog)
    assert "via legacy (REST unusable: REST answer: the server closed" in fetch, fetch

    # The same GET again: the cached AC, no round trip to the VO's server.
    again = c.out("wms-again")
    ok(c.logon("-n -m dteam", again, who="wms"))
    assert check_proxy(voms_checker, again, dev_pki.cert_dir, members.voms_dir).ok
    assert len(fetches(caplog)) == 1

    role = c.out("wms-role")
    ok(c.logon("-n -m dteam:/dteam/Role=production", role, who="wms"))
    verdict = check_proxy(voms_checker, role, dev_pki.cert_dir, members.voms_dir)
    assert verdict.ok, verdict.error
    assert verdict.acs[0].fqans[0] == PRODUCTION

    # Not held at the VO: proxyd cannot know, the VO's server says no.
    admin = c.out("wms-admin")
    refused(
        c.logon("-n -m dteam:/dteam/Role=admin", admin, who="wms"),
        "voms.upstream_role_not_held",
    )
    assert not admin.exists()

    assert trail(server, owner=ALICE, operation="retrieve") == [
        ("retrieve", "allow", "retrieve.trusted", WMS),
        ("retrieve", "allow", "retrieve.trusted", WMS),
        ("retrieve", "allow", "retrieve.trusted", WMS),
        ("retrieve", "deny", "voms.upstream_role_not_held", WMS),
    ]
    issued = server.repo.audit.query(owner=ALICE, rule="retrieve.trusted", newest_first=False)
    assert set(issued[0].event.fqans) == {ROOT, ANALYSIS}
    assert issued[2].event.fqans[0] == PRODUCTION


def test_unknown_and_suspended_users_are_refused_by_rule(
    server: RunningServer, members: VomsServer, dev_pki: DevPKI, workdir: Path
) -> None:
    c = Clients(server, dev_pki, workdir)
    c.init("bob", "-n -Z wms.localhost", username="bob")
    c.init("carol", "-n -Z wms.localhost", username="carol")

    out = c.out("bob")
    refused(
        c.logon("-n -m dteam", out, username="bob", who="wms"),
        f"VO dteam: VOMS server {members.host}:{members.port}: dteam: User unknown to this VO.\n"
        "(proxyd policy rule: voms.upstream_unknown_user)",
    )
    assert not out.exists()
    refused(
        c.logon("-n -m dteam", c.out("carol"), username="carol", who="wms"),
        "voms.upstream_suspended_user",
        "suspended",
    )
    # Without -m nobody asks the VO: the plain proxy is issued as before.
    ok(c.logon("-n", c.out("bob-plain"), username="bob", who="wms"))

    assert trail(server, operation="retrieve") == [
        ("retrieve", "deny", "voms.upstream_unknown_user", WMS),
        ("retrieve", "deny", "voms.upstream_suspended_user", WMS),
        ("retrieve", "allow", "retrieve.trusted", WMS),
    ]
    denied = server.repo.audit.query(rule="voms.upstream_unknown_user")
    assert denied[0].event.owner_dn == BOB
    assert "User unknown to this VO" in (denied[0].event.detail or "")
    assert server.repo.audit.verify().ok


def test_https_issuance_gets_the_vo_servers_ac(
    server: RunningServer,
    members: VomsServer,
    dev_pki: DevPKI,
    workdir: Path,
    voms_checker: Path,
) -> None:
    c = Clients(server, dev_pki, workdir)
    c.init("alice", "-n -Z wms.localhost")
    wms = workdir / "wms.pem"
    cert, key = dev_pki.host("wms")
    write_credential_file(
        wms,
        Credential(
            parse_credential_pem(Path(cert).read_bytes()).certificates,
            serialization.load_pem_private_key(Path(key).read_bytes(), None),
        ),
    )
    api = ApiClient(server.api_port, dev_pki.cert_dir, wms)
    reply = api.request(
        "POST",
        "/v1/credentials/default/proxy?username=alice",
        {
            "csr": csr_for(spare_key(7)).public_bytes(serialization.Encoding.PEM).decode(),
            "voms": ["dteam:/dteam/Role=production"],
        },
    )
    assert reply.status == 200, reply.body
    got = workdir / "https-proxy.pem"
    chain = parse_credential_pem(reply.json["chain"].encode()).certificates
    write_credential_file(got, Credential(chain, spare_key(7)))
    verdict = check_proxy(voms_checker, got, dev_pki.cert_dir, members.voms_dir)
    assert verdict.ok, verdict.error
    (ac,) = verdict.acs
    assert ac.issuer == members.host_dn
    assert ac.fqans[0] == PRODUCTION

    admin = api.request(
        "POST",
        "/v1/credentials/default/proxy?username=alice",
        {
            "csr": csr_for(spare_key(7)).public_bytes(serialization.Encoding.PEM).decode(),
            "voms": ["dteam:/dteam/Role=admin"],
        },
    )
    assert admin.status == 403, admin.body
    assert admin.json["rule"] == "voms.upstream_role_not_held"
