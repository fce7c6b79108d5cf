"""Finding the real grid tools that interop tests use as peers.

A missing tool skips the test on a laptop and fails it in CI, where
PROXYD_REQUIRE_INTEROP=1 says the tools must be there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REQUIRE_INTEROP = os.environ.get("PROXYD_REQUIRE_INTEROP") == "1"
REQUIRE_POSTGRES = os.environ.get("PROXYD_REQUIRE_POSTGRES") == "1"


# What identifies a grid client or names its server, from the environment.
GRID_ENVIRONMENT = (
    "X509_USER_PROXY",
    "X509_USER_CERT",
    "X509_USER_KEY",
    "X509_CERT_DIR",
    "X509_VOMS_DIR",
    "MYPROXY_SERVER",
    "MYPROXY_SERVER_PORT",
    "MYPROXY_SERVER_DN",
)


@pytest.fixture
def no_ambient_grid_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets may identify a client (no inherited proxy, cert or server).

    Use with `pytestmark = pytest.mark.usefixtures("no_ambient_grid_identity")`.
    """
    for var in GRID_ENVIRONMENT:
        monkeypatch.delenv(var, raising=False)


def require_tool(name: str) -> str:
    """Path of an installed tool, or skip (fail under PROXYD_REQUIRE_INTEROP=1)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian packages: see .ci/run)"
        if REQUIRE_INTEROP:
            pytest.fail(f"PROXYD_REQUIRE_INTEROP=1 but {message}", pytrace=False)
        pytest.skip(message)
    return path


def run_tool(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a real tool; never hangs a test run (Globus clients can block on bad peers)."""
    require_tool(str(args[0]))
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [str(a) for a in args],
        env=full_env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
