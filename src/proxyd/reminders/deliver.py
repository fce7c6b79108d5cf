"""Sending a reminder: e-mail over SMTP with STARTTLS (smtplib), and/or a JSON webhook.

Both run in a worker thread (the sweep is synchronous, like the rest of the
core) with a timeout, and raise `DeliveryError` with a message fit for the
audit log: it names the channel and the failure, never a password.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from .plan import Due, describe
from .settings import RemindersConfig, SmtpConfig


class DeliveryError(Exception):
    """A reminder that did not go out; the message says which channel and why."""


def message(due: Due, config: RemindersConfig, sender: str) -> EmailMessage:
    c = due.credential
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = c.address or ""
    msg["Subject"] = (
        f"[{config.server_name}] your stored credential {c.name!r} expires within "
        f"{describe(due.horizon)}"
    )
    msg["Message-ID"] = make_msgid(domain="proxyd")
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    msg.set_content(
        f"The credential {c.name!r} that {c.owner} stored in {config.server_name}\n"
        f"(username {c.username!r}) expires on {format_datetime(c.not_after)}.\n\n"
        "Pilots and services that use it will be refused once it has expired.\n"
        "Store a new one before then, for example:\n\n"
        f"    myproxy-init -s <server> -l {c.username} -k {c.name}\n"
        f"    proxy-init --store --name {c.name}\n\n"
        f"You get this reminder once for the {describe(due.horizon)} horizon.\n"
    )
    return msg


def _tls(ca_file: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def send_mail(due: Due, config: RemindersConfig, smtp: SmtpConfig) -> None:
    if not due.credential.address:
        raise DeliveryError("e-mail: the owner has no known address")
    msg = message(due, config, smtp.sender)
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout.total_seconds()) as client:
            client.ehlo()
            if smtp.starttls:
                # No fallback to plain text: a relay that does not offer STARTTLS is an error.
                client.starttls(context=_tls(smtp.ca_file))
                client.ehlo()
            if smtp.username is not None and smtp.password_file is not None:
                password = smtp.password_file.read_text().strip()
                client.login(smtp.username, password)
            client.send_message(msg)
    except smtplib.SMTPNotSupportedError:
        raise DeliveryError(f"e-mail: {smtp.host}:{smtp.port} does not offer STARTTLS") from None
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        raise DeliveryError(f"e-mail via {smtp.host}:{smtp.port}: {exc}") from None


def send_webhook(due: Due, config: RemindersConfig, url: str) -> None:
    c = due.credential
    body = json.dumps(
        {
            "event": "credential_expiring",
            "owner": c.owner,
            "username": c.username,
            "name": c.name,
            "not_after": c.not_after.isoformat(),
            "horizon_s": due.horizon_s,
            "address": c.address,
            "server": config.server_name,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked at config load
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    context = _tls(config.webhook_ca_file) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:  # noqa: S310
            status = reply.status
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"webhook {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"webhook {url}: {exc}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook {url}: HTTP {status}")


@dataclass(frozen=True)
class Delivery:
    channels: tuple[str, ...]  # where it went out
    failures: tuple[str, ...]  # the channels that failed, and why


def deliver(due: Due, config: RemindersConfig) -> Delivery:
    """Send `due` on every configured channel that reaches its owner.

    Raises DeliveryError when it went out on none (each channel's failure in the message).
    """
    sent: list[str] = []
    failures: list[str] = []
    if config.smtp is not None and due.credential.address:
        try:
            send_mail(due, config, config.smtp)
            sent.append("email")
        except DeliveryError as exc:
            failures.append(str(exc))
    if config.webhook is not None:
        try:
            send_webhook(due, config, config.webhook)
            sent.append("webhook")
        except DeliveryError as exc:
            failures.append(str(exc))
    if not sent:
        raise DeliveryError("; ".join(failures) or "no channel reaches this owner")
    return Delivery(tuple(sent), tuple(failures))
