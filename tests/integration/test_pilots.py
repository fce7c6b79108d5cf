"""Pilots drain the queue with real processes: payloads run only on limited proxies of their owners.

3 users submit 30 tasks; 4 `proxyd-pilot` processes on 2 sites drain the queue.
Each payload inspects its X509_USER_PROXY with voms_ext and writes what it saw.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.config import Config, load_config
from proxyd.core.tokens import WLCG_ANY_AUDIENCE
from proxyd.devpki import DevPKI, user_dn
from proxyd.repository import StoreOptions
from proxyd.tokens.profile import TrustedIssuer
from proxyd.tokens.settings import TokensConfig
from proxyd.tokens.verify import IssuerKeys, verify_token
from tests.support.grid import Identity, csr_for, delegate, load_identity, spare_key
from tests.support.https import ApiClient
from tests.support.server import RunningServer, running_server, write_config
from voms_ext import Credential, write_credential_file

BIN = Path(sys.executable).parent
USERS = {"alice": ("dteam", "/dteam"), "bob": ("dteam", "/dteam"), "carol": ("ops", "/ops")}
PILOT2 = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot2"

PAYLOAD = r"""
import json, os, stat, sys, time
from voms_ext import TrustStore, load_credential_file, validate_chain
proxy = os.environ["X509_USER_PROXY"]
trust = TrustStore.from_dirs(os.environ["X509_CERT_DIR"], os.environ["X509_VOMS_DIR"])
result = validate_chain(load_credential_file(proxy).certificates, trust)
deadline = time.process_time() + float(sys.argv[2])
while time.process_time() < deadline:
    pass
with open(os.path.join(sys.argv[1], os.environ["PROXYD_TASK_ID"] + ".json"), "w") as out:
    json.dump({"task": int(os.environ["PROXYD_TASK_ID"]), "identity": result.identity,
               "limited": result.is_limited, "fqans": list(result.fqans),
               "mode": stat.S_IMODE(os.stat(proxy).st_mode), "uid": os.getuid(),
               "cpu": time.process_time(), "proxy": proxy, "cwd": os.getcwd()}, out)
