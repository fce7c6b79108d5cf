"""The request-path reads of credentials and bans: compiled once per dialect, run on the driver's cursor."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Dialect, Select, bindparam, select
from sqlalchemy.engine import Engine

from ..policy import Bans
from ..store.models import BanRow, CredentialRow

_CRED = CredentialRow.__table__.c
_BAN = BanRow.__table__.c


# The columns of a credential as the request paths read it, in the order of
# proxyd.core.values.StoredCredential's fields (which checks the two agree).
STORED_FIELDS = (
    "id",
    "username",
    "owner_dn",
    "name",
    "description",
    "chain_pem",
    "sealed_key",
    "master_key_id",
    "has_passphrase",
    "retrievers",
    "renewers",
    "trusted_retrievers",
    "key_retrievers",
    "max_lifetime_s",
    "not_before",
    "not_after",
    "lock_message",
)
_STORED_COLUMNS = tuple(_CRED[name] for name in STORED_FIELDS)


_FIND = select(*_STORED_COLUMNS).where(
    _CRED.username == bindparam("username"), _CRED.name == bindparam("name")
)
_FIND_ALL = (
    select(*_STORED_COLUMNS).where(_CRED.username == bindparam("username")).order_by(_CRED.name)
)
_BANS = select(_BAN.kind, _BAN.pattern)


class DriverQuery:
    """A Core SELECT compiled once per dialect and run on the driver's cursor.

    The request paths read one credential and the bans per request; SQLAlchemy's
    per-statement machinery (events, execution context, result objects) cost
    several times what SQLite or PostgreSQL spend on these primary-key and
    tiny-table reads. The SQL, parameter style and the bind and result
    conversions (UTC datetimes, JSON lists, booleans) are SQLAlchemy's own,
    resolved once for the dialect.
    """

    def __init__(self, stmt: Select[Any], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self._positional = bool(dialect.positional)
        self._order = tuple(compiled.positiontup or ())
        self._bind = {
            name: proc
            for name, param in compiled.binds.items()
            if (proc := param.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self._convert = [
            col.type.dialect_impl(dialect).result_processor(dialect, None)
            for col in stmt.selected_columns
        ]

    def run(self, cursor: Any, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        values = dict(params or {})
        for name, to_db in self._bind.items():
            if name in values:
                values[name] = to_db(values[name])
        cursor.execute(self.sql, [values[n] for n in self._order] if self._positional else values)
        convert = self._convert
        return [
            tuple(f(v) if f is not None else v for f, v in zip(convert, row, strict=True))
            for row in cursor.fetchall()
        ]


class CredentialReads:
    """The request-path reads of one engine, compiled for its dialect."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.find = DriverQuery(_FIND, dialect)
        self.find_all = DriverQuery(_FIND_ALL, dialect)
        self.bans = DriverQuery(_BANS, dialect)

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A driver cursor on a pooled connection; the pool rolls it back when it returns."""
        fairy = self.engine.raw_connection()
        try:
            cursor = fairy.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        finally:
            fairy.close()


def bans_of(rows: Sequence[Any]) -> Bans:
    return Bans(
        users=tuple(p for k, p in rows if k == "user"),
        hosts=tuple(p for k, p in rows if k == "host"),
    )
