"""Fixtures for interop tests: the strict VOMS relying party, a real VOMS server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from tests.support.voms_server import VomsServer, require_voms_server, running_voms_server
from tests.support.vomscheck import build_checker


@pytest.fixture(scope="session")
def voms_checker() -> Path:
    """The compiled libvomsapi checker (see tests/support/vomscheck.py)."""
    return build_checker()


@pytest.fixture(scope="module")
def voms_server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VomsServer]:
    """Debian's real voms-server as dteam's AA, no members yet (tests/support/voms_server.py)."""
    require_voms_server()
    with running_voms_server(dev_pki, tmp_path_factory.mktemp("voms-server")) as server:
        yield server