print("payload of task", os.environ["PROXYD_TASK_ID"], "done")
"""


def _pilot2(dev_pki: DevPKI, out: Path) -> Path:
    """A second pilot identity, issued by the dev CA."""
    cert, key = dev_pki.issue(PILOT2, key=spare_key(6))
    path = out / "pilot2.pem"
    write_credential_file(path, Credential((cert,), key))
    return path


@dataclasses.dataclass
class Bed:
    server: RunningServer
    config_file: Path
    creds: dict[str, Path]
    results: Path
    workroot: Path
    payload: Path

    def api(self, who: str) -> ApiClient:
        return ApiClient(self.server.api_port, self.server.pki.cert_dir, self.creds[who])

    def submit(
        self,
        who: str,
        n: int,
        *,
        priority: int = 0,
        cpu: float = 0.05,
        sites: tuple[str, ...] = (),
        max_cpu_s: int = 60,
        max_wall_s: int = 120,
        command: list[str] | None = None,
    ) -> list[int]:
        vo, fqan = USERS.get(who, ("dteam", "/dteam"))
        ids = []
        for _ in range(n):
            argv = command or [sys.executable, str(self.payload), str(self.results), str(cpu)]
            reply = self.api(who).request(
                "POST",
                "/v1/tasks",
                {
                    "vo": vo,
                    "group": fqan,
                    "fqans": [fqan],
                    "priority": priority,
                    "credential": {"username": who, "name": "default"},
                    "requirements": {"sites_allowed": list(sites)},
                    "payload": {"command": argv[0], "args": argv[1:]},
                    "max_cpu_s": max_cpu_s,
                    "max_wall_s": max_wall_s,
                },
            )
            assert reply.status == 201, reply.body
            ids.append(reply.json["id"])
        return ids

    def pilot(self, site: str, who: str = "pilot", *extra: str) -> subprocess.Popen[str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.workroot),
            "X509_USER_PROXY": str(self.creds[who]),
            "X509_CERT_DIR": str(self.server.pki.cert_dir),
            "X509_VOMS_DIR": str(self.server.pki.voms_dir),
            "PROXYD_URL": f"https://localhost:{self.server.api_port}",
        }
        return subprocess.Popen(
            [
                str(BIN / "proxyd-pilot"),
                "--site",
                site,
                "--workdir",
                str(self.workroot),
                "--heartbeat",
                "1",
                "--time",
                "600",
                *extra,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def task(self, who: str, task_id: int) -> dict[str, object]:
        return self.api(who).request("GET", f"/v1/tasks/{task_id}").json  # type: ignore[no-any-return]


@pytest.fixture
def bed(request: pytest.FixtureRequest, dev_pki: DevPKI, tmp_path: Path) -> Iterator[Bed]:
    tmp_path.chmod(0o700)
    base = load_config(dev_pki.config).policy
    marker = request.node.get_closest_marker("bed_policy")  # per-test policy overrides
    policy = dataclasses.replace(
        base,
        pilot_dns=("/C=XX/O=proxyd dev/OU=Pilots/*",),
        auditors=(user_dn("carol"),),
        passphrase_attempts=10_000,
        **(marker.kwargs if marker else {}),
    )
    state = tmp_path / "state"
    tokens = request.node.get_closest_marker("bed_tokens")  # scopes per VO

    def configure(config: Config) -> Config:
        if tokens is None:
            return config
        assert config.api.listen is not None
        issuer = f"https://localhost:{config.api.listen.port}"
        scopes = {vo: tuple(s) for vo, s in tokens.kwargs.items()}
        return dataclasses.replace(config, tokens=TokensConfig(issuer=issuer, scopes=scopes))

    with running_server(dev_pki, state, policy=policy, configure=configure) as server:
        creds: dict[str, Path] = {}
        for who in ("alice", "bob", "carol", "pilot"):
            ident: Identity = load_identity(dev_pki, who)
            creds[who] = tmp_path / f"{who}.pem"
            write_credential_file(creds[who], Credential(ident.certificates, ident.key))
            if who != "pilot":
                delegate(server.repo, ident, StoreOptions(who))
        creds["pilot2"] = _pilot2(dev_pki, tmp_path)
        results, workroot = tmp_path / "results", tmp_path / "work"
        results.mkdir()
        workroot.mkdir(mode=0o711)
        payload = tmp_path / "payload.py"
        payload.write_text(PAYLOAD)
        results.chmod(0o777)
        config_file = write_config(dev_pki, state, server.myproxy_port, server.api_port)
        yield Bed(server, config_file, creds, results, workroot, payload)


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    logs = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        logs.append(err)
    return logs


def test_four_pilots_on_two_sites_drain_thirty_tasks(bed: Bed) -> None:
    ids: dict[str, list[int]] = {}
    for who, prio in (("alice", 5), ("bob", 1), ("carol", 3)):
        ids[who] = bed.submit(who, 10, priority=prio)
    pilots = [bed.pilot(site) for site in ("SITE-A", "SITE-A", "SITE-B", "SITE-B")]
    _finish(pilots)

    seen = {int(p.stem): json.loads(p.read_text()) for p in bed.results.glob("*.json")}
    assert sorted(seen) == sorted(i for v in ids.values() for i in v)
    for who, task_ids in ids.items():
        for task_id in task_ids:
            s = seen[task_id]
            assert (s["identity"], s["limited"], s["mode"]) == (user_dn(who), True, 0o600)
            assert s["fqans"][0] == f"{USERS[who][1]}/Role=NULL/Capability=NULL"
            assert bed.task(who, task_id)["state"] == "done"
    assert list(bed.workroot.iterdir()) == [], "proxy files or work directories left behind"

    totals = bed.api("carol").request("GET", "/v1/accounting?by=owner").json["totals"]
    by_owner = {t["key"]: t for t in totals}
    for who, task_ids in ids.items():
        used = sum(seen[t]["cpu"] for t in task_ids)
        reported = by_owner[user_dn(who)]
        assert reported["attempts"] == 10 and reported["failed"] == 0
        assert (
            used * 0.8 <= reported["cpu_s"] <= used + 10 * 1.0
        )  # the interpreter's start-up on top

    handoffs = [
        e
        for e in bed.server.repo.audit.query(
            operation="payload_proxy", decision="allow", limit=1000
        )
    ]
    assert sorted(int(e.event.detail.split()[1]) for e in handoffs) == sorted(seen)
    assert bed.server.repo.audit.verify().ok
    log = bed.api("alice").request("GET", f"/v1/tasks/{ids['alice'][0]}/log").json
    assert f"payload of task {ids['alice'][0]} done" in log["log_tail"]


def test_site_mask_and_user_ban_take_effect_without_restart(bed: Bed) -> None:
    admin = [str(BIN / "proxyd"), "admin", "--config", str(bed.config_file)]
    subprocess.run(
        [*admin, "mask-site", "SITE-A", "--reason", "downtime"], check=True, capture_output=True
    )
    bed.submit("alice", 2)
    a = bed.pilot("SITE-A")
    _finish([a])
    assert list(bed.results.iterdir()) == []  # nothing ran at the masked site
    subprocess.run([*admin, "unmask-site", "SITE-A"], check=True, capture_output=True)
    subprocess.run(
        [*admin, "ban", "--user", user_dn("bob"), "--reason", "abuse"],
        check=True,
        capture_output=True,
    )
    bob_ids = bed.submit("alice", 0) or []
    with pytest.raises(AssertionError):  # bob is banned: his submission is refused (ban.peer)
        bed.submit("bob", 1)
    _finish([bed.pilot("SITE-A")])
    assert len(list(bed.results.iterdir())) == 2 and not bob_ids
    rules = {e.event.operation for e in bed.server.repo.audit.query(limit=200)}
    assert {"site.mask", "site.unmask", "admin"} <= rules


def test_I2_a_pilot_gets_only_its_own_live_assignment(bed: Bed) -> None:
    [task_id] = bed.submit("alice", 1)
    pilot1 = bed.api("pilot")
    matched = pilot1.request("POST", "/v1/pilot/match", {"site": "SITE-A", "cpu_time_left": 3600})
    assert matched.status == 200 and matched.json["id"] == task_id
    secret = {"assignment_secret": matched.json["assignment_secret"]}
    csr = csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()
    other = bed.api("pilot2").request("POST", f"/v1/tasks/{task_id}/proxy", {"csr": csr, **secret})
    assert (other.status, other.json["rule"]) == (403, "payload.not_assigned")
    own = bed.api("pilot").request(
        "POST", "/v1/credentials/default/proxy?username=pilot", {"csr": csr}
    )
    assert own.status in (403, 404) and own.json["rule"] in (
        "pilot.pilot_credential",
        "credential.not_found",
        "pilot.restricted",
    )
    ok = pilot1.request("POST", f"/v1/tasks/{task_id}/proxy", {"csr": csr, **secret})
    assert ok.status == 200, ok.body
    assert pilot1.request("POST", f"/v1/tasks/{task_id}/start", secret).status == 200
    done = pilot1.request(
        "POST", f"/v1/tasks/{task_id}/complete", {"cpu_s": 0.1, "wall_s": 0.2, **secret}
    )
    assert done.status == 200, done.body
    after = pilot1.request("POST", f"/v1/tasks/{task_id}/proxy", {"csr": csr, **secret})
    assert (after.status, after.json["rule"]) == (403, "payload.assignment_ended")
    denials = {
        e.event.rule
        for e in bed.server.repo.audit.query(operation="payload_proxy", decision="deny")
    }
    assert {"payload.not_assigned", "payload.assignment_ended"} <= denials


def test_watchdog_kills_payloads_over_their_limits(bed: Bed, tmp_path: Path) -> None:
    spin = tmp_path / "spin.py"
    spin.write_text(
        "import os, time\nchild = os.fork()\nif child == 0:\n    time.sleep(600)\n"
        "open(os.path.join(os.environ['HOME'], '..', 'child.pid'), 'w').write(str(child))\n"
        "while True:\n    pass\n"
    )
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    [cpu_task] = bed.submit(
        "alice", 1, command=[sys.executable, str(spin)], max_cpu_s=2, max_wall_s=60
    )
    [wall_task] = bed.submit("bob", 1, command=sleeper, max_cpu_s=60, max_wall_s=3)
    started = time.monotonic()
    _finish([bed.pilot("SITE-A")])
    assert time.monotonic() - started < 60
    cpu, wall = bed.task("alice", cpu_task), bed.task("bob", wall_task)
    assert cpu["state"] == "failed" and "CPU time" in str(cpu["reason"])
    assert wall["state"] == "failed" and "wall time" in str(wall["reason"])
    child_pid = int((bed.workroot / "child.pid").read_text())
    assert not Path(f"/proc/{child_pid}").exists(), "the payload's child survived"


def test_a_stuck_payload_is_killed_as_stuck_and_the_task_fails(bed: Bed) -> None:
    """A payload that sleeps (no CPU) long before its wall time is caught as stuck (issue 20)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    [stuck] = bed.submit("alice", 1, command=sleeper, max_cpu_s=60, max_wall_s=300)
    started = time.monotonic()
    _finish([bed.pilot("SITE-A", "pilot", "--max-tasks", "1", "--stuck-after", "2")])
    assert time.monotonic() - started < 60
    task = bed.task("alice", stuck)
    # The attempt failed; with attempts left ([taskqueue] max_attempts) it is queued again.
    assert task["state"] == "rescheduled", task
    assert "failed: killed by the watchdog as stuck: it used" in str(task["reason"]), task


