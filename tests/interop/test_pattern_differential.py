"""The real myproxy-server judges proxyd's reading of MyProxy patterns.

Both servers run with the same policy, and the real clients (myproxy-init,
myproxy-logon) run as each identity against each: every case must end the
same way on both (allowed or refused), and as the man page says it should.
Server-wide lists (authorized_retrievers, trusted_retrievers,
authorized_renewers) and per-credential policies (`myproxy-init -x -r / -Z /
-R '<regex>'`, and without -x, where myproxy-init itself prefixes `*/CN=`)
are covered: alternation, POSIX classes, `?`, escapes, case, and anchoring
attacks (`wms.localhost.evil`, `wmsXlocalhost` against `.`). `FQAN:`
patterns are judged with VOMS proxies that the real voms-proxy-init gets
from proxyd's [aa] endpoint (the dev VOs).
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from proxyd.config import PolicyConfig, load_config
from proxyd.devpki import DevPKI, host_dn, user_dn
from tests.support.myproxy_server import config_text, issue, real_myproxy_server
from tests.support.server import running_server
from tests.support.tools import run_tool

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

PASS = "differential-1"
TIMEOUT = 30
SERVERS = ("myproxy-server", "proxyd")

# Identities beyond the dev PKI's, each (DN, is a host).
EXTRA = {
    "Bob": (user_dn("Bob"), False),
    "user7": (user_dn("user7"), False),
    "user77": (user_dn("user77"), False),
    "jim": (user_dn("Jim Basney (admin)"), False),
    "robot": ("/C=XX/O=proxyd dev/OU=Robots/CN=Robot: cms crab", False),
    "crab1": (host_dn("crab-prod-tw01.cern.ch"), True),
    "crab2": (host_dn("crab-preprod-tw02.cern.ch"), True),
    "crab3": (host_dn("crab-prod-tw03.cern.ch"), True),
    "crabdev": (host_dn("crab-dev-tw01.cern.ch"), True),
    "evil": (host_dn("wms.localhost.evil"), True),
    "wmsx": (host_dn("wmsXlocalhost"), True),
}

# CMS CRAB's shape: `-x -R '<host regex>|<robot DN>'`.
CRAB = "*/OU=Hosts/CN=crab-(preprod|prod)-tw(01|02).cern.ch|*/OU=Robots/CN=Robot: cms crab"


@dataclasses.dataclass(frozen=True)
class Credential:
    """A credential alice stores: its name and myproxy-init's flags (patterns kept whole)."""

    name: str
    flags: tuple[str, ...]
    passphrase: bool


@dataclasses.dataclass(frozen=True)
class Setup:
    """One policy for both servers and the credentials stored under it."""

    policy: dict[str, list[str]]
    credentials: tuple[Credential, ...]


SETUPS = {
    "server-wide": Setup(
        {
            "accepted_credentials": ["*"],
            "authorized_retrievers": [
                CRAB,
                "*/OU=Users/CN=[[:lower:]]\\*",
                "*/CN=Jim Basney \\(admin\\)",
            ],
            "trusted_retrievers": [
                "*/OU=Hosts/CN=wms.localhost",
                "*/OU=Users/CN=user?",
                "*/CN=crab-prod-tw0[[:digit:]].cern.ch",
                "*/OU=Users/CN=(bob|Bob)",
            ],
        },
        (Credential("pp", (), True), Credential("np", ("-n",), False)),
    ),
    "per-credential": Setup(
        {
            "accepted_credentials": ["*"],
            "authorized_retrievers": ["*"],
            "trusted_retrievers": ["*"],
            "default_trusted_retrievers": ["*/CN=nobody"],
        },
        (
            Credential("crab", ("-x", "-Z", CRAB), False),
            Credential("wms", ("-x", "-Z", "*/CN=wms.localhost"), False),
            Credential("case", ("-x", "-r", "*/OU=Users/CN=Bob"), True),
            Credential("q", ("-x", "-r", "*/CN=user?|*/CN=Jim Basney \\(admin\\)"), True),
            Credential(
                "cls",
                ("-x", "-r", "*/OU=Hosts/CN=crab-[[:alpha:]]*-tw[[:digit:]][[:digit:]].cern.ch"),
                True,
            ),
            Credential("cn", ("-Z", "wms.localhost"), False),  # no -x: myproxy-init adds */CN=
            Credential("comma", ("-x", "-r", "*/OU=Users/CN=user7{1,2}"), True),  # one regex
        ),
    ),
    "fqan": Setup(
        {
            "accepted_credentials": ["*"],
            "authorized_retrievers": ["FQAN:/dteam/Role=NULL/Capability=NULL", "fqan:/ops/*"],
        },
        (
            Credential("pp", (), True),
            Credential("ops", ("-x", "-r", "FQAN:/ops/Role=NULL/Capability=NULL"), True),
            Credential("short", ("-x", "-r", "FQAN:/dteam"), True),  # not what the AC holds
            Credential("role", ("-x", "-r", "FQAN:*/Role=production/*"), True),
        ),
    ),
    "renewal": Setup(
        {
            "accepted_credentials": ["*"],
            "authorized_retrievers": ["*"],
            "authorized_renewers": [
                "*/OU=Users/CN=(bob|carol)",
                "*/OU=Hosts/CN=crab-prod-tw0?.cern.ch",
            ],
        },
        (
            Credential("plain", ("-n",), False),
            Credential("perR", ("-x", "-R", "*/CN=crab-(preprod|prod)-tw(01|02).cern.ch"), False),
        ),
    ),
}

