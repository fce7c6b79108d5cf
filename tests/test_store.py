"""The store schema: migrations, models and the backends agree."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from proxyd.audit import AuditLog
from proxyd.store import BanRow, Base, CredentialRow, make_engine, migrate, session_factory
from proxyd.store.db import write_transaction
from tests import store_fixtures

engine = store_fixtures.engine  # the fixture: every test taking `engine` runs per backend

NOT_BEFORE = dt.datetime(2025, 11, 25, 8, 0, 0, 123456, tzinfo=dt.UTC)
ALICE = "/DC=org/DC=example/CN=Alice"


def _credential(**overrides: object) -> CredentialRow:
    values: dict[str, object] = {
        "username": "alice",
        "owner_dn": ALICE,
        "name": "default",
        "chain_pem": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
        "sealed_key": b"PXSK\x01\x01sealed",
        "master_key_id": "0a1b2c3d",
        "has_passphrase": False,
        "retrievers": ["/DC=org/DC=example/CN=wms.example.org"],
        "renewers": None,
        "trusted_retrievers": [],
        "key_retrievers": None,
        "max_lifetime_s": 12 * 3600,
        # A non-UTC zone on the way in: it must come back as the same instant in UTC.
        "not_before": NOT_BEFORE.astimezone(dt.timezone(dt.timedelta(hours=2))),
        "not_after": NOT_BEFORE + dt.timedelta(days=7),
    }
    values.update(overrides)
    return CredentialRow(**values)


def test_credential_roundtrip(engine: Engine) -> None:
    Session = session_factory(engine)
    with Session.begin() as session:
        session.add(_credential(description="for the WMS"))
    with Session() as session:
        row = session.scalars(select(CredentialRow)).one()
    assert (row.owner_dn, row.name, row.description) == (ALICE, "default", "for the WMS")
    assert row.sealed_key == b"PXSK\x01\x01sealed"
    assert row.retrievers == ["/DC=org/DC=example/CN=wms.example.org"]
    assert row.trusted_retrievers == [] and row.renewers is None
    assert row.has_passphrase is False and row.max_lifetime_s == 43200
    for value in (row.not_before, row.not_after, row.created_at, row.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)
    assert row.not_before == NOT_BEFORE and row.not_before.microsecond == 123456
    assert "sealed" not in repr(row) and "CERTIFICATE" not in repr(row)


def test_username_and_name_are_unique(engine: Engine) -> None:
    Session = session_factory(engine)
    with Session.begin() as session:
        session.add(_credential())
        session.add(_credential(username="bob", owner_dn="/DC=org/DC=example/CN=Bob"))
        session.add(_credential(name="second"))
    with pytest.raises(IntegrityError), Session.begin() as session:
        session.add(_credential())


def test_ban_kind_and_pattern_are_unique(engine: Engine) -> None:
    Session = session_factory(engine)
    ban = {"pattern": "/DC=org/DC=example/CN=Mallory", "reason": "stolen", "created_by": ALICE}
    with Session.begin() as session:
        session.add(BanRow(kind="user", **ban))
        session.add(BanRow(kind="host", **ban))
    with pytest.raises(IntegrityError), Session.begin() as session:
        session.add(BanRow(kind="user", **ban))
    with pytest.raises(IntegrityError), Session.begin() as session:
        session.add(BanRow(kind="planet", **ban))


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    Session = session_factory(engine)
    with pytest.raises(StatementError, match="naive datetime"), Session.begin() as session:
        session.add(_credential(not_after=dt.datetime(2030, 1, 1)))


def test_migrated_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migration_seeds_the_audit_head_and_is_idempotent(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        head = conn.execute(text("SELECT id, last_seq, last_hash FROM audit_head")).all()
    assert [tuple(r) for r in head] == [(1, 0, "0" * 64)]
    names = set(inspect(engine).get_table_names())
    assert {"credentials", "bans", "audit_events", "audit_head"} <= names


def test_sqlite_file_is_private_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "proxyd.db"
    eng = make_engine(f"sqlite:///{path}")
    try:
        migrate(eng)
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
    finally:
        eng.dispose()


def test_write_transaction_refuses_a_foreign_sqlite_engine(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    eng = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="make_engine"), write_transaction(eng):
        pass
    with pytest.raises(ValueError, match="make_engine"):
        AuditLog(eng)
    eng.dispose()
