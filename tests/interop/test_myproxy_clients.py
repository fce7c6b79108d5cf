"""The MyProxy acceptance scenarios, driven by the real clients against an in-process proxyd.

Debian's myproxy-* and grid-proxy-* tools (and the PyPI MyProxyClient) talk
to proxyd over real TLS; the audit log is checked after each scenario.
Clients print errors on stdout or stderr, so checks look at both. Every
client call has a timeout: a hang is a failure.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from proxyd.config import load_config
from proxyd.devpki import DevPKI
from tests.support.myproxyclient_venv import myproxyclient_python
from tests.support.server import RunningServer, running_server
from tests.support.tools import run_tool
from tests.support.vomscheck import check_proxy
from tests.support.waiting import eventually

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
BOB = "/C=XX/O=proxyd dev/OU=Users/CN=bob"
PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
WMS = "/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"
ANONYMOUS = "<anonymous>"
PASS = "secret123"
NEW_PASS = "newsecret456"
TIMEOUT = 30
LIMITED = "RFC 3820 compliant limited proxy"
FULL = "RFC 3820 compliant impersonation proxy"
DTEAM_GROUPS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL")
PRODUCTION = "/dteam/Role=production/Capability=NULL"

TLS_VERSIONS = pytest.mark.parametrize(
    ("tls_min", "tls_max"), [("1.2", "1.2"), ("1.3", "1.3")], ids=["tls1.2", "tls1.3"]
)


@dataclasses.dataclass
class Clients:
    """Runs the real clients as a given identity against one server."""

    server: RunningServer
    pki: DevPKI
    workdir: Path

    def env(
        self, who: str | None = None, proxy: Path | None = None, *, globus: bool = True
    ) -> dict[str, str]:
        """`who` = "wms" or a user name: X509_USER_CERT/KEY; `proxy`: X509_USER_PROXY.

        With neither, the client is anonymous: X509_USER_PROXY names a missing
        file so /tmp/x509up_u<uid> and ~/.globus are never picked up. Not so for
        MyProxyClient (`globus=False`), which would try to load that file.
        """
        env = self.server.myproxy_env() | {"HOME": str(self.workdir)}
        if globus or proxy is not None:
            env["X509_USER_PROXY"] = str(proxy or self.workdir / "no-such-proxy")
        if who is not None:
            cert, key = self.pki.host(who) if who == "wms" else self.pki.user(who)
            env |= {"X509_USER_CERT": str(cert), "X509_USER_KEY": str(key)}
        return env

    def run(
        self,
        *args: str | Path,
        who: str | None = None,
        proxy: Path | None = None,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        globus: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(
            args,
            env=self.env(who, proxy, globus=globus) | (env or {}),
            input=None if stdin is None else f"{stdin}\n".encode(),
            timeout=TIMEOUT,
        )

    def init(
        self, who: str, flags: str, *, username: str | None = None, stdin: str | None = None
    ) -> str:
        """myproxy-init as `who` (a 1 h local proxy, 1 h maximum for retrieved proxies)."""
        args = ["-l", username or who, "-c", "1", "-t", "1", *flags.split()]
        return ok(self.run("myproxy-init", *args, who=who, stdin=stdin))

    def logon(
        self,
        flags: str,
        out: Path,
        *,
        username: str = "alice",
        authz: Path | None = None,
        who: str | None = None,
        proxy: Path | None = None,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """myproxy-logon -l username <flags> [-a authz] -o out, as `who` / with `proxy`."""
        args = [
            "-l",
            username,
            *flags.split(),
            *(["-a", str(authz)] if authz else []),
            "-o",
            str(out),
        ]
        return self.run("myproxy-logon", *args, who=who, proxy=proxy, stdin=stdin, env=env)

    def proxy_of(self, who: str) -> Path:
        """A fresh local proxy (what the owner holds), made by grid-proxy-init."""
        cert, key = self.pki.user(who)
        out = self.workdir / f"{who}-local-proxy.pem"
        made = self.run("grid-proxy-init", "-q", "-cert", cert, "-key", key, "-out", out)
        assert made.returncode == 0, text(made)
        return out

    def out(self, name: str) -> Path:
        return self.workdir / f"{name}.pem"


def text(proc: subprocess.CompletedProcess[str]) -> str:
    return f"[exit {proc.returncode}]\n{proc.stdout}{proc.stderr}"


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, text(proc)
    return proc.stdout + proc.stderr


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, text(proc)
    for needle in needles:
        assert needle in output, f"{needle!r} not in the client's output:\n{text(proc)}"
    return output


def proxy_info(path: Path, flag: str) -> str:
    info = run_tool(["grid-proxy-info", "-file", path, flag], timeout=TIMEOUT)
    assert info.returncode == 0, text(info)
    return info.stdout.strip()


def assert_proxy_of(path: Path, owner: str, kind: str) -> x509.Certificate:
    """A 0600 proxy file of `owner` of the given grid-proxy-info type; returns its leaf."""
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    assert proxy_info(path, "-identity") == owner
    assert proxy_info(path, "-type") == kind
    return x509.load_pem_x509_certificate(path.read_bytes())


def trail(server: RunningServer, **filters: str) -> list[tuple[str, str, str, str]]:
    """(operation, decision, rule, actor) of matching audit events, oldest first."""
    events = server.repo.audit.query(newest_first=False, limit=1000, **filters)  # type: ignore[arg-type]
    return [(e.event.operation, e.event.decision, e.event.rule, e.event.actor_dn) for e in events]


def unanswered_recorded(server: RunningServer, owner: str, actor: str) -> None:
    """Wait until the server has audited `actor`'s renewal challenge of `owner`'s credential as
    unanswered: it learns that only when the client's connection closes, after the client
    has exited, so the test cannot read the trail at once."""
    eventually(
        lambda: trail(server, owner=owner, rule="renew.challenge_unanswered"),
        lambda seen: ("renew", "deny", "renew.challenge_unanswered", actor) in seen,
        f"the unanswered renewal challenge of {actor} audited",
    )


# --- 1. store, list, retrieve, change passphrase, destroy --------------------------------------


@TLS_VERSIONS
def test_passphrase_lifecycle(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, tls_min: str, tls_max: str
) -> None:
    with running_server(dev_pki, tmp_path / "state", tls_min=tls_min, tls_max=tls_max) as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S", stdin=PASS)
        alice_proxy = c.proxy_of("alice")

        info = ok(c.run("myproxy-info", "-l", "alice", proxy=alice_proxy))
        assert f"owner: {ALICE}" in info
        assert re.search(r"^\s*timeleft: \d+:\d\d:\d\d", info, re.MULTILINE), info

        first = c.out("first")
        ok(c.logon("-S", first, stdin=PASS))
        first_leaf = assert_proxy_of(first, ALICE, FULL)

        wrong = c.out("wrong")
        refused(c.logon("-S", wrong, stdin="not-the-passphrase"), "invalid credential passphrase")
        assert not wrong.exists()

        change = f"{PASS}\n{NEW_PASS}"
        changed = c.run(
            "myproxy-change-pass-phrase", "-l", "alice", "-S", proxy=alice_proxy, stdin=change
        )
        assert "Pass phrase changed" in ok(changed)
        refused(c.logon("-S", c.out("old"), stdin=PASS), "invalid credential passphrase")
        second = c.out("second")
        ok(c.logon("-S", second, stdin=NEW_PASS))
        second_leaf = assert_proxy_of(second, ALICE, FULL)

        ok(c.run("myproxy-destroy", "-l", "alice", proxy=alice_proxy))
        gone = 'No credentials exist for username "alice".'
        refused(c.run("myproxy-info", "-l", "alice", proxy=alice_proxy), gone)
        refused(c.logon("-S", c.out("gone"), stdin=NEW_PASS), gone)

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),  # delegation begun (key made, CSR sent)
            ("store", "allow", "store.owner", ALICE),
            ("info", "allow", "owner.self", ALICE),
            ("retrieve", "allow", "retrieve.passphrase", ANONYMOUS),
            ("retrieve", "deny", "auth.bad_passphrase", ANONYMOUS),
            ("change_passphrase", "allow", "owner.self", ALICE),
            ("retrieve", "deny", "auth.bad_passphrase", ANONYMOUS),
            ("retrieve", "allow", "retrieve.passphrase", ANONYMOUS),
            ("destroy", "allow", "owner.self", ALICE),
        ]
        # A missing credential has no owner: those events are found by rule.
        assert trail(server, rule="credential.not_found") == [
            ("info", "deny", "credential.not_found", ALICE),
            ("retrieve", "deny", "credential.not_found", ANONYMOUS),
        ]
        issued = server.repo.audit.query(owner=ALICE, decision="allow", operation="retrieve")
        serials = {e.event.serial for e in issued}
        assert serials == {str(first_leaf.serial_number), str(second_leaf.serial_number)}
        assert server.repo.audit.verify().ok


# --- 2. trusted WMS host, VOMS attributes -----------------------------------------------------


@TLS_VERSIONS
def test_trusted_wms_retrieval_with_voms(
    dev_pki: DevPKI,
    tmp_path: Path,
    workdir: Path,
    voms_checker: Path,
    tls_min: str,
    tls_max: str,
) -> None:
    with running_server(dev_pki, tmp_path / "state", tls_min=tls_min, tls_max=tls_max) as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-n -Z wms.localhost")
        info = ok(c.run("myproxy-info", "-l", "alice", proxy=c.proxy_of("alice")))
        assert "trusted retrieval policy: */CN=wms.localhost" in info

        groups = c.out("wms-groups")
        ok(c.logon("-n -m dteam", groups, who="wms"))
        assert_proxy_of(groups, ALICE, LIMITED)
        verdict = check_proxy(voms_checker, groups, dev_pki.cert_dir, dev_pki.voms_dir)
        assert verdict.ok, verdict.error
        assert [(ac.vo, ac.fqans) for ac in verdict.acs] == [("dteam", DTEAM_GROUPS)]
        assert verdict.acs[0].holder == ALICE

        role = c.out("wms-role")
        ok(c.logon("-n -m dteam:/dteam/Role=production", role, who="wms"))
        assert_proxy_of(role, ALICE, LIMITED)
        verdict = check_proxy(voms_checker, role, dev_pki.cert_dir, dev_pki.voms_dir)
        assert verdict.ok, verdict.error
        assert [ac.fqans for ac in verdict.acs] == [(PRODUCTION, *DTEAM_GROUPS)]

        refused(
            c.logon("-n -m dteam:/dteam/Role=admin", c.out("wms-admin"), who="wms"),
            "voms.fqan_not_held",
            "/dteam/Role=admin",
        )

        # bob is no trusted retriever: as an authorized renewer ("*") he is challenged
        # to prove he holds alice's credential, which myproxy-logon -n cannot answer...
        bob_plain = c.out("bob-plain")
        refused(c.logon("-n", bob_plain, who="bob"), "No credentials for renewal authorization.")
        assert not bob_plain.exists()
        # The client just hangs up on the challenge: nothing tells it when the server has
        # recorded that, so wait for the event before the next request (CI lost this race).
        unanswered_recorded(server, ALICE, BOB)
        # ...and his own proxy is no proof for alice's credential.
        bob_proof = c.out("bob-proof")
        refused(
            c.logon("-n", bob_proof, authz=c.proxy_of("bob"), who="bob"),
            "renew.proof_mismatch",
            "the renewal proof is not a credential of the owner",
        )
        assert not bob_proof.exists()

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),  # delegation begun (key made, CSR sent)
            ("store", "allow", "store.owner", ALICE),
            ("info", "allow", "owner.self", ALICE),
            ("retrieve", "allow", "retrieve.trusted", WMS),
            ("retrieve", "allow", "retrieve.trusted", WMS),
            ("retrieve", "deny", "voms.fqan_not_held", WMS),
            ("renew", "deny", "renew.challenge_unanswered", BOB),  # plain -n: no proof to give
            ("renew", "deny", "renew.proof_mismatch", BOB),
        ]
        issued = server.repo.audit.query(owner=ALICE, rule="retrieve.trusted", newest_first=False)
        assert [(e.event.detail, e.event.fqans) for e in issued] == [
            ("limited", DTEAM_GROUPS),
            ("limited", (PRODUCTION, *DTEAM_GROUPS)),
        ]
        assert server.repo.audit.verify().ok


# --- 3. pilots never renew and never get a pilot's proxy (I2) ----------------------------------


def test_pilot_cannot_renew_its_credential(dev_pki: DevPKI, tmp_path: Path, workdir: Path) -> None:
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("pilot", "-n -A")
        pilot_proxy = c.proxy_of("pilot")

        # `-a` and `-n` send the same request (no passphrase). proxyd never challenges a pilot
        # (it may not renew, I2): the repository refuses it with the pilot rule at once.
        renewed = c.out("pilot-renewed")
        refused(
            c.logon("", renewed, username="pilot", authz=pilot_proxy, proxy=pilot_proxy),
            "pilot.pilot_credential",
            "a pilot may not obtain a proxy of a pilot identity",
        )
        assert not renewed.exists()

        assert trail(server, owner=PILOT) == [
            ("store", "allow", "store.owner", PILOT),  # delegation begun (key made, CSR sent)
            ("store", "allow", "store.owner", PILOT),
            ("retrieve", "deny", "pilot.pilot_credential", PILOT),
        ]
        assert server.repo.audit.verify().ok


def test_pilot_trusted_style_logon_is_refused_by_a_pilot_rule(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("pilot", "-n -A")
        got = c.out("pilot-self")
        attempt = c.logon("-n", got, username="pilot", who="pilot")
        refused(attempt)
        assert not got.exists()
        denials = trail(server, owner=PILOT, decision="deny")
        assert "(proxyd policy rule: pilot.pilot_credential)" in text(attempt)
        assert denials == [("retrieve", "deny", "pilot.pilot_credential", PILOT)]


# --- 4. renewal by another identity; self-renewal is refused -------------------------------------


def test_renewal_by_others_and_self_authorization(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-n -A")
        alice_proxy = c.proxy_of("alice")

        # The WMS host is a trusted retriever: like myproxy-server, proxyd lets it in on its
        # certificate without a challenge, so `-a` changes nothing and the proxy is limited (I3).
        by_wms = c.out("by-wms")
        ok(c.logon("", by_wms, authz=alice_proxy, who="wms"))
        assert_proxy_of(by_wms, ALICE, LIMITED)

        by_self = c.out("by-self")
        refused(
            c.logon("", by_self, authz=alice_proxy, proxy=alice_proxy), "renew.self_authorization"
        )
        assert not by_self.exists()

        # bob (an authorized renewer, "*") holding a proxy of alice renews: a user gets a full proxy.
        by_bob = c.out("by-bob")
        ok(c.logon("", by_bob, authz=alice_proxy, who="bob"))
        assert_proxy_of(by_bob, ALICE, FULL)

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),  # delegation begun (key made, CSR sent)
            ("store", "allow", "store.owner", ALICE),
            ("retrieve", "allow", "retrieve.trusted", WMS),
            ("renew", "deny", "renew.self_authorization", ALICE),
            ("renew", "allow", "renew.authorized", BOB),
        ]
        assert server.repo.audit.verify().ok


def test_host_renewal_gets_a_limited_proxy(dev_pki: DevPKI, tmp_path: Path, workdir: Path) -> None:
    """With no trusted retrievers, the WMS host must answer the challenge: renew.authorized, limited."""
    policy = dataclasses.replace(load_config(dev_pki.config).policy, trusted_retrievers=())
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-n -A")
        renewed = c.out("renewed")
        ok(c.logon("", renewed, authz=c.proxy_of("alice"), who="wms"))
        assert_proxy_of(renewed, ALICE, LIMITED)
        events = server.repo.audit.query(owner=ALICE, operation="renew")
        facts = [(e.event.decision, e.event.rule, e.event.actor_dn, e.event.detail) for e in events]
        assert facts == [("allow", "renew.authorized", WMS, "limited")]
        assert server.repo.audit.verify().ok


# --- 5. trust roots --------------------------------------------------------------------------------


def test_logon_bootstraps_and_installs_trust_roots(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S", stdin=PASS)
        trust = workdir / "trustroots"
        trust.mkdir()
        got = c.out("bootstrapped")
        bootstrap = c.logon("-S -T -b", got, stdin=PASS, env={"X509_CERT_DIR": str(trust)})
        assert "Trust roots have been installed" in ok(bootstrap)
        assert_proxy_of(got, ALICE, FULL)
        served = {p.name for p in dev_pki.cert_dir.iterdir()}
        kinds = {p.suffix for p in dev_pki.cert_dir.iterdir()}
        assert kinds == {".0", ".signing_policy", ".namespaces"}
        # -b itself writes the CA and its signing policy; .namespaces comes only from proxyd.
        assert {p.name for p in trust.iterdir()} - {"myproxy-install-log"} == served
        for name in served:
            assert (trust / name).read_bytes() == (dev_pki.cert_dir / name).read_bytes(), name


# --- 6. the PyPI MyProxyClient -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def myproxyclient() -> Path:
    return myproxyclient_python()


def test_pypi_myproxyclient_logon(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, myproxyclient: Path
) -> None:
    """MyProxyClient 2.2.0 speaks TLS 1.2 only: proxyd's default range (1.2-1.3) serves it."""
    with running_server(dev_pki, tmp_path / "state", tls_min="1.2", tls_max="1.3") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S", stdin=PASS)

        def logon(out: Path, passphrase: str) -> subprocess.CompletedProcess[str]:
            return c.run(
                myproxyclient, "-m", "myproxy.client.script", "logon",
                "-s", "localhost", "-p", str(server.myproxy_port), "-l", "alice", "-S",
                "-o", out, "-C", dev_pki.cert_dir, stdin=passphrase, globus=False,
            )  # fmt: skip

        got = c.out("myproxyclient")
        ok(logon(got, PASS))
        got.chmod(0o600)  # MyProxyClient writes 0644, which the Globus tools refuse
        leaf = assert_proxy_of(got, ALICE, FULL)
        wrong = c.out("myproxyclient-wrong")
        refused(logon(wrong, "not-the-passphrase"), "invalid credential passphrase")

        assert trail(server, owner=ALICE) == [
            ("store", "allow", "store.owner", ALICE),  # delegation begun (key made, CSR sent)
            ("store", "allow", "store.owner", ALICE),
            ("retrieve", "allow", "retrieve.passphrase", ANONYMOUS),
            ("retrieve", "deny", "auth.bad_passphrase", ANONYMOUS),
        ]
        [issued] = server.repo.audit.query(owner=ALICE, rule="retrieve.passphrase")
        assert issued.event.serial == str(leaf.serial_number)
        assert server.repo.audit.verify().ok