# (setup, credential, how the client asks, who asks, what the man page says)
CASES = [
    # authorized_retrievers: a passphrase GET
    ("server-wide", "pp", "passphrase", "crab1", True),
    ("server-wide", "pp", "passphrase", "crab2", True),
    ("server-wide", "pp", "passphrase", "crab3", False),
    ("server-wide", "pp", "passphrase", "crabdev", False),
    ("server-wide", "pp", "passphrase", "robot", True),
    ("server-wide", "pp", "passphrase", "bob", True),
    ("server-wide", "pp", "passphrase", "Bob", False),
    ("server-wide", "pp", "passphrase", "user7", False),
    ("server-wide", "pp", "passphrase", "jim", True),
    ("server-wide", "pp", "passphrase", "wms", False),
    # trusted_retrievers: a GET without passphrase, which myproxy-server also checks against
    # authorized_retrievers (wms and user7 are trusted, but no authorized retrievers)
    ("server-wide", "np", "trusted", "wms", False),
    ("server-wide", "np", "trusted", "user7", False),
    ("server-wide", "np", "trusted", "crab1", True),
    ("server-wide", "np", "trusted", "crab3", False),
    ("server-wide", "np", "trusted", "crab2", False),
    ("server-wide", "np", "trusted", "bob", True),
    ("server-wide", "np", "trusted", "Bob", False),
    ("server-wide", "np", "trusted", "carol", False),
    ("server-wide", "np", "trusted", "evil", False),
    ("server-wide", "np", "trusted", "wmsx", False),
    # per-credential trusted retrievers (-x -Z)
    ("per-credential", "crab", "trusted", "crab1", True),
    ("per-credential", "crab", "trusted", "crab2", True),
    ("per-credential", "crab", "trusted", "crab3", False),
    ("per-credential", "crab", "trusted", "crabdev", False),
    ("per-credential", "crab", "trusted", "robot", True),
    ("per-credential", "crab", "trusted", "wms", False),
    ("per-credential", "wms", "trusted", "wms", True),
    ("per-credential", "wms", "trusted", "evil", False),
    ("per-credential", "wms", "trusted", "wmsx", False),
    ("per-credential", "cn", "trusted", "wms", True),
    ("per-credential", "cn", "trusted", "evil", False),
    # per-credential retrievers (-x -r), with the passphrase
    ("per-credential", "case", "passphrase", "Bob", True),
    ("per-credential", "case", "passphrase", "bob", False),
    ("per-credential", "q", "passphrase", "user7", True),
    ("per-credential", "q", "passphrase", "user77", False),
    ("per-credential", "q", "passphrase", "jim", True),
    ("per-credential", "q", "passphrase", "bob", False),
    ("per-credential", "cls", "passphrase", "crab1", True),
    ("per-credential", "cls", "passphrase", "crabdev", True),
    ("per-credential", "cls", "passphrase", "wms", False),
    ("per-credential", "cls", "passphrase", "evil", False),
    ("per-credential", "comma", "passphrase", "user7", True),
    ("per-credential", "comma", "passphrase", "user77", True),
    ("per-credential", "comma", "passphrase", "bob", False),
    # FQAN: patterns, server-wide and per credential (VOMS proxies: bob-dteam, carol-ops,
    # alice-prod with the production role; bob and carol: no AC at all)
    ("fqan", "pp", "passphrase", "bob-dteam", True),
    ("fqan", "pp", "passphrase", "carol-ops", True),
    ("fqan", "pp", "passphrase", "alice-prod", True),
    ("fqan", "pp", "passphrase", "bob", False),
    ("fqan", "pp", "passphrase", "carol", False),
    ("fqan", "ops", "passphrase", "carol-ops", True),
    ("fqan", "ops", "passphrase", "bob-dteam", False),
    ("fqan", "short", "passphrase", "bob-dteam", False),
    ("fqan", "role", "passphrase", "alice-prod", True),
    ("fqan", "role", "passphrase", "bob-dteam", False),
    # authorized_renewers, and per-credential renewers (-x -R)
    ("renewal", "plain", "renew", "bob", True),
    ("renewal", "plain", "renew", "carol", True),
    ("renewal", "plain", "renew", "Bob", False),
    ("renewal", "plain", "renew", "crab1", True),
    ("renewal", "plain", "renew", "crab3", True),
    ("renewal", "plain", "renew", "crabdev", False),
    ("renewal", "plain", "renew", "wms", False),
    ("renewal", "perR", "renew", "crab1", True),
    ("renewal", "perR", "renew", "crab3", False),
    ("renewal", "perR", "renew", "crab2", False),
    ("renewal", "perR", "renew", "bob", False),
]


