"""Expiry reminders end to end: a real SMTP server (aiosmtpd, STARTTLS required) and a real
webhook on loopback, a real repository (SQLite), the audit log as the record (issue 20).

A credential 14 days from its end gets exactly one 15-day reminder across two sweeps; the
3-day one follows when its horizon is entered; a reminder that reaches no one is recorded
as `remind.undelivered` and tried again by the next sweep.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import ssl
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from proxyd.config import load_config
from proxyd.devpki import DevPKI
from proxyd.policy import Operation
from proxyd.principal import local_operator
from proxyd.reminders.settings import RemindersConfig, SmtpConfig
from proxyd.repository import BadRequest, Denied, Repository, StoreOptions
from tests.support.grid import delegate, load_identity, make_proxy, make_repository, principal
from tests.support.server import free_port

DAY = dt.timedelta(days=1)


class Sink:
    """An SMTP server's handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert session.ssl is not None, "a message was accepted without STARTTLS"
        content = envelope.original_content or b""
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 OK"


@pytest.fixture
def smtp(dev_pki: DevPKI) -> Iterator[tuple[Sink, int]]:
    cert, key = dev_pki.host("host")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    sink = Sink()
    port = free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True
    )
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    status = 204

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    """Both stores: the claim that makes a reminder go out once is dialect SQL."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def webhook() -> Iterator[tuple[type[Hook], str]]:
    handler = type("H", (Hook,), {"received": [], "status": 204})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


def _repo(
    dev_pki: DevPKI,
    tmp_path: Path,
    reminders: RemindersConfig,
    clock: Clock,
    database: str | None = None,
) -> Repository:
    policy = dataclasses.replace(
        load_config(dev_pki.config).policy, max_stored_lifetime=dt.timedelta(days=40)
    )
    repo = make_repository(
        dev_pki, tmp_path / "state", policy=policy, clock=clock, database=database
    )
    repo.config = dataclasses.replace(repo.config, reminders=reminders)
    _OPEN.append(repo)
    return repo


_OPEN: list[Repository] = []


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    """Close every repository's connections at the end of its test (PostgreSQL warns else)."""
    yield
    while _OPEN:
        _OPEN.pop().engine.dispose()


def _mail(dev_pki: DevPKI, port: int) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1", port=port, sender="proxyd@example.org", ca_file=dev_pki.ca_cert
    )


def _reminds(repo: Repository) -> list[tuple[str, str, str | None]]:
    return [
        (e.event.decision, e.event.rule, e.event.detail)
        for e in sorted(repo.audit.query(limit=1000), key=lambda e: e.seq)
        if e.event.operation == Operation.REMIND.value
    ]


def test_fourteen_days_before_expiry_one_15_day_reminder_across_two_sweeps(
    dev_pki: DevPKI, tmp_path: Path, smtp: tuple[Sink, int], database: str | None
) -> None:
    sink, port = smtp
    clock = Clock()
    repo = _repo(dev_pki, tmp_path, RemindersConfig(smtp=_mail(dev_pki, port)), clock, database)
    alice = load_identity(dev_pki, "alice")
    delegate(repo, alice, StoreOptions("alice"), lifetime_h=14 * 24)
    assert repo.set_contact(principal(repo, alice), " alice@example.org ") == "alice@example.org"

    first = repo.remind_expiring(local_operator())
    second = repo.remind_expiring(local_operator())

    assert [(r.username, r.horizon_s, r.channels) for r in first] == [
        ("alice", 15 * 86400, ("email",))
    ]
    assert second == []
    assert len(sink.messages) == 1
    sender, rcpts, content = sink.messages[0]
    mail = message_from_bytes(content)
    assert (sender, rcpts) == ("proxyd@example.org", ["alice@example.org"])
    assert "expires within 15 days" in mail["Subject"]
    assert mail["Auto-Submitted"] == "auto-generated"
    [(decision, rule, detail)] = _reminds(repo)
    assert (decision, rule) == ("allow", "remind.sweep")
    assert detail is not None and "within 15 days; to alice@example.org" in detail

    # 12 days on, 2 days are left: the 3-day reminder, once.
    clock.offset = 12 * DAY
    assert [r.horizon_s for r in repo.remind_expiring(local_operator())] == [3 * 86400]
    assert repo.remind_expiring(local_operator()) == []
    assert len(sink.messages) == 2
    assert "expires within 3 days" in message_from_bytes(sink.messages[1][2])["Subject"]
    assert repo.audit.verify().ok


