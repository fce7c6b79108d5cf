"""Issuing proxies and attribute certificates: GET (retrieve, renew), ACs for proxy-init, payload proxies."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)

from voms_ext import (
    AttributeCertificate,
    ValidationResult,
)

from .. import policy
from ..issuer import (
    AttributeAuthority,
    IssuedProxy,
    IssueError,
    VomsRequest,
    authorities_for,
    end_entity,
    issue_proxy,
    merge_voms_requests,
)
from ..policy import AuthMethod, Bans, Decision, Operation
from ..principal import (
    IdentityRefused,
    Principal,
)
from ..principal import classify as classify_principal
from ..sealing import (
    dummy_unseal_cost,
)

if TYPE_CHECKING:
    from ..taskqueue.base import TaskQueue
    from ..taskqueue.model import TaskSpec
from ..vomsaa.upstream import UpstreamAuthority, UpstreamRefusal
from .checks import (
    check_public_key,
)
from .errors import BadRequest
from .multiple import CredentialChoice
from .values import DEFAULT_NAME, Retrieval, StoredCredential, TrialKey

AcPlan = list[tuple[AttributeAuthority | UpstreamAuthority, tuple[str, ...], tuple[str, ...]]]


def _fqans(plan: AcPlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The FQANs a plan asks for explicitly, and those the owner holds."""
    return (
        tuple(f for _, explicit, _ in plan for f in explicit),
        tuple(f for _, _, held in plan for f in held),
    )


def _suspended(plan: AcPlan, owner: str) -> tuple[str, str] | None:
    """(VO, reason) for the first local VO of `plan` that has `owner` suspended: policy's
    voms.member_suspended. Read only where the owner holds nothing (a suspended member
    holds nothing), so a member in good standing costs no read more."""
    for aa, _, held in plan:
        if isinstance(aa, AttributeAuthority) and not held:
            reason = aa.suspension(owner)
            if reason is not None:
                return aa.vo, reason
    return None


