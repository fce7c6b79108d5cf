"""The gate: every operation of the core is decided, performed and audited here.

    decision = gate.decide(principal, request, facts, name=...)   # a refusal is audited, raised
    with gate.act(principal, decision, owner=..., name=...) as act:
        act.session.execute(...)                                  # the effect
        act.detail = "..."                                        # what the event says
    # the effect and its allow event committed together, or neither (I6)

A read has no effect to commit: `gate.read` decides and records the allow
before the data is returned, so a failed audit write returns nothing. An
issuance (a signature, no row) records its allow with the serial once signed
(`gate.allow`): the proxy is handed out only if its event was written.

Effects whose writer is not this database (a task queue backend) take the
allow event with them instead (`gate.event`, passed as `decided=`), and
commit it with their change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from .. import policy
from ..audit import AuditEvent, AuditLog
from ..config import PolicyConfig
from ..metrics import DECISIONS, ISSUED
from ..policy import Bans, CredentialFacts, Decision, Operation, current_tally
from ..principal import Principal
from ..store.db import write_transaction
from .errors import BadRequest, Denied, NotFound, RepositoryError

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Refusals that are not "you may not": the thing is missing, or the request cannot be.
_NOT_FOUND = frozenset({"credential.not_found", "task.not_found"})
_BAD_REQUEST = frozenset(
    {"task.credential_missing", "auth.no_passphrase", "admin.already_banned", "contact.bad_address"}
)


def refusal(decision: Decision) -> RepositoryError:
    """The error an edge shows for a refused decision (its message and rule)."""
    if decision.rule in _NOT_FOUND:
        return NotFound(decision.reason, decision.rule)
    if decision.rule in _BAD_REQUEST:
        return BadRequest(decision.reason, decision.rule)
    return Denied(decision.reason, decision.rule)


def with_reason(detail: str | None, decision: Decision) -> str | None:
    """An audit detail that also gives a denial's reason."""
    return f"{detail}: {decision.reason}" if detail and not decision.allowed else detail


@dataclass
class Act:
    """An effect in progress inside `Gate.act`: its transaction, and what its event will say."""

    session: Session
    owner: str | None
    name: str | None
    detail: str | None = None
    serial: int | None = None
    lifetime: dt.timedelta | None = None
    fqans: Sequence[str] = field(default_factory=tuple)

    @property
    def conn(self) -> Connection:
        return self.session.connection()


