"""The task and pilot routes over HTTPS, as an attacker uses them (issue 15).

- Finding 7: illegal life-cycle steps answer 409 naming the state (never 500) and
  leave no recorded allow; every number is bounded (400 naming the field and bound);
  random bodies never get a 5xx.
- Finding 4: site names in one spelling; pilots bound to sites by DN pattern.
- Payloads bound to one pilot instance: the match's secret, or 403.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.config import TaskQueueConfig, load_config
from proxyd.devpki import PILOT_DN, DevPKI, user_dn
from proxyd.repository import StoreOptions
from tests.conftest import throwaway_postgres
from tests.integration.test_pilots import PILOT2, _pilot2
from tests.support.grid import csr_for, delegate, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from voms_ext import Credential, write_credential_file

ALICE, BOB, CAROL = user_dn("alice"), user_dn("bob"), user_dn("carol")
_sites = itertools.count(1)


@dataclasses.dataclass
class Api:
    server: RunningServer
    creds: dict[str, Path]
    # Tasks the random reports go to: started or not -> (id, secret).
    reporters: dict[bool, tuple[int, str]] = dataclasses.field(default_factory=dict)

    def client(self, who: str) -> ApiClient:
        return ApiClient(self.server.api_port, self.server.pki.cert_dir, self.creds[who])

    def call(self, who: str, method: str, path: str, body: Any = None) -> Reply:
        return self.client(who).request(method, path, body)

    def submit(self, **overrides: Any) -> tuple[int, str]:
        """A task of alice's that only a pilot at a site of its own can run: (id, site)."""
        site = f"T-SITE-{next(_sites)}"
        body = {
            "vo": "dteam",
            "group": "/dteam",
            "credential": {"username": "alice"},
            "requirements": {"sites_allowed": [site]},
            "payload": {"command": "/bin/true"},
            "max_wall_s": 600,
            **overrides,
        }
        reply = self.call("alice", "POST", "/v1/tasks", body)
        assert reply.status == 201, reply.body
        return reply.json["id"], site

    def matched(self, who: str = "pilot", **overrides: Any) -> tuple[int, dict[str, str]]:
        """A fresh task matched to `who`: (id, {"assignment_secret": ...})."""
        task_id, site = self.submit(**overrides)
        reply = self.call(who, "POST", "/v1/pilot/match", {"site": site, "cpu_time_left": 3600})
        assert reply.status == 200 and reply.json["id"] == task_id, reply.body
        return task_id, {"assignment_secret": reply.json["assignment_secret"]}

    def events(self, **filters: Any) -> list[Any]:
        return [e.event for e in self.server.repo.audit.query(limit=10_000, **filters)]


