"""The operator's and the auditor's operations: bans, locks, inventory, expiry, key rotation, audit reads."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, tuple_

from voms_ext import VomsExtError

from .. import policy
from ..audit import StoredEvent, VerifyReport
from ..policy import Decision, Operation
from ..principal import (
    Principal,
)
from ..sealing import (
    rewrap,
)
from ..store.bans import Ban, add_ban, remove_ban
from ..store.bans import list_bans as read_ban_list
from ..store.credentials import STORED_FIELDS
from ..store.models import CredentialRow
from .base import CoreBase
from .checks import (
    check_lock_message,
)
from .errors import BadRequest, NotFound
from .values import (
    CredentialInfo,
    StoredCredential,
    credential_aad,
    credential_info,
    sealed_key_of,
)


@dataclass(frozen=True)
class CredentialState:
    """A stored credential and its verdict now: None (usable), or "expired", "revoked" or
    "untrusted" (the chain checked against the current trust store and CRLs, as every use
    checks it), with the reason."""

    info: CredentialInfo
    verdict: str | None
    problem: str = ""


class Administration(CoreBase):
    """The operator's and the auditor's operations."""

    def audit_events(self, principal: Principal, **filters: Any) -> list[StoredEvent]:
        self.gate.read(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        return self.audit.query(**filters)

    def authorize_metrics(self, principal: Principal) -> None:
        self.gate.read(principal, policy.Request(Operation.METRICS_READ), None, name=None)

    def audit_verify(self, principal: Principal) -> VerifyReport:
        self.gate.read(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        return self.audit.verify()

    def _admin_decision(self, principal: Principal, name: str | None = None) -> Decision:
        return self.gate.decide(principal, policy.Request(Operation.ADMIN), None, name=name)

    def ban(self, principal: Principal, kind: str, pattern: str, reason: str) -> None:
        if kind not in ("user", "host"):
            raise BadRequest("bans are of kind user or host (sites are masked in the task queue)")
        decision = self._admin_decision(principal)
        detail = f"ban {kind} {pattern}: {reason}"[:500]
        with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=None) as act:
            act.detail = detail
            if not add_ban(act.conn, kind, pattern, principal.identity, reason, now=self.clock()):
                raise BadRequest(f"{kind} {pattern!r} is already banned", "admin.already_banned")

    def unban(self, principal: Principal, kind: str, pattern: str) -> bool:
        """Lift a ban; False (and a refusal in the log) when there was none."""
        decision = self._admin_decision(principal)
        try:
            with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=None) as act:
                act.detail = f"unban {kind} {pattern}"[:500]
                if not remove_ban(act.conn, kind, pattern):
                    raise NotFound(f"{kind} {pattern!r} is not banned", "admin.not_banned")
        except NotFound:
            return False
        return True

    def lock(
        self, principal: Principal, username: str, name: str | None, message: str
    ) -> list[CredentialInfo]:
        """Lock `username`'s credential `name` (without a name: all of them), as
        myproxy-admin-query -L does: every use of it (retrieve, renew, payload proxy, key
        retrieval, storing over it) is refused with `credential.locked` and `message`,
        until `unlock`. INFO and DESTROY stay open to the owner. Decided as an admin
        action; each credential's event commits with its change (I6)."""
        return self._set_lock(principal, username, name, check_lock_message(message))

    def unlock(
        self, principal: Principal, username: str, name: str | None = None
    ) -> list[CredentialInfo]:
        """Lift the lock of `username`'s credential `name` (all of them without a name)."""
        return self._set_lock(principal, username, name, None)

    def _set_lock(
        self, principal: Principal, username: str, name: str | None, message: str | None
    ) -> list[CredentialInfo]:
        verb = "lock" if message is not None else "unlock"
        where = f"{username[:100]}/{name[:100]}" if name is not None else username[:100]
        decision = self._admin_decision(principal, name)
        now = self.clock()
        with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=name) as act:
            query = select(CredentialRow).where(CredentialRow.username == username)
            if name is not None:
                query = query.where(CredentialRow.name == name)
            rows = list(act.session.scalars(query.order_by(CredentialRow.name)))
            if not rows:
                raise NotFound(
                    f'No credentials exist for username "{where}".', "credential.not_found"
                )
            if message is None:
                rows = [r for r in rows if r.lock_message is not None]
                if not rows:
                    raise BadRequest(f"no credential of {where} is locked", "credential.not_locked")
            for row in rows:
                row.lock_message = message
                row.locked_by = principal.identity if message is not None else None
                row.locked_at = now if message is not None else None
            # One decision, one event: every credential it changed (one username, one owner).
            act.owner = rows[0].owner_dn
            names = ", ".join(f"{username}/{r.name}" for r in rows)
            act.detail = (f"{verb} {names}" + (f": {message}" if message else ""))[:2000]
            return [credential_info(r) for r in rows]

    def list_bans(self, principal: Principal) -> list[Ban]:
        self.gate.read(principal, policy.Request(Operation.ADMIN), detail="list bans")
        with self.engine.connect() as conn:
            return read_ban_list(conn)

    def list_credentials(
        self, principal: Principal, *, owner: str | None = None, expired: bool = False
    ) -> list[CredentialInfo]:
        """The inventory (never a key), for operators and the auditor dashboard."""
        listing = "list expired credentials" if expired else "list credentials"
        self.gate.read(
            principal,
            policy.Request(Operation.ADMIN, owner=owner or None),
            detail=f"{listing} of {owner}" if owner else listing,
        )
        query = select(CredentialRow).order_by(
            CredentialRow.owner_dn, CredentialRow.username, CredentialRow.name
        )
        if owner:
            query = query.where(CredentialRow.owner_dn == owner)
        if expired:
            query = query.where(CredentialRow.not_after < self.clock())
        with self._session() as session:
            return [credential_info(r) for r in session.scalars(query)]

    def review_credentials(
        self,
        principal: Principal,
        *,
        owner: str | None = None,
        expiring_within: dt.timedelta | None = None,
        invalid: bool = False,
    ) -> list[CredentialState]:
        """The inventory with each credential's verdict (myproxy-admin-query -e / -i).

        `expiring_within`: only those whose end is at most that far away (ended ones
        included); `invalid`: only those no use would accept now (expired, revoked,
        untrusted). Both given: both must hold. An administrative read like
        `list_credentials`, recorded with what was asked.
        """
        listing = "list invalid credentials" if invalid else "list credentials"
        if expiring_within is not None:
            listing += f" expiring within {int(expiring_within.total_seconds())} s"
        self.gate.read(
            principal,
            policy.Request(Operation.ADMIN, owner=owner or None),
            detail=f"{listing} of {owner}"[:500] if owner else listing,
        )
        now = self.clock()
        query = select(CredentialRow).order_by(
            CredentialRow.not_after, CredentialRow.username, CredentialRow.name
        )
        if owner:
            query = query.where(CredentialRow.owner_dn == owner)
        if expiring_within is not None:
            query = query.where(CredentialRow.not_after <= now + expiring_within)
        with self._session() as session:
            rows = [
                StoredCredential(*(getattr(r, f) for f in STORED_FIELDS))
                for r in session.scalars(query)
            ]
        states = []
        for row in rows:
            verdict: tuple[str, str] | None
            try:
                verdict = self._chain_verdict(row, self._stored_chain(row.chain_pem))
            except VomsExtError as exc:  # a chain that no longer even parses
                verdict = ("untrusted", f"the stored chain cannot be read: {exc}")
            if verdict is None and row.not_after <= now:
                verdict = (
                    "expired",
                    f"the stored credential expired at {row.not_after:%Y-%m-%d %H:%M:%SZ}",
                )
            if invalid and verdict is None:
                continue
            info = credential_info(row)
            states.append(
                CredentialState(info, *verdict) if verdict else CredentialState(info, None)
            )
        return states

    def inventory(self, principal: Principal, *, limit: int = 1000) -> list[CredentialInfo]:
        """The read-only credential inventory for auditors (never a key), by owner, username, name.

        Decided and audited as `audit_read` (auditors), where `list_credentials`
        is an administrative read. At most `limit` credentials.
        """
        self.gate.read(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        query = (
            select(CredentialRow)
            .order_by(CredentialRow.owner_dn, CredentialRow.username, CredentialRow.name)
            .limit(max(1, limit))
        )
        with self._session() as session:
            return [credential_info(r) for r in session.scalars(query)]

    def expire(self, principal: Principal, *, dry_run: bool = False) -> list[CredentialInfo]:
        """Delete the credentials that can no longer be used (past their end)."""
        gone = self.list_credentials(principal, expired=True)
        if gone and not dry_run:
            decision = self._admin_decision(principal)
            keys = [(g.username, g.name) for g in gone]
            with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=None) as act:
                act.detail = f"expired {len(gone)} credential(s)"
                act.session.execute(
                    delete(CredentialRow).where(
                        tuple_(CredentialRow.username, CredentialRow.name).in_(keys)
                    )
                )
        return gone

    def rotate_master_key(self, principal: Principal) -> int:
        """Re-wrap every master-wrapped key under a new current master key.

        The keyring file gets its new key first: should the re-wrap then fail (or its
        event not be written), every key still opens under the key it was wrapped with.
        """
        decision = self._admin_decision(principal)
        self.keyring.rotate()
        count = 0
        with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=None) as act:
            for row in act.session.scalars(
                select(CredentialRow).where(CredentialRow.master_key_id.is_not(None))
            ):
                updated = rewrap(
                    sealed_key_of(row), self.keyring, aad=credential_aad(row.username, row.name)
                )
                row.sealed_key = updated.to_bytes()
                row.master_key_id = updated.master_key_id
                count += 1
            act.detail = f"rotate the master key: {count} key(s) re-wrapped"
        return count
