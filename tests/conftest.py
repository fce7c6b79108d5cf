"""Session-wide fixtures: a development PKI, grid tool environment, PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI, generate
from tests.support.tools import REQUIRE_POSTGRES, no_ambient_grid_identity  # noqa: F401 - a fixture

POSTGRES_ADMIN_URL = os.environ.get(
    "PROXYD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """One development PKI (CA, hosts, alice/bob/carol, pilot, VOMS AA) per test session."""
    return generate(tmp_path_factory.mktemp("pki") / "certs-dev")


@pytest.fixture(scope="session")
def grid_env(dev_pki: DevPKI) -> dict[str, str]:
    """Environment for the real grid tools: trust dirs of the dev PKI."""
    return {
        "X509_CERT_DIR": str(dev_pki.cert_dir),
        "X509_VOMS_DIR": str(dev_pki.voms_dir),
        "RANDFILE": "/dev/null",
    }


def _postgres_connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A throw-away database on the local PostgreSQL, as an SQLAlchemy URL; dropped after.

    Skips when PostgreSQL is unreachable, unless PROXYD_REQUIRE_POSTGRES=1.
    """
    try:
        admin = _postgres_connect(POSTGRES_ADMIN_URL)
    except Exception as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PROXYD_REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {exc}")
    name = f"proxyd_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
            yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away database on the local PostgreSQL (see throwaway_postgres)."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A private (0700) scratch directory, as the grid tools want for key files."""
    tmp_path.chmod(0o700)
    return tmp_path
