"""The JSON request bodies of the HTTPS API, as msgspec models.

One model per body. A handler decodes its body with the model
(`util.read_body`) and the OpenAPI document is generated from the same
model (`openapi.build_openapi`), so what the document states is what the
gate enforces. Lengths, ranges and list sizes are stated here, with the
queue's own bounds (`proxyd.taskqueue.validation`) where a field feeds the queue.
Rules that need the core stay there and run after decoding: names
(`proxyd.names`), FQANs, site spellings and the server's configured limits.

Unknown fields are ignored, as they were before these models: a newer
client may send a field an older server does not know. A `null` means the
field's default, as it did before, so optional fields are `T | None` and
the handler applies the default (stated in the field's description).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from ..taskqueue.validation import (
    EXIT_CODE_RANGE,
    LIST_MAX,
    LOG_TAIL_MAX,
    MAX_CPU_S,
    MAX_MEMORY_MB,
    MAX_PRIORITY,
    MAX_RSS_KB,
    MAX_WALL_S,
    MIN_PRIORITY,
    REASON_MAX,
)

LIFETIME_MAX_S = 10 * 365 * 86400
AC_LIFETIME_S = 12 * 3600  # the lifetime of VOMS ACs when the client names none
ACL_MAX = 64
SECRET_MAX = 256
SITE_REASON_MAX = 1000
TASK_SECONDS = 12 * 3600  # max_wall_s and max_cpu_s of a task that names none
FAIL_REASON = "failed"
PILOT_ID = "pilot"


class Body(msgspec.Struct, frozen=True):
    """The base of every request body model."""


def _about(text: str) -> Meta:
    return Meta(description=text)


# --- shared field types -------------------------------------------------------------------------

Lifetime = Annotated[int, Meta(ge=1, le=LIFETIME_MAX_S)]  # seconds
NonEmpty = Annotated[str, Meta(min_length=1)]
DnPatterns = Annotated[
    list[NonEmpty],
    Meta(
        max_length=ACL_MAX,
        description=(
            "MyProxy DN patterns, each one regular expression in MyProxy's language "
            "(`*`: any run of characters, `?`: one character, `.` literal, `|`, `( )`, "
            "`[ ]` as in POSIX; an `FQAN:` prefix matches the peer's VOMS FQANs); "
            "see docs/myproxy.md, Patterns"
        ),
    ),
]
VomsList = Annotated[
    list[NonEmpty],
    Meta(
        max_length=ACL_MAX,
        description='"vo" or "vo:/fqan" each (e.g. "dteam", "dteam:/dteam/Role=production")',
    ),
]
Names = Annotated[list[str], Meta(max_length=LIST_MAX)]
Secret = Annotated[
    str,
    Meta(
        max_length=SECRET_MAX,
        description=(
            "the assignment_secret of the match; without it, or with another one, "
            "the answer is 403 payload.wrong_instance"
        ),
    ),
]
Csr = Annotated[str, _about("a PEM PKCS#10 certificate request")]


# --- delegation, credentials, proxies, ACs (app.py) --------------------------------------------


class DelegationRequest(Body, frozen=True, kw_only=True):
    """Start a delegation: the server makes a key pair and answers with its CSR.

    Names are checked as proxyd.names says: a username is 1 to 255
    characters, a credential name 1 to 64 letters, digits and `. _ - @ + :`,
    a description at most 1024 characters, and none has control characters.
    """

    name: Annotated[str, _about('the credential name; default: "default"')] | None = None
    username: Annotated[str, _about("default: the client's DN")] | None = None
    lifetime: (
        Annotated[Lifetime, _about("the maximum lifetime of proxies issued from it, seconds")]
        | None
    ) = None
    passphrase: (
        Annotated[str, _about("absent or empty: stored for trusted retrieval and renewal only")]
        | None
    ) = None
    description: str | None = None
    retrievers: DnPatterns | None = None
    renewers: DnPatterns | None = None
    trusted_retrievers: DnPatterns | None = None


class DelegationChain(Body, frozen=True, kw_only=True):
    """Finish a delegation with the signed proxy chain."""

    chain: Annotated[
        str,
        _about(
            "PEM: the proxy the client signed for the CSR's key, then the client's own chain "
            "up to and including its end-entity certificate"
        ),
    ]


class ProxyRequest(Body, frozen=True, kw_only=True):
    """Issue a proxy of a stored credential for a CSR (its subject and extensions are ignored)."""

    csr: Csr
    lifetime: Annotated[Lifetime, _about("seconds")] | None = None
    voms: VomsList | None = None
    passphrase: (
        Annotated[str, _about("absent or empty: a trusted retrieval, which gets a limited proxy")]
        | None
    ) = None
    full: Annotated[bool, _about("default: false")] | None = None


class AcRequest(Body, frozen=True, kw_only=True):
    """VOMS attribute certificates, issued to the client's end-entity certificate."""

    voms: Annotated[VomsList, Meta(min_length=1)]
    lifetime: Annotated[Lifetime, _about(f"seconds; default: {AC_LIFETIME_S}")] | None = None


# --- tasks and pilots (tasks.py) ---------------------------------------------------------------


class TaskCredential(Body, frozen=True, kw_only=True):
    """The owner's stored credential that the task's payload proxies are issued from."""

    username: Annotated[str, _about("default: the owner's DN")] | None = None
    name: Annotated[str, _about('default: "default"')] | None = None


