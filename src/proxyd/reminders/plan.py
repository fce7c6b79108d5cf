"""Which reminder is due for which credential: a pure function of the facts and the time.

A credential gets the reminder of the *shortest* horizon its time left has
entered, once: a credential first seen 14 days before its end gets the
15-day reminder, not the 30-day one too, and no more until it enters the
3-day horizon. A credential stored again (a new end) starts afresh, since
reminders are kept per (credential, end, horizon).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Expiring:
    """A stored credential the sweep looks at (never its key)."""

    credential_id: int
    owner: str
    name: str
    username: str
    not_after: dt.datetime
    address: str | None  # where the owner is reached by mail, if known


@dataclass(frozen=True)
class Due:
    credential: Expiring
    horizon: dt.timedelta

    @property
    def horizon_s(self) -> int:
        return int(self.horizon.total_seconds())


def due(
    credentials: Iterable[Expiring],
    horizons: Sequence[dt.timedelta],
    sent: set[tuple[int, dt.datetime, int]],
    now: dt.datetime,
) -> list[Due]:
    """The reminders to send now; `sent` holds (credential id, end, horizon seconds) sent."""
    out = []
    for c in credentials:
        left = c.not_after - now
        if left <= dt.timedelta(0):
            continue  # expired: `proxyd admin list --invalid` and `expire` deal with it
        entered = [h for h in horizons if left <= h]
        if not entered:
            continue
        horizon = min(entered)
        if (c.credential_id, c.not_after, int(horizon.total_seconds())) not in sent:
            out.append(Due(c, horizon))
    return out


def certificate_address(cert: x509.Certificate) -> str | None:
    """The e-mail address a certificate names: rfc822Name first, then the subject's emailAddress."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        emails = []
    if emails:
        return emails[0]
    attrs = cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    value = attrs[0].value if attrs else None
    return value if isinstance(value, str) and "@" in value else None


def describe(horizon: dt.timedelta) -> str:
    days, rest = divmod(int(horizon.total_seconds()), 86400)
    if days and not rest:
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(horizon.total_seconds()) // 3600
    return f"{hours} hour{'s' if hours != 1 else ''}"
