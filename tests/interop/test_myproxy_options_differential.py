"""The real myproxy-server judges the options of issue 18 item 2, from ONE config file.

The same myproxy-server.config runs the real myproxy-server and, through
`proxyd admin import-myproxy-config`'s converter, proxyd: accepted_credentials,
default_retrievers, default_trusted_retrievers (the credential's own lists
overriding them) and check_multiple_credentials. The real clients run every
case against both; both servers must agree, and agree with the man page.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from proxyd.cli.myproxy_import import convert
from proxyd.config import parse_config
from proxyd.devpki import DevPKI, host_dn
from tests.support.myproxy_server import issue, real_myproxy_server
from tests.support.server import running_server
from tests.support.tools import run_tool

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

SERVERS = ("myproxy-server", "proxyd")
TIMEOUT = 30
P1 = "first-passphrase"
P2 = "second-passphrase"
OTHER = host_dn("other.localhost")

# One line with two patterns (they accumulate), comments, and every option under test.
CONFIG = """\
# issue 18: MyProxy's defaults, who may store, and multiple credentials
max_proxy_lifetime 12
accepted_credentials       "*/OU=Users/CN=alice"   # bob and carol may not store
authorized_retrievers      "*"
default_retrievers         "*/CN=bob" "*/OU=Hosts/*"
trusted_retrievers         "*/OU=Hosts/*"
default_trusted_retrievers "*/CN=wms.localhost"
check_multiple_credentials true
"""

# (username, name, myproxy-init flags, passphrase or None), all stored by alice.
STORED = [
    ("alice", "pp", (), P1),  # default_retrievers apply
    ("alice", "ppr", ("-x", "-r", "*/CN=carol"), P1),  # its own list instead
    ("alice", "np", ("-n",), None),  # default_trusted_retrievers apply
    ("alice", "npz", ("-x", "-Z", "*/CN=other.localhost"), None),  # its own -Z instead
    ("multi", None, (), P1),  # the default credential of "multi"
    ("multi", "second", (), P2),
]

# (what, who, username, name or None, how, passphrase, the man page's outcome)
CASES = [
    ("store", "bob", "bob", None, "store", P1, False),
    ("store", "carol", "carol", None, "store", P1, False),
    ("get", "bob", "alice", "pp", "passphrase", P1, True),
    ("get", "carol", "alice", "pp", "passphrase", P1, False),
    ("get", "carol", "alice", "ppr", "passphrase", P1, True),
    ("get", "bob", "alice", "ppr", "passphrase", P1, False),
    ("get", "wms", "alice", "np", "trusted", None, True),
    ("get", "other", "alice", "np", "trusted", None, False),
    ("get", "other", "alice", "npz", "trusted", None, True),
    ("get", "wms", "alice", "npz", "trusted", None, False),
    ("get", "bob", "multi", None, "passphrase", P2, True),  # not the default's passphrase
    ("get", "bob", "multi", None, "passphrase", P1, True),
    ("get", "bob", "multi", None, "passphrase", "no-such-passphrase", False),
    ("get", "bob", "multi", "default", "passphrase", P2, False),  # named: that one only
    ("get", "carol", "multi", None, "passphrase", P2, False),  # default_retrievers
]


@dataclasses.dataclass
class Clients:
    pki: DevPKI
    workdir: Path
    identities: dict[str, tuple[Path, Path]]
    ports: dict[str, int]

    def run(
        self, tool: str, server: str, who: str, *args: str | Path, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cert, key = self.identities[who]
        env = {
            "X509_CERT_DIR": str(self.pki.cert_dir),
            "X509_USER_CERT": str(cert),
            "X509_USER_KEY": str(key),
            "X509_USER_PROXY": str(self.workdir / "no-such-proxy"),
            "MYPROXY_SERVER": "localhost",
            "MYPROXY_SERVER_PORT": str(self.ports[server]),
            "HOME": str(self.workdir),
            "RANDFILE": "/dev/null",
        }
        data = None if stdin is None else f"{stdin}\n".encode()
        return run_tool([tool, *args], env=env, input=data, timeout=TIMEOUT)

    def store(
        self,
        server: str,
        who: str,
        username: str,
        name: str | None,
        flags: tuple[str, ...],
        passphrase: str | None,
    ) -> subprocess.CompletedProcess[str]:
        args = ["-l", username, "-c", "2", "-t", "1", *(["-k", name] if name else []), *flags]
        if passphrase:
            args.append("-S")
        return self.run("myproxy-init", server, who, *args, stdin=passphrase)

    def get(
        self, server: str, who: str, username: str, name: str | None, how: str, secret: str | None
    ) -> subprocess.CompletedProcess[str]:
        out = self.workdir / f"{server}-{who}-{username}-{name}-{how}.pem"
        out.unlink(missing_ok=True)
        args: list[str | Path] = ["-l", username, "-t", "1", "-o", out]
        if name:
            args += ["-k", name]
        if how == "passphrase":
            return self.run("myproxy-logon", server, who, *args, "-S", stdin=secret)
        return self.run("myproxy-logon", server, who, *args, "-n")


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"[exit {done.returncode}] {(done.stdout + done.stderr).strip()[-400:]}"


@contextmanager
def both_servers(pki: DevPKI, workdir: Path, config: str) -> Iterator[dict[str, int]]:
    """The real myproxy-server run from `config`, and proxyd from the same file through
    `proxyd admin import-myproxy-config`'s converter: their MyProxy ports, by SERVERS."""
    conversion = convert(config, "myproxy-server.config")
    assert conversion.warnings == []
    completed = conversion.toml.replace("# host_cert = ", "host_cert = ").replace(
        "# host_key = ", "host_key = "
    )
    policy = parse_config(completed, workdir / "proxyd.toml").policy
    with ExitStack() as stack:
        real = stack.enter_context(
            real_myproxy_server(pki, workdir / "real", f"cert_dir {pki.cert_dir}\n{config}")
        )
        ours = stack.enter_context(running_server(pki, workdir / "proxyd", policy=policy))
        yield {SERVERS[0]: real.port, SERVERS[1]: ours.myproxy_port}