class Gate:
    """Decide with `policy.decide`, act, audit: one path for every operation (I6)."""

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        config: PolicyConfig | Callable[[], PolicyConfig],
        bans: Callable[[], Bans],
        clock: Clock = system_clock,
    ) -> None:
        self.engine = engine
        self.audit = audit
        # The policy configuration, or where to read it at each decision (the repository's
        # current config: tests and `proxyd admin` may replace it on a live repository).
        self._config = config if callable(config) else (lambda: config)
        self.clock = clock
        self._bans = bans

    # --- events -----------------------------------------------------------------------------

    def event(
        self,
        principal: Principal,
        op: Operation,
        decision: Decision,
        *,
        owner: str | None,
        name: str | None,
        serial: int | None = None,
        lifetime: dt.timedelta | None = None,
        fqans: Sequence[str] = (),
        detail: str | None = None,
    ) -> AuditEvent:
        """The audit event of one decision (not yet written)."""
        return AuditEvent(
            time=self.clock(),
            actor_dn=principal.identity,
            actor_kind=principal.kind.value,
            peer=principal.address or "",
            operation=op.value,
            rule=decision.rule,
            decision="allow" if decision.allowed else "deny",
            owner_dn=owner,
            credential_name=name,
            serial=str(serial) if serial is not None else None,
            lifetime_s=int(lifetime.total_seconds()) if lifetime is not None else None,
            fqans=tuple(fqans),
            detail=(detail or (None if decision.allowed else decision.reason) or None),
        )

    def record(
        self,
        principal: Principal,
        op: Operation,
        decision: Decision,
        *,
        owner: str | None,
        name: str | None,
        serial: int | None = None,
        lifetime: dt.timedelta | None = None,
        fqans: Sequence[str] = (),
        detail: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Write one decision's event; raises AuditWriteError, failing the request (I6).

        `conn`: the write transaction of the effect decided, so that both commit or neither.
        """
        event = self.event(
            principal,
            op,
            decision,
            owner=owner,
            name=name,
            serial=serial,
            lifetime=lifetime,
            fqans=fqans,
            detail=detail,
        )
        self.audit.append(event, conn=conn)
        self.counted(event)

    @staticmethod
    def counted(event: AuditEvent) -> None:
        """Count a written event in the decision (and issuance) metrics."""
        DECISIONS.labels(event.operation, event.decision, event.rule).inc()
        if event.serial is not None:
            kind = "limited" if event.detail and "limited" in event.detail else "full"
            ISSUED.labels(event.operation, kind).inc()

    def refuse(
        self,
        principal: Principal,
        op: Operation,
        decision: Decision,
        *,
        owner: str | None,
        name: str | None,
        fqans: Sequence[str] = (),
        detail: str | None = None,
        after_decision: bool = False,
    ) -> RepositoryError:
        """Record a refusal; the error to raise.

        A refusal the core makes on its own (authentication, a lock-out, no certificate to
        bind an AC to) is a decision in itself and counted as one (`policy.current_tally`),
        so that every decision has exactly one row. `after_decision`: this refusal ends a
        decision `policy.decide` made (and counted) already, which had not been recorded.
        """
        if not after_decision:
            tally = current_tally.get()
            if tally is not None:
                tally.count += 1
        self.record(principal, op, decision, owner=owner, name=name, fqans=fqans, detail=detail)
        return refusal(decision)

    # --- decisions --------------------------------------------------------------------------

    def decide(
        self,
        principal: Principal,
        request: policy.Request,
        facts: CredentialFacts | None,
        *,
        name: str | None,
        detail: str | None = None,
        bans: Bans | None = None,
    ) -> Decision:
        """`policy.decide`; a refusal is recorded and raised. The allow is recorded by the
        effect it allows (`act`, `allow`, or the `decided` events of a queue change)."""
        if self.clock is not system_clock:  # the time policy judges by is the core's
            request = dataclasses.replace(request, now=self.clock())
        decision = policy.decide(
            request, principal, facts, self._config(), bans if bans is not None else self._bans()
        )
        if not decision.allowed:
            owner = facts.owner if facts is not None else request.owner
            raise self.refuse(
                principal,
                request.operation,
                decision,
                owner=owner,
                name=name,
                fqans=request.fqans,
                detail=with_reason(detail, decision),
                after_decision=True,
            )
        return decision

    def read(
        self,
        principal: Principal,
        request: policy.Request,
        facts: CredentialFacts | None = None,
        *,
        name: str | None = None,
        detail: str | None = None,
        bans: Bans | None = None,
    ) -> Decision:
        """A read: decided, and its allow recorded before anything is returned."""
        decision = self.decide(principal, request, facts, name=name, detail=detail, bans=bans)
        owner = facts.owner if facts is not None else request.owner
        self.record(
            principal,
            request.operation,
            decision,
            owner=owner,
            name=name,
            fqans=request.fqans,
            detail=detail,
        )
        return decision

    # An allow whose effect writes nothing here (a signature): the caller hands the result
    # out only after `allow` returned, so nothing leaves without its event.
    allow = record

    @contextmanager
    def act(
        self,
        principal: Principal,
        op: Operation,
        decision: Decision,
        *,
        owner: str | None,
        name: str | None,
        detail: str | None = None,
    ) -> Iterator[Act]:
        """Perform an allowed effect in a write transaction that also appends its allow event.

        Both commit, or neither: a failed audit write rolls the effect back. A
        `RepositoryError` raised by the effect (it found the world changed since the
        decision: a concurrent store, nothing to unban) rolls it back too, and is recorded
        as the refusal it is, with its rule.
        """
        act = None
        try:
            with (
                write_transaction(self.engine) as conn,
                Session(bind=conn, expire_on_commit=False) as session,
            ):
                act = Act(session, owner, name, detail)
                yield act
                session.flush()
                self.record(
                    principal,
                    op,
                    decision,
                    owner=act.owner,
                    name=act.name,
                    serial=act.serial,
                    lifetime=act.lifetime,
                    fqans=act.fqans,
                    detail=act.detail,
                    conn=conn,
                )
        except RepositoryError as exc:
            lost = Decision(False, exc.rule or "request.refused", exc.message)
            self.record(
                principal,
                op,
                lost,
                owner=act.owner if act is not None else owner,
                name=act.name if act is not None else name,
                detail=exc.message[:500],
            )
            raise
