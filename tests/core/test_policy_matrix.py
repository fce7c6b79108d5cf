"""The authorization matrix: who may do what to whose credential, and by which rule.

One row per case; each asserts the decision AND the rule name, because the
rule is what operators and auditors see. Rows named I1..I5 are the named
tests of the ARCHITECTURE.md invariants.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import replace

import pytest

from proxyd.config import PolicyConfig
from proxyd.policy import (
    Assignment,
    AuthMethod,
    Bans,
    CredentialFacts,
    Operation,
    Request,
    decide,
)
from proxyd.principal import Principal, PrincipalKind, anonymous

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
BOB = "/C=XX/O=proxyd dev/OU=Users/CN=bob"
MALLORY = "/C=XX/O=proxyd dev/OU=Users/CN=mallory"
WMS = "/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"
FULLWMS = "/C=XX/O=proxyd dev/OU=Hosts/CN=full.localhost"
ROGUE = "/C=XX/O=proxyd dev/OU=Hosts/CN=rogue.localhost"
PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
ADMIN = "/C=XX/O=proxyd dev/OU=Users/CN=admin"
AUDITOR = "/C=XX/O=proxyd dev/OU=Users/CN=auditor"

CONFIG = PolicyConfig(
    max_proxy_lifetime=12 * H,
    max_stored_lifetime=7 * 24 * H,
    trusted_retrievers=("/C=XX/O=proxyd dev/OU=Hosts/CN=*wms.localhost", FULLWMS),
    authorized_retrievers=("*",),
    authorized_renewers=(WMS, ALICE),
    full_delegation_hosts=(FULLWMS,),
    key_retrievers=(ALICE,),
    pilot_dns=(PILOT,),
    pilot_fqans=("/*/Role=pilot",),
    banned_dns=(MALLORY,),
    admins=(ADMIN,),
    auditors=(AUDITOR,),
)

alice = Principal(ALICE, PrincipalKind.USER)
alice_limited = Principal(ALICE, PrincipalKind.USER, limited=True)
bob = Principal(BOB, PrincipalKind.USER)
mallory = Principal(MALLORY, PrincipalKind.USER)
wms = Principal(WMS, PrincipalKind.HOST)
wms_limited = Principal(WMS, PrincipalKind.HOST, limited=True)
fullwms = Principal(FULLWMS, PrincipalKind.HOST)
rogue = Principal(ROGUE, PrincipalKind.HOST)
pilot = Principal(PILOT, PrincipalKind.PILOT)
fqan_pilot = Principal(BOB, PrincipalKind.PILOT, fqans=("/dteam/Role=pilot",))
anon = anonymous("127.0.0.1")
carol = Principal("/C=XX/O=proxyd dev/OU=Users/CN=carol", PrincipalKind.USER)
admin = Principal(ADMIN, PrincipalKind.USER)
auditor = Principal(AUDITOR, PrincipalKind.USER)


def cred(owner: str = ALICE, **kw: object) -> CredentialFacts:
    base = CredentialFacts(
        owner=owner,
        name="default",
        has_passphrase=True,
        not_after=NOW + 48 * H,
        max_lifetime=24 * H,
        owner_is_pilot=owner == PILOT,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


ALICE_PW = cred()
ALICE_TRUSTED = cred(has_passphrase=False)
PILOT_TRUSTED = cred(PILOT, has_passphrase=False)
PILOT_PW = cred(PILOT)


def req(op: Operation, owner: str | None = ALICE, **kw: object) -> Request:
    return Request(operation=op, owner=owner, name="default", now=NOW, **kw)  # type: ignore[arg-type]


S, R, N, INFO, D = (
    Operation.STORE,
    Operation.RETRIEVE,
    Operation.RENEW,
    Operation.INFO,
    Operation.DESTROY,
)
PW, CERT = AuthMethod.PASSPHRASE, AuthMethod.CERTIFICATE
LIVE = Assignment(PILOT, 7, ALICE, "default", True, 2 * H, instance_ok=True)

# (id, principal, request, credential, allowed, rule, limited or None)
MATRIX = [
    # --- users on their own credentials
    ("user-store-own", alice, req(S), None, True, "store.owner", None),
    ("user-store-other", bob, req(S), None, False, "store.not_owner", None),
    (
        "user-store-under-other-dn",
        bob,
        req(S, BOB, username=ALICE),
        None,
        False,
        "store.username_reserved",
        None,
    ),
    ("user-store-under-own-dn", bob, req(S, BOB, username=BOB), None, True, "store.owner", None),
    ("user-info-own", alice, req(INFO), ALICE_PW, True, "owner.self", None),
    ("user-info-other", bob, req(INFO), ALICE_PW, False, "owner.only", None),
    ("user-destroy-own", alice, req(D), ALICE_PW, True, "owner.self", None),
    ("user-destroy-other", bob, req(D), ALICE_PW, False, "owner.only", None),
    (
        "user-chpass-own",
        alice,
        req(Operation.CHANGE_PASSPHRASE),
        ALICE_PW,
        True,
        "owner.self",
        None,
    ),
    (
        "user-retrieve-own-pw-full",
        alice,
        req(R, auth=PW, want_full=True),
        ALICE_PW,
        True,
        "retrieve.passphrase",
        False,
    ),
    ("user-retrieve-own-pw", alice, req(R, auth=PW), ALICE_PW, True, "retrieve.passphrase", False),
    ("user-retrieve-other-pw", bob, req(R, auth=PW), ALICE_PW, True, "retrieve.passphrase", False),
    (
        "user-retrieve-other-pw-acl",
        bob,
        req(R, auth=PW),
        cred(retrievers=(WMS,)),
        False,
        "retrieve.credential_acl",
        None,
    ),
    (
        "user-retrieve-trusted-not-listed",
        bob,
        req(R, auth=CERT),
        ALICE_TRUSTED,
        False,
        "retrieve.not_trusted",
        None,
    ),
    (
        "user-retrieve-pw-on-trusted-only",
        alice,
        req(R, auth=PW),
        ALICE_TRUSTED,
        False,
        "retrieve.passphrase_not_set",
        None,
    ),
    ("user-retrieve-missing", alice, req(R, auth=PW), None, False, "credential.not_found", None),
    ("user-retrieve-no-auth", alice, req(R), ALICE_PW, False, "retrieve.no_authentication", None),
    (
        "user-renew-self-authorization",
        alice,
        req(N, proof=alice),
        ALICE_PW,
        False,
        "renew.self_authorization",
        None,
    ),
    (
        "user-renew-not-renewer",
        bob,
        req(N, proof=alice),
        ALICE_PW,
        False,
        "renew.not_authorized",
        None,
    ),
    (
        "user-retrieve-key-listed",
        alice,
        req(Operation.RETRIEVE_KEY, auth=PW),
        cred(key_retrievers=(ALICE,)),
        True,
        "retrieve_key.authorized",
        None,
    ),
    (
        "user-retrieve-key-not-listed",
        bob,
        req(Operation.RETRIEVE_KEY, auth=PW),
        cred(key_retrievers=(ALICE,)),
        False,
        "retrieve_key.not_authorized",
        None,
    ),
    (
        # MyProxy: a credential stored without a key-retriever list, and no
        # default_key_retrievers set, leaves the decision to the server-wide list
        # (tests/core/test_myproxy_options.py covers the default_* lists).
        "user-retrieve-key-no-credential-list",
        alice,
        req(Operation.RETRIEVE_KEY, auth=PW),
        ALICE_PW,
        True,
        "retrieve_key.authorized",
        None,
    ),
    # --- trusted and untrusted hosts (I3)
    (
        "I3-trusted-host-limited",
        wms,
        req(R, auth=CERT),
        ALICE_TRUSTED,
        True,
        "retrieve.trusted",
        True,
    ),
    (
        "I3-trusted-host-asks-full-gets-limited",
        wms,
        req(R, auth=CERT, want_full=True),
        ALICE_TRUSTED,
        True,
        "retrieve.trusted",
        True,
    ),
    (
        "I3-full-delegation-host",
        fullwms,
        req(R, auth=CERT, want_full=True),
        ALICE_TRUSTED,
        True,
        "retrieve.trusted",
        False,
    ),
    (
        "trusted-host-on-passphrase-cred",
        wms,
        req(R, auth=CERT),
        ALICE_PW,
        False,
        "retrieve.passphrase_required",
        None,
    ),
    (
        "trusted-host-cred-acl",
        wms,
        req(R, auth=CERT),
        cred(has_passphrase=False, trusted_retrievers=(FULLWMS,)),
        False,
        "retrieve.credential_acl",
        None,
    ),
    (
        "untrusted-host-cert",
        rogue,
        req(R, auth=CERT),
        ALICE_TRUSTED,
        False,
        "retrieve.not_trusted",
        None,
    ),
    ("untrusted-host-pw", rogue, req(R, auth=PW), ALICE_PW, True, "retrieve.passphrase", True),
    ("host-info-other", wms, req(INFO), ALICE_PW, False, "owner.only", None),
    ("host-destroy-other", wms, req(D), ALICE_PW, False, "owner.only", None),
    ("host-store-for-user", wms, req(S), None, False, "store.not_owner", None),
    (
        "host-renew-with-owner-proof",
        wms,
        req(N, proof=alice),
        ALICE_PW,
        True,
        "renew.authorized",
        True,
    ),
    (
        "host-renew-with-other-proof",
        wms,
        req(N, proof=bob),
        ALICE_PW,
        False,
        "renew.proof_mismatch",
        None,
    ),
    (
        "trusted-host-gets-pilot-cred",
        wms,
        req(R, PILOT, auth=CERT),
        PILOT_TRUSTED,
        True,
        "retrieve.trusted",
        True,
    ),
    # --- pilots (I2)
    (
        "I2-pilot-own-credential",
        pilot,
        req(R, PILOT, auth=CERT),
        PILOT_TRUSTED,
        False,
        "pilot.pilot_credential",
        None,
    ),
    (
        "I2-pilot-own-credential-pw",
        pilot,
        req(R, PILOT, auth=PW),
        PILOT_PW,
        False,
        "pilot.pilot_credential",
        None,
    ),
    (
        "I2-pilot-renew-with-current-proxy",
        pilot,
        req(N, PILOT, proof=pilot),
        PILOT_PW,
        False,
        "pilot.no_renewal",
        None,
    ),
    (
        "I2-host-renew-with-pilot-proof",
        wms,
        req(N, PILOT, proof=pilot),
        PILOT_PW,
        False,
        "pilot.no_renewal",
        None,
    ),
    (
        "I2-fqan-pilot-other-pilot-cred",
        fqan_pilot,
        req(Operation.PAYLOAD_PROXY, PILOT),
        PILOT_TRUSTED,
        False,
        "pilot.pilot_credential",
        None,
    ),
    (
        "I2-pilot-user-cred-direct",
        pilot,
        req(R, auth=PW),
        ALICE_PW,
        False,
        "pilot.restricted",
        None,
    ),
    ("I2-pilot-stores-own-credential", pilot, req(S, PILOT), None, True, "store.owner", None),
    ("I2-pilot-destroy-user", pilot, req(D), ALICE_PW, False, "owner.only", None),
    (
        "I2-pilot-retrieve-key",
        pilot,
        req(Operation.RETRIEVE_KEY, auth=PW),
        cred(key_retrievers=(PILOT,)),
        False,
        "pilot.restricted",
        None,
    ),
    (
        "I2-pilot-voms-ac",
        pilot,
        req(
            Operation.ISSUE_AC,
            PILOT,
            fqans=("/dteam/Role=pilot",),
            held_fqans=("/dteam/Role=pilot",),
        ),
        None,
        False,
        "pilot.restricted",
        None,
    ),
    (
        "I2-pilot-payload-assigned",
        pilot,
        req(Operation.PAYLOAD_PROXY, assignment=LIVE),
        ALICE_TRUSTED,
        True,
        "payload.assigned",
        True,
    ),
    (
        "I2-pilot-payload-not-assigned",
        pilot,
        req(Operation.PAYLOAD_PROXY, assignment=None),
        ALICE_TRUSTED,
        False,
        "payload.not_assigned",
        None,
    ),
    (
        "I2-pilot-payload-other-owner",
        pilot,
        req(Operation.PAYLOAD_PROXY, BOB, assignment=LIVE),
        cred(BOB),
        False,
        "payload.not_assigned",
        None,
    ),
    (
        "I2-pilot-payload-other-pilot",
        fqan_pilot,
        req(Operation.PAYLOAD_PROXY, assignment=LIVE),
        ALICE_TRUSTED,
        False,
        "payload.not_assigned",
        None,
    ),
    (
        "I2-pilot-payload-ended",
        pilot,
        req(Operation.PAYLOAD_PROXY, assignment=replace(LIVE, live=False)),
        ALICE_TRUSTED,
        False,
        "payload.assignment_ended",
        None,
    ),
    (
        "payload-by-non-pilot",
        wms,
        req(Operation.PAYLOAD_PROXY, assignment=LIVE),
        ALICE_TRUSTED,
        False,
        "payload.not_pilot",
        None,
    ),
    # --- limited-proxy peers (I1)
    ("I1-limited-store", alice_limited, req(S), None, False, "limited.peer", None),
    (
        "I1-limited-renew",
        alice_limited,
        req(N, proof=alice_limited),
        ALICE_PW,
        False,
        "limited.peer",
        None,
    ),
    (
        "I1-limited-proof-renew",
        wms,
        req(N, proof=alice_limited),
        ALICE_PW,
        False,
        "limited.peer",
        None,
    ),
    ("I1-limited-retrieve", alice_limited, req(R, auth=PW), ALICE_PW, False, "limited.peer", None),
    (
        "I1-limited-host-retrieve",
        wms_limited,
        req(R, auth=CERT),
        ALICE_TRUSTED,
        False,
        "limited.peer",
        None,
    ),
    ("I1-limited-destroy", alice_limited, req(D), ALICE_PW, False, "limited.peer", None),
    (
        "I1-limited-key",
        alice_limited,
        req(Operation.RETRIEVE_KEY, auth=PW),
        cred(key_retrievers=(ALICE,)),
        False,
        "limited.peer",
        None,
    ),
    ("limited-info-allowed", alice_limited, req(INFO), ALICE_PW, True, "owner.self", None),
    # --- bans (I5)
    ("I5-banned-peer-store", mallory, req(S, MALLORY), None, False, "ban.peer", None),
    ("I5-banned-peer-info", mallory, req(INFO, MALLORY), cred(MALLORY), False, "ban.peer", None),
    (
        "I5-banned-owner-retrieved",
        wms,
        req(R, MALLORY, auth=CERT),
        cred(MALLORY, has_passphrase=False),
        False,
        "ban.owner",
        None,
    ),
    (
        "I5-banned-beats-limited",
        Principal(MALLORY, PrincipalKind.USER, limited=True),
        req(S, MALLORY),
        None,
        False,
        "ban.peer",
        None,
    ),
    # --- anonymous peers (MyProxy allows passphrase GET without a certificate)
    ("anonymous-pw-retrieve", anon, req(R, auth=PW), ALICE_PW, True, "retrieve.passphrase", False),
    ("anonymous-info", anon, req(INFO), ALICE_PW, False, "anonymous.denied", None),
    ("anonymous-store", anon, req(S), None, False, "anonymous.denied", None),
    # --- attributes
    (
        "voms-fqan-held",
        alice,
        req(Operation.ISSUE_AC, fqans=("/dteam",), held_fqans=("/dteam", "/dteam/analysis")),
        None,
        True,
        "voms.member",
        None,
    ),
    (
        "voms-fqan-not-held",
        alice,
        req(Operation.ISSUE_AC, fqans=("/dteam/Role=admin",), held_fqans=("/dteam",)),
        None,
        False,
        "voms.fqan_not_held",
        None,
    ),
    (
        "voms-not-member",
        carol,
        req(Operation.ISSUE_AC, fqans=("/dteam",)),
        None,
        False,
        "voms.not_member",
        None,
    ),
    (
        "retrieve-with-unheld-fqan",
        wms,
        req(R, auth=CERT, fqans=("/dteam/Role=admin",), held_fqans=("/dteam",)),
        ALICE_TRUSTED,
        False,
        "voms.fqan_not_held",
        None,
    ),
    # --- the task queue
    (
        "task-submit-own",
        alice,
        req(Operation.TASK_SUBMIT, fqans=("/dteam",), held_fqans=("/dteam",)),
        cred(),
        True,
        "task.owner",
        None,
    ),
    ("task-submit-for-other", bob, req(Operation.TASK_SUBMIT), None, False, "task.not_owner", None),
    # [taskqueue.limits]: the priority range of the task's FQANs, the owner's queue
    (
        "task-submit-priority-in-range",
        alice,
        req(Operation.TASK_SUBMIT, priority=10, priority_range=(-10, 10), queued=4, max_queued=5),
        cred(),
        True,
        "task.owner",
        None,
    ),
    (
        "task-submit-priority-above-range",
        alice,
        req(Operation.TASK_SUBMIT, priority=11, priority_range=(-10, 10)),
        cred(),
        False,
        "task.priority_not_allowed",
        None,
    ),
    (
        "task-submit-priority-below-range",
        alice,
        req(Operation.TASK_SUBMIT, priority=-11, priority_range=(-10, 10)),
        cred(),
        False,
        "task.priority_not_allowed",
        None,
    ),
    (
        "task-submit-owner-queue-full",
        alice,
        req(Operation.TASK_SUBMIT, priority=0, queued=5, max_queued=5),
        cred(),
        False,
        "task.owner_queue_full",
        None,
    ),
    (
        "task-submit-no-credential",
        alice,
        req(Operation.TASK_SUBMIT, fqans=("/dteam",), held_fqans=("/dteam",)),
        None,
        False,
        "task.credential_missing",
        None,
    ),
    (
        "task-submit-another-owners-credential",
        alice,
        req(Operation.TASK_SUBMIT, fqans=("/dteam",), held_fqans=("/dteam",)),
        cred(BOB),
        False,
        "task.credential_missing",
        None,
    ),
    (
        "task-submit-unheld-fqan",
        alice,
        req(Operation.TASK_SUBMIT, fqans=("/dteam/Role=admin",), held_fqans=("/dteam",)),
        cred(),
        False,
        "voms.fqan_not_held",
        None,
    ),
    (
        "I1-task-submit-limited",
        alice_limited,
        req(Operation.TASK_SUBMIT),
        None,
        False,
        "limited.peer",
        None,
    ),
    (
        "I2-pilot-submits-task",
        pilot,
        req(Operation.TASK_SUBMIT, PILOT),
        None,
        False,
        "pilot.restricted",
        None,
    ),
    ("task-match-pilot", pilot, req(Operation.TASK_MATCH, None), None, True, "task.pilot", True),
    (
        "task-match-not-pilot",
        wms,
        req(Operation.TASK_MATCH, None),
        None,
        False,
        "task.not_pilot",
        None,
    ),
    (
        "task-report-assigned",
        pilot,
        req(Operation.TASK_UPDATE, assignment=dataclasses.replace(LIVE, active=True)),
        None,
        True,
        "task.assigned_pilot",
        True,
    ),
    (
        "task-report-after-wall-time",
        pilot,
        req(Operation.TASK_UPDATE, assignment=dataclasses.replace(LIVE, live=False, active=True)),
        None,
        True,
        "task.assigned_pilot",
        True,
    ),
    (
        "task-report-finished",
        pilot,
        req(Operation.TASK_UPDATE, assignment=dataclasses.replace(LIVE, live=False, active=False)),
        None,
        False,
        "payload.assignment_ended",
        None,
    ),
    (
        "task-report-other-pilot",
        fqan_pilot,
        req(Operation.TASK_UPDATE, assignment=dataclasses.replace(LIVE, active=True)),
        None,
        False,
        "task.not_assigned",
        None,
    ),
    ("task-read-own", alice, req(Operation.TASK_READ), None, True, "task.owner", None),
    ("task-read-other", bob, req(Operation.TASK_READ), None, False, "task.not_owner", None),
    ("task-read-auditor", auditor, req(Operation.TASK_READ), None, True, "task.admins", None),
    ("task-cancel-own", alice, req(Operation.TASK_CANCEL), None, True, "task.owner", None),
    ("task-cancel-admin", admin, req(Operation.TASK_CANCEL), None, True, "task.admins", None),
    ("task-cancel-other", bob, req(Operation.TASK_CANCEL), None, False, "task.not_owner", None),
    # auditors read tasks, they do not change them
    (
        "task-cancel-auditor",
        auditor,
        req(Operation.TASK_CANCEL),
        None,
        False,
        "task.not_owner",
        None,
    ),
    (
        "task-cancel-own-limited",
        alice_limited,
        req(Operation.TASK_CANCEL),
        None,
        False,
        "task.limited",
        None,
    ),
    ("task-cancel-pilot", pilot, req(Operation.TASK_CANCEL), None, False, "pilot.restricted", None),
    ("task-reschedule-own", alice, req(Operation.TASK_RESCHEDULE), None, True, "task.owner", None),
    (
        "task-reschedule-admin",
        admin,
        req(Operation.TASK_RESCHEDULE),
        None,
        True,
        "task.admins",
        None,
    ),
    (
        "task-reschedule-other",
        bob,
        req(Operation.TASK_RESCHEDULE),
        None,
        False,
        "task.not_owner",
        None,
    ),
    (
        "task-reschedule-auditor",
        auditor,
        req(Operation.TASK_RESCHEDULE),
        None,
        False,
        "task.not_owner",
        None,
    ),
    (
        "task-reschedule-own-limited",
        alice_limited,
        req(Operation.TASK_RESCHEDULE),
        None,
        False,
        "task.limited",
        None,
    ),
    (
        "task-reschedule-pilot",
        pilot,
        req(Operation.TASK_RESCHEDULE),
        None,
        False,
        "pilot.restricted",
        None,
    ),
    # --- auditors and admins
    (
        "audit-read-not-listed",
        alice,
        req(Operation.AUDIT_READ, None),
        None,
        False,
        "audit_read.auditors",
        None,
    ),
]


@pytest.mark.parametrize(
    ("principal", "request_", "credential", "allowed", "rule", "limited"),
    [pytest.param(*row[1:], id=row[0]) for row in MATRIX],
)
def test_authorization_matrix(
    principal: Principal,
    request_: Request,
    credential: CredentialFacts | None,
    allowed: bool,
    rule: str,
    limited: bool | None,
) -> None:
    decision = decide(request_, principal, credential, CONFIG)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert decision.reason
    if limited is not None:
        assert decision.limited is limited


def test_matrix_is_large_enough() -> None:
    assert len(MATRIX) >= 40


# --- I4: lifetimes only shrink -------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "credential", "expected"),
    [
        (None, cred(has_passphrase=False), 12 * H),  # server maximum
        (2 * H, cred(has_passphrase=False), 2 * H),  # what was asked
        (20 * H, cred(has_passphrase=False, max_lifetime=3 * H), 3 * H),  # credential's maximum
        (
            20 * H,
            cred(has_passphrase=False, not_after=NOW + 90 * dt.timedelta(minutes=1)),
            90 * dt.timedelta(minutes=1),
        ),
    ],
    ids=["server-cap", "requested", "credential-max", "credential-expiry"],
)
def test_I4_lifetime_capped(
    requested: dt.timedelta | None, credential: CredentialFacts, expected: dt.timedelta
) -> None:
    decision = decide(req(R, auth=CERT, lifetime=requested), wms, credential, CONFIG)
    assert decision.allowed and decision.lifetime == expected


def test_I4_expired_credential_is_refused() -> None:
    decision = decide(
        req(R, auth=CERT),
        wms,
        cred(has_passphrase=False, not_after=NOW + dt.timedelta(seconds=30)),
        CONFIG,
    )
    assert (decision.allowed, decision.rule) == (False, "lifetime.exhausted")


def test_I4_payload_lifetime_capped_by_task_budget() -> None:
    a = replace(LIVE, time_left=dt.timedelta(minutes=20))
    decision = decide(req(Operation.PAYLOAD_PROXY, assignment=a), pilot, ALICE_TRUSTED, CONFIG)
    assert decision.allowed
    assert decision.lifetime == dt.timedelta(minutes=30)  # time left + 10 min margin


def test_I5_runtime_bans_win() -> None:
    decision = decide(req(R, auth=CERT), wms, ALICE_TRUSTED, CONFIG, Bans(hosts=(WMS,)))
    assert (decision.allowed, decision.rule) == (False, "ban.peer")
    decision = decide(req(R, auth=CERT), wms, ALICE_TRUSTED, CONFIG, Bans(users=(ALICE,)))
    assert (decision.allowed, decision.rule) == (False, "ban.owner")


def test_self_authorization_can_be_enabled_like_myproxy() -> None:
    config = replace(CONFIG, allow_self_authorization=True)
    decision = decide(req(N, proof=alice), alice, ALICE_PW, config)
    assert (decision.allowed, decision.rule) == (True, "renew.authorized")
    # ... but never for pilots (I2) or limited proofs (I1).
    assert decide(req(N, PILOT, proof=pilot), pilot, PILOT_PW, config).rule == "pilot.no_renewal"
    assert decide(req(N, proof=alice_limited), alice, ALICE_PW, config).rule == "limited.peer"
