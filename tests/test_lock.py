"""requirements.lock is what `make setup` installs: it must cover pyproject.toml, with hashes.

`make lock` (uv pip compile) writes it; these tests catch a pyproject.toml
edited without the lock refreshed, a hand-edited pin outside its range, and a
pin without a hash (which `pip install --require-hashes` would refuse).
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def _pins(text: str) -> dict[str, str]:
    return {
        canonicalize_name(m.group(1)): m.group(2)
        for line in text.splitlines()
        if (m := _PIN.match(line))
    }


def _wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["test"],
    ]
    names += project["dependency-groups"]["tools"]
    return [Requirement(name) for name in names]


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = _pins(LOCK.read_text())
    problems = []
    for req in _wanted():
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in requirements.lock (run make lock)")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} is outside {req.specifier} (run make lock)")
        for extra in req.extras:  # psycopg[binary] needs psycopg-binary pinned too
            if req.name == "psycopg" and extra == "binary" and "psycopg-binary" not in pins:
                problems.append("psycopg[binary] but psycopg-binary is not pinned")
    assert problems == []


def test_every_pin_has_a_hash() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    unhashed = [b.split()[0] for b in blocks if _PIN.match(b) and "--hash=sha256:" not in b]
    assert unhashed == []


def test_the_pin_check_catches_a_pin_outside_its_range() -> None:
    assert _pins("cryptography==41.0.0 \\\n    --hash=sha256:00\n") == {"cryptography": "41.0.0"}
    req = Requirement("cryptography>=42")
    assert not req.specifier.contains("41.0.0")


def test_this_environment_runs_the_locked_versions() -> None:
    """Under `make test` the installed versions are the locked ones (not under make test-latest)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not the venv that make setup builds from the lock ({sys.prefix})")
    drift = {}
    for name, version in _pins(LOCK.read_text()).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific pin (colorama on Windows, ...)
        if installed != version:
            drift[name] = f"{installed} installed, {version} locked"
    assert drift == {}, "run make setup (it reinstalls when requirements.lock changes)"