class TaskRequirements(Body, frozen=True, kw_only=True):
    """What the task needs from a pilot; empty means anything."""

    sites_allowed: Names | None = None
    sites_banned: Names | None = None
    platform: str | None = None
    tags: Names | None = None
    cpu_time: Annotated[int, Meta(ge=0, le=MAX_CPU_S, description="CPU seconds")] | None = None
    memory_mb: Annotated[int, Meta(ge=0, le=MAX_MEMORY_MB)] | None = None


class TaskPayload(Body, frozen=True, kw_only=True):
    """What the pilot runs."""

    command: str
    args: Names | None = None
    input_files: Names | None = None


class TaskSubmission(Body, frozen=True, kw_only=True):
    """A task, submitted by its owner (the client)."""

    payload: TaskPayload
    vo: str | None = None
    group: Annotated[str, _about("the VO group the task is accounted to")] | None = None
    fqans: Annotated[Names, _about("default: the group")] | None = None
    priority: (
        Annotated[int, Meta(ge=MIN_PRIORITY, le=MAX_PRIORITY, description="default: 0")] | None
    ) = None
    credential: TaskCredential | None = None
    requirements: TaskRequirements | None = None
    max_wall_s: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_WALL_S,
                description=(
                    "seconds from the match, at most the server's [taskqueue] max_wall_time; "
                    f"default: {TASK_SECONDS}"
                ),
            ),
        ]
        | None
    ) = None
    max_cpu_s: (
        Annotated[int, Meta(ge=1, le=MAX_CPU_S, description=f"default: {TASK_SECONDS}")] | None
    ) = None


class PilotOffer(Body, frozen=True, kw_only=True):
    """What a pilot offers when it asks for work."""

    site: str | None = None
    ce: str | None = None
    platform: str | None = None
    tags: Names | None = None
    cpu_time_left: Annotated[int, Meta(ge=0, le=MAX_CPU_S)] | None = None
    memory_mb: Annotated[int, Meta(ge=0, le=MAX_MEMORY_MB)] | None = None
    pilot_id: Annotated[str, _about(f'default: "{PILOT_ID}"')] | None = None


class PresentSecret(Body, frozen=True, kw_only=True):
    """The pilot instance's proof that it holds the task."""

    assignment_secret: Secret | None = None


class TaskProxyRequest(PresentSecret, frozen=True, kw_only=True):
    """A limited proxy of the task's owner, for the payload."""

    csr: Csr


class Heartbeat(PresentSecret, frozen=True, kw_only=True):
    """The pilot is alive; with the end of the running payload's output, for its owner."""

    log_tail: (
        Annotated[str, Meta(max_length=LOG_TAIL_MAX, description="the end of the payload's output")]
        | None
    ) = None


class CompleteReport(PresentSecret, frozen=True, kw_only=True):
    """The payload's accounting, as its pilot measured it."""

    cpu_s: Annotated[float, Meta(ge=0, le=MAX_CPU_S)] | None = None
    wall_s: Annotated[float, Meta(ge=0, le=MAX_WALL_S)] | None = None
    max_rss_kb: Annotated[int, Meta(ge=0, le=MAX_RSS_KB)] | None = None
    exit_code: Annotated[int, Meta(ge=EXIT_CODE_RANGE[0], le=EXIT_CODE_RANGE[1])] | None = None
    log_tail: (
        Annotated[str, Meta(max_length=LOG_TAIL_MAX, description="the end of the payload's output")]
        | None
    ) = None


class FailReport(CompleteReport, frozen=True, kw_only=True):
    """The payload failed; its accounting is recorded when `cpu_s` or `wall_s` is given."""

    reason: (
        Annotated[str, Meta(max_length=REASON_MAX, description=f'default: "{FAIL_REASON}"')] | None
    ) = None


class SiteMask(Body, frozen=True, kw_only=True):
    """Mask a site (no pilot there gets work), or unmask it."""

    masked: bool
    reason: Annotated[str, Meta(max_length=SITE_REASON_MAX)] | None = None


class Reschedule(Body, frozen=True, kw_only=True):
    """Queue a task again (its owner or an admin); the reason goes to the task and the audit."""

    reason: Annotated[str, Meta(max_length=SITE_REASON_MAX)] | None = None


class OwnerBan(Body, frozen=True, kw_only=True):
    """Ban a task owner (a DN pattern) from the queue, or lift the ban."""

    dn: NonEmpty
    banned: bool
    reason: Annotated[str, _about("kept to its first 1000 characters")] | None = None


# --- VO members (admins; proxyd.api.members) ----------------------------------------------------

MemberDn = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=1024,
        description='the member\'s certificate subject in /-separated form, e.g. "/DC=org/CN=Alice"',
    ),
]
Fqan = Annotated[
    str,
    Meta(min_length=1, max_length=255, description='e.g. "/dteam" or "/dteam/Role=production"'),
]


class VoMemberAdd(Body, frozen=True, kw_only=True):
    """Make a DN a member of the VO of the path, holding FQANs."""

    dn: MemberDn
    fqans: (
        Annotated[list[Fqan], Meta(max_length=ACL_MAX, description="default: the root group /VO")]
        | None
    ) = None


class VoMemberRemove(Body, frozen=True, kw_only=True):
    """Remove a member from the VO of the path."""

    dn: MemberDn


class VoMemberFqan(Body, frozen=True, kw_only=True):
    """Let a member hold one more FQAN (grant), or take one (revoke)."""

    dn: MemberDn
    fqan: Fqan


class VoMemberSuspend(Body, frozen=True, kw_only=True):
    """Suspend a member of the VO of the path: it keeps its FQANs but gets no AC."""

    dn: MemberDn
    reason: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=200,
            description="why, 1 to 200 printable characters; the member sees it when refused",
        ),
    ]
