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

__all__ = ["AuditHeadRow", "AuditRow", "BanRow", "Base", "CredentialRow", "UTCDateTime"]

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
