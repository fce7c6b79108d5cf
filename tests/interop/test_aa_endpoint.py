"""proxyd as the VO's VOMS server: the real voms-proxy-init against the [aa] endpoint.

voms-proxy-init finds proxyd through a vomses line naming the [aa] port,
gets its AC over the REST protocol (falling back to the legacy XML one when
REST does not answer), and verifies it against X509_VOMS_DIR/<vo>/<host>.lsc
written by the dev PKI. libvomsapi (tests/support/vomscheck.py) then judges
the proxy strictly. The client writes the proxy file even when it fails, so
every run is judged by its exit code first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from proxyd.devpki import DevPKI, host_dn
from proxyd.vomsaa.server import AaServer
from tests.support.server import RunningServer, running_server
from tests.support.tools import run_tool
from tests.support.vomscheck import check_proxy

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
BOB = "/C=XX/O=proxyd dev/OU=Users/CN=bob"
CAROL = "/C=XX/O=proxyd dev/OU=Users/CN=carol"
AA_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
GROUPS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL")
PRODUCTION = "/dteam/Role=production/Capability=NULL"
TIMEOUT = 60


@dataclasses.dataclass
class VomsClient:
    """Runs the real voms-proxy-init as a dev user against one proxyd's [aa] endpoint."""

    server: RunningServer
    pki: DevPKI
    workdir: Path

    @property
    def vomses(self) -> Path:
        """A vomses file naming proxyd's [aa] port (the dev PKI's vomses/ names the dev port)."""
        path = self.workdir / "vomses"
        dn = host_dn("localhost")
        lines = [
            f'"{vo}" "localhost" "{self.server.aa_port}" "{dn}" "{vo}"' for vo in ("dteam", "ops")
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def init(self, who: str, *args: str, out: Path | None = None) -> tuple[int, str, Path]:
        """(exit code, stdout+stderr, proxy path) of `voms-proxy-init <args>` as `who`."""
        cert, key = self.pki.user(who)
        proxy = out or self.workdir / f"x509up_{who}"
        proc = run_tool(
            [
                "voms-proxy-init",
                "--vomses",
                str(self.vomses),
                "-cert",
                str(cert),
                "-key",
                str(key),
                "-out",
                str(proxy),
                "--timeout",
                "20",
                *args,
            ],
            env={
                "X509_CERT_DIR": str(self.pki.cert_dir),
                "X509_VOMS_DIR": str(self.pki.voms_dir),
                "HOME": str(self.workdir),
                "RANDFILE": "/dev/null",
            },
            timeout=TIMEOUT,
        )
        # Progress dots are noise; the messages are what a user reads.
        text = "\n".join(
            line for line in (proc.stdout + proc.stderr).splitlines() if line.strip(".")
        )
        return proc.returncode, text, proxy

    def check(self, proxy: Path, checker: Path) -> tuple[str, ...]:
        """The FQANs of the proxy's AC, which libvomsapi must verify strictly."""
        verdict = check_proxy(checker, proxy, self.pki.cert_dir, self.pki.voms_dir)
        assert verdict.ok, verdict.error
        (ac,) = verdict.acs
        assert (ac.vo, ac.uri, ac.issuer) == ("dteam", "voms.localhost:15000", AA_DN)
        return ac.fqans


@pytest.fixture
def aa(dev_pki: DevPKI, tmp_path: Path, workdir: Path) -> Iterator[VomsClient]:
    with running_server(dev_pki, tmp_path / "state", aa=True) as server:
        yield VomsClient(server, dev_pki, workdir)


def issue_ac_trail(server: RunningServer) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(decision, rule, actor, FQANs) of the issue_ac audit events, oldest first."""
    events = server.repo.audit.query(operation="issue_ac", newest_first=False, limit=100)
    return [(e.event.decision, e.event.rule, e.event.actor_dn, e.event.fqans) for e in events]


def test_voms_proxy_init_gets_its_ac_from_proxyd(aa: VomsClient, voms_checker: Path) -> None:
    code, out, proxy = aa.init("alice", "--voms", "dteam")
    assert code == 0, out
    assert f"Contacting  localhost:{aa.server.aa_port}" in out
    assert "Done" in out and "Failed" not in out, out
    # VOMS grants the group asked for, then every other group held (no roles).
    assert aa.check(proxy, voms_checker) == (
        "/dteam/Role=NULL/Capability=NULL",
        "/dteam/analysis/Role=NULL/Capability=NULL",
    )
    assert issue_ac_trail(aa.server) == [("allow", "voms.member", ALICE, GROUPS)]
    assert aa.server.repo.audit.verify().ok


def test_a_role_and_the_order_of_the_fqans(aa: VomsClient, voms_checker: Path) -> None:
    code, out, proxy = aa.init(
        "alice", "--voms", "dteam:/dteam/Role=production", "--order", "/dteam/analysis"
    )
    assert code == 0, out
    assert aa.check(proxy, voms_checker) == (
        "/dteam/analysis/Role=NULL/Capability=NULL",
        "/dteam/Role=production/Capability=NULL",
        "/dteam/Role=NULL/Capability=NULL",
    )
    ((decision, rule, actor, fqans),) = issue_ac_trail(aa.server)
    assert (decision, rule, actor) == ("allow", "voms.member", ALICE)
    assert fqans == (GROUPS[1], PRODUCTION, GROUPS[0])


def test_list_shows_every_fqan_held(aa: VomsClient) -> None:
    code, out, _ = aa.init("alice", "--voms", "dteam", "--list")
    assert code == 0, out
    listed = out.split("Available attributes:", 1)[1].split()
    assert listed == [
        "/dteam/Role=NULL/Capability=NULL",
        "/dteam/analysis/Role=NULL/Capability=NULL",
        "/dteam/Role=production/Capability=NULL",
    ]


def test_a_non_member_is_refused_with_the_rule(aa: VomsClient) -> None:
    code, out, _ = aa.init("carol", "--voms", "dteam")
    assert code != 0, out
    assert f'dteam: User unknown to this VO. "{CAROL}" is not a member of the requested VO' in out
    assert "(proxyd policy rule: voms.not_member)" in out
    trail = issue_ac_trail(aa.server)
    # The client retries a refused REST request with the legacy protocol: both are decided.
    assert trail and all(t[:3] == ("deny", "voms.not_member", CAROL) for t in trail), trail
    assert len(trail) == 2


def test_a_role_not_held_is_refused_with_the_rule(aa: VomsClient) -> None:
    code, out, _ = aa.init("bob", "--voms", "dteam:/dteam/Role=production")
    assert code != 0, out
    assert "dteam: Unable to satisfy /dteam/Role=production request!" in out
    assert "not a holder of: /dteam/Role=production" in out
    assert "(proxyd policy rule: voms.fqan_not_held)" in out
    trail = issue_ac_trail(aa.server)
    assert trail and all(t[:3] == ("deny", "voms.fqan_not_held", BOB) for t in trail), trail


def test_targets_are_refused_not_ignored(aa: VomsClient) -> None:
    code, out, _ = aa.init("alice", "--voms", "dteam", "-target", "ce.example.org")
    assert code != 0, out
    assert "targeted ACs (-target) are not supported" in out
    assert issue_ac_trail(aa.server) == []  # nothing decided, nothing issued


class RestlessAa(AaServer):
    """Like Debian 12's voms-server: a REST request gets the connection closed, unanswered."""

    requests: ClassVar[dict[str, int]] = {}

    async def answer(self, request, principal, exchange):  # type: ignore[no-untyped-def]
        RestlessAa.requests[exchange.protocol] = RestlessAa.requests.get(exchange.protocol, 0) + 1
        if exchange.protocol == "rest":
            raise ConnectionAbortedError("REST switched off by the test")
        return await super().answer(request, principal, exchange)


def test_voms_proxy_init_over_the_legacy_protocol(
    dev_pki: DevPKI,
    tmp_path: Path,
    workdir: Path,
    voms_checker: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real client as the judge of proxyd's legacy answers: it uses them when REST fails."""
    monkeypatch.setattr("proxyd.serve.AaServer", RestlessAa)
    monkeypatch.setattr(RestlessAa, "requests", {})
    with running_server(dev_pki, tmp_path / "state", aa=True) as server:
        client = VomsClient(server, dev_pki, workdir)
        code, out, proxy = client.init("alice", "--voms", "dteam:/dteam/Role=production")
        assert code == 0, out
        assert RestlessAa.requests == {"rest": 1, "legacy": 1}
        assert client.check(proxy, voms_checker) == (
            "/dteam/Role=production/Capability=NULL",
            "/dteam/Role=NULL/Capability=NULL",
            "/dteam/analysis/Role=NULL/Capability=NULL",
        )
        assert [t[:3] for t in issue_ac_trail(server)] == [("allow", "voms.member", ALICE)]