DAEMON_PAYLOAD = r"""
import os, sys, time
if os.fork() == 0:
    os.setsid()  # leaves the payload's process group and session
    if os.fork() == 0:  # and its parent: a classic daemon
        open(os.path.join(sys.argv[1], "daemon.pid"), "w").write(str(os.getpid()))
        deadline = time.process_time() + float(sys.argv[2])
        while time.process_time() < deadline:
            pass
        time.sleep(600)
    os._exit(0)
time.sleep(float(sys.argv[3]))
"""


def test_a_daemonised_payload_process_is_counted_and_killed(bed: Bed, tmp_path: Path) -> None:
    """fork + setsid + fork does not escape the watchdog: the pilot is a child subreaper."""
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON_PAYLOAD)
    # The daemon burns 4 s of CPU while the leader sleeps: over the 2 s CPU limit.
    [over] = bed.submit(
        "alice",
        1,
        command=[sys.executable, str(script), str(bed.results), "4", "30"],
        max_cpu_s=2,
        max_wall_s=60,
    )
    started = time.monotonic()
    _finish([bed.pilot("SITE-A", "pilot", "--max-tasks", "1")])
    task = bed.task("alice", over)
    assert task["state"] == "rescheduled" and "CPU time" in str(task["reason"]), task
    assert time.monotonic() - started < 30
    daemon_pid = int((bed.results / "daemon.pid").read_text())
    assert not Path(f"/proc/{daemon_pid}").exists(), "the daemonised process survived the task"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd"
)
def test_account_map_runs_each_payload_as_its_owner(bed: Bed) -> None:
    """As root, the pilot drops to the owner's mapped account and hands it the proxy (0600)."""
    import pwd
    import tempfile

    accounts = {"alice": "proxyd-t-alice", "bob": "proxyd-t-bob"}
    for name in accounts.values():
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=False,
            capture_output=True,
        )
    # The mapped accounts cannot enter pytest's 0700 temporary tree: use a world-traversable one.
    shared = Path(tempfile.mkdtemp(prefix="proxyd-accounts-"))
    try:
        shared.chmod(0o755)
        results, work = shared / "results", shared / "work"
        results.mkdir(mode=0o777)
        results.chmod(0o1777)
        work.mkdir(mode=0o711)
        mapfile = shared / "accounts"
        mapfile.write_text("".join(f'"{user_dn(u)}" {a}\n' for u, a in accounts.items()))
        report = (
            'printf \'{"uid": %s, "proxy_uid": %s, "mode": "%s"}\' "$(id -u)" '
            '"$(stat -c %u "$X509_USER_PROXY")" "$(stat -c %a "$X509_USER_PROXY")" '
            f"> {results}/$PROXYD_TASK_ID.json"
        )
        ids = {u: bed.submit(u, 1, command=["/bin/sh", "-c", report])[0] for u in accounts}
        bed.workroot = work
        _finish(
            [
                bed.pilot(
                    "SITE-A",
                    "pilot",
                    "--identity-switch",
                    "account-map",
                    "--account-map",
                    str(mapfile),
                )
            ]
        )
        for user, task_id in ids.items():
            uid = pwd.getpwnam(accounts[user]).pw_uid
            seen = json.loads((results / f"{task_id}.json").read_text())
            assert seen == {"uid": uid, "proxy_uid": uid, "mode": "600"}
            assert bed.task(user, task_id)["state"] == "done"
        assert list(work.iterdir()) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        for name in accounts.values():
            subprocess.run(["userdel", name], check=False, capture_output=True)


