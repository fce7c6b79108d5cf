"""The `engine` fixture: a migrated database on SQLite and on PostgreSQL.

Import it into a test module (`from tests.store_fixtures import engine`)
and every test that takes `engine` runs once per backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from proxyd.store import make_engine, migrate

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A fresh empty database for `backend` ("sqlite" file or throw-away PostgreSQL)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'proxyd.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated engine from `make_engine`, disposed after the test."""
    eng = make_engine(database_url(request, request.param, tmp_path))
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()
