"""Fixtures for interop tests: the strict VOMS relying party."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.vomscheck import build_checker


@pytest.fixture(scope="session")
def voms_checker() -> Path:
    """The compiled libvomsapi checker (see tests/support/vomscheck.py)."""
    return build_checker()