RENEWAL_PAYLOAD = r"""
import json, os, sys, time
from voms_ext import TrustStore, load_credential_file, validate_chain
proxy = os.environ["X509_USER_PROXY"]
trust = TrustStore.from_dirs(os.environ["X509_CERT_DIR"], os.environ["X509_VOMS_DIR"])
def seen():
    result = validate_chain(load_credential_file(proxy).certificates, trust)
    leaf = load_credential_file(proxy).certificates[0]
    return {"serial": leaf.serial_number, "identity": result.identity,
            "limited": result.is_limited, "mode": os.stat(proxy).st_mode & 0o777}
first = seen()
time.sleep(float(sys.argv[2]))
with open(os.path.join(sys.argv[1], "renewal.json"), "w") as out:
    json.dump({"first": first, "last": seen()}, out)
"""


@pytest.mark.bed_policy(max_proxy_lifetime=dt.timedelta(minutes=5))
def test_a_long_payload_gets_its_proxy_renewed_in_place(bed: Bed, tmp_path: Path) -> None:
    """A proxy shorter than the task (max_proxy_lifetime) is replaced in place before it ends."""
    script = tmp_path / "renewal.py"
    script.write_text(RENEWAL_PAYLOAD)
    [task_id] = bed.submit(
        "alice", 1, command=[sys.executable, str(script), str(bed.results), "4"], max_wall_s=7200
    )
    # Proxies of 5 min for a task of up to 10 min (the pilot's --time): renewal is needed, and
    # with "less than a year left" it happens at every (1 s) heartbeat.
    logs = _finish(
        [bed.pilot("SITE-A", "pilot", "--max-tasks", "1", "--renew-proxy-before", "3e7")]
    )
    assert bed.task("alice", task_id)["state"] == "done", logs
    seen = json.loads((bed.results / "renewal.json").read_text())
    first, last = seen["first"], seen["last"]
    assert first["serial"] != last["serial"], "the payload's proxy was never renewed"
    for view in (first, last):
        assert view["identity"] == user_dn("alice") and view["limited"] is True
        assert view["mode"] == 0o600
    assert "payload proxy renewed" in logs[0]
    events = bed.server.repo.audit.query(operation="payload_proxy", decision="allow", limit=100)
    assert sum(1 for e in events if e.event.detail and f"task {task_id}" in e.event.detail) >= 2


