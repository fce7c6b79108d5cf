"""Which reminder is due: the pure plan, the certificate's address, the [reminders] config."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxyd.config import ConfigError, parse_config
from proxyd.reminders.plan import Expiring, certificate_address, describe, due
from proxyd.reminders.settings import DEFAULT_HORIZONS

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _cred(left: dt.timedelta, cid: int = 1) -> Expiring:
    return Expiring(cid, "/CN=alice", "default", "alice", NOW + left, "alice@example.org")


@pytest.mark.parametrize(
    ("left", "horizon"),
    [
        (40 * DAY, None),
        (30 * DAY, 30 * DAY),  # the edge of a horizon is inside it
        (29 * DAY, 30 * DAY),
        (14 * DAY, 15 * DAY),  # first seen inside 15 days: the 15-day reminder, not the 30
        (2 * DAY, 3 * DAY),
        (dt.timedelta(minutes=5), 3 * DAY),
        (dt.timedelta(0), None),  # expired: not a reminder's business
        (-DAY, None),
    ],
)
def test_the_shortest_entered_horizon_is_due(
    left: dt.timedelta, horizon: dt.timedelta | None
) -> None:
    got = due([_cred(left)], DEFAULT_HORIZONS, set(), NOW)
    assert [d.horizon for d in got] == ([horizon] if horizon else [])


def test_a_sent_horizon_is_not_due_again_but_the_next_one_is() -> None:
    c = _cred(14 * DAY)
    sent = {(1, c.not_after, 15 * 86400)}
    assert due([c], DEFAULT_HORIZONS, sent, NOW) == []
    later = NOW + 12 * DAY  # 2 days left
    assert [d.horizon for d in due([c], DEFAULT_HORIZONS, sent, later)] == [3 * DAY]


def test_a_credential_stored_again_starts_afresh() -> None:
    old, new = _cred(14 * DAY), _cred(14 * DAY + dt.timedelta(hours=1))
    sent = {(1, old.not_after, 15 * 86400)}
    assert [d.horizon for d in due([new], DEFAULT_HORIZONS, sent, NOW)] == [15 * DAY]


def _cert(subject: x509.Name, sans: list[x509.GeneralName]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + DAY)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256())


def test_the_certificate_address_prefers_rfc822_then_the_subject_email() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Alice"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "subject@example.org"),
        ]
    )
    assert certificate_address(_cert(name, [])) == "subject@example.org"
    both = _cert(name, [x509.RFC822Name("san@example.org")])
    assert certificate_address(both) == "san@example.org"
    plain = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bob")]), [])
    assert certificate_address(plain) is None


def test_describe() -> None:
    assert describe(15 * DAY) == "15 days"
    assert describe(DAY) == "1 day"
    assert describe(dt.timedelta(hours=36)) == "36 hours"


BASE = """
[server]
host_cert = "/x"
host_key = "/x"
cert_dir = "/x"
state_dir = "/x"
"""


def test_reminders_are_off_unless_a_channel_is_set() -> None:
    assert not parse_config(BASE, "/etc/proxyd.toml").reminders.enabled
    config = parse_config(
        BASE
        + '[reminders]\nhorizons = ["2d", "20d"]\n[reminders.smtp]\nhost = "mail.example.org"\n',
        "/etc/proxyd.toml",
    ).reminders
    assert config.enabled
    assert config.horizons == (20 * DAY, 2 * DAY)  # longest first, whatever the order given
    assert config.smtp is not None and config.smtp.port == 587 and config.smtp.starttls


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[reminders]\nhorizons = ["2x"]\n', "[reminders] horizons must be a positive duration"),
        ('[reminders]\nhorizons = ["2d", "48h"]\n', "[reminders] horizons lists a horizon twice"),
        (
            '[reminders]\nwebhook = "http://example.org/hook"\n',
            "[reminders] webhook must be an https:// URL",
        ),
        (
            '[reminders.smtp]\nhost = "m"\nusername = "u"\n',
            "[reminders.smtp] username: username and password_file go together",
        ),
        ("[reminders.smtp]\nport = 25\n", "[reminders.smtp] host is required but missing"),
        ('[reminders]\nsmtp_host = "m"\n', "[reminders] has unknown key(s) smtp_host"),
        ('[reminders.smtp]\nhost = "m"\ntls = false\n', "[reminders.smtp] has unknown key(s) tls"),
    ],
)
def test_bad_reminder_settings_say_where_and_why(text: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + text, tmp_path / "proxyd.toml")
    assert error in str(exc.value)
    assert str(tmp_path / "proxyd.toml") in str(exc.value)