@contextlib.contextmanager
def _database(backend: str) -> Iterator[str | None]:
    """None (SQLite in the state directory), or a throw-away PostgreSQL database: NUL
    characters and integers past 32 bits fail there, not on SQLite."""
    if backend == "sqlite":
        yield None
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def api(
    request: pytest.FixtureRequest, dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    out = tmp_path_factory.mktemp("task-api")
    out.chmod(0o700)
    policy = dataclasses.replace(
        load_config(dev_pki.config).policy,
        pilot_dns=("/C=XX/O=proxyd dev/OU=Pilots/*",),
        admins=(BOB,),
        auditors=(CAROL,),
    )
    # One attempt: a failed task stays failed here (the retries: test_reschedule_*).
    taskqueue = TaskQueueConfig(pilot_sites={PILOT2: ("site-b",)}, max_attempts=1)
    with (
        _database(request.param) as database,
        running_server(
            dev_pki, out / "state", database=database, policy=policy, taskqueue=taskqueue
        ) as server,
    ):
        creds: dict[str, Path] = {}
        for who in ("alice", "bob", "carol", "pilot"):
            ident = load_identity(dev_pki, who)
            creds[who] = out / f"{who}.pem"
            write_credential_file(creds[who], Credential(ident.certificates, ident.key))
        delegate(server.repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
        creds["pilot2"] = _pilot2(dev_pki, out)
        yield Api(server, creds)


def _csr() -> str:
    return csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()


# --- finding 7: illegal transitions are 409, and no allow is recorded for them -----------------


def test_complete_before_start_is_a_409_naming_the_state(api: Api) -> None:
    task_id, secret = api.matched()
    allows = len(api.events(operation="task_update", decision="allow"))
    reply = api.call("pilot", "POST", f"/v1/tasks/{task_id}/complete", {"wall_s": 1, **secret})
    assert reply.status == 409, reply.body
    assert reply.json["rule"] == "task.state_conflict" and "'matched'" in reply.json["detail"]
    assert len(api.events(operation="task_update", decision="allow")) == allows
    [deny] = api.events(operation="task_update", decision="deny", rule="task.state_conflict")[:1]
    assert deny.actor_dn == PILOT_DN and f"task {task_id}" in (deny.detail or "")
    assert api.call("alice", "GET", f"/v1/tasks/{task_id}").json["state"] == "matched"


@pytest.mark.parametrize("end", ["fail", "complete"])
def test_cancelling_a_finished_task_is_a_409_naming_the_state(api: Api, end: str) -> None:
    task_id, secret = api.matched()
    assert api.call("pilot", "POST", f"/v1/tasks/{task_id}/start", secret).status == 200
    ended = api.call("pilot", "POST", f"/v1/tasks/{task_id}/{end}", {"wall_s": 1, **secret})
    assert ended.status == 200, ended.body
    state = ended.json["state"]
    allows = len(api.events(operation="task_cancel", decision="allow"))
    reply = api.call("alice", "DELETE", f"/v1/tasks/{task_id}")
    assert reply.status == 409, reply.body
    assert reply.json["rule"] == "task.state_conflict" and f"'{state}'" in reply.json["detail"]
    assert len(api.events(operation="task_cancel", decision="allow")) == allows
    denials = api.events(operation="task_cancel", decision="deny", rule="task.state_conflict")
    assert any(f"task {task_id}" in (e.detail or "") for e in denials)
    # Who may cancel is still decided first: an auditor reads, never cancels.
    refused = api.call("carol", "DELETE", f"/v1/tasks/{task_id}")
    assert (refused.status, refused.json["rule"]) == (403, "task.not_owner")
    assert api.call("alice", "GET", f"/v1/tasks/{task_id}").json["state"] == state


def test_a_heartbeat_after_the_end_is_refused_not_a_500(api: Api) -> None:
    task_id, secret = api.matched()
    assert api.call("alice", "DELETE", f"/v1/tasks/{task_id}").status == 200
    for verb in ("start", "heartbeat", "complete", "fail"):
        reply = api.call("pilot", "POST", f"/v1/tasks/{task_id}/{verb}", secret)
        assert (reply.status, reply.json["rule"]) == (403, "payload.assignment_ended"), verb


# --- finding 7: every number bounded -------------------------------------------------------------

DAY = 86400


@pytest.mark.parametrize(
    ("body", "field", "bound"),
    [
        ({"max_wall_s": 999_999_999_999}, "max_wall_s", str(365 * DAY)),
        ({"max_wall_s": 2**31}, "max_wall_s", str(365 * DAY)),  # overflowed INTEGER: was a 500
        (
            {"max_wall_s": 31 * DAY},
            "max_wall_s",
            f"{30 * DAY} s (the server's [taskqueue] max_wall_time",
        ),
        ({"max_wall_s": 0}, "max_wall_s", ">= 1"),
        ({"max_cpu_s": 2**63}, "max_cpu_s", str(3650 * DAY)),
        ({"priority": 10**12}, "priority", "1000000"),
        ({"requirements": {"cpu_time": 2**40}}, "cpu_time", str(3650 * DAY)),
        ({"requirements": {"memory_mb": 2**40}}, "memory_mb", str(64 * 1024 * 1024)),
        ({"requirements": {"tags": [str(i) for i in range(300)]}}, "tags", "256"),
        ({"requirements": {"sites_allowed": ["A\nB"]}}, "sites_allowed", "control"),
        ({"payload": {"command": "/bin/true", "args": ["x"] * 300}}, "args", "256"),
        ({"fqans": ["/dteam"] * 300}, "fqans", "256"),
    ],
)
def test_task_numbers_are_bounded(api: Api, body: dict[str, Any], field: str, bound: str) -> None:
    full = {
        "vo": "dteam",
        "group": "/dteam",
        "credential": {"username": "alice"},
        "payload": {"command": "/bin/true"},
        **body,
    }
    reply = api.call("alice", "POST", "/v1/tasks", full)
    assert reply.status == 400, reply.body
    assert field in reply.json["detail"] and bound in reply.json["detail"], reply.json


@pytest.mark.parametrize(
    ("verb", "body", "field", "bound"),
    [
        ("complete", {"cpu_s": 1e300, "wall_s": 1}, "cpu_s", str(3650 * DAY)),
        ("complete", {"cpu_s": 1, "wall_s": -1}, "wall_s", ">= 0"),
        ("complete", {"wall_s": 1, "max_rss_kb": 2**63}, "max_rss_kb", str(2**36)),
        ("complete", {"wall_s": 1, "exit_code": 2**31}, "exit_code", str(2**31 - 1)),
        ("complete", {"wall_s": 1, "log_tail": "x" * 16385}, "log_tail", "16384"),
        ("fail", {"reason": "r" * 2001}, "reason", "2000"),
        ("fail", {"reason": "x", "wall_s": 2**1000}, "wall_s", str(365 * DAY)),
    ],
)
def test_pilot_reports_are_bounded(
    api: Api, verb: str, body: dict[str, Any], field: str, bound: str
) -> None:
    task_id, secret = api.matched()
    assert api.call("pilot", "POST", f"/v1/tasks/{task_id}/start", secret).status == 200
    reply = api.call("pilot", "POST", f"/v1/tasks/{task_id}/{verb}", {**body, **secret})
    assert reply.status == 400, reply.body
    assert field in reply.json["detail"] and bound in reply.json["detail"], reply.json
    assert api.call("alice", "GET", f"/v1/tasks/{task_id}").json["state"] == "running"


def test_pilot_offers_and_queries_are_bounded(api: Api) -> None:
    for body, field in (
        ({"site": "S", "cpu_time_left": 2**64}, "cpu_time_left"),
        ({"site": "S", "memory_mb": 2**64}, "memory_mb"),
        ({"site": "S", "tags": ["t"] * 300}, "tags"),
        ({"site": "S", "pilot_id": "p\n2"}, "pilot_id"),
        ({"site": ""}, "site"),
    ):
        reply = api.call("pilot", "POST", "/v1/pilot/match", body)
        assert reply.status == 400 and field in reply.json["detail"], reply.body
    for query in ("limit=0", "limit=100000", "after=-1", "after=99999999999999999999"):
        reply = api.call("alice", "GET", f"/v1/tasks?{query}")
        assert reply.status == 400, (query, reply.body)
    assert api.call("alice", "GET", "/v1/tasks/99999999999999999999").status == 404
    assert api.call("alice", "GET", "/v1/tasks?site=SITE%0AA").status == 400


def test_nul_and_lone_surrogates_never_reach_the_database(api: Api) -> None:
    """PostgreSQL refuses NUL in text, and no database stores a lone surrogate: refused, or
    (free text: reasons, log tails) replaced, never a 500."""
    for body in (
        {"payload": {"command": "/bin/true\x00"}},
        {"payload": {"command": "/bin/true", "args": ["\ud800"]}},
        {"credential": {"username": "alice", "name": "de\x00fault"}},
        {"requirements": {"tags": ["gp\x00u"]}},
    ):
        full = {"vo": "dteam", "group": "/dteam", "payload": {"command": "/bin/true"}, **body}
        reply = api.call("alice", "POST", "/v1/tasks", full)
        assert reply.status == 400, (body, reply.body)
    for query in ("owner=%00", "site=%00"):
        assert api.call("alice", "GET", f"/v1/tasks?{query}").status == 400, query
    assert api.call("alice", "GET", "/v1/tasks?owner=%ED%A0%80").status == 403  # not UTF-8
    ban = api.call("bob", "PUT", "/v1/admin/bans", {"dn": "/CN=x\x00", "banned": True})
    assert ban.status == 400, ban.body
    task_id, secret = api.matched()
    assert api.call("pilot", "POST", f"/v1/tasks/{task_id}/start", secret).status == 200
    reply = api.call(
        "pilot",
        "POST",
        f"/v1/tasks/{task_id}/fail",
        {"reason": "seg\x00fault \udc80", "wall_s": 1, "log_tail": "core\x00dump", **secret},
    )
    assert reply.status == 200, reply.body
    assert "\x00" not in reply.json["reason"]
    log = api.call("alice", "GET", f"/v1/tasks/{task_id}/log").json["log_tail"]
    assert log.startswith("core") and "\x00" not in log


# --- payloads bound to one pilot instance ----------------------------------------------------------


def test_a_sibling_with_the_same_certificate_but_no_secret_is_refused(api: Api) -> None:
    task_id, secret = api.matched()
    wrong = {"assignment_secret": "A" * 43}
    calls = {
        "proxy": {"csr": _csr()},
        "start": {},
        "heartbeat": {},
        "complete": {"wall_s": 1},
        "fail": {"reason": "sibling"},
    }
    before = len(api.events(rule="payload.wrong_instance"))
    for verb, body in calls.items():
        for presented in ({}, wrong):
            reply = api.call("pilot", "POST", f"/v1/tasks/{task_id}/{verb}", {**body, **presented})
            assert (reply.status, reply.json["rule"]) == (403, "payload.wrong_instance"), verb
    assert api.call("pilot", "POST", f"/v1/tasks/{task_id}/start").status == 403  # no body
    denials = api.events(rule="payload.wrong_instance")
    assert len(denials) == before + 11
    assert {e.operation for e in denials} == {"payload_proxy", "task_update"}
    assert all(e.decision == "deny" and e.actor_dn == PILOT_DN for e in denials)
    assert secret["assignment_secret"] not in json.dumps(
        [dataclasses.asdict(e) for e in denials], default=str
    )

    # The instance with the secret does everything, and the secret is nowhere else.
    ok = api.call("pilot", "POST", f"/v1/tasks/{task_id}/proxy", {"csr": _csr(), **secret})
    assert ok.status == 200, ok.body
    for verb in ("start", "heartbeat"):
        assert api.call("pilot", "POST", f"/v1/tasks/{task_id}/{verb}", secret).status == 200
    done = api.call("pilot", "POST", f"/v1/tasks/{task_id}/complete", {"wall_s": 1, **secret})
    assert done.status == 200 and done.json["state"] == "done"
    assert "assignment_secret" not in api.call("alice", "GET", f"/v1/tasks/{task_id}").json
    audit = api.call("carol", "GET", "/v1/audit?limit=1000")
    assert audit.status == 200 and secret["assignment_secret"].encode() not in audit.body


# --- finding 4: one spelling of a site; pilots bound to their sites -------------------------------


def test_a_masked_site_is_masked_in_every_spelling(api: Api) -> None:
    task_id, site = api.submit()
    masked = api.call("bob", "PUT", f"/v1/admin/sites/{site.upper()}", {"masked": True})
    assert masked.status == 200 and masked.json == {"site": site.lower(), "masked": True}
    for spelling in (site.lower(), f" {site.title()} ", site.upper()):
        reply = api.call("pilot", "POST", "/v1/pilot/match", {"site": spelling})
        assert reply.status == 204, (spelling, reply.body)
    bad = api.call("bob", "PUT", "/v1/admin/sites/SITE%0AA", {"masked": True})
    assert bad.status == 400 and "control" in bad.json["detail"]
    assert api.call("bob", "PUT", f"/v1/admin/sites/{site}", {"masked": False}).status == 200
    reply = api.call("pilot", "POST", "/v1/pilot/match", {"site": site.lower()})
    assert (
        reply.status == 200 and reply.json["id"] == task_id and reply.json["site"] == site.lower()
    )


def test_a_pilot_bound_to_sites_cannot_claim_another(api: Api) -> None:
    """[taskqueue] pilot_sites: pilot2's DN may claim only site-b (any spelling)."""
    refused = api.call("pilot2", "POST", "/v1/pilot/match", {"site": "SITE-A"})
    assert (refused.status, refused.json["rule"]) == (403, "task.site_not_allowed")
    assert "site-b" in refused.json["detail"]
    [deny] = api.events(operation="task_match", rule="task.site_not_allowed")[:1]
    assert deny.actor_dn == PILOT2 and deny.decision == "deny"
    for spelling in ("site-b", " SITE-B "):
        reply = api.call("pilot2", "POST", "/v1/pilot/match", {"site": spelling})
        assert reply.status in (200, 204), reply.body
    # A pilot matching no entry keeps today's behaviour.
    assert api.call("pilot", "POST", "/v1/pilot/match", {"site": "SITE-A"}).status in (200, 204)


# --- no input gets a 5xx -----------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = {
    "/v1/tasks": ["vo", "group", "fqans", "priority", "credential", "requirements", "payload",
                  "max_wall_s", "max_cpu_s"],
    "/v1/pilot/match": ["site", "ce", "platform", "tags", "cpu_time_left", "memory_mb",
                        "pilot_id"],
    "complete": ["cpu_s", "wall_s", "max_rss_kb", "exit_code", "log_tail", "assignment_secret"],
    "fail": ["reason", "cpu_s", "wall_s", "exit_code", "log_tail", "assignment_secret"],
}  # fmt: skip


@st.composite
def _bodies(draw: st.DrawFn, route: str) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(_FIELDS[route]), max_size=5, unique=True))
    body = {name: draw(_json) for name in names}
    if route == "/v1/tasks" and draw(st.booleans()):  # mostly valid, one field random
        base: dict[str, Any] = {
            "vo": "dteam",
            "group": "/dteam",
            "credential": {"username": "alice"},
            "payload": {"command": "/bin/true", "args": [draw(st.text(max_size=20))]},
            "requirements": {"sites_allowed": [draw(st.text(min_size=1, max_size=20))]},
            "max_wall_s": draw(st.integers(min_value=-(2**65), max_value=2**65)),
        }
        body = {**base, **body}
    return body


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_task_and_pilot_bodies_never_get_a_5xx(api: Api, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(sorted(_FIELDS)))
    body = data.draw(_bodies(route))
    if route in ("complete", "fail"):
        # A task of this pilot, matched or running, and most often its real secret, so
        # that the reports reach the bounds and the life cycle, not only the secret check.
        task_id, secret = _reporting(api, started=data.draw(st.booleans()))
        if data.draw(st.integers(0, 3)):
            body[SECRET] = secret
        target = data.draw(
            st.sampled_from([str(task_id)] * 4 + ["0", "-1", "99999999999999999999", "x"])
        )
        path, who = f"/v1/tasks/{target}/{route}", "pilot"
    else:
        path, who = route, ("alice" if route == "/v1/tasks" else "pilot")
    raw = json.dumps(body, allow_nan=True).encode()
    reply = api.client(who).request("POST", path, raw=raw)
    assert reply.status < 500, (path, body, reply.body)
    if reply.status >= 400:
        problem = reply.json
        assert problem["status"] == reply.status and problem["detail"]
        assert not re.search(r"Traceback|sqlalchemy|psycopg", problem["detail"])


