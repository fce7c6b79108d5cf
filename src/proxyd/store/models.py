"""Typed ORM models; `migrations/versions` must create exactly these tables.

`tests/test_store.py` compares this metadata with the migrated schema, so a
model change without a migration fails the suite.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AuditHeadRow",
    "AuditRow",
    "BanRow",
    "Base",
    "CredentialRow",
    "FairShareRow",
    "SiteMaskRow",
    "TaskAccountingRow",
    "TaskRow",
    "TokenMapRow",
    "UTCDateTime",
    "VoMemberRow",
    "VoSeedRow",
]

# Deterministic constraint names, so migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DN_LEN = 1024
HASH_LEN = 64


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type and hands back naive values; PostgreSQL
    hands back the session's zone. Callers always get UTC, and a naive
    value is refused on the way in because its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give a zone")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CredentialRow(Base):
    """A stored credential: the public chain in clear, the private key sealed.

    Credentials are found the MyProxy way, by (username, name); the username
    is the account name a user chose at `myproxy-init -l` (the owner DN for
    credentials delegated over the HTTPS API).
    """

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("username", "name"),
        Index("ix_credentials_not_after", "not_after"),
        Index("ix_credentials_owner_dn", "owner_dn"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    owner_dn: Mapped[str] = mapped_column(String(DN_LEN))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text)
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str | None] = mapped_column(String(64))
    has_passphrase: Mapped[bool] = mapped_column(Boolean)
    retrievers: Mapped[list[str] | None] = mapped_column(JSON)
    renewers: Mapped[list[str] | None] = mapped_column(JSON)
    trusted_retrievers: Mapped[list[str] | None] = mapped_column(JSON)
    key_retrievers: Mapped[list[str] | None] = mapped_column(JSON)
    max_lifetime_s: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # An operator's lock (proxyd admin lock; migration 0006): every use is refused with
    # this message (1-512 printable characters) until it is lifted.
    lock_message: Mapped[str | None] = mapped_column(String(512))
    locked_by: Mapped[str | None] = mapped_column(String(DN_LEN))
    locked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        # Never the sealed key or the chain: reprs end up in logs (I7).
        return f"CredentialRow(id={self.id!r}, owner_dn={self.owner_dn!r}, name={self.name!r})"


class BanRow(Base):
    """A banned user, host or site pattern (I5: bans win)."""

    __tablename__ = "bans"
    __table_args__ = (
        UniqueConstraint("kind", "pattern"),
        CheckConstraint("kind IN ('user', 'host', 'site')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    pattern: Mapped[str] = mapped_column(String(DN_LEN))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(DN_LEN))


class AuditRow(Base):
    """One hash-chained audit event; `seq` is assigned by the appender under the head lock."""

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint("decision IN ('allow', 'deny')", name="decision"),
        Index("ix_audit_events_owner_dn_time", "owner_dn", "time"),
        # The auditor's first page by owner, newest first, whatever the owner (migration 0004).
        Index("ix_audit_events_owner_dn_seq_time", "owner_dn", "seq", "time"),
        Index("ix_audit_events_actor_dn_time", "actor_dn", "time"),
        Index("ix_audit_events_serial", "serial"),
        Index("ix_audit_events_decision_time", "decision", "time"),
        Index("ix_audit_events_time", "time"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor_dn: Mapped[str] = mapped_column(String(DN_LEN))
    actor_kind: Mapped[str] = mapped_column(String(32))
    peer: Mapped[str] = mapped_column(String(255))
    operation: Mapped[str] = mapped_column(String(64))
    owner_dn: Mapped[str | None] = mapped_column(String(DN_LEN))
    credential_name: Mapped[str | None] = mapped_column(String(255))
    rule: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(8))
    serial: Mapped[str | None] = mapped_column(String(64))
    lifetime_s: Mapped[int | None] = mapped_column(Integer)
    fqans: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    hash: Mapped[str] = mapped_column(String(HASH_LEN))


class AuditHeadRow(Base):
    """The single serialised append point of the audit chain (row id=1)."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(HASH_LEN))


# --- the task queue (proxyd.taskqueue.sql; migration 0002) ------------------------------

