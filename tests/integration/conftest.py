"""Markers of the integration tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bed_policy(**fields): PolicyConfig overrides for the pilot test bed's server"
    )
    config.addinivalue_line(
        "markers", "bed_tokens(**scopes): the test bed's server issues WLCG tokens ([tokens])"
    )