@pytest.fixture(scope="module")
def clients(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    workdir = tmp_path_factory.mktemp("options-differential")
    identities = {name: dev_pki.user(name) for name in ("alice", "bob", "carol")}
    identities["wms"] = dev_pki.host("wms")
    identities["other"] = issue(dev_pki, OTHER, workdir / "other", host=True)
    with (
        both_servers(dev_pki, workdir, CONFIG) as ports,
        ThreadPoolExecutor(len(SERVERS)) as both,
    ):
        c = Clients(dev_pki, workdir, identities, ports)
        for entry in STORED:
            done = list(both.map(lambda s, e=entry: c.store(s, "alice", *e), SERVERS))
            for server, result in zip(SERVERS, done, strict=True):
                assert result.returncode == 0, f"{server}: store {entry[:2]}: {output(result)}"
        yield c


@pytest.mark.parametrize(
    ("what", "who", "username", "name", "how", "secret", "expected"),
    CASES,
    ids=[f"{w}-{who}-{u}-{n}-{h}-{e}" for w, who, u, n, h, _, e in CASES],
)
def test_same_outcome_as_myproxy_server(
    clients: Clients,
    what: str,
    who: str,
    username: str,
    name: str | None,
    how: str,
    secret: str | None,
    expected: bool,
) -> None:
    def attempt(server: str) -> subprocess.CompletedProcess[str]:
        if what == "store":
            return clients.store(server, who, username, name, (), secret)
        return clients.get(server, who, username, name, how, secret)

    with ThreadPoolExecutor(len(SERVERS)) as both:
        outcome = dict(zip(SERVERS, both.map(attempt, SERVERS), strict=True))
    allowed = {server: done.returncode == 0 for server, done in outcome.items()}
    report = "\n".join(f"{server}: {output(done)}" for server, done in outcome.items())
    assert allowed["myproxy-server"] is expected, f"the man page disagrees:\n{report}"
    assert allowed["proxyd"] is allowed["myproxy-server"], report
