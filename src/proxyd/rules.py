"""The registry of rule names: every name proxyd writes to an audit event's `rule` or to an error.

A rule name is stable: auditors search the log for it, operators alert on it
(`proxyd_decisions_total{rule=...}`) and clients read it in error messages.
Each rule has one plain sentence of meaning and, where it enforces one, the
invariant of ARCHITECTURE.md it stands for ("I1".."I7", or "minted-identity"
for "no minted identity evades a rule").

`tests/core/test_rules.py` holds this registry equal to the names the source
uses in a rule position and to the names `docs/policy.md` documents;
`rules_for_docs()` renders it as a Markdown table.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["INVARIANTS", "RULES", "Invariant", "Rule", "rule", "rules_for_docs"]

Invariant = Literal["I1", "I2", "I3", "I4", "I5", "I6", "I7", "minted-identity"]
INVARIANTS: frozenset[str] = frozenset(
    ("I1", "I2", "I3", "I4", "I5", "I6", "I7", "minted-identity")
)
_NAME = re.compile(r"[a-z_]+\.[a-z_]+")


@dataclass(frozen=True)
class Rule:
    """A rule name, what it means for an operator, and the invariant it enforces (if any)."""

    name: str
    meaning: str
    invariant: Invariant | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"rule name {self.name!r} is not of the form area.name")
        if not self.meaning or not self.meaning.endswith(".") or "\n" in self.meaning:
            raise ValueError(f"rule {self.name}: the meaning is one sentence ending with '.'")
        if self.invariant is not None and self.invariant not in INVARIANTS:
            raise ValueError(f"rule {self.name}: unknown invariant {self.invariant!r}")


_ALL = (
    # --- the invariants, checked before any operation's own rules (policy.decide) ---------
    Rule("ban.peer", "The peer, or the identity of its renewal proof, is banned.", "I5"),
    Rule("ban.owner", "The owner of the credential is banned.", "I5"),
    Rule(
        "limited.peer",
        "A peer authenticated with a limited proxy may not store, retrieve, renew or delegate, "
        "and a limited proxy is no renewal proof.",
        "I1",
    ),
    Rule("credential.locked", "An operator locked the stored credential.", None),
    Rule(
        "credential.revoked",
        "A CRL in force lists a certificate of the stored credential's chain.",
        None,
    ),
    Rule(
        "credential.expired",
        "A certificate of the stored credential's chain has expired, so nothing is issued from it.",
        "I4",
    ),
    Rule(
        "credential.untrusted",
        "The stored credential's chain no longer validates against the trust directories "
        "(for example its CA is gone).",
        None,
    ),
    Rule(
        "pilot.no_renewal", "A pilot, or a renewal proven with a pilot's proxy, never renews.", "I2"
    ),
    Rule(
        "pilot.pilot_credential",
        "A pilot never obtains a proxy or key of a pilot-owned credential.",
        "I2",
    ),
    Rule(
        "pilot.credential_trusted_only",
        "A pilot-owned credential goes only to trusted retrievers authenticated by certificate, "
        "never by passphrase.",
        "I2",
    ),
    Rule(
        "pilot.fqan_in_payload",
        "A task or payload proxy would carry an FQAN that matches pilot_fqans.",
        "I2",
    ),
    Rule(
        "pilot.restricted",
        "A pilot may only manage its own credential and fetch payload proxies of its tasks.",
        "I2",
    ),
    Rule(
        "anonymous.denied",
        "A peer without a client certificate may only retrieve with a passphrase.",
        None,
    ),
    Rule(
        "voms.fqan_not_held",
        "The request asks for FQANs that the credential's owner does not hold.",
        None,
    ),
    Rule(
        "lifetime.exhausted",
        "Less than a minute of lifetime would be left for the issued proxy.",
        "I4",
    ),
    # --- authentication refused (audited as operation "authenticate" or on the operation) ---
    Rule("auth.bad_name", "A DN of the peer's chain holds a control or format character.", None),
    Rule("auth.revoked", "A certificate of the peer's chain is revoked.", None),
    Rule(
        "auth.untrusted_chain",
        "The peer's chain does not validate against the trust anchors or CRLs in force.",
        None,
    ),
    Rule("auth.expired", "A certificate of the peer's chain is expired or not yet valid.", None),
    Rule("auth.bad_voms_ac", "A VOMS attribute certificate in the peer's chain is invalid.", None),
    Rule(
        "auth.independent_proxy",
        "The chain (or renewal proof) holds an independent proxy, whose minted identity "
        "proxyd refuses.",
        "minted-identity",
    ),
    Rule("auth.bad_proxy", "A proxy certificate in the peer's chain breaks RFC 3820 rules.", None),
    Rule("auth.bad_chain", "The peer's chain was refused for another reason.", None),
    Rule("auth.bad_passphrase", "The credential passphrase given is wrong.", None),
    Rule(
        "auth.no_passphrase",
        "A passphrase change was asked for a credential stored without one (trusted retrieval).",
        None,
    ),
    Rule(
        "auth.cannot_unseal",
        "The stored private key could not be unsealed (its data key or master key is unusable).",
        None,
    ),
    Rule(
        "auth.locked_out",
        "Too many wrong passphrases for this credential or from this peer group: try again later.",
        None,
    ),
    # --- store ----------------------------------------------------------------------------------
    Rule("store.owner", "The owner stores (delegates) its own credential.", None),
    Rule(
        "store.not_accepted",
        "The peer is not listed in accepted_credentials, so it may not store credentials here.",
        None,
    ),
    Rule(
        "store.not_owner",
        "A credential can only be stored by its owner, and never over another owner's.",
        None,
    ),
    Rule(
        "store.username_reserved",
        "A username that is a DN is reserved for that DN's owner.",
        None,
    ),
    Rule(
        "store.conflict",
        "Another store for the same username and name committed first.",
        None,
    ),
    # --- info, destroy, change passphrase, lock ------------------------------------------------
    Rule("owner.self", "The owner manages (info, destroy, passphrase) its own credential.", None),
    Rule("owner.only", "Only the owner may see, destroy or change this credential.", None),
    Rule(
        "destroy.not_accepted",
        "The peer is not listed in accepted_credentials, so it may not destroy credentials here.",
        None,
    ),
    Rule("credential.not_found", "No such credential is stored.", None),
    Rule("credential.not_locked", "An unlock named a credential that is not locked.", None),
    # --- retrieve, renew, retrieve key ---------------------------------------------------------
    Rule(
        "retrieve.passphrase",
        "Retrieval with the passphrase; hosts get a limited proxy unless listed in "
        "full_delegation_hosts.",
        "I3",
    ),
    Rule(
        "retrieve.trusted",
        "Retrieval by a trusted retriever's certificate; always limited unless the host is "
        "listed in full_delegation_hosts.",
        "I3",
    ),
    Rule(
        "retrieve.server_acl",
        "The peer is not listed in the server's authorized_retrievers.",
        None,
    ),
    Rule(
        "retrieve.credential_acl",
        "The peer is not in the credential's own retriever or trusted-retriever list, or, "
        "for a credential stored without one, in default_retrievers or "
        "default_trusted_retrievers.",
        None,
    ),
    Rule(
        "retrieve.passphrase_not_set",
        "The credential has no passphrase: it is stored for trusted retrieval only.",
        None,
    ),
    Rule(
        "retrieve.not_trusted", "The peer is not listed in the server's trusted_retrievers.", None
    ),
    Rule(
        "retrieve.passphrase_required",
        "The credential has a passphrase, so trusted retrieval without it is refused.",
        None,
    ),
    Rule(
        "retrieve.self_authorization",
        "A trusted retriever may not retrieve its own credential "
        "(allow_self_authorization is off).",
        None,
    ),
    Rule(
        "retrieve.no_authentication",
        "A retrieval needs a passphrase or a trusted certificate.",
        None,
    ),
    Rule(
        "renew.authorized",
        "An authorized renewer proved the owner's identity; hosts get a limited proxy unless "
        "listed in full_delegation_hosts.",
        "I3",
    ),
    Rule(
        "renew.not_authorized",
        "The peer is not in authorized_renewers, or not in the credential's renewer list "
        "(default_renewers for a credential stored without one).",
        None,
    ),
    Rule("renew.proof_mismatch", "The renewal proof is not a credential of the owner.", None),
    Rule(
        "renew.self_authorization",
        "A credential may not renew itself (allow_self_authorization is off).",
        None,
    ),
    Rule(
        "renew.challenge_failed",
        "The client's answer to the MyProxy renewal challenge was malformed or did not verify.",
        None,
    ),
    Rule(
        "renew.challenge_unanswered",
        "The client went away before answering the MyProxy renewal challenge.",
        None,
    ),
    Rule(
        "retrieve_key.authorized",
        "key_retrievers and the credential's list (or default_key_retrievers) admit the peer, "
        "and it gave the passphrase.",
        None,
    ),
    Rule(
        "retrieve_key.not_authorized",
        "The peer is not in key_retrievers, or not in the credential's key retriever list "
        "(default_key_retrievers for a credential stored without one).",
        None,
    ),
    Rule(
        "retrieve_key.passphrase_required",
        "Private key retrieval needs the credential's passphrase.",
        None,
    ),
    # --- issuance ------------------------------------------------------------------------------
    Rule(
        "issue.bad_request",
        "The certificate request (CSR or public key) sent for the proxy was refused.",
        None,
    ),
    Rule("issue.failed", "Signing the proxy or obtaining its VOMS AC failed.", None),
    # --- VOMS attribute certificates -----------------------------------------------------------
    Rule("voms.member", "The peer is a member of the VO and holds the FQANs asked for.", None),
    Rule(
        "voms.not_member",
        "The peer is not a member of the VO (ACs go to users and hosts with a certificate).",
        None,
    ),
    Rule("voms.member_suspended", "A VO admin suspended the peer or owner in the VO.", None),
    Rule("voms.unknown_vo", "proxyd has no attribute authority for the VO asked for.", None),
    # --- the VO's own VOMS server as the attribute authority (proxyd.vomsaa) -------------------
    Rule(
        "voms.upstream_unknown_user",
        "The VO's VOMS server does not know the credential's owner as a member.",
        None,
    ),
    Rule(
        "voms.upstream_suspended_user",
        "The VO's VOMS server reports the credential's owner as suspended.",
        None,
    ),
    Rule(
        "voms.upstream_role_not_held",
        "The VO's VOMS server refuses a group or role the owner does not hold.",
        None,
    ),
    Rule(
        "voms.upstream_bad_request",
        "The VO's VOMS server refused the attribute request as malformed.",
        None,
    ),
    Rule(
        "voms.upstream_error",
        "The VO's VOMS server failed (database or internal error, or an unreadable answer).",
        None,
    ),
    Rule(
        "voms.upstream_unreachable",
        "None of the VO's configured VOMS servers could be reached or completed the handshake.",
        None,
    ),
    Rule(
        "voms.upstream_timeout",
        "The VO's VOMS servers did not answer within the configured timeout.",
        None,
    ),
    Rule(
        "voms.upstream_bad_ac",
        "The AC from the VO's VOMS server does not verify against voms_dir, so it is never embedded.",
        None,
    ),
    # --- payload proxies and the task queue ----------------------------------------------------
    Rule(
        "payload.assigned", "The pilot gets a limited proxy for the payload assigned to it.", "I2"
    ),
    Rule("payload.not_pilot", "Payload proxies are handed only to pilots.", "I2"),
    Rule(
        "payload.not_assigned",
        "The task does not exist or is not assigned to the requesting pilot.",
        "I2",
    ),
    Rule(
        "payload.wrong_instance",
        "The task is assigned to another instance of this pilot (assignment secret missing or "
        "wrong).",
        "I2",
    ),
    Rule(
        "payload.assignment_ended",
        "The task is no longer running on this pilot (finished, cancelled or stalled).",
        "I2",
    ),
    Rule("task.owner", "The owner submits, reads, cancels or reschedules its own tasks.", None),
    Rule(
        "task.admins",
        "Listed in admins (or, to read tasks, in auditors).",
        None,
    ),
    Rule(
        "task.not_owner",
        "Only the owner (and admins, or auditors to read) may submit, read, cancel or "
        "reschedule the task.",
        None,
    ),
    Rule(
        "task.limited",
        "A limited proxy (such as a payload's) may not cancel or reschedule tasks.",
        "I1",
    ),
    Rule(
        "task.priority_not_allowed",
        "The task's priority is outside the range [taskqueue.limits] priority allows for its "
        "FQANs.",
        None,
    ),
    Rule(
        "task.owner_queue_full",
        "The owner already has [taskqueue.limits] max_queued_per_owner tasks queued.",
        None,
    ),
    Rule("task.pilot", "A pilot asks for work.", None),
    Rule("task.not_pilot", "Only pilots ask for work.", None),
    Rule(
        "task.site_not_allowed",
        "The pilot is bound to other sites by pilot_sites and may not claim this one.",
        "I5",
    ),
    Rule("task.assigned_pilot", "The pilot running the task reports on it.", None),
    Rule("task.not_assigned", "Only the pilot running a task reports on it.", None),
    Rule(
        "task.state_conflict",
        "The task's current state does not allow this life-cycle event.",
        None,
    ),
    Rule(
        "task.credential_missing",
        "A task named a stored credential (username and name) that is not its owner's.",
        None,
    ),
    Rule("task.not_found", "No such task.", None),
    Rule(
        "queue.fair_share",
        "The queue matched the best eligible task by priority and fair share.",
        None,
    ),
    Rule("queue.pilot_report", "The assigned pilot reported the task's outcome.", None),
    Rule(
        "queue.retry",
        "proxyd queued a stalled or failed task again: it had attempts left (max_attempts).",
        None,
    ),
    Rule(
        "queue.max_attempts",
        "A task stalled on its last allowed attempt (max_attempts) and failed for good.",
        None,
    ),
    Rule(
        "queue.heartbeat_timeout",
        "The stalled-task sweep found no heartbeat from the task's pilot in time.",
        None,
    ),
    Rule(
        "queue.request",
        "An owner or operator asked for it (reschedule, cancel, site mask, owner ban).",
        None,
    ),
    # --- reading the log and the metrics, administration ---------------------------------------
    Rule("audit_read.auditors", "Reading the audit log needs a DN listed in auditors.", None),
    Rule(
        "metrics_read.readers",
        "Reading /metrics needs a DN listed in metrics_readers, admins or auditors.",
        None,
    ),
    Rule("admin.admins", "Administration needs a DN listed in admins.", None),
    Rule(
        "admin.local_operator",
        "The local operator of the server (the proxyd admin command) administers.",
        None,
    ),
    Rule("admin.not_banned", "An unban named an owner, user or host that is not banned.", None),
    Rule("admin.already_banned", "A ban named a user or host that is banned already.", None),
    Rule(
        "vo_members.admins",
        "Changing or listing the members of a VO needs a DN listed in admins.",
        None,
    ),
    Rule("vo.seed", "The first start with a VO copied its [voms.members] table in.", None),
    Rule("vo.already_member", "add-member named a DN that is a member of the VO already.", None),
    Rule("vo.not_member", "A membership change named a DN that is not a member of the VO.", None),
    Rule("vo.fqan_held", "A grant named an FQAN the member holds already.", None),
    Rule("vo.fqan_not_held", "A revoke named an FQAN the member does not hold.", None),
    Rule("vo.bad_fqan", "An FQAN of a membership change is malformed or of another VO.", None),
    Rule("vo.not_suspended", "A restore named a member that is not suspended.", None),
    Rule("vo.bad_reason", "A suspension reason is empty, over 200 characters or unsafe.", None),
    Rule(
        "vo.bad_dn",
        "A member DN is not one /-separated DN of 1 to 1024 printable characters.",
        None,
    ),
    # --- WLCG tokens (proxyd.tokens) --------------------------------------------------------------
    Rule("token.not_issuing", "This server issues no tokens ([tokens] issuer is not set).", None),
    Rule(
        "token.issuer", "The token's issuer is not one of the configured [[tokens.issuers]].", None
    ),
    Rule("token.audience", "The token is not for proxyd (none of the issuer's audiences).", None),
    Rule("token.expired", "The token has expired (exp, with at most 5 minutes of leeway).", None),
    Rule("token.not_yet_valid", "The token's nbf or iat is in the future.", None),
    Rule("token.scope", "The token's scope lacks what the issuer's entry requires.", None),
    Rule(
        "token.profile",
        "The token does not follow the WLCG common JWT profile (wlcg.ver, sub, exp, groups).",
        None,
    ),
    Rule("token.malformed", "Not a signed JWT of a sane size.", None),
    Rule(
        "token.signature",
        "The signature does not verify with the issuer's published keys, or its algorithm "
        "is not RS256/ES256.",
        None,
    ),
    Rule(
        "token.issuer_unreachable",
        "The issuer's discovery document or key set could not be read over HTTPS.",
        None,
    ),
    Rule(
        "token.unmapped",
        "A valid token whose (issuer, subject) no administrator mapped to an owner DN "
        "(proxyd admin token-map).",
        None,
    ),
    Rule(
        "token.exchange",
        "A token's mapped owner gets a limited proxy of its own stored credential (RFC 8693).",
        "I1",
    ),
    Rule(
        "token.bearer_restricted",
        "A bearer token reads the owner's credentials and tasks and submits or cancels tasks; "
        "nothing else (no certificate was shown).",
        "I1",
    ),
    Rule(
        "token.passphrase_protected",
        "A credential stored with a passphrase is not handed out for a token.",
        None,
    ),
    Rule(
        "token.bad_request",
        "A token-exchange request that is not RFC 8693 as proxyd takes it (form fields).",
        None,
    ),
    Rule("token_map.exists", "token-map add named an (issuer, subject) mapped already.", None),
    Rule("token_map.not_found", "token-map remove named an (issuer, subject) not mapped.", None),
    Rule(
        "token_map.bad_entry",
        "A token mapping's issuer is not https://, or its subject or DN is malformed.",
        None,
    ),
    # --- expiry reminders and owner contacts (proxyd.core.reminders) ---------------------------
    Rule(
        "remind.sweep",
        "Expiry reminders are sent by the server's own sweep (the local operator), no one else.",
        None,
    ),
    Rule(
        "remind.already_sent",
        "Another sweep sent this reminder (credential, end, horizon) first: once per horizon.",
        None,
    ),
    Rule(
        "remind.undelivered",
        "A due reminder went out on no channel (mail and webhook failed); retried next sweep.",
        None,
    ),
    Rule(
        "contact.owner",
        "Owners set their own contact address for reminders, with a non-limited certificate.",
        None,
    ),
    Rule("contact.bad_address", "A contact address is not one plain e-mail address.", None),
    Rule(
        "request.refused",
        "An allowed operation found, when it came to act, that it could not be done.",
        "I6",
    ),
    # --- request fields (proxyd.names) ---------------------------------------------------------
    Rule(
        "request.bad_username", "The username is empty, too long or holds unsafe characters.", None
    ),
    Rule(
        "request.bad_credential_name",
        "The credential name is empty, too long or uses characters outside [A-Za-z0-9._@+:-].",
        None,
    ),
    Rule(
        "request.bad_description", "The description is too long or holds unsafe characters.", None
    ),
    Rule(
        "request.bad_pattern",
        "A DN pattern is empty, too long, holds unsafe characters, or cannot be read as "
        "myproxy-server reads it (docs/myproxy.md, Patterns).",
        None,
    ),
    Rule(
        "request.bad_dn",
        "A DN of the stored certificate chain holds a control or format character.",
        None,
    ),
)


def _index(rules: tuple[Rule, ...]) -> Mapping[str, Rule]:
    out: dict[str, Rule] = {}
    for r in rules:
        if r.name in out:
            raise ValueError(f"rule {r.name} is registered twice")
        out[r.name] = r
    return types.MappingProxyType(dict(sorted(out.items())))


RULES: Mapping[str, Rule] = _index(_ALL)


def rule(name: str) -> Rule:
    """The registered rule `name`; a KeyError that says so for an unknown one."""
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a registered rule name (see proxyd.rules)") from None


def rules_for_docs() -> str:
    """The registry as a Markdown table (rule | meaning | invariant), sorted by name."""
    lines = ["| rule | meaning | invariant |", "| --- | --- | --- |"]
    for r in RULES.values():
        meaning = r.meaning.replace("|", "\\|")
        lines.append(f"| `{r.name}` | {meaning} | {r.invariant or ''} |")
    return "\n".join(lines) + "\n"