TASK_STATES = (
    "waiting",
    "matched",
    "running",
    "done",
    "failed",
    "stalled",
    "rescheduled",
    "cancelled",
)
QUEUED_STATES = ("waiting", "rescheduled")
ACTIVE_STATES = ("matched", "running")  # holds a pilot (the running limits count these)


class TaskRow(Base):
    """One task: what its owner asked for, and where it is in its life cycle.

    Lists (FQANs, sites, tags, arguments) are JSON. `attempts` counts
    matches; `pilot_dn`/`site` stay after the task ends, so the
    assignment can say whose it was (and that it is over).
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in TASK_STATES)), name="state"
        ),
        Index("ix_tasks_state_heartbeat_at", "state", "heartbeat_at"),
        Index("ix_tasks_owner_dn_state", "owner_dn", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_dn: Mapped[str] = mapped_column(String(DN_LEN))
    vo: Mapped[str] = mapped_column(String(64))
    group_name: Mapped[str] = mapped_column(String(255))
    fqans: Mapped[list[str]] = mapped_column(JSON)
    credential_username: Mapped[str] = mapped_column(String(255))
    credential_name: Mapped[str] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer)
    sites_allowed: Mapped[list[str]] = mapped_column(JSON)
    sites_banned: Mapped[list[str]] = mapped_column(JSON)
    platform: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON)
    cpu_time_s: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    command: Mapped[str] = mapped_column(Text)
    args: Mapped[list[str]] = mapped_column(JSON)
    input_files: Mapped[list[str]] = mapped_column(JSON)
    max_wall_s: Mapped[int] = mapped_column(Integer)
    max_cpu_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    pilot_dn: Mapped[str | None] = mapped_column(String(DN_LEN))
    pilot_id: Mapped[str | None] = mapped_column(String(255))
    site: Mapped[str | None] = mapped_column(String(255))
    ce: Mapped[str | None] = mapped_column(String(255))
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    matched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The running payload's log tail from its pilot's last heartbeat (migration 0011).
    live_log: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    # SHA-256 (hex) of the current attempt's assignment secret (migration 0005): only the
    # pilot instance holding the secret reports on the task and gets its proxies.
    secret_sha256: Mapped[str | None] = mapped_column(String(64))


# Matching reads one (group, owner) at a time in priority-then-submission order; the
# index holds queued tasks only, so it stays small however many tasks have finished.
Index(
    "ix_tasks_queue",
    TaskRow.group_name,
    TaskRow.owner_dn,
    TaskRow.priority.desc(),
    TaskRow.id,
    postgresql_where=TaskRow.state.in_(QUEUED_STATES),
    sqlite_where=TaskRow.state.in_(QUEUED_STATES),
)
# The site limits count a site's active tasks per group (migration 0008).
Index(
    "ix_tasks_active_site",
    TaskRow.site,
    TaskRow.group_name,
    postgresql_where=TaskRow.state.in_(ACTIVE_STATES),
    sqlite_where=TaskRow.state.in_(ACTIVE_STATES),
)


class TaskAccountingRow(Base):
    """What one attempt of a task used, as its pilot reported it.

    No foreign key to `tasks`: accounting is history and outlives purged tasks.
    """

    __tablename__ = "task_accounting"
    __table_args__ = (
        UniqueConstraint("task_id", "attempt"),
        CheckConstraint("outcome IN ('done', 'failed')", name="outcome"),
        Index("ix_task_accounting_owner_dn_finished_at", "owner_dn", "finished_at"),
        Index("ix_task_accounting_group_name_finished_at", "group_name", "finished_at"),
        Index("ix_task_accounting_site_finished_at", "site", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    owner_dn: Mapped[str] = mapped_column(String(DN_LEN))
    vo: Mapped[str] = mapped_column(String(64))
    group_name: Mapped[str] = mapped_column(String(255))
    site: Mapped[str] = mapped_column(String(255))
    pilot_dn: Mapped[str] = mapped_column(String(DN_LEN))
    outcome: Mapped[str] = mapped_column(String(16))
    cpu_s: Mapped[float] = mapped_column(Float)
    wall_s: Mapped[float] = mapped_column(Float)
    max_rss_kb: Mapped[int] = mapped_column(BigInteger)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    log_tail: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PendingDelegationRow(Base):
    """A delegation between its two HTTPS requests, so any worker or instance can finish it.

    The key the server made is already sealed (under the passphrase, or the
    master key) and bound to its (username, name); no secret is kept here.
    Rows are single-use and expire after a few minutes.
    """

    __tablename__ = "pending_delegations"
    __table_args__ = (Index("ix_pending_delegations_expires_at", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor_dn: Mapped[str] = mapped_column(String(DN_LEN))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)
    csr_pem: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SiteMaskRow(Base):
    """A site's mask state (I5: a masked site gets no work) and who set it last."""

    __tablename__ = "site_mask"

    site: Mapped[str] = mapped_column(String(255), primary_key=True)
    masked: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(DN_LEN))
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class FairShareRow(Base):
    """The usage of one owner in one group, for fair-share matching.

    `used_s` is finished wall time as it stood at `used_at` (it decays from
    there); `reserved_s` is the requested wall time of the pair's matched
    and running tasks. One row per pair that ever submitted.
    """

    __tablename__ = "fair_share"
    __table_args__ = (UniqueConstraint("group_name", "owner_dn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(255))
    owner_dn: Mapped[str] = mapped_column(String(DN_LEN))
    used_s: Mapped[float] = mapped_column(Float)
    used_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reserved_s: Mapped[int] = mapped_column(BigInteger)
    # How many of the pair's tasks are matched or running (migration 0008).
    running: Mapped[int] = mapped_column(Integer, server_default="0")


# --- VO membership of proxyd's own attribute authority (proxyd.store.members; migration 0007) ---


class VoMemberRow(Base):
    """A member of a VO and the FQANs (groups, group/role pairs) the member holds."""

    __tablename__ = "vo_members"
    __table_args__ = (UniqueConstraint("vo", "dn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vo: Mapped[str] = mapped_column(String(255))
    dn: Mapped[str] = mapped_column(String(DN_LEN))
    fqans: Mapped[list[str]] = mapped_column(JSON)  # normalised (voms_ext.parse_fqan), in order
    added_by: Mapped[str] = mapped_column(String(DN_LEN))
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Set together while a VO admin has the member suspended (migration 0012), else NULL.
    suspended_reason: Mapped[str | None] = mapped_column(Text)
    suspended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class VoSeedRow(Base):
    """A VO whose `[voms.members]` table was copied into `vo_members`: never again (DB wins)."""

    __tablename__ = "vo_seeds"

    vo: Mapped[str] = mapped_column(String(255), primary_key=True)
    seeded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    members: Mapped[int] = mapped_column(Integer)


# --- expiry reminders (proxyd.store.reminders; migration 0009) --------------------------------


class ReminderRow(Base):
    """A reminder sent (or being sent) for one credential, end and horizon: once, by anyone."""

    __tablename__ = "expiry_reminders"
    __table_args__ = (UniqueConstraint("credential_id", "not_after", "horizon_s"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    credential_id: Mapped[int] = mapped_column(Integer)
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    horizon_s: Mapped[int] = mapped_column(Integer)
    owner_dn: Mapped[str] = mapped_column(String(DN_LEN))
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    channels: Mapped[str] = mapped_column(String(64))


class OwnerContactRow(Base):
    """Where an owner wants reminders (PUT /v1/contact); over the certificate's own address."""

    __tablename__ = "owner_contacts"

    owner_dn: Mapped[str] = mapped_column(String(DN_LEN), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# --- token mappings (proxyd.store.token_map; migration 0010) ----------------------------------


class TokenMapRow(Base):
    """The owner DN a token's (issuer, subject) acts as: token exchange and bearer tokens."""

    __tablename__ = "token_map"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(DN_LEN))
    subject: Mapped[str] = mapped_column(String(255))
    owner_dn: Mapped[str] = mapped_column(String(DN_LEN))
    added_by: Mapped[str] = mapped_column(String(DN_LEN))
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
