"""The workflows of the sites that still run MyProxy, with their real clients, against proxyd.

CMS CRAB and WMAgent, ATLAS PanDA, ESGF, and renewal services (issue 18
item 3). Each test replays what the site's software runs, with the same
client options; the real voms-server (tests/support/voms_server.py) is
dteam's AA where a flow calls `voms-proxy-init`. Outcomes are judged by the
strict tools: grid-proxy-info for the proxy type and identity, libvomsapi
(vomscheck) for ACs, and proxyd's own audit trail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.config import PolicyConfig, load_config
from proxyd.devpki import CA_DN, DevPKI, host_dn
from tests.interop.test_myproxy_clients import (
    ALICE,
    ANONYMOUS,
    FULL,
    LIMITED,
    PASS,
    WMS,
    Clients,
    assert_proxy_of,
    ok,
    refused,
    text,
    trail,
    unanswered_recorded,
)
from tests.support.grid import spare_key
from tests.support.server import RunningServer, running_server
from tests.support.tools import run_tool
from tests.support.voms_server import VomsServer, issue_host_certificate, request_ac
from tests.support.vomscheck import check_proxy
from voms_ext import ProxyBuilder
from voms_ext.files import Credential, load_credential_file, write_credential_file

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

HOSTS = "/C=XX/O=proxyd dev/OU=Hosts"
CRAB_TW = "crab-prod-tw01.example.org"
CRAB_TW_UNLISTED = "crab-prod-tw03.example.org"
PANDA = "pandaserver.example.org"
RENEWER = "renewer.example.org"
# The shape of CRAB's retriever policy: task workers by alternation, or the robot.
CRAB_REGEX = (
    f"{HOSTS}/CN=crab-(preprod|prod)-tw(01|02).example.org"
    f"|/C=XX/O=proxyd dev/OU=Users/CN=Robot: crab"
)
DTEAM_FQANS = (
    "/dteam/Role=NULL/Capability=NULL",
    "/dteam/analysis/Role=NULL/Capability=NULL",
)


@pytest.fixture(scope="module")
def hosts(
    dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    """(cert, key) of the site hosts, from the dev CA."""
    root = tmp_path_factory.mktemp("site-hosts")
    return {
        fqdn: issue_host_certificate(dev_pki, fqdn, root / fqdn)
        for fqdn in (CRAB_TW, CRAB_TW_UNLISTED, PANDA, RENEWER)
    }


def site_policy(pki: DevPKI, **changes: object) -> PolicyConfig:
    return dataclasses.replace(load_config(pki.config).policy, **changes)  # type: ignore[arg-type]


def as_host(hosts: dict[str, tuple[Path, Path]], fqdn: str) -> dict[str, str]:
    cert, key = hosts[fqdn]
    return {"X509_USER_CERT": str(cert), "X509_USER_KEY": str(key)}


def add_voms_attributes(proxy: Path, out: Path, pki: DevPKI, voms_server: VomsServer) -> None:
    """What the sites run on a retrieved proxy (`voms-proxy-init -noregen -voms dteam`), by hand.

    Debian 12's voms-proxy-init cannot make a proxy from a proxy (see
    test_voms_proxy_init_cannot_sign_with_a_proxy), so this does its two steps
    itself: the retrieved proxy authenticates to the real voms-server in the
    legacy protocol and gets the owner's AC, then signs a new proxy carrying it.
    The server and libvomsapi (assert_ac_from) stay the judges.
    """
    credential = load_credential_file(proxy)
    assert isinstance(credential.private_key, rsa.RSAPrivateKey)
    ac = request_ac(voms_server, proxy, pki.cert_dir)
    key = spare_key(3)
    leaf = (
        ProxyBuilder(credential.certificate, credential.chain)
        .public_key(key)
        .lifetime(dt.timedelta(hours=1))
        .attribute_certificates([ac])
        .sign(credential.private_key)
    )
    write_credential_file(out, Credential((leaf, *credential.certificates), key))


def assert_ac_from(
    voms_checker: Path, proxy: Path, pki: DevPKI, voms_server: VomsServer, owner: str
) -> None:
    """The proxy carries one AC, issued by the real voms-server to `owner`, that verifies."""
    verdict = check_proxy(voms_checker, proxy, pki.cert_dir, voms_server.voms_dir)
    assert verdict.ok, verdict.error
    (ac,) = verdict.acs
    assert (ac.vo, ac.issuer, ac.holder) == ("dteam", voms_server.host_dn, owner)
    assert ac.fqans == DTEAM_FQANS


def audited_ok(server: RunningServer) -> None:
    assert server.repo.audit.verify().ok


# --- CMS CRAB: regex policies, a task worker with full delegation ------------------------------


def test_crab_task_worker_flow(
    dev_pki: DevPKI,
    tmp_path: Path,
    workdir: Path,
    hosts: dict[str, tuple[Path, Path]],
    voms_server: VomsServer,
    voms_checker: Path,
) -> None:
    voms_server.add_member(ALICE, CA_DN, ["/dteam/analysis"])
    policy = site_policy(
        dev_pki,
        trusted_retrievers=(WMS, f"{HOSTS}/CN=crab-*"),
        full_delegation_hosts=(host_dn(CRAB_TW),),
    )
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        c = Clients(server, dev_pki, workdir)
        # CRAB's client stores the user's credential under the user's DN (its -l).
        cert, key = dev_pki.user("alice")
        ok(
            c.run(
                "myproxy-init", "-n", "-x", "-R", CRAB_REGEX, "-Z", CRAB_REGEX,
                "-k", "crab-task", "-t", "168", "-c", "100", "-l", ALICE,
                "-C", cert, "-y", key,
            )
        )  # fmt: skip

        # A task worker named by the regex's alternation retrieves a full proxy (it is in
        # full_delegation_hosts) ...
        retrieved = c.out("tw01")
        ok(
            c.run(
                "myproxy-logon", "-n", "-l", ALICE, "-k", "crab-task", "-o", retrieved,
                env=as_host(hosts, CRAB_TW),
            )
        )  # fmt: skip
        assert_proxy_of(retrieved, ALICE, FULL)
        # ... and adds the user's VOMS attributes from the VO's own AA, as CRAB does.
        with_voms = c.out("tw01-voms")
        add_voms_attributes(retrieved, with_voms, dev_pki, voms_server)
        assert_proxy_of(with_voms, ALICE, FULL)
        assert_ac_from(voms_checker, with_voms, dev_pki, voms_server, ALICE)

        # A worker the server trusts but the credential's regex does not name is refused.
        refused(
            c.run(
                "myproxy-logon", "-n", "-l", ALICE, "-k", "crab-task", "-o", c.out("tw03"),
                env=as_host(hosts, CRAB_TW_UNLISTED),
            ),
            "retrieve.credential_acl",
        )  # fmt: skip
        assert not c.out("tw03").exists()

        tw01, tw03 = host_dn(CRAB_TW), host_dn(CRAB_TW_UNLISTED)
        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),  # delegation begun (key made, CSR sent)
            ("store", "allow", "store.owner", ALICE),
            ("retrieve", "allow", "retrieve.trusted", tw01),
            ("retrieve", "deny", "retrieve.credential_acl", tw03),
        ]
        issued = server.repo.audit.query(owner=ALICE, rule="retrieve.trusted")
        assert [e.event.detail for e in issued] == ["full"]
        audited_ok(server)


# --- CMS WMAgent: trusted retrieval by the agent host ----------------------------------------


def test_wmagent_flow(
    dev_pki: DevPKI,
    tmp_path: Path,
    workdir: Path,
    voms_server: VomsServer,
    voms_checker: Path,
) -> None:
    voms_server.add_member(ALICE, CA_DN, ["/dteam/analysis"])
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        ok(c.run("myproxy-init", "-n", "-Z", "wms.localhost", "-k", "wmagent", "-l", "alice",
                 who="alice"))  # fmt: skip

        retrieved = c.out("wmagent")
        ok(
            c.run(
                "myproxy-get-delegation", "-n", "-k", "wmagent", "-l", "alice", "-o", retrieved,
                who="wms",
            )
        )  # fmt: skip
        assert_proxy_of(retrieved, ALICE, LIMITED)  # I3: a trusted host gets a limited proxy
        with_voms = c.out("wmagent-voms")
        add_voms_attributes(retrieved, with_voms, dev_pki, voms_server)
        assert_proxy_of(with_voms, ALICE, LIMITED)
        assert_ac_from(voms_checker, with_voms, dev_pki, voms_server, ALICE)

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),
            ("store", "allow", "store.owner", ALICE),
            ("retrieve", "allow", "retrieve.trusted", WMS),
        ]
        audited_ok(server)


# --- ATLAS PanDA: the server host fetches the user's credential --------------------------------


def test_panda_server_flow(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, hosts: dict[str, tuple[Path, Path]]
) -> None:
    panda = host_dn(PANDA)
    policy = site_policy(dev_pki, trusted_retrievers=(WMS, panda))
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        c = Clients(server, dev_pki, workdir)
        cert, key = dev_pki.user("alice")
        ok(c.run("myproxy-init", "-n", "-x", "-Z", panda, "-k", "panda", "-l", ALICE,
                 "-C", cert, "-y", key))  # fmt: skip

        retrieved = c.out("panda")
        ok(
            c.run(
                "myproxy-logon", "--no_passphrase", "-l", ALICE, "-k", "panda", "-o", retrieved,
                env=as_host(hosts, PANDA),
            )
        )  # fmt: skip
        assert_proxy_of(retrieved, ALICE, LIMITED)  # I3

        # The WMS is a trusted retriever server-wide, but not for this credential, which names
        # no renewers of its own: as myproxy-server does, proxyd offers it the renewal path
        # (tests/interop/test_renewal_differential.py), and without alice's credential (-a)
        # the client cannot answer.
        refused(
            c.run("myproxy-logon", "--no_passphrase", "-l", ALICE, "-k", "panda",
                  "-o", c.out("wms"), who="wms"),
            "No credentials for renewal authorization",
        )  # fmt: skip
        unanswered_recorded(server, ALICE, WMS)

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),
            ("store", "allow", "store.owner", ALICE),
            ("retrieve", "allow", "retrieve.trusted", panda),
            ("renew", "deny", "renew.challenge_unanswered", WMS),
        ]
        issued = server.repo.audit.query(owner=ALICE, rule="retrieve.trusted")
        assert [e.event.detail for e in issued] == ["limited"]
        audited_ok(server)


# --- ESGF: bootstrap trust from the server ------------------------------------------------------


def test_esgf_trustroots_bootstrap(dev_pki: DevPKI, tmp_path: Path, workdir: Path) -> None:
    served = {p.name: p.read_bytes() for p in dev_pki.cert_dir.iterdir()}
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S", stdin=PASS)

        # An ESGF user's first logon: nothing trusted yet, -b trusts the server's CA once
        # and -T installs the server's trust roots.
        first_trust = workdir / "esgf-certificates"
        first_trust.mkdir()
        got = c.out("esgf")
        logon = c.logon("-b -T -S", got, stdin=PASS, env={"X509_CERT_DIR": str(first_trust)})
        assert "Trust roots have been installed" in ok(logon)
        assert_proxy_of(got, ALICE, FULL)
        installed = {p.name: p.read_bytes() for p in first_trust.iterdir()}
        installed.pop("myproxy-install-log", None)
        assert installed == served

        # myproxy-get-trustroots on its own, anonymous, into another empty directory.
        second_trust = workdir / "esgf-certificates-2"
        second_trust.mkdir()
        fetched = c.run("myproxy-get-trustroots", "-b", env={"X509_CERT_DIR": str(second_trust)})
        assert "Trust roots have been installed" in ok(fetched)
        installed = {p.name: p.read_bytes() for p in second_trust.iterdir()}
        installed.pop("myproxy-install-log", None)
        assert installed == served

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),
            ("store", "allow", "store.owner", ALICE),
            ("retrieve", "allow", "retrieve.passphrase", ANONYMOUS),
        ]
        audited_ok(server)


# --- Renewal services: renew a proxy proxyd itself issued ---------------------------------------


def test_renewal_of_a_proxy_proxyd_issued(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, hosts: dict[str, tuple[Path, Path]]
) -> None:
    renewer, panda = host_dn(RENEWER), host_dn(PANDA)
    policy = site_policy(
        dev_pki, authorized_renewers=(renewer, panda), full_delegation_hosts=(renewer,)
    )
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S -k login", stdin=PASS)
        ok(c.run("myproxy-init", "-n", "-Z", "wms.localhost", "-R", RENEWER, "-k", "jobs",
                 "-l", "alice", who="alice"))  # fmt: skip

        # The user's working proxy comes from proxyd (a passphrase logon): a full proxy.
        issued = c.out("issued")
        ok(c.logon("-S -k login", issued, stdin=PASS))
        assert_proxy_of(issued, ALICE, FULL)

        # The renewal service holds that proxy and renews it, answering the challenge with it
        # (it is in full_delegation_hosts, so it can renew again with what it got) ...
        renewed = c.out("renewed")
        ok(c.run("myproxy-logon", "-a", issued, "-k", "jobs", "-l", "alice", "-o", renewed,
                 env=as_host(hosts, RENEWER)))  # fmt: skip
        assert_proxy_of(renewed, ALICE, FULL)
        again = c.out("again")
        ok(c.run("myproxy-logon", "-a", renewed, "-k", "jobs", "-l", "alice", "-o", again,
                 env=as_host(hosts, RENEWER)))  # fmt: skip
        assert_proxy_of(again, ALICE, FULL)

        # A server-wide renewer the credential does not name gets nothing for the same proof:
        # as myproxy-server, proxyd does not even challenge it (it may not renew this
        # credential), and it is no trusted retriever (tests/interop/test_renewal_differential).
        refused(
            c.run("myproxy-logon", "-a", issued, "-k", "jobs", "-l", "alice",
                  "-o", c.out("by-panda"), env=as_host(hosts, PANDA)),
            "retrieve.not_trusted",
        )  # fmt: skip
        # A limited proxy proxyd issued (the WMS's) is no renewal proof (I1).
        limited = c.out("limited")
        ok(c.run("myproxy-logon", "-n", "-k", "jobs", "-l", "alice", "-o", limited, who="wms"))
        assert_proxy_of(limited, ALICE, LIMITED)
        refused(
            c.run("myproxy-logon", "-a", limited, "-k", "jobs", "-l", "alice",
                  "-o", c.out("from-limited"), env=as_host(hosts, RENEWER)),
            "limited.peer",
        )  # fmt: skip

        jobs = [
            row
            for row in trail(server, owner=ALICE)
            if row[0] in ("renew", "retrieve") and row[2] != "retrieve.passphrase"
        ]
        assert jobs == [
            ("renew", "allow", "renew.authorized", renewer),
            ("renew", "allow", "renew.authorized", renewer),
            ("retrieve", "deny", "retrieve.not_trusted", panda),
            ("retrieve", "allow", "retrieve.trusted", WMS),
            ("renew", "deny", "limited.peer", renewer),
        ]
        renewals = server.repo.audit.query(owner=ALICE, rule="renew.authorized")
        assert [e.event.detail for e in renewals] == ["full", "full"]
        audited_ok(server)


# --- the client the sites use to add ACs --------------------------------------------------------


@pytest.mark.parametrize("form", [["-noregen"], ["-cert", "{p}", "-key", "{p}"]])
def test_voms_proxy_init_cannot_sign_with_a_proxy(
    dev_pki: DevPKI, workdir: Path, voms_server: VomsServer, form: list[str]
) -> None:
    """Why add_voms_attributes does voms-proxy-init's work itself: Debian 12's
    voms-proxy-init (voms-clients 2.1.1, OpenSSL 3) never writes a proxy signed by a
    proxy, whether with -noregen or with `-cert P -key P`, whatever the proxy (here one
    from grid-proxy-init: proxyd is not involved). It gets the AC, prints "Creating
    proxy Done" (VOMS_MakeProxy returned nothing), then fails verifying the missing
    file. When this test fails, the client is fixed: run it in add_voms_attributes.
    """
    voms_server.add_member(ALICE, CA_DN)
    cert, key = dev_pki.user("alice")
    proxy, out = workdir / "plain.pem", workdir / "with-voms.pem"
    env = {"X509_CERT_DIR": str(dev_pki.cert_dir), "X509_VOMS_DIR": str(voms_server.voms_dir),
           "X509_USER_PROXY": str(proxy), "HOME": str(workdir), "RANDFILE": "/dev/null"}  # fmt: skip
    made = run_tool(["grid-proxy-init", "-q", "-cert", cert, "-key", key, "-out", proxy], env=env)
    assert made.returncode == 0, text(made)
    args = [a.format(p=proxy) for a in form]
    attempt = run_tool(
        ["voms-proxy-init", *args, "-voms", "dteam", "-vomses", voms_server.vomses,
         "-valid", "1:00", "-out", out, "-timeout", "20"],
        env=env,
    )  # fmt: skip
    output = attempt.stdout + attempt.stderr
    assert attempt.returncode == 1, text(attempt)
    assert '"dteam" Done' in output  # the AA answered: the failure is the client's own
    assert "Parameters unset!" in output
    assert not out.exists()
    # the same client, from the end-entity certificate, works
    direct = run_tool(
        ["voms-proxy-init", "-voms", "dteam", "-vomses", voms_server.vomses, "-cert", cert,
         "-key", key, "-valid", "1:00", "-out", out, "-timeout", "20"],
        env=env,
    )  # fmt: skip
    assert direct.returncode == 0, text(direct)
