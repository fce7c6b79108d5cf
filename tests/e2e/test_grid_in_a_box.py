"""The grid in a box (issue 21): the whole mission, end to end, against real services.

One machine, loopback only; the harness starts every service and stops it by
its PID:

- dteam's attribute authority: Debian's voms-server on MariaDB, with alice,
  bob and eve as members (tests/support/voms_server.py);
- proxyd: `proxyd serve --workers 2` on PostgreSQL, dteam's ACs fetched from
  that voms-server (proxyd holds no dteam key), payload tokens issued;
- a site's storage element: XRootD with GSI + VOMS authorization (only the
  group /dteam writes under /dteam/) and the SciTokens plugin trusting proxyd
  as an issuer (tests/support/xrootd.py);
- the real clients: voms-proxy-init, myproxy-init, xrdcp; two `proxyd-pilot`
  processes at two sites; `proxyd-audit` as the auditor.

The story, step by step, each step a named block whose failures say which
step broke (see `step`). Step 5 needs an assignment secret, which a real
pilot keeps in memory only: the test itself matches one more task as a pilot
(with the pilot's certificate, over HTTPS) to show the refusal with the
genuine secret, and shows that neither the pilot without it nor the
payload's own proxy gets anything for the tasks the real pilots ran.

What XRootD 5.5.3 did with the LIMITED proxy proxyd gives a payload (I3 makes
every proxy a pilot or WMS host gets limited): it accepted it. libXrdVoms
verified the AC (issued by the VO's voms-server, fetched by proxyd) and the
authdb granted the write to the group /dteam; the log says
`XrdVomsFun: found VO: dteam` and `acc_Audit: ... grant gsi <DN hash>.0@...
create /dteam/alice-proxy-<id>.out`. Nothing in I3 needs to change for this
storage element.

Every audit event about a task names it first in its detail, so the auditor's
`proxyd-audit query --task N` gives the task's story, from its submission and
match to the refusals after its end; `_task_trail` adds the store of its
credential (an event about the credential, not the task).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.devpki import CA_DN, DevPKI, user_dn
from tests.conftest import throwaway_postgres
from tests.e2e.support import (
    BIN,
    ProxydProcess,
    e2e_config,
    mint_identity,
    start_pilot,
    stop_process,
)
from tests.support.grid import csr_for, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.tools import require_tool, run_tool
from tests.support.voms_server import VomsServer, require_voms_server, running_voms_server
from tests.support.vomscheck import build_checker, check_proxy
from tests.support.xrootd import XrootdServer, require_xrootd, running_xrootd
from voms_ext import Credential, write_credential_file

pytestmark = [
    pytest.mark.interop,
    pytest.mark.postgres,
    pytest.mark.usefixtures("no_ambient_grid_identity"),
]

ALICE, BOB, CAROL = user_dn("alice"), user_dn("bob"), user_dn("carol")
EVE = "/C=XX/O=proxyd dev/OU=Users/CN=eve"
PILOT2 = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot2"
DTEAM = "/dteam/Role=NULL/Capability=NULL"
# dteam's payload tokens may read the VO's area and create files under output/ only
# (paths relative to the storage's base path /dteam, WLCG profile).
SCOPES = {"dteam": ("storage.read:/", "storage.create:/output")}
LIMITED = "RFC 3820 compliant limited proxy"
TIMEOUT = 120


@contextmanager
def step(name: str) -> Iterator[None]:
    """A step of the story: an assertion failing inside says which step it was."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"step «{name}» failed: {exc}") from exc


