"""Engines, migrations, sessions, and the transaction kinds that differ per backend.

Everything dialect-specific about *how* a transaction starts lives here, so
callers such as the audit log say what they need (`write_transaction`,
`snapshot_transaction`) and stay the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "make_engine",
    "migrate",
    "require_proxyd_engine",
    "session_factory",
    "snapshot_transaction",
    "write_transaction",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Execution option read by the SQLite "begin" hook: which BEGIN to emit.
_SQLITE_BEGIN = "proxyd_sqlite_begin"
_SQLITE_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE"})
_SQLITE_BUSY_TIMEOUT_MS = 10000
# pg_advisory_xact_lock key that serialises migrations of several instances.
_MIGRATION_LOCK_KEY = 0x70726F7879  # "proxy"


def make_engine(url: str | URL) -> Engine:
    """An engine configured for proxyd on SQLite or PostgreSQL.

    SQLite gets WAL (readers do not block the writer), foreign keys, a busy
    timeout, and SQLAlchemy-controlled BEGIN so `write_transaction` can take
    the write lock up front. A new SQLite file is created 0600 in a 0700
    directory because it holds sealed keys.
    """
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True)
    _create_sqlite_file(u)
    engine = create_engine(u)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (one session per unit of work)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Alembic configuration for the migrations shipped in this package (no alembic.ini)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head; safe when several instances start at once."""
    cfg = alembic_config()
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def require_proxyd_engine(engine: Engine) -> None:
    """Refuse an SQLite engine that cannot take the write lock up front (see `make_engine`)."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "begin", _sqlite_on_begin):
        raise ValueError(
            "this SQLite engine was not made by proxyd.store.db.make_engine, so it cannot "
            "begin write transactions with BEGIN IMMEDIATE"
        )


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction meant to write, committed on success.

    SQLite: ``BEGIN IMMEDIATE``, so the database write lock is held from
    the first statement and a read-then-write sequence cannot interleave
    with another writer. PostgreSQL: READ COMMITTED; callers lock the rows
    they depend on with ``SELECT ... FOR UPDATE``, and after waiting for
    such a lock they see the row as the previous holder committed it.
    """
    require_proxyd_engine(engine)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
        elif conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            yield conn


@contextmanager
def snapshot_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one consistent snapshot for all its statements.

    SQLite in WAL mode gives that to any read transaction; PostgreSQL
    needs REPEATABLE READ.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def _create_sqlite_file(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 module (it would only BEGIN before
    # DML and always DEFERRED); `_sqlite_on_begin` emits it instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    if mode not in _SQLITE_BEGIN_MODES:
        raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
    conn.exec_driver_sql(f"BEGIN {mode}")