def test_cancelling_a_running_task_stops_its_payload(bed: Bed, tmp_path: Path) -> None:
    """DELETE /v1/tasks/{id} by the owner: the next heartbeat is refused and the pilot kills the group."""
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(
        "import os, sys, time\n"
        "open(os.path.join(sys.argv[1], 'sleeper.pid'), 'w').write(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    [task_id] = bed.submit(
        "alice", 1, command=[sys.executable, str(sleeper), str(bed.results)], max_wall_s=300
    )
    pilot = bed.pilot("SITE-A", "pilot", "--max-tasks", "1")
    pid_file = bed.results / "sleeper.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() or bed.task("alice", task_id)["state"] != "running":
        assert time.monotonic() < deadline, "the payload never started"
        assert pilot.poll() is None, pilot.communicate()
        time.sleep(0.2)
    payload_pid = int(pid_file.read_text())
    reply = bed.api("alice").request("DELETE", f"/v1/tasks/{task_id}")
    assert reply.status == 200, reply.body
    cancelled_at = time.monotonic()
    [log] = _finish([pilot])
    assert time.monotonic() - cancelled_at < 30, "the payload outlived its cancellation"
    assert not Path(f"/proc/{payload_pid}").exists(), "the payload survived the cancellation"
    assert "stopped: the task is no longer this pilot's" in log
    assert bed.task("alice", task_id)["state"] == "cancelled"