def text(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{proc.args}\n[exit {proc.returncode}]\n{proc.stdout}{proc.stderr}"


@dataclass
class Box:
    pki: DevPKI
    voms: VomsServer
    proxyd: ProxydProcess
    xrootd: XrootdServer
    creds: dict[str, Path]  # one PEM (certificate chain + key) per identity
    work: Path
    results: Path  # where payloads leave what the test inspects afterwards
    checker: Path

    def grid_env(self, **more: str) -> dict[str, str]:
        """The clients' environment: the dev CA, the VO's trust files, this proxyd."""
        return {
            "X509_CERT_DIR": str(self.pki.cert_dir),
            "X509_VOMS_DIR": str(self.voms.voms_dir),
            "MYPROXY_SERVER": "localhost",
            "MYPROXY_SERVER_PORT": str(self.proxyd.myproxy_port),
            "HOME": str(self.work),
            "RANDFILE": "/dev/null",
            # nothing ambient: no /tmp/x509up_u<uid> is ever picked up
            "X509_USER_PROXY": str(self.work / "no-such-proxy"),
            **more,
        }

    def api(self, credential: str | Path) -> ApiClient:
        path = self.creds[credential] if isinstance(credential, str) else credential
        return ApiClient(self.proxyd.api_port, self.pki.cert_dir, path)

    def submit(self, who: str | Path, script: str, site: str, owner: str = "alice") -> int:
        """A dteam task of `owner`'s stored credential running `sh -c script` at `site`."""
        reply = self.api(who).request(
            "POST",
            "/v1/tasks",
            {
                "vo": "dteam",
                "group": "/dteam",
                "fqans": ["/dteam"],
                "credential": {"username": owner, "name": "default"},
                "requirements": {"sites_allowed": [site]},
                "payload": {"command": "/bin/sh", "args": ["-c", script]},
                "max_cpu_s": 60,
                "max_wall_s": 120,
            },
        )
        assert reply.status == 201, reply.body
        return int(reply.json["id"])

    def task(self, task_id: int) -> dict[str, Any]:
        return self.api("alice").request("GET", f"/v1/tasks/{task_id}").json  # type: ignore[no-any-return]

    def log_tail(self, task_id: int) -> str:
        """The payload's output as its pilot reported it (GET /v1/tasks/{id}/log)."""
        return str(self.api("alice").request("GET", f"/v1/tasks/{task_id}/log").json["log_tail"])


def _identity_file(pki: DevPKI, name: str, out: Path) -> Path:
    ident = load_identity(pki, name)
    path = out / f"{name}.pem"
    write_credential_file(path, Credential(ident.certificates, ident.key))
    return path


def _trust_the_vos_server(xrootd: XrootdServer, voms: VomsServer) -> None:
    """Give the storage element the VO's .lsc file, as a site installs it (vomsdir/dteam/),
    and the VO's output/ area, as the site admin makes it; owned as xrootd's own files."""
    owner = xrootd.root.stat()
    lsc = xrootd.root / "vomsdir" / voms.vo / f"{voms.host}.lsc"
    lsc.parent.mkdir(exist_ok=True)
    shutil.copyfile(voms.voms_dir / voms.vo / f"{voms.host}.lsc", lsc)
    output = xrootd.data / "dteam" / "output"
    output.mkdir()
    for path in (lsc.parent, lsc, output):
        os.chown(path, owner.st_uid, owner.st_gid)


@pytest.fixture
def box(dev_pki: DevPKI, tmp_path: Path) -> Iterator[Box]:
    require_voms_server()
    require_xrootd(gsi=True)
    for tool in ("voms-proxy-init", "myproxy-init", "grid-proxy-info"):
        require_tool(tool)
    checker = build_checker()
    tmp_path.chmod(0o700)
    work, results, workroot = tmp_path / "work", tmp_path / "results", tmp_path / "pilots"
    for directory in (work, results, workroot):
        directory.mkdir(mode=0o700)
    creds = {name: _identity_file(dev_pki, name, work) for name in ("alice", "carol", "pilot")}
    creds["eve"] = mint_identity(dev_pki, "Users", "eve", work)
    creds["pilot2"] = mint_identity(dev_pki, "Pilots", "pilot2", work)
    with (
        throwaway_postgres() as database,
        running_voms_server(dev_pki, tmp_path / "voms") as voms,
    ):
        for member in (ALICE, BOB, EVE):  # eve is in the VO: only proxyd bans her
            voms.add_member(member, CA_DN)
        config, mp_port, api_port = e2e_config(
            dev_pki,
            tmp_path / "state",
            database=database,
            vomses=voms.vomses,
            voms_dir=voms.voms_dir,
            pilot_dns=("/C=XX/O=proxyd dev/OU=Pilots/*",),
            auditors=(CAROL,),
            scopes=SCOPES,
        )
        proxyd = ProxydProcess(config, mp_port, api_port, tmp_path / "proxyd.log")
        try:
            proxyd.start()
            with running_xrootd(dev_pki, issuer=proxyd.url, base_path="/dteam", gsi=True) as xrd:
                _trust_the_vos_server(xrd, voms)
                yield Box(dev_pki, voms, proxyd, xrd, creds, work, results, checker)
        finally:
            proxyd.stop()
            config.unlink(missing_ok=True)


def _write_script(box: Box, how: str, path: str) -> str:
    """A payload: write a file, keep its credentials for the test, xrdcp the file to `path`.

    `how` picks the client's authentication: "gsi" (X509_USER_PROXY, no token in sight)
    or "ztn" (BEARER_TOKEN_FILE, no proxy in sight).
    """
    hide = "BEARER_TOKEN_FILE" if how == "gsi" else "X509_USER_PROXY"
    url = box.xrootd.url(path.replace("{id}", "$PROXYD_TASK_ID"))
    return (
        "set -e\n"
        f"keep={box.results}/$PROXYD_TASK_ID\n"
        'cp "$X509_USER_PROXY" "$keep.proxy"\n'
        '[ -z "$BEARER_TOKEN_FILE" ] || cp "$BEARER_TOKEN_FILE" "$keep.token"\n'
        'echo "events: 1000 (task $PROXYD_TASK_ID)" > output.txt\n'
        "sleep 2\n"  # past a heartbeat or two: they belong in the task's audit trail
        f'env -u {hide} XrdSecPROTOCOL={how} xrdcp --nopbar output.txt "{url}"\n'
        f'echo "payload of task $PROXYD_TASK_ID wrote {url}"\n'
    )


def _csr() -> str:
    return csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()


def _rule(reply: Reply) -> tuple[int, str | None]:
    try:
        return reply.status, reply.json.get("rule")
    except ValueError:
        return reply.status, None


def _claims(token: str) -> dict[str, Any]:
    payload = token.strip().split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def _query(audit: list[str], env: dict[str, str], owner: str) -> list[dict[str, Any]]:
    """Every audit event about `owner`'s credentials, oldest first, from `proxyd-audit query`."""
    listed = run_tool([*audit, "query", "--owner", owner, "--json", "--limit", "0"], env=env)
    assert listed.returncode == 0, text(listed)
    events = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return sorted(events, key=lambda e: int(e["seq"]))


def _task_trail(
    audit: list[str], env: dict[str, str], owner_events: list[dict[str, Any]], task_id: int
) -> list[tuple[str, str, str, str]]:
    """(operation, decision, rule, detail) of one task's story, oldest first: the store of
    its credential (the owner's store events), then every event `proxyd-audit query --task`
    lists for it (each names the task first in its detail)."""
    listed = run_tool([*audit, "query", "--task", str(task_id), "--json", "--limit", "0"], env=env)
    assert listed.returncode == 0, text(listed)
    own = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    names = re.compile(rf"^task {task_id}\b")
    assert own and all(names.match(e.get("detail") or "") for e in own), own
    stores = [e for e in owner_events if e["operation"] == "store" and e["decision"] == "allow"]
    chosen = sorted([*stores, *own], key=lambda e: int(e["seq"]))
    return [(e["operation"], e["decision"], e["rule"], e.get("detail") or "") for e in chosen]


def test_grid_in_a_box(box: Box) -> None:
    """alice's credential from the VO's AA to a file on a site's storage, and the audit."""
    pki, voms, xrootd = box.pki, box.voms, box.xrootd
    issuer = box.proxyd.url
    alice_cert, alice_key = pki.user("alice")
    voms_proxy = box.work / "alice-voms.pem"

    with step("1. alice gets a VOMS proxy from the real voms-server (voms-proxy-init)"):
        made = run_tool(
            ["voms-proxy-init", "--voms", "dteam", "--vomses", voms.vomses,
             "--cert", alice_cert, "--key", alice_key, "--out", voms_proxy,
             "--valid", "24:00", "--timeout", "20"],
            env=box.grid_env(),
        )  # fmt: skip
        # voms-proxy-init writes its file even when it fails: the exit code decides.
        assert made.returncode == 0, text(made)
        verdict = check_proxy(box.checker, voms_proxy, pki.cert_dir, voms.voms_dir)
        assert verdict.ok, verdict.error
        (ac,) = verdict.acs
        assert (ac.vo, ac.issuer, ac.holder) == ("dteam", voms.host_dn, ALICE)
        assert ac.fqans == (DTEAM,)

    with step("2. alice stores that proxy in proxyd with myproxy-init (no passphrase)"):
        # A WMS setup: no passphrase, so the task queue may use it for trusted issuance
        # (docs/taskqueue.md: payload credentials are stored without a passphrase).
        stored = run_tool(
            ["myproxy-init", "-n", "-l", "alice", "-c", "12", "-t", "12",
             "-C", voms_proxy, "-y", voms_proxy],
            env=box.grid_env(),
            timeout=60,
        )  # fmt: skip
        assert stored.returncode == 0, text(stored)
        eve_stored = run_tool(
            ["myproxy-init", "-n", "-l", "eve", "-c", "12", "-t", "12",
             "-C", box.creds["eve"], "-y", box.creds["eve"]],
            env=box.grid_env(),
            timeout=60,
        )  # fmt: skip
        assert eve_stored.returncode == 0, text(eve_stored)
        info = run_tool(
            ["myproxy-info", "-l", "alice"], env=box.grid_env(X509_USER_PROXY=str(voms_proxy))
        )
        assert info.returncode == 0 and f"owner: {ALICE}" in info.stdout, text(info)

    with step("3. alice submits three xrdcp tasks; eve submits one, then proxyd bans her"):
        # alice authenticates to the API with the VOMS proxy voms-proxy-init made.
        with_proxy = box.submit(
            voms_proxy, _write_script(box, "gsi", "/dteam/alice-proxy-{id}.out"), "SITE-A"
        )
        with_token = box.submit(
            voms_proxy, _write_script(box, "ztn", "/dteam/output/alice-token-{id}.out"), "SITE-B"
        )
        forbidden = box.submit(
            voms_proxy, _write_script(box, "ztn", "/dteam/outside-{id}.out"), "SITE-B"
        )
        eves = box.submit(
            "eve", f"touch {box.results}/eve-ran; " + _write_script(box, "gsi", "/dteam/eve-{id}.out"),
            "SITE-A", owner="eve",
        )  # fmt: skip
        banned = subprocess.run(
            [str(BIN / "proxyd"), "admin", "--config", str(box.proxyd.config), "ban",
             "--user", EVE, "--reason", "compromised account"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert banned.returncode == 0, text(banned)
        assert {box.task(t)["state"] for t in (with_proxy, with_token, forbidden)} == {"waiting"}

    with step("4. two pilots at two sites run the tasks; XRootD judges the writes"):
        pilots = [
            start_pilot(box.proxyd, site, box.creds[who], box.work.parent / "pilots",
                        cert_dir=pki.cert_dir, voms_dir=voms.voms_dir)
            for site, who in (("SITE-A", "pilot"), ("SITE-B", "pilot2"))
        ]  # fmt: skip
        try:
            logs = [p.communicate(timeout=TIMEOUT)[1] for p in pilots]
        finally:
            for p in pilots:
                stop_process(p)
        assert [p.returncode for p in pilots] == [0, 0], "\n".join(logs)
        log = xrootd.log()

        def explain(task_id: int) -> str:
            return (
                f"\n{box.task(task_id)}\n--- payload ---\n{box.log_tail(task_id)}"
                f"\n--- pilots ---\n{''.join(logs)}\n--- xrootd log ---\n{log[-6000:]}"
            )

        # The proxy: GSI with the LIMITED proxy proxyd made for the payload (I3), its AC
        # fetched by proxyd from the VO's voms-server; XRootD granted the create to /dteam.
        assert box.task(with_proxy)["state"] == "done", explain(with_proxy)
        name = f"alice-proxy-{with_proxy}.out"
        assert (xrootd.data / "dteam" / name).read_text() == f"events: 1000 (task {with_proxy})\n"
        assert "XrdVomsFun: found VO: dteam" in log, explain(with_proxy)
        assert f"XrdVomsFun:  ---> fqan: '{DTEAM}'" in log, explain(with_proxy)
        # No grid-mapfile (-gmapopt:0): XRootD names a GSI client by its DN's hash.
        hashed = run_tool(["openssl", "x509", "-hash", "-noout", "-in", alice_cert])
        who = f"{hashed.stdout.strip()}.0"
        assert f"XrdVomsFun: proxy: {ALICE}/CN=" in log, explain(with_proxy)
        grant = rf"acc_Audit: \S+ grant gsi {re.escape(who)}@\S+ create /dteam/{name}\n"
        assert re.search(grant, log), explain(with_proxy)
        payload_proxy = box.results / f"{with_proxy}.proxy"
        kind = run_tool(["grid-proxy-info", "-file", payload_proxy, "-type"])
        assert kind.stdout.strip() == LIMITED, text(kind)
        identity = run_tool(["grid-proxy-info", "-file", payload_proxy, "-identity"])
        assert identity.stdout.strip() == ALICE, text(identity)
        verdict = check_proxy(box.checker, payload_proxy, pki.cert_dir, voms.voms_dir)
        assert verdict.ok, verdict.error
        assert [(a.issuer, a.holder) for a in verdict.acs] == [(voms.host_dn, ALICE)]

        # The token: ztn, validated with proxyd's published keys, alice as the subject.
        assert box.task(with_token)["state"] == "done", explain(with_token)
        name = f"output/alice-token-{with_token}.out"
        assert (xrootd.data / "dteam" / name).read_text() == f"events: 1000 (task {with_token})\n"
        assert f"subject={ALICE}, issuer={issuer}" in log, explain(with_token)
        assert f"operation=excl_create, path=/dteam/{name}" in log, explain(with_token)

        # Outside the token's scope: XRootD refused, the task failed with xrdcp's words.
        state = box.task(forbidden)
        assert state["state"] == "failed", explain(forbidden)
        assert not (xrootd.data / "dteam" / f"outside-{forbidden}.out").exists()
        refusal = f"Unable to create /dteam/outside-{forbidden}.out; permission denied"
        assert refusal in box.log_tail(forbidden), explain(forbidden)
        assert "exit code 54" in str(state["reason"]), state  # xrdcp's "error from the server"
        denied = (
            rf"scitokens_Access: .*\n.*acc_Audit: +deny +\S+ create /dteam/outside-{forbidden}.out"
        )
        assert re.search(denied, log), explain(forbidden)

        # eve's task was queued before her ban and never ran (its trail: step 6).
        assert not (box.results / "eve-ran").exists()
        assert not (xrootd.data / "dteam" / f"eve-{eves}.out").exists()

    with step("5. after completion, neither the payload's proxy nor its token is refreshed"):
        refusals = {}
        for task_id, ran_it in ((with_proxy, "pilot"), (with_token, "pilot2")):
            # The pilot that ran it, without the match's secret (it died with the task:
            # the agent keeps it in memory only), and the payload's own limited proxy.
            for who, client in ((ran_it, box.api(ran_it)), ("payload", box.api(box.results / f"{task_id}.proxy"))):  # fmt: skip
                for what, body in (("proxy", {"csr": _csr()}), ("token", {})):
                    reply = client.request("POST", f"/v1/tasks/{task_id}/{what}", body)
                    refusals[(task_id, who, what)] = _rule(reply)
        expected = {
            key: (403, "limited.peer" if key[1] == "payload" else "payload.wrong_instance")
            for key in refusals
        }
        assert refusals == expected
        # With the genuine secret: the test matches one more task itself, as a pilot does
        # (the pilot's certificate, over HTTPS), at a site no real pilot serves.
        pilot = box.api("pilot")
        extra = box.submit(voms_proxy, "true", "SITE-C")
        matched = pilot.request(
            "POST", "/v1/pilot/match",
            {"pilot_id": "test-as-pilot", "site": "SITE-C", "cpu_time_left": 3600},
        )  # fmt: skip
        assert matched.status == 200 and matched.json["id"] == extra, matched.body
        secret = {"assignment_secret": matched.json["assignment_secret"]}
        for what, body in (("proxy", {"csr": _csr()}), ("token", {})):
            live = pilot.request("POST", f"/v1/tasks/{extra}/{what}", {**body, **secret})
            assert live.status == 200, (what, live.body)
        assert pilot.request("POST", f"/v1/tasks/{extra}/start", secret).status == 200
        done = pilot.request(
            "POST", f"/v1/tasks/{extra}/complete", {"cpu_s": 0.1, "wall_s": 0.2, **secret}
        )
        assert done.status == 200, done.body
        for what, body in (("proxy", {"csr": _csr()}), ("token", {})):
            after = pilot.request("POST", f"/v1/tasks/{extra}/{what}", {**body, **secret})
            assert _rule(after) == (403, "payload.assignment_ended"), (what, after.body)

    with step("6. proxyd-audit lists the token task's decisions, and verify passes"):
        audit_env = box.grid_env(X509_USER_PROXY=str(box.creds["carol"]))  # carol audits
        audit = [str(BIN / "proxyd-audit"), "--server", box.proxyd.url]
        alices = _query(audit, audit_env, ALICE)
        trail = _task_trail(audit, audit_env, alices, with_token)
        # From the store to the refusals after the end, in the order they happened.
        assert [(op, rule) for op, _, rule, _ in trail] == [
            ("store", "store.owner"),  # delegation begun: proxyd made the key pair
            ("store", "store.owner"),  # the signed proxy stored
            ("task_submit", "task.owner"),
            ("task_match", "task.pilot"),  # the pilot's decision, then the queue's record
            ("task.match", "queue.fair_share"),
            ("payload_proxy", "payload.assigned"),
            ("payload_token", "payload.assigned"),
            *[("task_update", "task.assigned_pilot")] * (len(trail) - 12),  # start, heartbeats
            ("task.complete", "queue.pilot_report"),
            ("payload_proxy", "payload.wrong_instance"),
            ("payload_token", "payload.wrong_instance"),
            ("payload_proxy", "limited.peer"),
            ("payload_token", "limited.peer"),
        ], "\n".join(map(str, trail))
        assert len(trail) - 12 >= 2, "no start and heartbeat reports: " + "\n".join(map(str, trail))
        updates = [d for op, _, _, d in trail if op == "task_update"]
        assert updates[0] == f"task {with_token}: start", updates
        [match] = [t for t in trail if t[0] == "task.match"]
        assert f"task {with_token} to pilot SITE-B-pilot at site site-b" in match[3], match
        [token] = [t for t in trail if t[0] == "payload_token" and t[1] == "allow"]
        bearer = (box.results / f"{with_token}.token").read_text().strip()
        assert token[3] == f"task {with_token}: token jti {_claims(bearer)['jti']}", token
        assert bearer not in json.dumps(alices), "a token in the audit log"  # the jti only

        # eve's task: submitted before her ban, then never matched: no proxy, no token.
        eve = [(e["operation"], e["decision"], e["rule"]) for e in _query(audit, audit_env, EVE)]
        assert ("task_submit", "allow", "task.owner") in eve, eve
        assert not [e for e in eve if e[0] in ("task.match", "payload_proxy", "payload_token")], eve

        verified = run_tool([*audit, "verify"], env=audit_env)
        assert verified.returncode == 0, text(verified)
