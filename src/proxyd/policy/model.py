"""The values policy decides over: operations, requests, credential facts, decisions.

Frozen dataclasses with no behaviour beyond what a value needs (`Bans.matches`),
so that every module may import them without importing the rules.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import enum
from dataclasses import dataclass, field

from ..patterns import any_dn_denied
from ..principal import Principal

MIN_LIFETIME = dt.timedelta(minutes=1)


class Operation(enum.StrEnum):
    STORE = "store"
    RETRIEVE = "retrieve"
    RENEW = "renew"
    INFO = "info"
    DESTROY = "destroy"
    CHANGE_PASSPHRASE = "change_passphrase"  # noqa: S105 - an operation name
    RETRIEVE_KEY = "retrieve_key"
    ISSUE_AC = "issue_ac"
    PAYLOAD_PROXY = "payload_proxy"
    AUDIT_READ = "audit_read"
    METRICS_READ = "metrics_read"
    ADMIN = "admin"
    TASK_SUBMIT = "task_submit"
    TASK_READ = "task_read"
    TASK_MATCH = "task_match"
    TASK_UPDATE = "task_update"
    TASK_CANCEL = "task_cancel"
    TASK_RESCHEDULE = "task_reschedule"
    PAYLOAD_TOKEN = "payload_token"  # noqa: S105 - an operation name (a WLCG token for a payload)
    REMIND = "remind"  # an expiry reminder to a credential's owner
    SET_CONTACT = "set_contact"  # an owner's address for reminders
    TOKEN_EXCHANGE = "token_exchange"  # noqa: S105 - an operation name (RFC 8693, token -> proxy)
    VO_MEMBERS = "vo_members"  # the members of a VO of proxyd's own AA (proxyd admin vo)


class AuthMethod(enum.StrEnum):
    NONE = "none"
    PASSPHRASE = "passphrase"  # noqa: S105 - an authentication method name
    CERTIFICATE = "certificate"  # trusted retrieval: the peer's certificate alone


@dataclass(frozen=True)
class CredentialFacts:
    """What policy may know about a stored credential (never its key)."""

    owner: str
    name: str
    has_passphrase: bool
    not_after: dt.datetime
    max_lifetime: dt.timedelta
    owner_is_pilot: bool = False
    retrievers: tuple[str, ...] | None = None
    renewers: tuple[str, ...] | None = None
    trusted_retrievers: tuple[str, ...] | None = None
    key_retrievers: tuple[str, ...] | None = None
    # An operator's lock (`proxyd admin lock`): the message shown to whoever asks for it.
    lock_message: str | None = None
    # The stored chain checked anew against the current trust store and CRLs, on the
    # paths that use it: None (valid, or not checked), "revoked", "expired" or "untrusted";
    # `chain_problem` says why, for the client.
    chain_verdict: str | None = None
    chain_problem: str = ""


@dataclass(frozen=True)
class Assignment:
    """The task queue's word on which payload a pilot currently holds."""

    pilot: str
    task_id: int
    owner: str
    credential_name: str
    live: bool  # matched or running, with wall time left: proxies may be handed out
    time_left: dt.timedelta
    # Matched or running, whatever the time left: the pilot may still report on it
    # (a payload killed for exceeding its wall time is, by definition, out of time).
    active: bool = False
    # The asking pilot presented this attempt's assignment secret: it is the pilot
    # instance the task was matched to, not a sibling sharing its certificate (I2).
    instance_ok: bool = False
    # Which match of the task this is (1 for the first): every attempt has its own secret,
    # so the pilot of an earlier attempt holds nothing of a later one.
    attempt: int = 0


@dataclass(frozen=True)
class Bans:
    """Runtime bans (from the store), on top of `banned_dns` in the config."""

    users: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def matches(self, dn: str) -> bool:
        """A deny rule: every spelling of a banned name matches (patterns.dn_denied)."""
        return any_dn_denied((*self.users, *self.hosts), dn)


NO_BANS = Bans()


@dataclass(frozen=True)
class Request:
    operation: Operation
    owner: str | None = None
    name: str | None = None
    username: str | None = None  # the MyProxy account name a credential is stored under
    auth: AuthMethod = AuthMethod.NONE
    lifetime: dt.timedelta | None = None
    want_full: bool = False
    fqans: tuple[str, ...] = ()
    held_fqans: tuple[str, ...] = ()
    proof: Principal | None = None
    assignment: Assignment | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # task_match: the (normalised) site the pilot claims, and the sites an operator bound
    # this pilot's DN to ([taskqueue] pilot_sites; None: not bound).
    site: str | None = None
    allowed_sites: frozenset[str] | None = None
    # task_update: why the task's life cycle refuses the reported event right now
    # (e.g. complete before start); None when it allows it.
    state_conflict: str | None = None
    # task_submit, [taskqueue.limits]: the task's priority and the range its FQANs allow
    # (None: unlimited), and how many tasks the owner has queued against the most allowed.
    priority: int | None = None
    priority_range: tuple[int, int] | None = None
    queued: int | None = None
    max_queued: int | None = None
    # token_exchange: the groups the token names in its issuer's VO (normalised); `fqans`
    # is what of them the owner holds (the intersection, issue 19), `held_fqans` all it holds.
    token_groups: tuple[str, ...] = ()
    # issue_ac and issuing with ACs of a local AA: (VO, why a VO admin suspended the owner
    # there) for a requested VO the owner is suspended in (`proxyd admin vo suspend`).
    suspended: tuple[str, str] | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reason: str
    limited: bool = True
    lifetime: dt.timedelta | None = None


class DecisionTally:
    """How many decisions one request made. The HTTPS edge checks it is non-zero
    before answering a non-open route with success: no route can hand anything
    out without asking this module. A mutable object, so that decisions made in
    worker threads (which run in a copy of the request's context) still count."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


current_tally: contextvars.ContextVar[DecisionTally | None] = contextvars.ContextVar(
    "current_tally", default=None
)


# `proxyd admin` and `proxyd-audit --config`: built on the server, never from a network peer.
LOCAL_OPERATOR = Decision(
    True, "admin.local_operator", "the local operator of the server", limited=False
)
