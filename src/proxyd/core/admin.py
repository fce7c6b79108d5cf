"""The operator's and the auditor's operations: bans, locks, inventory, expiry, key rotation, audit reads."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from .. import policy
from ..audit import StoredEvent, VerifyReport
from ..policy import Decision, Operation
from ..principal import (
    Principal,
)
from ..sealing import (
    rewrap,
)
from ..store.models import BanRow, CredentialRow

if TYPE_CHECKING:
    pass
from ..core.base import CoreBase
from ..core.checks import (
    check_lock_message,
)
from ..core.errors import BadRequest, NotFound, RepositoryError
from ..core.values import CredentialInfo, credential_aad, credential_info, sealed_key_of

log = logging.getLogger("proxyd.repository")


class Administration(CoreBase):
    def audit_events(self, principal: Principal, **filters: Any) -> list[StoredEvent]:
        self._decide(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        return self.audit.query(**filters)

    def authorize_metrics(self, principal: Principal) -> None:
        self._decide(principal, policy.Request(Operation.METRICS_READ), None, name=None)

    def audit_verify(self, principal: Principal) -> VerifyReport:
        self._decide(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        return self.audit.verify()

    def count_credentials(self) -> int:
        with self._session() as session:
            return int(session.scalar(select(func.count()).select_from(CredentialRow)) or 0)

    def _admin(
        self,
        principal: Principal,
        detail: str,
        *,
        owner: str | None = None,
        name: str | None = None,
    ) -> None:
        """Decide an administrative action and audit it with what was done."""
        decision = self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=name, record_allow=False
        )
        self._record(
            principal, Operation.ADMIN, decision, owner=owner, name=name, detail=detail[:500]
        )

    def ban(self, principal: Principal, kind: str, pattern: str, reason: str) -> None:
        if kind not in ("user", "host"):
            raise BadRequest("bans are of kind user or host (sites are masked in the task queue)")
        self._admin(principal, f"ban {kind} {pattern}: {reason}")
        try:
            with self._writing() as session:
                session.add(
                    BanRow(kind=kind, pattern=pattern, reason=reason, created_by=principal.identity)
                )
        except IntegrityError:
            raise BadRequest(f"{kind} {pattern!r} is already banned") from None

    def unban(self, principal: Principal, kind: str, pattern: str) -> bool:
        self._admin(principal, f"unban {kind} {pattern}")
        with self._writing() as session:
            result = session.execute(
                delete(BanRow).where(BanRow.kind == kind, BanRow.pattern == pattern)
            )
        return bool(getattr(result, "rowcount", 0))

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
        decision = self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=name, record_allow=False
        )
        now = dt.datetime.now(dt.UTC)
        done: list[CredentialInfo] = []
        with self._writing() as session:
            query = select(CredentialRow).where(CredentialRow.username == username)
            if name is not None:
                query = query.where(CredentialRow.name == name)
            rows = list(session.scalars(query.order_by(CredentialRow.name)))
            found = bool(rows)
            if message is None:
                rows = [r for r in rows if r.lock_message is not None]
            for row in rows:
                row.lock_message = message
                row.locked_by = principal.identity if message is not None else None
                row.locked_at = now if message is not None else None
                session.flush()
                self._record(
                    principal,
                    Operation.ADMIN,
                    decision,
                    owner=row.owner_dn,
                    name=row.name,
                    detail=f"{verb} {username}/{row.name}" + (f": {message}" if message else ""),
                    conn=session.connection(),
                )
                done.append(credential_info(row))
        if not done:
            where = f"{username[:100]}/{name[:100]}" if name is not None else username[:100]
            refusal: RepositoryError = (
                BadRequest(f"no credential of {where} is locked", "credential.not_locked")
                if found
                else NotFound(
                    f'No credentials exist for username "{where}".', "credential.not_found"
                )
            )
            self._record(
                principal,
                Operation.ADMIN,
                Decision(False, refusal.rule or "credential.not_found", refusal.message),
                owner=None,
                name=name,
                detail=f"{verb} {where}: {refusal.message}",
            )
            raise refusal
        return done

    def list_bans(self, principal: Principal) -> list[BanRow]:
        self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=None, record_allow=False
        )
        with self._session() as session:
            return list(session.scalars(select(BanRow).order_by(BanRow.kind, BanRow.pattern)))

    def list_credentials(
        self, principal: Principal, *, owner: str | None = None, expired: bool = False
    ) -> list[CredentialInfo]:
        """The inventory (never a key), for operators and the auditor dashboard."""
        self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=None, record_allow=False
        )
        query = select(CredentialRow).order_by(
            CredentialRow.owner_dn, CredentialRow.username, CredentialRow.name
        )
        if owner:
            query = query.where(CredentialRow.owner_dn == owner)
        if expired:
            query = query.where(CredentialRow.not_after < dt.datetime.now(dt.UTC))
        with self._session() as session:
            return [credential_info(r) for r in session.scalars(query)]

    def inventory(self, principal: Principal, *, limit: int = 1000) -> list[CredentialInfo]:
        """The read-only credential inventory for auditors (never a key), by owner, username, name.

        Decided and audited as `audit_read` (auditors), where `list_credentials`
        is an administrative read. At most `limit` credentials.
        """
        self._decide(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
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
            self._admin(principal, f"expired {len(gone)} credential(s)")
            with self._writing() as session:
                session.execute(
                    delete(CredentialRow).where(CredentialRow.not_after < dt.datetime.now(dt.UTC))
                )
        return gone

    def rotate_master_key(self, principal: Principal | None = None) -> int:
        """Re-wrap every master-wrapped key under a new current master key."""
        if principal is not None:
            self._admin(principal, "rotate the master key")
        self.keyring.rotate()
        count = 0
        with self._writing() as session:
            for row in session.scalars(
                select(CredentialRow).where(CredentialRow.master_key_id.is_not(None))
            ):
                updated = rewrap(
                    sealed_key_of(row), self.keyring, aad=credential_aad(row.username, row.name)
                )
                row.sealed_key = updated.to_bytes()
                row.master_key_id = updated.master_key_id
                count += 1
        return count