SECRET = "assignment_secret"


def _reporting(api: Api, *, started: bool) -> tuple[int, str]:
    """A task matched to `pilot` (started or not) that is still active: (id, its secret)."""
    held = api.reporters.get(started)
    if held is not None:
        state = api.call("alice", "GET", f"/v1/tasks/{held[0]}").json["state"]
        if state == ("running" if started else "matched"):
            return held
    task_id, secret = api.matched()
    if started:
        api.call("pilot", "POST", f"/v1/tasks/{task_id}/start", secret)
    api.reporters[started] = (task_id, secret[SECRET])
    return api.reporters[started]


# --- issue 20: rescheduling by request -------------------------------------------------------------


def test_reschedule_by_the_owner_or_an_admin_kills_the_earlier_secret(api: Api) -> None:
    task_id, secret = api.matched()
    path = f"/v1/tasks/{task_id}/reschedule"
    refused = api.call("carol", "POST", path)  # an auditor reads, never changes
    assert (refused.status, refused.json["rule"]) == (403, "task.not_owner")
    again = api.call("alice", "POST", path, {"reason": "new input"})
    assert again.status == 200, again.body
    assert again.json["state"] == "rescheduled" and again.json["pilot"] is None
    assert again.json["reason"] == "rescheduled by request: new input"
    conflict = api.call("alice", "POST", path)  # queued already: nothing to reschedule
    assert (conflict.status, conflict.json["rule"]) == (409, "task.state_conflict")
    assert "'rescheduled'" in conflict.json["detail"]
    site = again.json["requirements"]["sites_allowed"][0]
    rematch = api.call("pilot", "POST", "/v1/pilot/match", {"site": site, "cpu_time_left": 3600})
    assert rematch.status == 200 and rematch.json["attempts"] == 2
    old = api.call("pilot", "POST", f"/v1/tasks/{task_id}/proxy", {"csr": _csr(), **secret})
    assert (old.status, old.json["rule"]) == (403, "payload.wrong_instance")
    assert "attempt 2" in old.json["detail"]
    by_admin = api.call("bob", "POST", path)  # no body at all
    assert by_admin.status == 200 and by_admin.json["reason"] == "rescheduled by request"
    allows = api.events(operation="task_reschedule", decision="allow")
    assert {e.rule for e in allows} >= {"task.owner", "task.admins"}
    done = api.events(operation="task.reschedule")
    assert {e.actor_dn for e in done} >= {ALICE, BOB}
