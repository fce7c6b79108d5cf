"""VO membership of proxyd's own attribute authority: add, remove, grant, revoke, suspend,
restore, list, seed.

Members live in the database (`proxyd.store.members`) and the attribute
authorities read them on every issuance, so a change applies to the next
request in every worker and instance, without a restart. Each change is
decided as an administrative operation of its own, `vo_members` (rule
`vo_members.admins`, or `admin.local_operator`), and commits with its audit event
(I6); the event's owner is the member's DN and its FQANs what the member
holds after the change, so an auditor finds a member's history by owner.
A suspended member (suspend, with a reason, as VOMS-Admin and IAM do) keeps
what it holds but gets no AC (policy's `voms.member_suspended`) until restored.
The policy request names no owner: a banned DN can still be removed. Lists
are audited reads.

The `[voms.members]` TOML tables are seed data: the first start that finds a
VO not yet seeded copies its table in (one audited event); from then
on the database alone says who is a member, whatever the TOML says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from voms_ext import FqanError, parse_fqan

from .. import names, policy
from ..config import VoConfig
from ..policy import Decision, Operation
from ..principal import Principal, local_operator
from ..store.db import write_transaction
from ..store.members import (
    Member,
    add_member,
    list_members,
    member_fqans,
    member_suspension,
    remove_member,
    restore_member,
    seed_vo,
    seeded_vos,
    set_fqans,
    suspend_member,
)
from .base import CoreBase
from .errors import BadRequest, NotFound
from .gate import Clock, Gate

__all__ = [
    "MAX_SUSPENSION_REASON",
    "Member",
    "VoMembership",
    "normalise_fqans",
    "seed_configured_members",
]

MAX_SUSPENSION_REASON = 200
# Shown to the member in every refusal (voms-proxy-init prints it) and to operators in lists.
SUSPENSION_REASON = names.Kind(
    "suspension_reason",
    f"a suspension reason is 1 to {MAX_SUSPENSION_REASON} printable characters "
    "(no control or format characters), not only blanks",
    1,
    MAX_SUSPENSION_REASON,
)


def _check_reason(reason: str) -> str:
    try:
        names.check(SUSPENSION_REASON, reason, "suspension reason")
    except names.InvalidField as exc:
        raise BadRequest(exc.message, "vo.bad_reason") from None
    if not reason.strip():
        raise BadRequest(f"suspension reason refused: {SUSPENSION_REASON.rule}", "vo.bad_reason")
    return reason


def normalise_fqans(vo: str, fqans: Iterable[str]) -> tuple[str, ...]:
    """`fqans` of `vo` normalised (`/vo/Role=NULL` is `/vo`), in order, each once; as the
    `[voms.members]` table has them, nothing is added. A ValueError names the FQAN that
    is malformed or not of `vo`.
    """
    out: list[str] = []
    for text in fqans:
        try:
            fqan = parse_fqan(text)
        except FqanError as exc:
            raise ValueError(str(exc)) from None
        if fqan.vo != vo:
            raise ValueError(f"FQAN {names.shown(text)} is not in VO {vo}")
        if str(fqan) not in out:
            out.append(str(fqan))
    return tuple(out)


def _check_dn(dn: str) -> str:
    try:
        names.check(names.DN_PATTERN, dn, "member DN")
    except names.InvalidField as exc:
        raise BadRequest(exc.message, "vo.bad_dn") from None
    if not dn.startswith("/") or "*" in dn or "?" in dn:
        raise BadRequest(
            f"member DN {names.shown(dn)} refused: a member is one DN in /-separated form "
            "(as openssl x509 -subject -nameopt compat prints it), not a pattern",
            "vo.bad_dn",
        )
    return dn


class VoMembership(CoreBase):
    """The operator's VO membership operations."""

    def _vo_of(self, vo: str) -> str:
        if vo not in self.authorities:
            known = ", ".join(sorted(self.authorities)) or "none"
            raise BadRequest(
                f"VO {names.shown(vo)} is not served by this proxyd (served: {known})",
                "voms.unknown_vo",
            )
        return vo

    def _fqans_of(self, vo: str, fqans: Iterable[str]) -> tuple[str, ...]:
        try:
            return normalise_fqans(vo, fqans)
        except ValueError as exc:
            raise BadRequest(str(exc), "vo.bad_fqan") from None

    def add_member(
        self, principal: Principal, vo: str, dn: str, fqans: Sequence[str] = ()
    ) -> tuple[str, ...]:
        """Make `dn` a member of `vo` holding `fqans` (none given: the root group `/vo`)."""
        decision = self.gate.decide(
            principal, policy.Request(Operation.VO_MEMBERS), None, name=None
        )
        with self.gate.act(principal, Operation.VO_MEMBERS, decision, owner=dn, name=None) as act:
            act.detail = f"vo {vo[:100]} add-member"
            held = self._fqans_of(self._vo_of(vo), fqans or (f"/{vo}",))
            _check_dn(dn)
            act.fqans = held
            if not add_member(act.conn, vo, dn, held, principal.identity, self.clock()):
                raise BadRequest(
                    f"{names.shown(dn)} is a member of VO {vo} already "
                    "(grant and revoke change what it holds)",
                    "vo.already_member",
                )
        return held

    def remove_member(self, principal: Principal, vo: str, dn: str) -> tuple[str, ...]:
        """Remove `dn` from `vo`; the FQANs it held. NotFound (`vo.not_member`) if none."""
        decision = self.gate.decide(
            principal, policy.Request(Operation.VO_MEMBERS), None, name=None
        )
        with self.gate.act(principal, Operation.VO_MEMBERS, decision, owner=dn, name=None) as act:
            act.detail = f"vo {vo[:100]} remove-member"
            self._vo_of(vo)
            held = remove_member(act.conn, vo, dn)
            if held is None:
                raise NotFound(f"{names.shown(dn)} is not a member of VO {vo}", "vo.not_member")
            act.detail = f"vo {vo} remove-member (held {', '.join(held)})"[:500]
        return held

    def grant(self, principal: Principal, vo: str, dn: str, fqan: str) -> tuple[str, ...]:
        """Let member `dn` of `vo` hold `fqan` (a group, or a group and role); what it holds."""
        return self._change(principal, vo, dn, fqan, grant=True)

    def revoke(self, principal: Principal, vo: str, dn: str, fqan: str) -> tuple[str, ...]:
        """Take `fqan` from member `dn` of `vo` (it stays a member); what it holds."""
        return self._change(principal, vo, dn, fqan, grant=False)

    def _change(
        self, principal: Principal, vo: str, dn: str, fqan: str, *, grant: bool
    ) -> tuple[str, ...]:
        verb = "grant" if grant else "revoke"
        decision = self.gate.decide(
            principal, policy.Request(Operation.VO_MEMBERS), None, name=None
        )
        with self.gate.act(principal, Operation.VO_MEMBERS, decision, owner=dn, name=None) as act:
            act.detail = f"vo {vo[:100]} {verb} {names.shown(fqan)}"
            self._vo_of(vo)
            wanted = self._fqans_of(vo, [fqan])[-1]
            held = member_fqans(act.conn, vo, dn, for_update=True)
            if held is None:
                raise NotFound(f"{names.shown(dn)} is not a member of VO {vo}", "vo.not_member")
            if grant:
                if wanted in held:
                    raise BadRequest(f"{dn} holds {wanted} in VO {vo} already", "vo.fqan_held")
                after = (*held, wanted)
            else:
                if wanted not in held:
                    raise NotFound(f"{dn} does not hold {wanted} in VO {vo}", "vo.fqan_not_held")
                after = tuple(f for f in held if f != wanted)
            set_fqans(act.conn, vo, dn, after, self.clock())
            act.fqans = after
        return after

    def suspend(self, principal: Principal, vo: str, dn: str, reason: str) -> str:
        """Suspend member `dn` of `vo` for `reason` (it keeps what it holds but gets no AC);
        suspended already: the reason is replaced. The reason. NotFound if it is no member."""
        decision = self.gate.decide(
            principal, policy.Request(Operation.VO_MEMBERS), None, name=None
        )
        with self.gate.act(principal, Operation.VO_MEMBERS, decision, owner=dn, name=None) as act:
            act.detail = f"vo {vo[:100]} suspend"
            self._vo_of(vo)
            _check_reason(reason)
            before = member_suspension(act.conn, vo, dn, for_update=True)
            if before is None:
                raise NotFound(f"{names.shown(dn)} is not a member of VO {vo}", "vo.not_member")
            suspend_member(act.conn, vo, dn, reason, self.clock())
            again = " (again; it was: " + names.escape(before[0]) + ")" if before[0] else ""
            act.detail = f"vo {vo} suspend: {names.escape(reason)}{again}"[:500]
        return reason

    def restore(self, principal: Principal, vo: str, dn: str) -> str:
        """End the suspension of member `dn` of `vo`; the reason it was suspended for.
        NotFound if it is no member (`vo.not_member`) or not suspended (`vo.not_suspended`)."""
        decision = self.gate.decide(
            principal, policy.Request(Operation.VO_MEMBERS), None, name=None
        )
        with self.gate.act(principal, Operation.VO_MEMBERS, decision, owner=dn, name=None) as act:
            act.detail = f"vo {vo[:100]} restore"
            self._vo_of(vo)
            before = member_suspension(act.conn, vo, dn, for_update=True)
            if before is None:
                raise NotFound(f"{names.shown(dn)} is not a member of VO {vo}", "vo.not_member")
            if before[0] is None or not restore_member(act.conn, vo, dn, self.clock()):
                raise NotFound(
                    f"{names.shown(dn)} is not suspended in VO {vo} (nothing to restore)",
                    "vo.not_suspended",
                )
            act.detail = f"vo {vo} restore (was suspended: {names.escape(before[0])})"[:500]
        return before[0]

    def list_members(self, principal: Principal, vo: str | None = None) -> list[Member]:
        """The members (of `vo`, or of every VO served), by VO and DN."""
        detail = f"list members of VO {vo[:100]}" if vo else "list VO members"
        self.gate.read(principal, policy.Request(Operation.VO_MEMBERS), detail=detail)
        if vo is not None:
            self._vo_of(vo)
        with self.engine.connect() as conn:
            return list_members(conn, vo)


