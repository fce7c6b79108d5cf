"""Fixtures for the user CLI tests: an isolated grid environment and an in-process runner."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from tests.support.vomscheck import build_checker

Main = Callable[[Sequence[str] | None], int]


@dataclass(frozen=True)
class CliResult:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@dataclass
class CliEnv:
    """The environment a CLI test runs in: dev PKI trust dirs, alice's credential."""

    pki: DevPKI
    home: Path
    proxy: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def set(self, name: str, value: str | os.PathLike[str] | None) -> None:
        if value is None:
            self.monkeypatch.delenv(name, raising=False)
        else:
            self.monkeypatch.setenv(name, str(value))

    def use_user(self, name: str) -> None:
        cert, key = self.pki.user(name)
        self.set("X509_USER_CERT", cert)
        self.set("X509_USER_KEY", key)

    def run(self, main: Main, argv: Sequence[str | os.PathLike[str]], stdin: str = "") -> CliResult:
        """Call a CLI's main() in-process with `stdin`; its exit status and output."""
        self.capsys.readouterr()  # drop anything printed before
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        rc = main([str(a) for a in argv])
        captured = self.capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)


@pytest.fixture
def cli_env(
    dev_pki: DevPKI,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> CliEnv:
    home = workdir / "home"
    home.mkdir(mode=0o700)
    env = CliEnv(dev_pki, home, workdir / "x509up_test", monkeypatch, capsys)
    monkeypatch.setenv("HOME", str(home))
    env.set("X509_CERT_DIR", dev_pki.cert_dir)
    env.set("X509_VOMS_DIR", dev_pki.voms_dir)
    env.set("X509_USER_PROXY", env.proxy)
    env.set("PROXYD_URL", None)
    env.use_user("alice")
    return env


@pytest.fixture(scope="session")
def voms_checker() -> Path:
    """The compiled libvomsapi checker (see tests/support/vomscheck.py)."""
    return build_checker()
