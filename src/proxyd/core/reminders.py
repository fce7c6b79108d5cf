"""Expiry reminders and owners' contact addresses, through the gate.

The sweep (`remind_expiring`) runs as the local operator, in every worker of
every instance: a reminder is *claimed* by inserting its (credential, end,
horizon) row in the same transaction as its allow event, and the unique key
lets only one sweep win, so each reminder goes out once. It is sent after
the claim commits; a reminder that reached no channel is un-claimed and
recorded as `remind.undelivered`, and the next sweep tries it again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import update

from ..policy import Decision, Operation, Request
from ..principal import Principal
from ..reminders.deliver import Delivery, DeliveryError, deliver
from ..reminders.plan import Due, Expiring, certificate_address, describe, due
from ..store import reminders as rows
from ..store.db import write_transaction
from ..store.models import ReminderRow
from .base import CoreBase
from .errors import BadRequest, RepositoryError

log = logging.getLogger("proxyd.reminders")

# One plain address: no display name, no list, nothing a mail header could be bent with.
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
MAX_ADDRESS = 254


@dataclass(frozen=True)
class SentReminder:
    owner: str
    username: str
    name: str
    horizon_s: int
    channels: tuple[str, ...]


def check_address(address: str) -> str:
    address = address.strip()
    if len(address) > MAX_ADDRESS or not _ADDRESS.fullmatch(address):
        raise BadRequest(
            f"contact address {address[:80]!r}: expected one plain e-mail address "
            f"such as alice@example.org (at most {MAX_ADDRESS} characters)",
            "contact.bad_address",
        )
    return address


def _address(row: rows.ExpiringRow) -> str | None:
    if row.contact:
        return row.contact
    try:
        chain = x509.load_pem_x509_certificates(row.chain_pem.encode())
    except ValueError:
        return None
    # Stored proxy first, end-entity certificate last: proxies carry no address of their own.
    for cert in reversed(chain):
        found = certificate_address(cert)
        if found:
            return found
    return None


class ExpiryReminders(CoreBase):
    """Reminding owners before their stored credentials expire."""

    def set_contact(self, principal: Principal, address: str) -> str:
        """Set the caller's own address for reminders; the address stored."""
        request = Request(Operation.SET_CONTACT, owner=principal.identity)
        decision = self.gate.decide(principal, request, None, name=None)
        try:
            clean = check_address(address)
        except BadRequest as exc:
            raise self.gate.refuse(
                principal,
                Operation.SET_CONTACT,
                Decision(False, "contact.bad_address", exc.message),
                owner=principal.identity,
                name=None,
                after_decision=True,
            ) from None
        with self.gate.act(
            principal, Operation.SET_CONTACT, decision, owner=principal.identity, name=None
        ) as act:
            rows.set_contact(act.conn, principal.identity, clean, self.clock())
            act.detail = f"contact for reminders: {clean}"
        return clean

    def remind_expiring(self, principal: Principal) -> list[SentReminder]:
        """Send every reminder due now (see the module docstring); what went out."""
        config = self.config.reminders
        if not config.enabled:
            return []
        now = self.clock()
        with self.engine.connect() as conn:
            found = rows.expiring(conn, now, now + max(config.horizons))
            already = rows.sent(conn, [r.credential_id for r in found])
        candidates = [
            Expiring(r.credential_id, r.owner_dn, r.name, r.username, r.not_after, _address(r))
            for r in found
        ]
        out = []
        for d in due(candidates, config.horizons, already, now):
            try:
                self._claim(principal, d)
            except RepositoryError as exc:
                if exc.rule != "remind.already_sent":
                    raise
                continue  # another sweep claimed it; its refusal is recorded
            try:
                delivery = deliver(d, config)
            except DeliveryError as exc:
                self._unclaim(principal, d, str(exc))
                continue
            self._delivered(d, delivery)
            c = d.credential
            out.append(SentReminder(c.owner, c.username, c.name, d.horizon_s, delivery.channels))
        return out

    def _claim(self, principal: Principal, d: Due) -> None:
        c = d.credential
        decision = self.gate.decide(principal, Request(Operation.REMIND), None, name=c.name)
        with self.gate.act(
            principal, Operation.REMIND, decision, owner=c.owner, name=c.name
        ) as act:
            claimed = rows.claim(
                act.conn,
                credential_id=c.credential_id,
                not_after=c.not_after,
                horizon_s=d.horizon_s,
                owner_dn=c.owner,
                now=self.clock(),
                channels="sending",
            )
            if not claimed:
                raise BadRequest(
                    f"the {describe(d.horizon)} reminder of {c.name!r} was sent by another sweep",
                    "remind.already_sent",
                )
            to = f"to {c.address}" if c.address else "no address known"
            act.detail = (
                f"reminder: credential {c.username}/{c.name} expires on "
                f"{c.not_after.isoformat()}, within {describe(d.horizon)}; {to}"
            )

    def _unclaim(self, principal: Principal, d: Due, why: str) -> None:
        c = d.credential
        with write_transaction(self.engine) as conn:
            rows.unclaim(
                conn, credential_id=c.credential_id, not_after=c.not_after, horizon_s=d.horizon_s
            )
        log.warning("reminder for %s/%s not delivered: %s", c.username, c.name, why)
        self.gate.refuse(
            principal,
            Operation.REMIND,
            Decision(False, "remind.undelivered", why[:400]),
            owner=c.owner,
            name=c.name,
        )

    def _delivered(self, d: Due, delivery: Delivery) -> None:
        c = d.credential
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(ReminderRow)
                .where(
                    ReminderRow.credential_id == c.credential_id,
                    ReminderRow.not_after == c.not_after,
                    ReminderRow.horizon_s == d.horizon_s,
                )
                .values(channels=",".join(delivery.channels))
            )
        for failure in delivery.failures:
            log.warning("reminder for %s/%s: %s", c.username, c.name, failure)
