"""Every authorization decision proxyd makes, as one pure function.

`decide(request, principal, credential, config, bans)` looks at nothing but
its arguments and returns a `Decision` whose `rule` is a stable name: it is
written to the audit log and shown in error messages, so operators can grep
for it. The invariants of ARCHITECTURE.md are enforced here first, in this
order, before any operation-specific rule: bans (I5), limited peers (I1),
pilots (I2); trusted retrievers get limited proxies (I3) and lifetimes only
shrink (I4). Nothing in the configuration can switch them off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import PolicyConfig
from ..patterns import any_dn_denied, any_matches, same_dn
from ..principal import Principal, PrincipalKind, is_pilot_fqan
from .model import (
    LOCAL_OPERATOR,
    MIN_LIFETIME,
    NO_BANS,
    AuthMethod,
    Bans,
    CredentialFacts,
    Decision,
    Operation,
    Request,
    current_tally,
)
from .tasks import (
    payload,
    task_cancel,
    task_match,
    task_read,
    task_submit,
    task_update,
)
from .tokens import token_exchange

# Operations that hand out, create or change a credential: never for limited peers (I1).
_DELEGATING = {
    Operation.STORE,
    Operation.RETRIEVE,
    Operation.RENEW,
    Operation.RETRIEVE_KEY,
    Operation.CHANGE_PASSPHRASE,
    Operation.DESTROY,
    Operation.PAYLOAD_PROXY,
    Operation.PAYLOAD_TOKEN,
    Operation.ISSUE_AC,
    Operation.TASK_SUBMIT,  # a task later gets a proxy of its owner
    Operation.TOKEN_EXCHANGE,
}
_ISSUING = {
    Operation.RETRIEVE,
    Operation.RENEW,
    Operation.PAYLOAD_PROXY,
    Operation.PAYLOAD_TOKEN,
    Operation.TOKEN_EXCHANGE,
}
# A bearer token's holder showed no certificate: it reads what its owner reads, and submits
# and manages tasks (whose payloads get limited proxies, no more than an exchange gives);
# it never stores, retrieves, renews, destroys or administers.
_BEARER_MAY = {
    Operation.INFO,
    Operation.TASK_SUBMIT,
    Operation.TASK_READ,
    Operation.TASK_CANCEL,
    Operation.TASK_RESCHEDULE,
    Operation.TOKEN_EXCHANGE,
}
_PAYLOAD = (Operation.PAYLOAD_PROXY, Operation.PAYLOAD_TOKEN)
# Storing or managing its own credential gives a pilot nothing new (a VO admin
# delegates the pilot credential with the pilot certificate); obtaining does.
_PILOT_MAY = {
    Operation.PAYLOAD_PROXY,
    Operation.PAYLOAD_TOKEN,
    Operation.TASK_MATCH,
    Operation.TASK_UPDATE,
    Operation.INFO,
    Operation.STORE,
    Operation.DESTROY,
    Operation.CHANGE_PASSPHRASE,
}


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, rule, reason)


def decide(
    request: Request,
    principal: Principal,
    credential: CredentialFacts | None,
    config: PolicyConfig,
    bans: Bans = NO_BANS,
) -> Decision:
    """Allow or deny `request` by `principal` on `credential`; see the module docstring."""
    tally = current_tally.get()
    if tally is not None:
        tally.count += 1
    op = request.operation
    who = principal.identity

    # I5: bans win, before anything else. Deny rules: any spelling of a banned DN matches.
    if any_dn_denied(config.banned_dns, who) or bans.matches(who):
        return _deny("ban.peer", f'"{who}" is banned')
    if request.proof is not None and (
        any_dn_denied(config.banned_dns, request.proof.identity)
        or bans.matches(request.proof.identity)
    ):
        return _deny("ban.peer", f'"{request.proof.identity}" is banned')
    owner = credential.owner if credential is not None else request.owner
    if owner is not None and (any_dn_denied(config.banned_dns, owner) or bans.matches(owner)):
        return _deny("ban.owner", f'the owner "{owner}" is banned')

    # I1: a limited proxy never delegates, stores, renews or retrieves.
    if principal.limited and op in _DELEGATING:
        return _deny(
            "limited.peer",
            f"a peer authenticated with a limited proxy may not {op.value.replace('_', ' ')}",
        )
    if request.proof is not None and request.proof.limited:
        return _deny("limited.peer", "a limited proxy cannot be used to renew a credential")
    if principal.bearer and op not in _BEARER_MAY:
        return _deny(
            "token.bearer_restricted",
            f"a bearer token may not {op.value.replace('_', ' ')}: use a certificate",
        )

    # The stored credential itself, on every operation that uses or replaces it: locked by
    # an operator, or no longer valid (revoked, expired, CA untrusted) -- as myproxy-server
    # checks the stored chain on every GET.
    if credential is not None and op in (
        Operation.RETRIEVE,
        Operation.RENEW,
        Operation.RETRIEVE_KEY,
        Operation.PAYLOAD_PROXY,
        Operation.PAYLOAD_TOKEN,
        Operation.ISSUE_AC,
        Operation.STORE,
        Operation.TOKEN_EXCHANGE,
    ):
        if credential.lock_message is not None:
            return _deny("credential.locked", f"credential locked: {credential.lock_message}")
        if credential.chain_verdict in ("revoked", "expired", "untrusted"):
            return _deny(f"credential.{credential.chain_verdict}", credential.chain_problem)

    # I2: pilots get limited payload proxies for assigned tasks, nothing else.
    pilot_decision = _pilot_rules(request, principal, credential, config)
    if pilot_decision is not None:
        return pilot_decision

    if principal.kind is PrincipalKind.ANONYMOUS and not (
        op is Operation.RETRIEVE and request.auth is AuthMethod.PASSPHRASE
    ):
        return _deny("anonymous.denied", f"{op.value} requires a client certificate")

    handler = _HANDLERS[op]
    decision = handler(request, principal, credential, config)
    if not decision.allowed or op not in _ISSUING:
        return decision
    if request.suspended is not None:
        return _suspended(request.owner, *request.suspended)
    # ACs carry the owner's attributes: asking for one it does not hold is refused, not trimmed.
    missing = [f for f in request.fqans if f not in request.held_fqans]
    if missing:
        return _deny("voms.fqan_not_held", f"the owner does not hold: {', '.join(missing)}")
    return _cap_lifetime(decision, request, credential, config)


def _embedded_fqans(request: Request) -> tuple[str, ...]:
    """The FQANs an issued proxy would carry: the requested ones, then every group held
    without a role (what VOMS adds by default, issuer.AttributeAuthority.default_fqans)."""
    defaults = tuple(f for f in request.held_fqans if not _has_role(f))
    return (*request.fqans, *defaults)


def _has_role(fqan: str) -> bool:
    role = fqan.partition("/Role=")[2].partition("/")[0]
    return bool(role) and role != "NULL"


def _pilot_rules(
    request: Request,
    principal: Principal,
    credential: CredentialFacts | None,
    config: PolicyConfig,
) -> Decision | None:
    op = request.operation
    proof_is_pilot = request.proof is not None and request.proof.kind is PrincipalKind.PILOT
    if op is Operation.RENEW and (principal.kind is PrincipalKind.PILOT or proof_is_pilot):
        return _deny("pilot.no_renewal", "a pilot identity can never renew a credential")
    # Pilot roles never travel in payloads: a task may not ask for one, and no payload
    # proxy carries one (else a user holding Role=pilot could be matched as a pilot to itself).
    if op in (Operation.TASK_SUBMIT, *_PAYLOAD):
        pilot_fqans = [f for f in _embedded_fqans(request) if is_pilot_fqan(f, config)]
        if pilot_fqans:
            return _deny(
                "pilot.fqan_in_payload",
                f"a payload may not carry a pilot FQAN: {', '.join(sorted(set(pilot_fqans)))}",
            )
    if principal.kind is not PrincipalKind.PILOT:
        # A pilot identity's own credential goes only to certificate-authenticated trusted
        # retrievers (a pilot factory's host): never down the passphrase path, where who asks
        # is unknown and could be the pilot itself.
        if (
            credential is not None
            and credential.owner_is_pilot
            and (
                op is Operation.RETRIEVE_KEY
                or (op is Operation.RETRIEVE and request.auth is not AuthMethod.CERTIFICATE)
            )
        ):
            return _deny(
                "pilot.credential_trusted_only",
                f'a credential of the pilot identity "{credential.owner}" is handed only to '
                "trusted retrievers authenticated by certificate",
            )
        return None
    if (
        credential is not None
        and credential.owner_is_pilot
        and op in _ISSUING | {Operation.RETRIEVE_KEY}
    ):
        return _deny(
            "pilot.pilot_credential",
            f'a pilot may not obtain a proxy of a pilot identity ("{credential.owner}")',
        )
    if op in _PILOT_MAY:
        return None
    return _deny(
        "pilot.restricted",
        f"a pilot may only fetch limited proxies of payloads assigned to it, not {op.value}",
    )


def _owner_only(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if credential is None and request.owner is None:
        return _deny("credential.not_found", "no such credential")
    owner = credential.owner if credential is not None else request.owner
    if request.operation is Operation.DESTROY and not any_matches(
        config.accepted_credentials, principal.identity, principal.fqans
    ):
        return _deny(
            "destroy.not_accepted",
            f'"{principal.identity}" not authorized to destroy credentials on this server '
            "(accepted_credentials policy)",
        )
    if owner == principal.identity:
        return Decision(True, "owner.self", "the owner manages its own credential", limited=False)
    return _deny(
        "owner.only",
        f"only the owner may {request.operation.value.replace('_', ' ')} this credential",
    )


def _store(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if not any_matches(config.accepted_credentials, principal.identity, principal.fqans):
        return _deny(
            "store.not_accepted",
            f'"{principal.identity}" not authorized to store credentials on this server '
            "(accepted_credentials policy)",
        )
    if request.owner != principal.identity:
        return _deny(
            "store.not_owner", f'a credential can only be stored by its owner ("{request.owner}")'
        )
    if credential is not None and credential.owner != principal.identity:
        # The place (username, name) holds another owner's credential: no overwriting it.
        return _deny(
            "store.not_owner",
            f'credentials for username "{request.username}" belong to another owner',
        )
    if (
        request.username
        and request.username.startswith("/")
        and request.username != principal.identity
    ):
        # Usernames default to the owner's DN over the API: a DN-shaped username is reserved
        # for that DN, or one user could squat another's default place.
        return _deny(
            "store.username_reserved", "a username that is a DN is reserved for that DN's owner"
        )
    lifetime = min(request.lifetime or config.max_stored_lifetime, config.max_stored_lifetime)
    return Decision(True, "store.owner", "the owner delegates its own credential", False, lifetime)


def _retrieve(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if credential is None:
        return _deny("credential.not_found", "no such credential")
    who = principal.identity
    if request.auth is AuthMethod.PASSPHRASE:
        if not any_matches(config.authorized_retrievers, who, principal.fqans):
            return _deny(
                "retrieve.server_acl",
                f'"{who}" not authorized by server\'s authorized_retrievers policy',
            )
        refused = per_credential_refusal(
            credential.retrievers, config.default_retrievers, who, principal.fqans
        )
        if refused is not None:
            return _deny("retrieve.credential_acl", f'"{who}" {refused} retriever policy')
        if not credential.has_passphrase:
            return _deny(
                "retrieve.passphrase_not_set",
                "this credential is stored for trusted retrieval only",
            )
        # I3 whatever the authentication: a host (every trusted retriever is one) gets a
        # limited proxy unless it is on the explicit full-delegation list, as on the
        # trusted path below; asking for "full" changes nothing for it.
        if principal.kind is PrincipalKind.HOST:
            full = any_matches(config.full_delegation_hosts, who, principal.fqans)
            return Decision(True, "retrieve.passphrase", "passphrase retrieval", limited=not full)
        return Decision(True, "retrieve.passphrase", "passphrase retrieval", limited=False)
    if request.auth is AuthMethod.CERTIFICATE:
        # myproxy-server asks the retriever policies of every GET, trusted or not.
        if not any_matches(config.authorized_retrievers, who, principal.fqans):
            return _deny(
                "retrieve.server_acl",
                f'"{who}" not authorized by server\'s authorized_retrievers policy',
            )
        refused = per_credential_refusal(
            credential.retrievers, config.default_retrievers, who, principal.fqans
        )
        if refused is not None:
            return _deny("retrieve.credential_acl", f'"{who}" {refused} retriever policy')
        if not any_matches(config.trusted_retrievers, who, principal.fqans):
            return _deny(
                "retrieve.not_trusted",
                f'"{who}" not authorized by server\'s trusted_retrievers policy',
            )
        refused = per_credential_refusal(
            credential.trusted_retrievers, config.default_trusted_retrievers, who, principal.fqans
        )
        if refused is not None:
            return _deny("retrieve.credential_acl", f'"{who}" {refused} trusted retriever policy')
        if credential.has_passphrase:
            return _deny("retrieve.passphrase_required", "this credential needs its passphrase")
        if same_dn(who, credential.owner) and not config.allow_self_authorization:
            return _deny(
                "retrieve.self_authorization",
                "a trusted retriever may not retrieve its own credential",
            )
        # I3: limited, unless the host is on the explicit full-delegation list.
        full = any_matches(config.full_delegation_hosts, who, principal.fqans)
        return Decision(True, "retrieve.trusted", "trusted retrieval", limited=not full)
    return _deny(
        "retrieve.no_authentication", "retrieval needs a passphrase or a trusted certificate"
    )


def per_credential_refusal(
    own: Sequence[str] | None, default: Sequence[str] | None, who: str, fqans: Sequence[str]
) -> str | None:
    """MyProxy's second check after the server-wide list: the credential's own list when it
    was stored with one, else the server's default_* list when set, else nothing to pass.
    None when `who` (with its verified `fqans`, for `FQAN:` patterns) passes; else whose
    policy refused it, for the reason."""
    if own is not None:
        return None if any_matches(own, who, fqans) else "not authorized by the credential's"
    if default is not None and not any_matches(default, who, fqans):
        return "not authorized by the server's default"
    return None


def _renew(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if credential is None:
        return _deny("credential.not_found", "no such credential")
    who = principal.identity
    if not any_matches(config.authorized_renewers, who, principal.fqans):
        return _deny(
            "renew.not_authorized", f'"{who}" not authorized by the authorized_renewers policy'
        )
    refused = per_credential_refusal(
        credential.renewers, config.default_renewers, who, principal.fqans
    )
    if refused is not None:
        return _deny("renew.not_authorized", f'"{who}" {refused} renewer policy')
    if request.proof is None or request.proof.identity != credential.owner:
        return _deny("renew.proof_mismatch", "the renewal proof is not a credential of the owner")
    if same_dn(who, credential.owner) and not config.allow_self_authorization:
        return _deny(
            "renew.self_authorization",
            "a credential may not renew itself (allow_self_authorization is off)",
        )
    limited = principal.kind is PrincipalKind.HOST and not any_matches(
        config.full_delegation_hosts, who, principal.fqans
    )
    return Decision(True, "renew.authorized", "authorized renewal", limited=limited)


def _retrieve_key(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if credential is None:
        return _deny("credential.not_found", "no such credential")
    who = principal.identity
    if not any_matches(config.key_retrievers, who, principal.fqans) or (
        per_credential_refusal(
            credential.key_retrievers, config.default_key_retrievers, who, principal.fqans
        )
    ):
        return _deny("retrieve_key.not_authorized", f'"{who}" may not retrieve private keys')
    if request.auth is not AuthMethod.PASSPHRASE or not credential.has_passphrase:
        return _deny(
            "retrieve_key.passphrase_required", "key retrieval needs the credential passphrase"
        )
    return Decision(True, "retrieve_key.authorized", "authorized key retrieval", limited=False)


def _issue_ac(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if principal.kind not in (PrincipalKind.USER, PrincipalKind.HOST):
        return _deny("voms.not_member", "attribute certificates are issued to users and hosts only")
    if request.suspended is not None:
        return _suspended(principal.identity, *request.suspended)
    if not request.held_fqans:
        return _deny(
            "voms.not_member", f'"{principal.identity}" is not a member of the requested VO'
        )
    missing = [f for f in request.fqans if f not in request.held_fqans]
    if missing:
        return _deny("voms.fqan_not_held", f"not a holder of: {', '.join(missing)}")
    return Decision(True, "voms.member", "member of the VO", limited=False)


def _suspended(dn: str | None, vo: str, reason: str) -> Decision:
    # voms-server's own words ("User is currently suspended!"), with the admin's reason.
    return _deny("voms.member_suspended", f'"{dn}" is currently suspended in VO {vo}: {reason}')


_Handler = Callable[[Request, Principal, CredentialFacts | None, PolicyConfig], Decision]


def _listed(patterns_of: str) -> _Handler:
    def handler(
        request: Request,
        principal: Principal,
        credential: CredentialFacts | None,
        config: PolicyConfig,
    ) -> Decision:
        patterns: Sequence[str] = getattr(config, patterns_of)
        rule = f"{request.operation.value}.{patterns_of}"
        if any_matches(patterns, principal.identity, principal.fqans):
            return Decision(True, rule, f"listed in {patterns_of}", limited=False)
        return _deny(rule, f'"{principal.identity}" is not listed in {patterns_of}')

    return handler


_listed_admins = _listed("admins")


def _metrics_read(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    # Counters by rule and operation tell an attacker what is tried and refused: readers
    # are named (Prometheus with a client certificate), admins and auditors may look too.
    if any_matches(
        (*config.metrics_readers, *config.admins, *config.auditors),
        principal.identity,
        principal.fqans,
    ):
        return Decision(True, "metrics_read.readers", "listed in metrics_readers", limited=False)
    return _deny(
        "metrics_read.readers",
        f'"{principal.identity}" is not listed in metrics_readers, admins or auditors',
    )


def _admin(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    if principal.kind is PrincipalKind.OPERATOR:
        return LOCAL_OPERATOR
    return _listed_admins(request, principal, credential, config)


def _audit_read(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    # The operator on the server reads the log its own database holds (proxyd-audit --config).
    if principal.kind is PrincipalKind.OPERATOR:
        return LOCAL_OPERATOR
    return _auditors(request, principal, credential, config)


_auditors = _listed("auditors")


def _remind(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    # Reminders are the server's own sweep: a peer cannot make proxyd mail someone.
    if principal.kind is PrincipalKind.OPERATOR:
        return Decision(True, "remind.sweep", "the server's expiry-reminder sweep", limited=False)
    return _deny("remind.sweep", "expiry reminders are sent by the server's own sweep")


def _set_contact(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    # A limited proxy is a payload's: it must not redirect its owner's mail.
    if principal.limited or principal.kind not in (PrincipalKind.USER, PrincipalKind.HOST):
        return _deny("contact.owner", "a contact address is set by its owner, with a full proxy")
    if request.owner != principal.identity:
        return _deny("contact.owner", "owners set only their own contact address")
    return Decision(True, "contact.owner", "the owner sets its own contact", limited=False)


_HANDLERS = {
    Operation.STORE: _store,
    Operation.RETRIEVE: _retrieve,
    Operation.RENEW: _renew,
    Operation.INFO: _owner_only,
    Operation.DESTROY: _owner_only,
    Operation.CHANGE_PASSPHRASE: _owner_only,
    Operation.RETRIEVE_KEY: _retrieve_key,
    Operation.ISSUE_AC: _issue_ac,
    Operation.PAYLOAD_PROXY: payload,
    Operation.PAYLOAD_TOKEN: payload,  # a token goes where the payload's proxy may
    Operation.AUDIT_READ: _audit_read,
    Operation.METRICS_READ: _metrics_read,
    Operation.ADMIN: _admin,
    Operation.VO_MEMBERS: _admin,  # administration, recorded apart: a VO's membership history
    Operation.REMIND: _remind,
    Operation.SET_CONTACT: _set_contact,
    Operation.TASK_SUBMIT: task_submit,
    Operation.TASK_READ: task_read,
    Operation.TASK_CANCEL: task_cancel,
    Operation.TASK_RESCHEDULE: task_cancel,  # who may cancel a task may queue it again
    Operation.TASK_MATCH: task_match,
    Operation.TASK_UPDATE: task_update,
    Operation.TOKEN_EXCHANGE: token_exchange,
}


def _cap_lifetime(
    decision: Decision, request: Request, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    """I4: the issued lifetime never exceeds what was asked, the credential, or the server."""
    assert credential is not None  # every issuing handler denies a missing credential
    caps = [credential.max_lifetime, config.max_proxy_lifetime, credential.not_after - request.now]
    if request.lifetime is not None:
        caps.append(request.lifetime)
    if request.assignment is not None and request.operation in _PAYLOAD:
        caps.append(request.assignment.time_left + config.payload_lifetime_margin)
    lifetime = min(caps)
    if lifetime < MIN_LIFETIME:
        return _deny(
            "lifetime.exhausted",
            "the stored credential has expired or has less than a minute left"
            if credential.not_after - request.now < MIN_LIFETIME
            else "the granted lifetime would be under a minute",
        )
    return Decision(True, decision.rule, decision.reason, decision.limited, lifetime)