class Issuance(CredentialChoice):
    """Proxies and attribute certificates issued from stored credentials."""

    def retrieve(
        self,
        principal: Principal,
        username: str,
        csr: x509.CertificateSigningRequest,
        *,
        name: str = DEFAULT_NAME,
        passphrase: str | None = None,
        lifetime: dt.timedelta | None = None,
        voms: Sequence[VomsRequest] = (),
        want_full: bool = False,
        renewal_proof: ValidationResult | None = None,
    ) -> IssuedProxy:
        """GET in one call: authorize, then issue a proxy for the CSR's key."""
        check_public_key(csr)
        retrieval = self.authorize_retrieval(
            principal,
            username,
            name=name,
            passphrase=passphrase,
            lifetime=lifetime,
            voms=voms,
            want_full=want_full,
            renewal_proof=renewal_proof,
        )
        return self.complete_retrieval(retrieval, csr, csr_checked=True)

    def authorize_retrieval(
        self,
        principal: Principal,
        username: str,
        *,
        name: str = DEFAULT_NAME,
        passphrase: str | None = None,
        lifetime: dt.timedelta | None = None,
        voms: Sequence[VomsRequest] = (),
        want_full: bool = False,
        renewal_proof: ValidationResult | None = None,
        any_name: bool = False,
        vomses: Sequence[str] = (),
    ) -> Retrieval:
        """The first half of GET: policy, authentication, unsealing. Denials are audited here.

        Authentication is the passphrase, or the peer's certificate (trusted
        retrieval), or a renewal proof (a chain of the owner that signed the
        server's challenge). MyProxy answers this before the client sends
        its certificate request, hence the two halves.

        `any_name`: the client named no credential. With `[policy]
        check_multiple_credentials`, the first of the user's credentials it may
        use is taken (`_usable_name`); the audit shows the decision on that one
        only, or, when none is usable, the refusal of the default credential.

        `vomses`: the client's VOMSES= lines; they select among an upstream VO's configured
        servers, never add one (vomsaa.vomses.select).
        """
        return self._authorize(
            principal,
            username,
            name,
            passphrase,
            lifetime,
            voms,
            want_full,
            renewal_proof,
            any_name,
            vomses,
            looked=None,
        )

    def _authorize(
        self,
        principal: Principal,
        username: str,
        name: str,
        passphrase: str | None,
        lifetime: dt.timedelta | None,
        voms: Sequence[VomsRequest],
        want_full: bool,
        renewal_proof: ValidationResult | None,
        any_name: bool,
        vomses: Sequence[str],
        *,
        looked: tuple[StoredCredential | None, Bans] | None,
    ) -> Retrieval:
        """authorize_retrieval; `looked`: the credential `name` and the bans, read already."""
        chosen: tuple[str, int, TrialKey] | None = None
        if any_name and self.config.policy.check_multiple_credentials:
            chosen = self._usable_name(
                principal,
                username,
                passphrase,
                lifetime,
                want_full,
                renewal_proof,
                lambda owner: _fqans(self._plan_acs(owner, voms)),
            )
            if chosen is not None and chosen[0] != name:
                name, looked = chosen[0], None
        retrieval = self._authorize_one(
            principal,
            username,
            name,
            passphrase,
            lifetime,
            voms,
            want_full,
            renewal_proof,
            vomses,
            looked=looked,
            trial=None if chosen is None else chosen[2],
        )
        if chosen is None:
            return retrieval
        kind = "limited" if retrieval.decision.limited else "full"
        detail = f"{kind}; check_multiple_credentials took {name!r} of {chosen[1]} tried"
        return dataclasses.replace(retrieval, detail=detail[:500])

    def _authorize_one(
        self,
        principal: Principal,
        username: str,
        name: str,
        passphrase: str | None,
        lifetime: dt.timedelta | None,
        voms: Sequence[VomsRequest],
        want_full: bool,
        renewal_proof: ValidationResult | None,
        vomses: Sequence[str] = (),
        *,
        looked: tuple[StoredCredential | None, Bans] | None = None,
        trial: TrialKey | None = None,
    ) -> Retrieval:
        row, bans = looked if looked is not None else self._lookup(username, name)
        if renewal_proof is not None:
            op, auth = Operation.RENEW, AuthMethod.NONE
        elif passphrase:
            op, auth = Operation.RETRIEVE, AuthMethod.PASSPHRASE
        else:
            op, auth = Operation.RETRIEVE, AuthMethod.CERTIFICATE
        if auth is AuthMethod.PASSPHRASE:
            self._refuse_if_locked(
                principal, op, username, name, row.owner_dn if row else None, after_decision=False
            )
        if row is None:
            if auth is AuthMethod.PASSPHRASE:
                # Spend what a wrong passphrase costs, so timing does not reveal existence;
                # and count it, so guessing usernames is slowed like guessing passphrases.
                dummy_unseal_cost(**self._argon)
                self._count_failure(principal, username, name)
            raise self._not_found(principal, op, username, name, auth, bans=bans)
        facts, chain = self._facts_in_use(row)
        ac_plan = self._plan_acs(row.owner_dn, voms)
        proof = None
        if renewal_proof is not None:
            try:
                proof = classify_principal(renewal_proof, self.config.policy, principal.address)
            except IdentityRefused as exc:
                refusal = Decision(False, "auth.independent_proxy", f"the renewal proof: {exc}")
                raise self.gate.refuse(
                    principal, op, refusal, owner=row.owner_dn, name=name
                ) from None
        request = policy.Request(
            op,
            owner=row.owner_dn,
            name=name,
            auth=auth,
            lifetime=lifetime,
            want_full=want_full,
            fqans=tuple(f for _, explicit, _ in ac_plan for f in explicit),
            held_fqans=tuple(f for _, _, held in ac_plan for f in held),
            proof=proof,
            suspended=_suspended(ac_plan, row.owner_dn),
        )
        decision = self.gate.decide(principal, request, facts, name=name, bans=bans)
        key = self._open_key(
            principal, op, row, passphrase if auth is AuthMethod.PASSPHRASE else None, trial
        )
        upstream = self._upstream_acs(
            principal, op, row.owner_dn, name, chain, key, ac_plan, decision, vomses
        )
        return Retrieval(
            principal,
            op,
            decision,
            row.owner_dn,
            name,
            chain,
            key,
            tuple(ac_plan),
            upstream_acs=upstream,
        )

    def complete_retrieval(
        self,
        retrieval: Retrieval,
        csr: x509.CertificateSigningRequest,
        *,
        csr_checked: bool = False,
    ) -> IssuedProxy:
        """The second half of GET: sign a proxy (and ACs) for the CSR's key, and audit it with its serial.

        `csr_checked`: `check_public_key(csr)` passed already (`retrieve` checks before deciding).
        """
        r = retrieval
        try:
            if not csr_checked:
                check_public_key(csr)
        except BadRequest as exc:
            self.gate.record(
                r.principal,
                r.op,
                Decision(False, "issue.bad_request", exc.message),
                owner=r.owner,
                name=r.name,
            )
            raise
        decision = r.decision
        assert decision.lifetime is not None
        now = self.clock()
        try:
            holder = end_entity(r.chain)
            fetched = iter(r.upstream_acs)  # the VO's own servers' ACs, in plan order
            acs = [
                aa.issue(
                    holder, aa.default_fqans(r.owner, explicit, held), now + decision.lifetime, now
                )
                if isinstance(aa, AttributeAuthority)
                else next(fetched)
                for aa, explicit, held in r.ac_plan
            ]
            issued = issue_proxy(
                r.chain,
                # Stored keys are RSA or EC (checked when stored), as are CSR keys
                # (check_public_key).
                cast(CertificateIssuerPrivateKeyTypes, r.key),
                cast(CertificateIssuerPublicKeyTypes, csr.public_key()),
                limited=decision.limited,
                lifetime=decision.lifetime,
                acs=acs,
                now=now,
            )
        except IssueError as exc:
            self.gate.record(
                r.principal,
                r.op,
                Decision(False, "issue.failed", str(exc)),
                owner=r.owner,
                name=r.name,
            )
            raise BadRequest(str(exc), "issue.failed") from None
        proxy = issued.proxy
        self.gate.allow(
            r.principal,
            r.op,
            decision,
            owner=r.owner,
            name=r.name,
            serial=proxy.serial_number,
            lifetime=proxy.not_valid_after_utc - now,
            fqans=tuple(f for ac in issued.acs for f in ac.fqans),
            detail=r.detail or ("limited" if decision.limited else "full"),
        )
        return issued

    def abandon_retrieval(self, retrieval: Retrieval, reason: str) -> None:
        """Audit an authorized GET that ended before anything was issued (client went away)."""
        r = retrieval
        self.gate.record(
            r.principal,
            r.op,
            r.decision,
            owner=r.owner,
            name=r.name,
            detail=f"nothing issued: {reason}"[:500],
        )

    def _plan_acs(self, owner: str, voms: Sequence[VomsRequest]) -> AcPlan:
        """(authority, explicitly requested FQANs, FQANs the owner holds) per requested VO.

        For a VO whose ACs come from its own VOMS server, proxyd does not know what the owner
        holds: what is asked for is passed as held (so policy's voms.fqan_not_held applies to
        local AAs only) and the VO's server decides (voms.upstream_* refusals).
        """
        plan: AcPlan = []
        for request in merge_voms_requests(voms):
            upstream = self.upstreams.get(request.vo)
            if upstream is not None:
                asked = request.fqans or (f"/{request.vo}",)
                plan.append((upstream, asked, asked))
                continue
            try:
                aa = authorities_for(self.authorities, request.vo)
            except IssueError as exc:
                raise BadRequest(str(exc), "voms.unknown_vo") from None
            held = aa.held_fqans(owner)
            explicit = request.fqans or ((f"/{request.vo}",) if not held else ())
            plan.append((aa, explicit, held))
        return plan

    def issue_acs(
        self, principal: Principal, voms: Sequence[VomsRequest], lifetime: dt.timedelta
    ) -> list[AttributeCertificate]:
        """ACs bound to the caller's own end-entity certificate, for FQANs it holds."""
        holder = principal.end_entity
        if holder is None or principal.is_anonymous:
            # An authentication fact, not a policy question: there is nothing to bind an AC to.
            raise self.gate.refuse(
                principal,
                Operation.ISSUE_AC,
                Decision(
                    False, "voms.not_member", "attribute certificates need a client certificate"
                ),
                owner=None,
                name=None,
            )
        acs = []
        now = self.clock()
        for aa, explicit, held in self._plan_acs(principal.identity, voms):
            if isinstance(aa, UpstreamAuthority):
                # proxyd holds no key of the caller to ask the VO's server with.
                raise self.gate.refuse(
                    principal,
                    Operation.ISSUE_AC,
                    Decision(
                        False,
                        "voms.unknown_vo",
                        f"VO {aa.vo}'s ACs come from its own VOMS server; ask it directly "
                        "(voms-proxy-init --voms), or retrieve a proxy from proxyd with the VO",
                    ),
                    owner=principal.identity,
                    name=None,
                )
            request = policy.Request(
                Operation.ISSUE_AC,
                owner=principal.identity,
                fqans=explicit or aa.default_fqans(principal.identity, held=held),
                held_fqans=held,
                lifetime=lifetime,
                suspended=_suspended([(aa, explicit, held)], principal.identity),
            )
            decision = self.gate.decide(principal, request, None, name=None)
            fqans = aa.default_fqans(principal.identity, explicit, held)
            ac = aa.issue(holder, fqans, now + min(lifetime, aa.config.max_lifetime), now)
            self.gate.allow(
                principal,
                Operation.ISSUE_AC,
                decision,
                owner=principal.identity,
                name=None,
                lifetime=ac.not_after - now,
                fqans=ac.fqans,
                detail=f"AC serial {ac.serial_number}",
            )
            acs.append(ac)
        return acs

    def _payload_decision(
        self,
        principal: Principal,
        op: Operation,
        task_id: int,
        queue: TaskQueue,
        lifetime: dt.timedelta | None,
    ) -> tuple[TaskSpec, AcPlan, StoredCredential, Decision]:
        """Decide a payload proxy's or token's issuance (`op`) for the pilot asking: the task,
        its AC plan, its stored credential and the allow (a refusal is audited and raised).

        Policy decides with the queue's assignment (which pilot, whether it is live, the
        task's wall time left) and the facts of the task's stored credential; `lifetime` is
        what is asked besides (the assignment's time left caps it in any case).
        """
        task = queue.get(task_id)
        if task is None:
            # Decided like any other: the invariants first, then "not assigned" (there is no
            # assignment of a task that does not exist).
            self.gate.decide(
                principal,
                policy.Request(op),
                None,
                name=None,
                detail=f"task {task_id}: no such task",
            )
            raise AssertionError("policy allowed a payload of no task")  # pragma: no cover
        spec = task.spec
        try:
            plan = self._plan_acs(spec.owner, [VomsRequest(spec.vo, spec.fqans)])
        except BadRequest as exc:
            self.gate.refuse(
                principal,
                op,
                Decision(False, exc.rule or "voms.unknown_vo", exc.message),
                owner=spec.owner,
                name=spec.credential_name,
                detail=f"task {task_id}: {exc.message}",
            )
            raise
        row = self._find(spec.credential_username, spec.credential_name)
        request = policy.Request(
            op,
            owner=spec.owner,
            name=spec.credential_name,
            lifetime=lifetime,
            fqans=tuple(f for _, explicit, _ in plan for f in explicit),
            held_fqans=tuple(f for _, _, held in plan for f in held),
            assignment=queue.assignment(task_id),
        )
        facts = self._facts_in_use(row)[0] if row is not None else None
        decision = self.gate.decide(
            principal, request, facts, name=spec.credential_name, detail=f"task {task_id}"
        )
        assert row is not None  # policy refuses a task whose credential is missing
        return spec, plan, row, decision

    def payload_proxy(
        self,
        principal: Principal,
        task_id: int,
        csr: x509.CertificateSigningRequest,
        queue: TaskQueue,
    ) -> IssuedProxy:
        """A limited proxy of a task's owner, for the pilot the queue matched the task to (I2).

        Policy decides with the queue's assignment (which pilot, whether it
        is live, the task's wall time left) and the facts of the task's
        stored credential (`credential_username`, `credential_name`): only
        that pilot, only while the task is matched or running, never a
        pilot-owned credential. The proxy is always limited, carries a VOMS
        AC with the task's FQANs (normalised by TaskSpec) first, and lives
        no longer than the time left plus `payload_lifetime_margin`. Allow
        and deny are audited; the allow with the serial and "task <id>".
        """
        op = Operation.PAYLOAD_PROXY
        spec, plan, row, decision = self._payload_decision(principal, op, task_id, queue, None)
        decision = dataclasses.replace(decision, limited=True)  # I2, whatever policy may become
        chain = self._stored_chain(row.chain_pem)
        key = self._open_key(principal, op, row, None)
        upstream = self._upstream_acs(
            principal, op, row.owner_dn, spec.credential_name, chain, key, plan, decision
        )
        retrieval = Retrieval(
            principal,
            op,
            decision,
            row.owner_dn,
            spec.credential_name,
            chain,
            key,
            tuple(plan),
            # "limited" also tells the issuance metrics what kind of proxy this was.
            detail=f"task {task_id} (limited)",
            upstream_acs=upstream,
        )
        return self.complete_retrieval(retrieval, csr)

    def _upstream_acs(
        self,
        principal: Principal,
        op: Operation,
        owner: str,
        name: str,
        chain: Sequence[x509.Certificate],
        key: PrivateKeyTypes,
        plan: AcPlan,
        decision: Decision,
        vomses: Sequence[str] = (),
    ) -> tuple[AttributeCertificate, ...]:
        """The ACs of the plan's upstream VOs, from the VO's servers as the owner (no database
        transaction is open here). A refusal ends the allowed decision: audited, with the
        server's message and the voms.upstream_* rule."""
        if not any(isinstance(aa, UpstreamAuthority) for aa, _, _ in plan):
            return ()
        assert decision.lifetime is not None
        now = self.clock()
        acs = []
        for aa, asked, _ in plan:
            if not isinstance(aa, UpstreamAuthority):
                continue
            try:
                acs.append(aa.obtain(chain, key, asked, decision.lifetime, now, vomses))
            except UpstreamRefusal as exc:
                raise self.gate.refuse(
                    principal,
                    op,
                    Decision(False, exc.rule, f"VO {aa.vo}: {exc.message}"[:1000]),
                    owner=owner,
                    name=name,
                    after_decision=True,
                ) from None
        return tuple(acs)