TOKEN_PAYLOAD = r"""
import json, os, shutil, stat, sys
token = os.environ["BEARER_TOKEN_FILE"]
out = os.path.join(sys.argv[1], os.environ["PROXYD_TASK_ID"] + ".token")
shutil.copy(token, out)
json.dump({"mode": stat.S_IMODE(os.stat(token).st_mode),
           "beside_proxy": os.path.dirname(token) == os.path.dirname(os.environ["X509_USER_PROXY"])},
          open(out + ".json", "w"))
"""


@pytest.mark.bed_tokens(dteam=["storage.read:/dteam", "storage.create:/dteam/alice"])
def test_each_payload_gets_a_wlcg_token_beside_its_proxy(bed: Bed, tmp_path: Path) -> None:
    """Issue 19: the pilot writes the payload's token next to its proxy (BEARER_TOKEN_FILE);
    the token is the owner's, for the task's groups and the VO's scope, verifies against the
    server's published keys, ends no later than the payload proxy, and is audited by jti.
    After the task ends, no token for it."""
    script = tmp_path / "token_payload.py"
    script.write_text(TOKEN_PAYLOAD)
    [task_id] = bed.submit("alice", 1, command=[sys.executable, str(script), str(bed.results)])
    _finish([bed.pilot("SITE-A", "pilot", "--max-tasks", "1")])
    assert bed.task("alice", task_id)["state"] == "done"
    token = (bed.results / f"{task_id}.token").read_text().strip()
    seen = json.loads((bed.results / f"{task_id}.token.json").read_text())
    assert seen == {"mode": 0o600, "beside_proxy": True}

    repo = bed.server.repo
    issuer = repo.config.tokens.issuer
    assert issuer is not None
    trusted = TrustedIssuer(issuer, (WLCG_ANY_AUDIENCE,))
    keys = IssuerKeys(ca_path=str(bed.server.pki.cert_dir))  # over HTTPS, from the server
    _, facts = verify_token(token, [trusted], keys, dt.datetime.now(dt.UTC))
    assert facts.subject == user_dn("alice")
    assert facts.groups == ("/dteam",)
    assert facts.scopes == ("storage.read:/dteam", "storage.create:/dteam/alice")
    events = [
        e.event
        for e in repo.audit.query(owner=user_dn("alice"), limit=100)
        if e.event.operation in ("payload_proxy", "payload_token") and e.event.decision == "allow"
    ]
    token_events = [e for e in events if e.operation == "payload_token"]
    assert len(token_events) == 1 and token_events[0].rule == "payload.assigned"
    assert token_events[0].detail == f"task {task_id}: token jti {facts.jti}"
    assert token not in json.dumps([e.detail for e in events])  # the jti, never the token
    proxy_event = next(e for e in events if e.operation == "payload_proxy")
    assert proxy_event.lifetime_s is not None and token_events[0].lifetime_s is not None
    assert token_events[0].lifetime_s <= proxy_event.lifetime_s + 1

    # The pilot's secret died with it; without it the pilot identity is refused too (the rule
    # for the pilot instance itself after the end, payload.assignment_ended, is asserted in
    # tests/tokens/test_payload_tokens.py).
    after = bed.api("pilot").request("POST", f"/v1/tasks/{task_id}/token", {})
    assert after.status == 403 and b"payload.wrong_instance" in after.body, after.body


