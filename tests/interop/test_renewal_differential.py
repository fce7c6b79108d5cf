"""The real myproxy-server judges which GETs proxyd answers with a renewal challenge.

myproxy-server challenges a peer that may renew (`authorized_renewers`) unless it is already
authenticated as a trusted retriever *of that credential*: a host the server trusts but the
credential does not (`myproxy-init -Z` naming someone else) is offered renewal, and renews
with `myproxy-logon -a`. Both servers run from one myproxy-server.config; the real clients
run every case against both, which must agree.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from tests.interop.test_myproxy_options_differential import SERVERS, Clients, both_servers, output

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

CONFIG = """\
accepted_credentials  "*"
authorized_retrievers "*"
authorized_renewers   "*/CN=wms.localhost" "*/CN=bob"
trusted_retrievers    "*/CN=wms.localhost"
"""

# (name, myproxy-init flags), stored by alice without a passphrase.
STORED = [
    ("np", ("-n",)),  # the server's trusted retrievers apply
    ("npz", ("-x", "-Z", "*/CN=other.localhost")),  # its own: the WMS is not trusted for it
    # ... and its own renewers too, which leave the WMS out: no renewal path for it either.
    ("npzr", ("-x", "-Z", "*/CN=other.localhost", "-R", "*/CN=bob")),
]

CHALLENGED = "No credentials for renewal authorization"  # the client, asked for a proof it lacks

# (who, name, renew with alice's credential?, outcome, what the client prints, if anything)
CASES = [
    ("wms", "np", False, True, None),  # a trusted retriever: no challenge
    ("wms", "np", True, True, None),  # ... and -a changes nothing
    ("wms", "npz", True, True, None),  # trusted by the server, not by the credential: renews
    ("wms", "npz", False, False, CHALLENGED),  # ... so without -a it is challenged
    ("wms", "npzr", True, False, None),  # neither trusted nor a renewer: not challenged
    ("wms", "npzr", False, False, None),
    ("bob", "np", True, True, None),  # a renewer that is no trusted retriever
    ("bob", "np", False, False, CHALLENGED),
    ("bob", "npzr", True, True, None),  # named by the credential's own renewers
]


class RenewalClients(Clients):
    def logon(
        self, server: str, who: str, name: str, authz: Path | None
    ) -> subprocess.CompletedProcess[str]:
        out = self.workdir / f"{server}-{who}-{name}-{authz is not None}.pem"
        out.unlink(missing_ok=True)
        args: list[str | Path] = ["-l", "alice", "-k", name, "-t", "1", "-n", "-o", out]
        if authz is not None:
            args += ["-a", authz]
        return self.run("myproxy-logon", server, who, *args)


@pytest.fixture(scope="module")
def clients(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenewalClients]:
    workdir = tmp_path_factory.mktemp("renewal-differential")
    identities = {name: dev_pki.user(name) for name in ("alice", "bob")}
    identities["wms"] = dev_pki.host("wms")
    with (
        both_servers(dev_pki, workdir, CONFIG) as ports,
        ThreadPoolExecutor(len(SERVERS)) as both,
    ):
        c = RenewalClients(dev_pki, workdir, identities, ports)
        for name, flags in STORED:
            done = list(
                both.map(
                    lambda s, n=name, f=flags: c.store(s, "alice", "alice", n, f, None), SERVERS
                )
            )
            for server, result in zip(SERVERS, done, strict=True):
                assert result.returncode == 0, f"{server}: store {name}: {output(result)}"
        yield c


@pytest.fixture(scope="module")
def alice_credential(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice's certificate and key in one file, as `myproxy-logon -a` reads a credential."""
    cert, key = dev_pki.user("alice")
    path = tmp_path_factory.mktemp("alice-credential") / "alice.pem"
    path.touch(mode=0o600)
    path.write_bytes(cert.read_bytes() + key.read_bytes())
    return path


@pytest.mark.parametrize(
    ("who", "name", "renew", "expected", "says"),
    CASES,
    ids=[f"{who}-{n}-{'renew' if r else 'get'}-{e}" for who, n, r, e, _ in CASES],
)
def test_same_outcome_as_myproxy_server(
    clients: RenewalClients,
    alice_credential: Path,
    who: str,
    name: str,
    renew: bool,
    expected: bool,
    says: str | None,
) -> None:
    authz = alice_credential if renew else None
    with ThreadPoolExecutor(len(SERVERS)) as both:
        outcome = dict(
            zip(
                SERVERS,
                both.map(lambda s: clients.logon(s, who, name, authz), SERVERS),
                strict=True,
            )
        )
    allowed = {server: done.returncode == 0 for server, done in outcome.items()}
    report = "\n".join(f"{server}: {output(done)}" for server, done in outcome.items())
    assert allowed["myproxy-server"] is expected, f"the man page disagrees:\n{report}"
    assert allowed["proxyd"] is allowed["myproxy-server"], report
    # The same dialogue: challenged by both, or by neither (the refusals' words differ: proxyd
    # names its rule).
    if says is not None:
        for server, done in outcome.items():
            assert says in done.stdout + done.stderr, f"{server} differs:\n{report}"
    if not expected:
        assert (CHALLENGED in outcome["proxyd"].stderr + outcome["proxyd"].stdout) is (
            CHALLENGED in outcome["myproxy-server"].stderr + outcome["myproxy-server"].stdout
        ), report