def test_a_reminder_that_reaches_no_one_is_recorded_and_tried_again(
    dev_pki: DevPKI, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    clock = Clock()
    closed = free_port()  # nothing listens there
    repo = _repo(dev_pki, tmp_path, RemindersConfig(smtp=_mail(dev_pki, closed)), clock)
    bob = load_identity(dev_pki, "bob")
    delegate(repo, bob, StoreOptions("bob"), lifetime_h=2 * 24)
    repo.set_contact(principal(repo, bob), "bob@example.org")

    assert repo.remind_expiring(local_operator()) == []
    assert [(d, r) for d, r, _ in _reminds(repo)] == [
        ("allow", "remind.sweep"),
        ("deny", "remind.undelivered"),
    ]
    assert f"127.0.0.1:{closed}" in (_reminds(repo)[1][2] or "")

    repo.config = dataclasses.replace(
        repo.config, reminders=RemindersConfig(smtp=_mail(dev_pki, port))
    )
    assert [r.horizon_s for r in repo.remind_expiring(local_operator())] == [3 * 86400]
    assert len(sink.messages) == 1


def test_a_relay_without_starttls_is_refused_not_used_in_clear(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)  # no TLS at all
    controller.start()
    try:
        repo = _repo(dev_pki, tmp_path, RemindersConfig(smtp=_mail(dev_pki, port)), Clock())
        carol = load_identity(dev_pki, "carol")
        delegate(repo, carol, StoreOptions("carol"), lifetime_h=24)
        repo.set_contact(principal(repo, carol), "carol@example.org")
        assert repo.remind_expiring(local_operator()) == []
    finally:
        controller.stop()
    assert sink.messages == []
    [_, (decision, rule, detail)] = _reminds(repo)
    assert (decision, rule) == ("deny", "remind.undelivered")
    assert detail is not None and "does not offer STARTTLS" in detail


def test_the_webhook_gets_every_reminder_even_without_an_address(
    dev_pki: DevPKI, tmp_path: Path, webhook: tuple[type[Hook], str]
) -> None:
    hook, url = webhook
    repo = _repo(dev_pki, tmp_path, RemindersConfig(webhook=url), Clock())
    alice = load_identity(dev_pki, "alice")
    delegate(repo, alice, StoreOptions("alice", name="prod"), lifetime_h=20 * 24)
    [sent] = repo.remind_expiring(local_operator())
    assert sent.channels == ("webhook",)
    [body] = hook.received
    assert body["event"] == "credential_expiring"
    assert (body["username"], body["name"], body["horizon_s"]) == ("alice", "prod", 30 * 86400)
    assert body["address"] is None  # the dev certificates carry no e-mail address
    assert repo.remind_expiring(local_operator()) == []
    assert len(hook.received) == 1


def test_contacts_are_set_by_their_owner_only(dev_pki: DevPKI, tmp_path: Path) -> None:
    repo = _repo(dev_pki, tmp_path, RemindersConfig(webhook="http://127.0.0.1:9/hook"), Clock())
    alice = load_identity(dev_pki, "alice")
    with pytest.raises(BadRequest) as bad:
        repo.set_contact(principal(repo, alice), "Alice <alice@example.org>, eve@example.org")
    assert bad.value.rule == "contact.bad_address"
    limited = make_proxy(alice, limited=True)
    with pytest.raises(Denied) as denied:
        repo.set_contact(principal(repo, limited), "alice@example.org")
    assert denied.value.rule == "contact.owner"


def test_only_the_servers_own_sweep_sends_reminders(dev_pki: DevPKI, tmp_path: Path) -> None:
    repo = _repo(dev_pki, tmp_path, RemindersConfig(webhook="http://127.0.0.1:9/hook"), Clock())
    alice = load_identity(dev_pki, "alice")
    delegate(repo, alice, StoreOptions("alice"), lifetime_h=24)
    with pytest.raises(Denied) as peer:
        repo.remind_expiring(principal(repo, alice))  # a peer cannot make proxyd send mail
    assert peer.value.rule == "remind.sweep"
    assert [(d, r) for d, r, _ in _reminds(repo)] == [("deny", "remind.sweep")]


def test_a_sweep_that_loses_the_race_sends_nothing(
    dev_pki: DevPKI,
    tmp_path: Path,
    webhook: tuple[type[Hook], str],
    monkeypatch: pytest.MonkeyPatch,
    database: str | None,
) -> None:
    """Two workers sweep at once: both read "not sent", one claims; the other sends nothing."""
    hook, url = webhook
    repo = _repo(dev_pki, tmp_path, RemindersConfig(webhook=url), Clock(), database)
    delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"), lifetime_h=24)
    assert len(repo.remind_expiring(local_operator())) == 1
    # The loser read the table before the winner's claim committed.
    monkeypatch.setattr("proxyd.core.reminders.rows.sent", lambda conn, ids: set())
    assert repo.remind_expiring(local_operator()) == []
    assert len(hook.received) == 1
    assert [(d, r) for d, r, _ in _reminds(repo)] == [
        ("allow", "remind.sweep"),
        ("deny", "remind.already_sent"),
    ]