@dataclasses.dataclass
class Clients:
    """The real clients as any identity, against either server of a setup."""

    pki: DevPKI
    workdir: Path
    identities: dict[str, tuple[Path, Path]]
    ports: dict[str, int]
    alice_proxy: Path
    voms_proxies: dict[str, Path] = dataclasses.field(default_factory=dict)

    def run(
        self, tool: str, server: str, who: str, *args: str | Path, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {"X509_USER_PROXY": str(self.workdir / "no-such-proxy")}
        if who in self.voms_proxies:
            env["X509_USER_PROXY"] = str(self.voms_proxies[who])
        else:
            cert, key = self.identities[who]
            env |= {"X509_USER_CERT": str(cert), "X509_USER_KEY": str(key)}
        env |= {
            "X509_CERT_DIR": str(self.pki.cert_dir),
            "X509_VOMS_DIR": str(self.pki.voms_dir),
            "MYPROXY_SERVER": "localhost",
            "MYPROXY_SERVER_PORT": str(self.ports[server]),
            "HOME": str(self.workdir),
            "RANDFILE": "/dev/null",
        }
        data = None if stdin is None else f"{stdin}\n".encode()
        return run_tool([tool, *args], env=env, input=data, timeout=TIMEOUT)

    def store(self, server: str, credential: Credential) -> None:
        args = ["-l", "alice", "-k", credential.name, "-c", "2", "-t", "1", *credential.flags]
        if credential.passphrase:
            args.append("-S")
        done = self.run(
            "myproxy-init", server, "alice", *args, stdin=PASS if credential.passphrase else None
        )
        assert done.returncode == 0, f"{server}: myproxy-init {args}: {output(done)}"

    def get(
        self, server: str, credential: str, how: str, who: str
    ) -> subprocess.CompletedProcess[str]:
        out = self.workdir / f"{server}-{credential}-{how}-{who}.pem"
        out.unlink(missing_ok=True)
        args: list[str | Path] = ["-l", "alice", "-k", credential, "-t", "1", "-o", out]
        if how == "passphrase":
            return self.run("myproxy-logon", server, who, *args, "-S", stdin=PASS)
        if how == "trusted":
            return self.run("myproxy-logon", server, who, *args, "-n")
        return self.run("myproxy-logon", server, who, *args, "-a", self.alice_proxy)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"[exit {done.returncode}] {(done.stdout + done.stderr).strip()[-400:]}"


def proxyd_policy(pki: DevPKI, policy: dict[str, list[str]]) -> PolicyConfig:
    """The PolicyConfig equivalent to a myproxy-server.config's access lines."""
    base = load_config(pki.config).policy

    def listed(key: str) -> tuple[str, ...]:
        return tuple(policy.get(key, ()))

    return dataclasses.replace(
        base,
        accepted_credentials=listed("accepted_credentials"),
        authorized_retrievers=listed("authorized_retrievers"),
        trusted_retrievers=listed("trusted_retrievers"),
        authorized_renewers=listed("authorized_renewers"),
        default_trusted_retrievers=(
            listed("default_trusted_retrievers") if "default_trusted_retrievers" in policy else None
        ),
        full_delegation_hosts=(),
    )


VOMS_PROXIES = {  # name -> (user, voms-proxy-init --voms argument)
    "bob-dteam": ("bob", "dteam"),
    "carol-ops": ("carol", "ops"),
    "alice-prod": ("alice", "dteam:/dteam/Role=production"),
}


def voms_proxies(pki: DevPKI, workdir: Path, aa_port: int) -> dict[str, Path]:
    """VOMS proxies made by the real voms-proxy-init, with ACs from proxyd's [aa] endpoint."""
    vomses = workdir / "vomses"
    host = host_dn("localhost")
    vomses.write_text(
        "".join(f'"{vo}" "localhost" "{aa_port}" "{host}" "{vo}"\n' for vo in ("dteam", "ops"))
    )
    made = {}
    for name, (user, voms) in VOMS_PROXIES.items():
        cert, key = pki.user(user)
        out = workdir / f"{name}.pem"
        argv: list[str | Path] = [
            "voms-proxy-init",
            "--vomses",
            vomses,
            "-cert",
            cert,
            "-key",
            key,
            "-out",
            out,
        ]
        env = {
            "X509_CERT_DIR": str(pki.cert_dir),
            "X509_VOMS_DIR": str(pki.voms_dir),
            "HOME": str(workdir),
            "RANDFILE": "/dev/null",
        }
        done = run_tool([*argv, "--voms", voms, "--timeout", "20"], env=env, timeout=TIMEOUT)
        assert done.returncode == 0, output(done)
        made[name] = out
    return made


@pytest.fixture(scope="module")
def identities(
    dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("identities")
    found = {name: dev_pki.user(name) for name in ("alice", "bob", "carol")}
    found["wms"] = dev_pki.host("wms")
    for name, (dn, host) in EXTRA.items():
        found[name] = issue(dev_pki, dn, out / name, host=host)
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("differential")


@pytest.fixture(scope="module")
def alice_proxy(dev_pki: DevPKI, workdir: Path) -> Path:
    cert, key = dev_pki.user("alice")
    out = workdir / "alice-proxy.pem"
    env = {"X509_CERT_DIR": str(dev_pki.cert_dir), "RANDFILE": "/dev/null"}
    made = run_tool(["grid-proxy-init", "-q", "-cert", cert, "-key", key, "-out", out], env=env)
    assert made.returncode == 0, output(made)
    return out


@pytest.fixture(scope="module")
def setups(
    dev_pki: DevPKI,
    workdir: Path,
    identities: dict[str, tuple[Path, Path]],
    alice_proxy: Path,
) -> Iterator[dict[str, Clients]]:
    """Every setup's pair of servers, started once for the module, credentials stored."""
    with ExitStack() as stack, ThreadPoolExecutor(len(SERVERS)) as both:
        running: dict[str, Clients] = {}
        for name, setup in SETUPS.items():
            base = workdir / name
            real = stack.enter_context(
                real_myproxy_server(dev_pki, base / "real", config_text(dev_pki, setup.policy))
            )
            ours = stack.enter_context(
                running_server(
                    dev_pki,
                    base / "proxyd",
                    policy=proxyd_policy(dev_pki, setup.policy),
                    aa=name == "fqan",
                )
            )
            ports = {"myproxy-server": real.port, "proxyd": ours.myproxy_port}
            clients = Clients(dev_pki, base, identities, ports, alice_proxy)
            if ours.aa_port is not None:
                clients.voms_proxies = voms_proxies(dev_pki, base, ours.aa_port)
            for credential in setup.credentials:
                list(both.map(clients.store, SERVERS, [credential] * len(SERVERS)))
            running[name] = clients
        yield running


@pytest.mark.parametrize(
    ("setup", "credential", "how", "who", "expected"),
    CASES,
    ids=[f"{s}-{c}-{h}-{w}" for s, c, h, w, _ in CASES],
)
def test_same_outcome_as_myproxy_server(
    setups: dict[str, Clients], setup: str, credential: str, how: str, who: str, expected: bool
) -> None:
    clients = setups[setup]
    with ThreadPoolExecutor(len(SERVERS)) as both:  # the two servers at once: half the time
        done = both.map(lambda server: clients.get(server, credential, how, who), SERVERS)
        outcome = dict(zip(SERVERS, done, strict=True))
    allowed = {server: done.returncode == 0 for server, done in outcome.items()}
    report = "\n".join(f"{server}: {output(done)}" for server, done in outcome.items())
    assert allowed["myproxy-server"] is expected, f"the man page disagrees:\n{report}"
    assert allowed["proxyd"] is allowed["myproxy-server"], report


def test_the_cases_cover_the_brief() -> None:
    """At least 30 cases, both outcomes in every setup, every kind of request."""
    assert len(CASES) >= 30
    for name in SETUPS:
        outcomes = {expected for setup, *_, expected in CASES if setup == name}
        assert outcomes == {True, False}, name
    assert {how for _, _, how, _, _ in CASES} == {"passphrase", "trusted", "renew"}
