"""The auditor dashboard over real TLS, without a browser: who sees it, and what each page shows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
import urllib.parse
from pathlib import Path

import pytest
from markupsafe import escape
from sqlalchemy import update

from proxyd.api.app import ROUTE_TABLE
from proxyd.api.ui import UI_ROUTES
from proxyd.audit import AuditLog
from proxyd.config import load_config
from proxyd.core.dashboard import LOG_PAGE_MAX
from proxyd.devpki import DevPKI
from proxyd.store.models import AuditRow
from tests.support.grid import load_identity
from tests.support.https import ApiClient, Reply
from tests.support.server import running_server
from tests.ui.conftest import ALICE, BOB, CAROL, MARKUP, PILOT, Seeded
from voms_ext import Credential, write_credential_file

PAGES = [r.path for r in UI_ROUTES if not r.open]


def _page(reply: Reply, status: int = 200) -> str:
    assert reply.status == status, reply.body[:2000]
    assert reply.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["cache-control"] == "no-store"
    text = reply.body.decode()
    assert text.startswith("<!DOCTYPE html>")
    assert "Traceback" not in text
    return text.replace("<wbr>", "")  # DNs may wrap at their slashes


def _rows(text: str) -> list[tuple[int, str, str]]:
    """(seq, decision, rule) of each event row of the log table, in page order."""
    return [
        (int(seq), decision, html.unescape(rule))
        for seq, decision, rule in re.findall(
            r'<tr data-seq="(\d+)" data-decision="(\w+)" data-rule="([^"]*)"', text
        )
    ]


def _audit_reads(seeded: Seeded) -> list[tuple[str, str, str]]:
    events = seeded.server.repo.audit.query(operation="audit_read", limit=1000)
    return [(s.event.actor_dn, s.event.decision, s.event.rule) for s in events]


def test_routes_are_in_the_route_table_and_openapi_as_html(seeded: Seeded) -> None:
    assert all(r in ROUTE_TABLE for r in UI_ROUTES)
    doc = seeded.get(None, "/v1/openapi.json").json
    for route in UI_ROUTES:
        op = doc["paths"][route.path]["get"]
        content = op["responses"]["200"]["content"]
        assert list(content) == ["text/css" if route.open else "text/html"], route.path
    assert [r.path for r in UI_ROUTES if r.open] == ["/ui/static/dashboard.css"]


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize(
    ("who", "identity", "rule"),
    [
        ("alice", ALICE, "audit_read.auditors"),
        ("bob", BOB, "audit_read.auditors"),  # an administrator is not an auditor
        ("pilot", PILOT, "pilot.restricted"),
        (None, "anonymous", "anonymous.denied"),
    ],
)
def test_non_auditors_get_a_403_page_naming_the_rule_and_it_is_audited(
    seeded: Seeded, path: str, who: str | None, identity: str, rule: str
) -> None:
    before = len(_audit_reads(seeded))
    text = _page(seeded.get(who, path + "?decision=deny&limit=5"), 403)
    assert f'<code class="rule">{rule}</code>' in text
    assert "<nav>" not in text  # no links into pages that would refuse anyway
    for secret in ("retrieve.not_trusted", seeded.serial, "site-a"):
        assert secret not in text
    reads = _audit_reads(seeded)
    assert len(reads) == before + 1
    assert reads[0][1:] == ("deny", rule)
    if who is not None:
        assert reads[0][0] == identity


@pytest.mark.parametrize("path", PAGES)
def test_every_page_makes_exactly_one_audited_decision_for_the_auditor(
    seeded: Seeded, path: str
) -> None:
    before = len(_audit_reads(seeded))
    text = _page(seeded.get("carol", path))
    assert CAROL in text  # who is signed in
    assert '<link rel="stylesheet" href="/ui/static/dashboard.css">' in text
    reads = _audit_reads(seeded)
    assert len(reads) == before + 1
    assert reads[0] == (CAROL, "allow", "audit_read.auditors")


def test_the_stylesheet_is_local_and_open(seeded: Seeded) -> None:
    reply = seeded.get(None, "/ui/static/dashboard.css")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/css")
    assert b"url(" not in reply.body and b"@import" not in reply.body  # nothing remote


def test_log_newest_first_with_every_column(seeded: Seeded) -> None:
    # Every page view before this test is an event too: a full page keeps the issuance on it.
    text = _page(seeded.get("carol", f"/ui/log?limit={LOG_PAGE_MAX}"))
    rows = _rows(text)
    seqs = [seq for seq, _, _ in rows]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == len(set(seqs))
    issued = re.search(
        r'<tr data-seq="\d+" data-decision="allow" data-rule="retrieve.trusted">.*?</tr>', text
    )
    assert issued is not None
    row = issued.group(0)
    for expected in ("retrieve", "wms.localhost", ALICE, seeded.serial, "/dteam", "limited"):
        assert expected in row, expected
    assert re.search(r'<td class="num">(1h|59m \d+s)</td>', row)  # the granted lifetime
    assert re.search(r'<time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>', row)


def test_log_filters_by_decision_rule_actor_owner_and_time(seeded: Seeded) -> None:
    q = urllib.parse.urlencode
    denied = _rows(_page(seeded.get("carol", "/ui/log?" + q({"decision": "deny"}))))
    assert denied and all(d == "deny" for _, d, _ in denied)
    assert sum(1 for _, _, r in denied if r == "retrieve.not_trusted") == 2

    by_rule = _rows(_page(seeded.get("carol", "/ui/log?rule=retrieve.not_trusted")))
    assert [(d, r) for _, d, r in by_rule] == [("deny", "retrieve.not_trusted")] * 2

    by_actor = _page(seeded.get("carol", "/ui/log?" + q({"actor": BOB, "decision": "deny"})))
    assert {r for _, _, r in _rows(by_actor)} >= {"retrieve.not_trusted"}
    assert f'value="{html.escape(BOB)}"' in by_actor  # the form shows the filter

    by_owner = _rows(_page(seeded.get("carol", "/ui/log?" + q({"owner": ALICE}))))
    assert by_owner and "retrieve.trusted" in {r for _, _, r in by_owner}

    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    assert _rows(_page(seeded.get("carol", f"/ui/log?since={tomorrow}"))) == []
    before = seeded.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _rows(_page(seeded.get("carol", "/ui/log?" + q({"until": before})))) == []
    window = q({"since": before, "until": tomorrow, "rule": "retrieve.trusted"})
    assert len(_rows(_page(seeded.get("carol", "/ui/log?" + window)))) == 1


def test_log_pages_by_seq_without_overlap(seeded: Seeded) -> None:
    everything = _rows(_page(seeded.get("carol", "/ui/log?limit=500&decision=allow")))
    seen: list[int] = []
    path = "/ui/log?limit=3&decision=allow"
    while path:
        text = _page(seeded.get("carol", path))
        page = [seq for seq, _, _ in _rows(text)]
        assert len(page) <= 3
        seen += page
        older = re.search(r'<a id="older" href="([^"]+)"', text)
        path = html.unescape(older.group(1)) if older else ""
        if path:
            assert "decision=allow" in path and "limit=3" in path
    # Each page view adds an allowed audit_read event, newer than the pages already read.
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert seen[-len(everything) :] == [seq for seq, _, _ in everything]


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "until=2026-13-45",
        "limit=0",
        "limit=100000",
        "limit=ten",
        "after=-1",
        "decision=maybe",
        "actor=%00bad",
        "since=2026-02-02&until=2026-02-01",
        "since=0001-01-01T00:00%2B14:00",
    ],
)
def test_bad_filters_are_a_400_page_not_an_error(seeded: Seeded, query: str) -> None:
    text = _page(seeded.get("carol", "/ui/log?" + query), 400)
    assert 'class="error"' in text


def test_everything_from_the_request_or_the_database_is_escaped(seeded: Seeded) -> None:
    evil = '"><script>alert(1)</script>'
    text = _page(seeded.get("carol", "/ui/log?" + urllib.parse.urlencode({"rule": evil})))
    assert "<script>" not in text and f'value="{escape(evil)}"' in text  # Jinja2's autoescape
    inventory = _page(seeded.get("carol", "/ui/credentials"))
    assert "<script>" not in inventory and str(escape(MARKUP)) in inventory


def test_overview_chart_and_intact_chain(seeded: Seeded) -> None:
    text = _page(seeded.get("carol", "/ui/"))
    assert '<svg class="chart" id="daily-chart"' in text
    days = re.findall(
        r'<g class="day" data-day="([\d-]+)" data-issued="(\d+)" data-denied="(\d+)"', text
    )
    assert len(days) == 30
    today = dt.datetime.now(dt.UTC).date()
    assert days[-1][0] == today.isoformat()
    assert days[0][0] == (today - dt.timedelta(days=29)).isoformat()
    # Issued: the WMS's proxy; denied: bob twice, and the non-auditors' page views so far.
    audit = seeded.server.repo.audit
    since = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
    all_today = audit.query(since=since, limit=100_000)
    expected_issued = sum(1 for s in all_today if s.event.decision == "allow" and s.event.serial)
    expected_denied = sum(1 for s in all_today if s.event.decision == "deny")
    issued, denied = int(days[-1][1]), int(days[-1][2])
    assert issued == expected_issued >= 1
    assert expected_denied >= denied >= 2  # the page's own decision is an allow, never counted
    assert all((i, d) == ("0", "0") for _, i, d in days[:-1])
    assert 'id="chain-status" data-ok="true"' in text and "chain intact" in text


def test_overview_names_the_first_bad_row_of_a_tampered_chain(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    tmp_path.chmod(0o700)
    policy = dataclasses.replace(load_config(dev_pki.config).policy, auditors=(CAROL,))
    pem = tmp_path / "carol.pem"
    ident = load_identity(dev_pki, "carol")
    write_credential_file(pem, Credential(ident.certificates, ident.key))
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        carol = ApiClient(server.api_port, dev_pki.cert_dir, pem)
        for _ in range(3):
            assert carol.request("GET", "/ui/log").status == 200
        with server.repo.engine.begin() as conn:
            conn.execute(update(AuditRow).where(AuditRow.seq == 2).values(peer="10.6.6.6"))
        assert not AuditLog(server.repo.engine).verify().ok
        text = _page(carol.request("GET", "/ui/"))
    assert 'id="chain-status" data-ok="false"' in text
    assert '<b id="first-bad-seq">2</b>' in text
    assert "row 2: stored hash does not match its contents" in text
    assert '<tr data-seq="2"' in text and "10.6.6.6" in text


def test_credential_inventory_without_secrets(seeded: Seeded) -> None:
    text = _page(seeded.get("carol", "/ui/credentials"))
    alice = re.search(r'<tr data-owner="[^"]*CN=alice" data-name="default">.*?</tr>', text)
    bob = re.search(r'<tr data-owner="[^"]*CN=bob" data-name="pp">.*?</tr>', text)
    assert alice and bob
    assert "trusted retrieval only" in alice.group(0) and "wms.localhost" in alice.group(0)
    assert "passphrase" in bob.group(0) and "trusted retrieval only" not in bob.group(0)
    for secret in (
        "PRIVATE KEY",
        "BEGIN CERTIFICATE",
        "bob's passphrase",
        "bob&#39;s passphrase",
        "bob&#x27;s passphrase",
    ):
        assert secret not in text


def test_task_queue_counts_and_recent_tasks(seeded: Seeded) -> None:
    text = _page(seeded.get("carol", "/ui/tasks"))
    counts = dict(
        re.findall(r'<tr data-state="(\w+)"><td>\w+</td><td class="num">(\d+)</td>', text)
    )
    assert len(counts) == 8
    assert (counts["done"], counts["matched"], counts["waiting"]) == ("1", "1", "1")
    recent = [int(t) for t in re.findall(r'<tr data-task="(\d+)">', text)]
    assert recent == sorted(seeded.task_ids, reverse=True)


def test_pilot_overview_by_pilot_and_site(seeded: Seeded) -> None:
    text = _page(seeded.get("carol", "/ui/pilots"))
    # Site names are stored as taskqueue.model.normalise_site spells them (case folded).
    row = re.search(r'<tr data-pilot="[^"]*CN=pilot" data-site="site-a">(.*?)</tr>', text)
    assert row is not None
    numbers = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', row.group(1))]
    # matched, running, done, failed, stalled, rescheduled, cancelled, total
    assert numbers == [1, 0, 1, 0, 0, 0, 0, 2]
    assert '<tr data-site="site-a"><td>site-a</td><td class="num">1</td>' in text
    assert "Masked sites: site-b." in text


def test_accounting_by_owner_group_and_site(seeded: Seeded) -> None:
    text = _page(seeded.get("carol", "/ui/accounting"))
    row = re.search(r'<tr data-key="[^"]*CN=alice">(.*?)</tr>', text)
    assert row is not None
    assert re.findall(r'<td class="num">([\d.]+)</td>', row.group(1)) == [
        "1",
        "0",
        "0.50",
        "1.00",
        "0",
    ]
    assert 'data-key="/dteam"' in _page(seeded.get("carol", "/ui/accounting?by=group"))
    assert 'data-key="site-a"' in _page(seeded.get("carol", "/ui/accounting?by=site"))
    bad = _page(seeded.get("carol", "/ui/accounting?by=colour"), 400)
    assert "owner, group or site" in bad


def test_the_log_filters_by_task(seeded: Seeded) -> None:
    """The auditor's task filter (as `proxyd-audit query --task`): one task's events only."""
    first, second = seeded.task_ids[0], seeded.task_ids[1]
    text = _page(seeded.get("carol", f"/ui/log?task={first}&limit={LOG_PAGE_MAX}"))
    rows = _rows(text)
    assert rows and {r for _, _, r in rows} >= {"task.owner", "queue.fair_share"}
    details = re.findall(r"<td>(task \d+[^<]*)</td>", text)
    assert details and all(re.match(rf"task {first}\b", d) for d in details), details
    assert f'value="{first}"' in text  # the form shows the filter
    other = _page(seeded.get("carol", f"/ui/log?task={second}&limit={LOG_PAGE_MAX}"))
    assert not re.search(rf"<td>task {first}\b", other)
    assert seeded.get("carol", "/ui/log?task=x").status == 400