def seed_configured_members(gate: Gate, vos: Sequence[VoConfig], clock: Clock) -> dict[str, int]:
    """Copy the `[voms.members]` table of each VO not seeded before into the database.

    The server applying its own configuration at start, as the local operator, not a
    request: no policy question, but a change, recorded with it as `vo.seed` (one event
    for all the VOs seeded; I6). A VO seeded before is left alone, whatever its TOML
    table says now. The VOs seeded now and how many members each got.
    """
    with gate.engine.connect() as conn:
        pending = [v for v in vos if v.vo not in seeded_vos(conn)]
    if not pending:
        return {}
    operator = local_operator()
    decision = Decision(True, "vo.seed", "the configuration's [voms.members]", limited=False)
    done: dict[str, int] = {}
    with write_transaction(gate.engine) as conn:
        for vo in pending:
            members = {dn: normalise_fqans(vo.vo, f) for dn, f in vo.members.items()}
            added = seed_vo(conn, vo.vo, members, operator.identity, clock())
            if added is not None:  # None: another instance or worker seeded it meanwhile
                done[vo.vo] = added
        if done:  # its event commits with the rows, or neither does (I6)
            seeded = ", ".join(f"{vo} ({n} member(s))" for vo, n in done.items())
            gate.record(
                operator,
                Operation.VO_MEMBERS,
                decision,
                owner=None,
                name=None,
                detail=f"vo seed from [voms.members]: {seeded}"[:2000],
                conn=conn,
            )
    return done
