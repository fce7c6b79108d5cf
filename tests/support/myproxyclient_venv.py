"""A private venv with the PyPI MyProxyClient, for interop tests.

MyProxyClient 2.2.0 needs pyOpenSSL < 24.3, whose cryptography pin conflicts
with the project's, so it lives in its own venv under tests/.build, built once
and reused while it still imports. Without PyPI the tests that need it skip,
or fail under PROXYD_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import REQUIRE_INTEROP

BUILD_DIR = Path(__file__).resolve().parent.parent / ".build"
VENV_DIR = BUILD_DIR / "myproxyclient-venv"
REQUIREMENTS = ("myproxyclient==2.2.0", "pyopenssl<24.3")
_MARKER = ".proxyd-complete"  # written last: a venv without it is a broken build
_CHECK = "import OpenSSL, myproxy.client, myproxy.client.script"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _usable(venv: Path) -> bool:
    marker = venv / _MARKER
    if not marker.is_file() or marker.read_text() != "\n".join(REQUIREMENTS):
        return False
    try:
        proc = subprocess.run(
            [str(_python(venv)), "-c", _CHECK], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _unavailable(message: str) -> None:
    if REQUIRE_INTEROP:
        pytest.fail(f"PROXYD_REQUIRE_INTEROP=1 but {message}", pytrace=False)
    pytest.skip(message)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def myproxyclient_python() -> Path:
    """The venv's interpreter (run the CLI as `python -m myproxy.client.script`)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / "myproxyclient-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build it once
        if _usable(VENV_DIR):
            return _python(VENV_DIR)
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        made = _run([sys.executable, "-m", "venv", str(VENV_DIR)], timeout=120)
        if made.returncode != 0:
            shutil.rmtree(VENV_DIR, ignore_errors=True)
            _unavailable(f"python -m venv failed:\n{made.stdout}{made.stderr}")
        try:
            pip = _run(
                [
                    str(_python(VENV_DIR)),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    *REQUIREMENTS,
                ],
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(VENV_DIR, ignore_errors=True)
            _unavailable(f"pip install {' '.join(REQUIREMENTS)} timed out (no PyPI?)")
        if pip.returncode != 0:
            shutil.rmtree(VENV_DIR, ignore_errors=True)
            tail = (pip.stdout + pip.stderr).strip().splitlines()[-15:]
            _unavailable(
                f"pip could not install {' '.join(REQUIREMENTS)} (no PyPI?):\n" + "\n".join(tail)
            )
        (VENV_DIR / _MARKER).write_text("\n".join(REQUIREMENTS))
        if not _usable(VENV_DIR):
            pytest.fail(f"the venv at {VENV_DIR} was built but does not import MyProxyClient")
        return _python(VENV_DIR)
