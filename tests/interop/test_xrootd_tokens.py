"""A real storage element judges proxyd's payload tokens (issue 19, "Real relying parties").

Debian 12's XRootD 5.5.3 with the SciTokens plugin trusts proxyd as a token
issuer for /dteam and fetches its keys from proxyd's discovery document over
HTTPS (tests/support/xrootd.py); scitokens-cpp's `scitokens-verify` judges
the tokens on its own. The tokens are obtained as the matched pilot obtains
them (TaskService.payload_token with the match's assignment secret). The
server takes GSI clients too (VOMS proxies, judged by its authdb), as a site's
storage element does.

Scope paths are relative to the storage's `base_path` (WLCG profile): with
`base_path = /dteam`, `storage.create:/` lets the token create files under
/dteam/, while `storage.create:/dteam` would mean /dteam/dteam/.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxyd.config import Config
from proxyd.devpki import DevPKI, user_dn
from proxyd.principal import Principal
from proxyd.repository import Denied, Repository, StoreOptions
from proxyd.sealing import MasterKeyring
from proxyd.taskqueue import Accounting, Payload, PilotCapabilities, TaskSpec
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskService
from proxyd.tokens.settings import TokensConfig
from tests.support.grid import csr_for, delegate, load_identity, principal, spare_key
from tests.support.server import RunningServer, running_server
from tests.support.xrootd import (
    XrootdServer,
    dev_ca_file,
    require_xrootd,
    running_xrootd,
    scitokens_verify,
)
from voms_ext import Credential, write_credential_file

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

SCOPES = {
    "dteam": ("storage.read:/", "storage.create:/"),  # relative to the storage's base path
    "ops": ("storage.read:/",),  # a VO whose tokens may only read
}
_instances = itertools.count(1)


@dataclass
class Site:
    server: RunningServer
    xrootd: XrootdServer
    queue: SqlTaskQueue
    pilot: Principal
    work: Path

    def assign(self, who: str, vo: str) -> tuple[int, str]:
        """A task of `who` in `vo`, matched to the pilot: (task id, the match's secret)."""
        spec = TaskSpec(
            owner=user_dn(who),
            vo=vo,
            group=f"/{vo}",
            credential_username=who,
            payload=Payload("/usr/bin/xrdcp", ("--nopbar",)),
            max_wall_s=3600,
        )
        task = self.queue.submit(spec)
        caps = PilotCapabilities(
            self.pilot.identity, f"pilot-{next(_instances)}", "SITE-A", cpu_time_left=10**5
        )
        matched = self.queue.match(caps)
        assert matched is not None and matched.id == task.id
        assert matched.assignment_secret is not None
        return task.id, matched.assignment_secret

    def token(self, task_id: int, secret: str, repo: Repository | None = None) -> str:
        service = TaskService(repo or self.server.repo, self.queue)
        return service.payload_token(self.pilot, task_id, secret).token

    def end(self, task_id: int) -> None:
        self.queue.start(task_id, self.pilot.identity)
        self.queue.complete(task_id, self.pilot.identity, Accounting(cpu_s=1, wall_s=2))

    def write(
        self, token: str, path: str, content: str, *, force: bool = False
    ) -> tuple[int, str, str]:
        """xrdcp a file to `path` with `token` (`force`: overwrite it): (exit code, its stderr,
        the server's log)."""
        source = self.work / "payload-output.txt"
        source.write_text(content)
        seen = len(self.xrootd.log())
        env = self.xrootd.client_env(self.work, token=token)
        done = self.xrootd.xrdcp(source, self.xrootd.url(path), env, force=force)
        return done.returncode, done.stderr, self.xrootd.log()[seen:]


def _configure(config: Config) -> Config:
    assert config.api.listen is not None
    issuer = f"https://localhost:{config.api.listen.port}"
    return dataclasses.replace(config, tokens=TokensConfig(issuer=issuer, scopes=SCOPES))


@pytest.fixture(scope="module")
def site(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_xrootd()
    state = tmp_path_factory.mktemp("proxyd") / "state"
    with running_server(dev_pki, state, configure=_configure) as server:
        repo = server.repo
        for who in ("alice", "carol"):  # dteam and ops members in the dev config
            delegate(repo, load_identity(dev_pki, who), StoreOptions(who))
        queue = SqlTaskQueue(repo.engine, audit=repo.audit)
        pilot = principal(repo, load_identity(dev_pki, "pilot"))
        issuer = server.config.tokens.issuer
        assert issuer is not None
        # Tokens and GSI on one server, as a site runs it (and issue 21's grid in a box).
        with running_xrootd(dev_pki, issuer=issuer, base_path="/dteam", gsi=True) as xrootd:
            work = tmp_path_factory.mktemp("payload")
            yield Site(server, xrootd, queue, pilot, work)


def _explain(site: Site, stderr: str) -> str:
    return f"xrdcp: {stderr}\n--- xrootd log ---\n{site.xrootd.log()[-4000:]}"


def test_xrootd_lets_a_payload_token_write_under_its_base_path(site: Site) -> None:
    task_id, secret = site.assign("alice", "dteam")
    token = site.token(task_id, secret)
    rc, stderr, log = site.write(token, f"/dteam/task-{task_id}.out", "events: 1000\n")
    assert rc == 0, _explain(site, stderr)
    written = site.xrootd.data / "dteam" / f"task-{task_id}.out"
    assert written.read_text() == "events: 1000\n"
    # Validated with the keys fetched from proxyd, for alice, with the VO's scopes.
    assert f"subject={user_dn('alice')}, issuer={site.server.config.tokens.issuer}" in log
    assert "groups=/dteam, authorizations=/dteam:read,dir,stat,excl_create" in log
    assert f"operation=excl_create, path=/dteam/task-{task_id}.out" in log

    # storage.create creates, it does not overwrite (that is storage.modify); nor does the
    # server's authdb for GSI clients lend the token's wlcg.groups its write rights.
    rc, stderr, log = site.write(token, f"/dteam/task-{task_id}.out", "overwritten\n", force=True)
    assert rc != 0, _explain(site, stderr)
    assert written.read_text() == "events: 1000\n"
    assert f"deny  *@? create /dteam/task-{task_id}.out" in log, log

    # Outside the base path the token grants nothing.
    rc, stderr, _ = site.write(token, f"/other/task-{task_id}.out", "x")
    assert rc != 0 and "is disallowed" in stderr, _explain(site, stderr)


def test_the_payload_proxy_beside_the_token_writes_too(site: Site) -> None:
    """The same server takes GSI: the payload's limited VOMS proxy (I2) of the same task is
    accepted, decided by the VO in its AC (tests/interop/test_xrootd_gsi.py)."""
    task_id, secret = site.assign("alice", "dteam")
    key = spare_key(4)
    service = TaskService(site.server.repo, site.queue)
    issued = service.payload_proxy(site.pilot, task_id, csr_for(key), secret)
    proxy = site.work / f"x509up-task-{task_id}"
    write_credential_file(proxy, Credential(issued.certificates, key))
    source = site.work / "proxy-output.txt"
    source.write_text("by proxy\n")
    seen = len(site.xrootd.log())
    env = site.xrootd.client_env(site.work, proxy=proxy)
    done = site.xrootd.xrdcp(source, site.xrootd.url(f"/dteam/proxy-{task_id}.out"), env)
    assert done.returncode == 0, _explain(site, done.stderr)
    assert (site.xrootd.data / "dteam" / f"proxy-{task_id}.out").read_text() == "by proxy\n"
    log = site.xrootd.log()[seen:]
    assert "XrdVomsFun: found VO: dteam" in log
    grant = rf"acc_Audit: \S+ grant gsi \S+ create /dteam/proxy-{task_id}\.out\n"
    assert re.search(grant, log), log


def test_after_the_task_ends_no_token_and_an_expired_one_is_refused(site: Site) -> None:
    task_id, secret = site.assign("alice", "dteam")
    site.end(task_id)
    with pytest.raises(Denied) as refused:
        site.token(task_id, secret)
    assert refused.value.rule == "payload.assignment_ended"

    # A token that was valid once and has expired since: issued by the same server (same
    # database, same signing keys) whose clock read three minutes ago, with a 90 s cap.
    task_id, secret = site.assign("alice", "dteam")
    config = site.server.repo.config
    short = dataclasses.replace(
        config, tokens=dataclasses.replace(config.tokens, max_lifetime=dt.timedelta(seconds=90))
    )
    earlier = Repository(
        short,
        site.server.repo.engine,
        MasterKeyring.load_or_create(config.server.master_key_file),
        site.server.repo.trust,
        clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3),
    )
    expired = site.token(task_id, secret, earlier)
    claims = _claims(expired)
    assert claims["exp"] < dt.datetime.now(dt.UTC).timestamp()  # type: ignore[operator]
    rc, stderr, log = site.write(expired, f"/dteam/expired-{task_id}.out", "x")
    assert rc != 0, _explain(site, stderr)
    assert "User authentication failed; token verification failed: token expired" in log, log
    assert not (site.xrootd.data / "dteam" / f"expired-{task_id}.out").exists()


def test_a_token_whose_scope_only_reads_cannot_write(site: Site) -> None:
    task_id, secret = site.assign("alice", "dteam")
    rc, stderr, _ = site.write(site.token(task_id, secret), f"/dteam/for-ops-{task_id}", "data")
    assert rc == 0, _explain(site, stderr)

    ops_task, ops_secret = site.assign("carol", "ops")
    token = site.token(ops_task, ops_secret)
    assert _claims(token)["scope"] == "storage.read:/"
    rc, stderr, log = site.write(token, f"/dteam/ops-{ops_task}.out", "x")
    assert rc != 0, _explain(site, stderr)
    assert f"Unable to create /dteam/ops-{ops_task}.out; permission denied" in stderr
    assert "authorizations=/dteam:read,dir,stat\n" in log
    assert not (site.xrootd.data / "dteam" / f"ops-{ops_task}.out").exists()

    # The same token reads: the refusal above was the scope, not the token.
    env = site.xrootd.client_env(site.work, token=token)
    copy = site.work / f"read-{ops_task}"
    done = site.xrootd.xrdcp(site.xrootd.url(f"/dteam/for-ops-{task_id}"), copy, env)
    assert done.returncode == 0, _explain(site, done.stderr)
    assert copy.read_text() == "data"


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def _with_claims(token: str, change: Callable[[dict[str, object]], None]) -> str:
    """The token with its payload changed and its signature kept."""
    header, _, signature = token.split(".")
    claims = _claims(token)
    change(claims)
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def _unrelated_ca(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the dev CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_scitokens_verify_accepts_the_token_and_rejects_a_tampered_one(
    site: Site, tmp_path: Path
) -> None:
    task_id, secret = site.assign("alice", "dteam")
    token = site.token(task_id, secret)
    ca_file = dev_ca_file(site.server.pki, tmp_path)
    accepted = scitokens_verify(token, ca_file, tmp_path / "cache-1")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Token deserialization successful" in accepted.stdout

    def wider(claims: dict[str, object]) -> None:
        claims["scope"] = "storage.read:/ storage.create:/ storage.modify:/"

    tampered = scitokens_verify(_with_claims(token, wider), ca_file, tmp_path / "cache-2")
    assert tampered.returncode != 0
    assert "Failed to deserialize a token" in tampered.stdout + tampered.stderr

    # Without the dev CA, scitokens-cpp cannot fetch the keys: the trust is what was tested.
    untrusted = scitokens_verify(token, _unrelated_ca(tmp_path), tmp_path / "cache-3")
    assert untrusted.returncode != 0
    assert "SSL peer certificate" in untrusted.stdout + untrusted.stderr
