"""`[reminders]` and `[reminders.smtp]`: when to remind owners and how to reach them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from ..configsection import ConfigError, Section

DEFAULT_HORIZONS = (dt.timedelta(days=30), dt.timedelta(days=15), dt.timedelta(days=3))


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    # STARTTLS before anything else is said; off only for a relay on the same host.
    starttls: bool = True
    sender: str = "proxyd@localhost"
    username: str | None = None
    password_file: Path | None = None  # read at send time, never logged
    ca_file: Path | None = None  # the relay's CA; the system's CAs when unset
    timeout: dt.timedelta = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class RemindersConfig:
    """Reminders go out when `smtp` or `webhook` is set; otherwise nothing is sent."""

    horizons: tuple[dt.timedelta, ...] = DEFAULT_HORIZONS  # longest first
    interval: dt.timedelta = dt.timedelta(hours=1)
    smtp: SmtpConfig | None = None
    webhook: str | None = None  # an https:// URL that gets one JSON POST per reminder
    webhook_ca_file: Path | None = None
    server_name: str = "proxyd"  # how the mail names this service

    @property
    def enabled(self) -> bool:
        return self.smtp is not None or self.webhook is not None


def parse_reminders(r: Section, smtp_section: Section | None) -> RemindersConfig:

    horizons = []
    for text in r.strings("horizons", ()):
        horizons.append(_duration(r, "horizons", text))
    if len(set(horizons)) != len(horizons):
        raise ConfigError(f"{r.where('horizons')} lists a horizon twice")
    webhook = r.str("webhook")
    if webhook is not None and not webhook.startswith(
        ("https://", "http://127.0.0.1", "http://[::1]", "http://localhost")
    ):
        raise ConfigError(
            f"{r.where('webhook')} must be an https:// URL (plain http only to this host), "
            f"got {webhook!r}"
        )
    smtp = None
    if smtp_section is not None:
        s = smtp_section
        password_file = s.path("password_file")
        username = s.str("username")
        if (password_file is None) != (username is None):
            raise ConfigError(f"{s.where('username')}: username and password_file go together")
        smtp = SmtpConfig(
            host=s.str("host", required=True) or "",
            port=s.int("port", 587, minimum=1, maximum=65535),
            starttls=s.bool("starttls", True),
            sender=s.str("from", "proxyd@localhost") or "proxyd@localhost",
            username=username,
            password_file=password_file,
            ca_file=s.path("ca_file"),
            timeout=s.duration("timeout", dt.timedelta(seconds=30)),
        )
        s.finish()
    return RemindersConfig(
        horizons=tuple(sorted(horizons, reverse=True)) if horizons else DEFAULT_HORIZONS,
        interval=r.duration("interval", dt.timedelta(hours=1)),
        smtp=smtp,
        webhook=webhook,
        webhook_ca_file=r.path("webhook_ca_file"),
        server_name=r.str("server_name", "proxyd") or "proxyd",
    )


def _duration(r: Section, key: str, text: str) -> dt.timedelta:
    """One horizon, in the duration syntax of every other key ("30d", "12h")."""

    probe = Section(r.source, r.name, {key: text})
    return probe.duration(key, dt.timedelta(0))