def test_without_tokens_configured_the_payload_runs_with_its_proxy_only(
    bed: Bed, tmp_path: Path
) -> None:
    script = tmp_path / "env.py"
    script.write_text(
        "import os, sys\n"
        "open(os.path.join(sys.argv[1], 'env'), 'w').write(os.environ.get('BEARER_TOKEN_FILE', '-'))\n"
    )
    [task_id] = bed.submit("alice", 1, command=[sys.executable, str(script), str(bed.results)])
    _finish([bed.pilot("SITE-A", "pilot", "--max-tasks", "1")])
    assert bed.task("alice", task_id)["state"] == "done"
    assert (bed.results / "env").read_text() == "-"


def test_the_owner_peeks_at_a_running_payloads_output(bed: Bed, tmp_path: Path) -> None:
    """Issue 20: GET /v1/tasks/{id}/log while the payload runs shows what it printed so far
    (the pilot sends the end of the log with every heartbeat); others may not look."""
    script = tmp_path / "chatty.py"
    script.write_text(
        "import sys, time\nprint('step 1 of 2: reading input', flush=True)\ntime.sleep(8)\n"
        "print('step 2 of 2: done', flush=True)\n"
    )
    [task_id] = bed.submit("alice", 1, command=[sys.executable, str(script)], max_wall_s=120)
    pilot = bed.pilot("SITE-A", "pilot", "--max-tasks", "1")
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = bed.api("alice").request("GET", f"/v1/tasks/{task_id}/log")
        if reply.status == 200 and "step 1 of 2" in (reply.json["log_tail"] or ""):
            seen = (bed.task("alice", task_id)["state"], reply.json["log_tail"])
            break
        time.sleep(0.3)
    assert seen is not None, "the running payload's output never showed"
    state, tail = seen
    assert state == "running" and "step 2 of 2" not in tail
    assert bed.api("bob").request("GET", f"/v1/tasks/{task_id}/log").status == 403
    _finish([pilot])
    final = bed.api("alice").request("GET", f"/v1/tasks/{task_id}/log").json["log_tail"]
    assert "step 1 of 2" in final and "step 2 of 2: done" in final


def test_proxyd_audit_lists_every_decision_about_one_task(bed: Bed) -> None:
    """Issue 21: for one task id, the auditor's `proxyd-audit query --task N` (the real CLI,
    over HTTPS) gives every decision from submission to the end, and nothing of other tasks."""
    ids = bed.submit("alice", 2)
    _finish([bed.pilot("SITE-A", "pilot", "--max-tasks", "2")])
    task_id = ids[1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(bed.workroot),
        "X509_USER_PROXY": str(bed.creds["carol"]),  # an auditor of the bed
        "X509_CERT_DIR": str(bed.server.pki.cert_dir),
    }
    server = f"https://localhost:{bed.server.api_port}"
    done = subprocess.run(
        [
            str(BIN / "proxyd-audit"),
            "--server",
            server,
            "query",
            "--task",
            str(task_id),
            "--json",
            "--limit",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    events = sorted((json.loads(line) for line in done.stdout.splitlines()), key=lambda e: e["seq"])
    named = {int(re.match(r"task (\d+)\b", e["detail"]).group(1)) for e in events}  # type: ignore[union-attr]
    assert named == {task_id}, events
    steps = [(e["operation"], e["decision"]) for e in events]
    assert steps[0] == ("task_submit", "allow")
    assert ("task_match", "allow") in steps and ("task.match", "allow") in steps
    assert ("payload_proxy", "allow") in steps
    updates = [e["detail"] for e in events if e["operation"] == "task_update"]
    assert updates[0] == f"task {task_id}: start" and updates[-1] == f"task {task_id}: complete"
    assert steps[-1] == ("task.complete", "allow")
    bad = subprocess.run(
        [str(BIN / "proxyd-audit"), "--server", server, "query", "--task", "x1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "is not a task id" in bad.stderr
