"""Core statements run straight on the database driver's cursor, for the request hot paths.

SQLAlchemy's per-statement machinery (events, execution context, result
objects) costs several times what SQLite or PostgreSQL spend on a
primary-key read, a tiny-table read or the audit chain's three statements.
A `DriverStatement` keeps what matters of SQLAlchemy -- the SQL text for
the dialect, its parameter style, and the bind and result conversions of
the column types (UTC datetimes, JSON lists, booleans) -- resolved once,
and runs on a DB-API cursor of a connection the caller already holds, so
it takes part in that connection's transaction.

Only plain statements qualify: no expanding IN lists or other parameters
that SQLAlchemy renders at execution time.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Connection, Dialect, Engine, Select
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.sql.dml import UpdateBase

__all__ = ["DriverStatement", "PerDialect", "connection_cursor", "pooled_cursor"]

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]


class DriverStatement:
    """A Core SELECT, INSERT, UPDATE or DELETE compiled once for `dialect`.

    `run` executes it with named parameters (the `bindparam` names, or the
    column keys of an INSERT without values) and returns the rows, already
    converted to Python values; bound literals in the statement need no
    parameter. `literal_binds` renders those literals into the SQL text.
    """

    def __init__(
        self,
        stmt: Select[Any] | UpdateBase,
        dialect: Dialect,
        *,
        literal_binds: bool = False,
    ) -> None:
        kwargs = {"literal_binds": True} if literal_binds else {}
        compiled = stmt.compile(dialect=dialect, compile_kwargs=kwargs)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a DriverStatement cannot hold parameters rendered at execution")
        self.sql: str = compiled.string
        self._positional = bool(dialect.positional)
        escaped = dict(compiled.escaped_bind_names)
        unescape = {v: k for k, v in escaped.items()}
        self._order = tuple(unescape.get(n, n) for n in compiled.positiontup or ())
        self._escaped = escaped
        params = compiled.bind_names.items()
        self._required = frozenset(name for bp, name in params if bp.required)
        self._defaults = {
            name: bp.value for bp, name in params if not bp.required and bp.callable is None
        }
        self._bind = {
            name: proc
            for bp, name in params
            if (proc := bp.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self._convert = [
            col.type.dialect_impl(dialect).result_processor(dialect, None)
            for col in stmt.exported_columns
        ]

    def params(self, values: Mapping[str, Any] | None = None) -> Params:
        """`values` as the driver takes them: converted, in the dialect's parameter style."""
        merged = {**self._defaults, **values} if values else dict(self._defaults)
        if missing := self._required.difference(merged):
            raise KeyError(f"no value for the statement parameters {sorted(missing)}")
        for name, to_db in self._bind.items():
            if name in merged:
                merged[name] = to_db(merged[name])
        if self._positional:
            return [merged[n] for n in self._order]
        if self._escaped:
            return {self._escaped.get(k, k): v for k, v in merged.items()}
        return merged

    def run(
        self, cursor: DBAPICursor, values: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Execute once; the rows it returns (none for a statement without RETURNING)."""
        cursor.execute(self.sql, self.params(values))
        if cursor.description is None:
            return []
        convert = self._convert
        if not any(convert):
            return [tuple(row) for row in cursor.fetchall()]
        return [
            tuple(f(v) if f is not None else v for f, v in zip(convert, row, strict=True))
            for row in cursor.fetchall()
        ]

    def run_many(self, cursor: DBAPICursor, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per parameter set (an INSERT of many rows); returns nothing."""
        if len(rows) == 1:  # psycopg runs executemany as a pipeline: a round trip more
            cursor.execute(self.sql, self.params(rows[0]))
        elif rows:
            batch = [self.params(r) for r in rows]  # all in the dialect's one style
            cursor.executemany(
                self.sql, cast(Sequence[Sequence[Any]] | Sequence[dict[str, Any]], batch)
            )


class PerDialect(Generic[T]):
    """One `build(dialect)` per dialect, made on first use and shared between threads.

    For module-level statement sets: a process has one or two dialects, and
    an engine disposed of releases its entry (the dialect is weakly held).
    """

    def __init__(self, build: Callable[[Dialect], T]) -> None:
        self._build = build
        self._built: weakref.WeakKeyDictionary[Dialect, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, dialect: Dialect) -> T:
        built = self._built.get(dialect)
        if built is None:
            with self._lock:
                built = self._built.get(dialect)
                if built is None:
                    built = self._built[dialect] = self._build(dialect)
        return built


@contextmanager
def connection_cursor(conn: Connection) -> Iterator[DBAPICursor]:
    """A driver cursor on `conn`'s connection: its statements join `conn`'s transaction."""
    cursor = conn.connection.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


@contextmanager
def pooled_cursor(engine: Engine) -> Iterator[DBAPICursor]:
    """A driver cursor on a pooled connection; the pool rolls it back when it returns."""
    fairy = engine.raw_connection()
    try:
        cursor = fairy.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
    finally:
        fairy.close()
