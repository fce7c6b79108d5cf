"""A strict VOMS relying party for tests: libvomsapi itself, via vomscheck.cc.

voms-proxy-info is not a validator (it silently falls back to unverified
parsing and exits 0), so tests that must know whether an AC *verifies* use
this helper instead. See docs: PROTOCOLS.md section 3.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.tools import REQUIRE_INTEROP

SOURCE = Path(__file__).with_name("vomscheck.cc")
BUILD_DIR = Path(__file__).resolve().parent.parent / ".build"
TIMEOUT = 30


@dataclass(frozen=True)
class AcReport:
    """One verified AC, as libvomsapi reports it."""

    vo: str
    uri: str
    issuer: str
    holder: str
    fqans: tuple[str, ...]
    generic_attributes: tuple[tuple[str, str, str], ...]  # (name, value, qualifier)
    not_before: str  # as the library gives it, e.g. 20250101120000Z
    not_after: str


@dataclass(frozen=True)
class Verdict:
    """The result of a strict check: ok with the ACs, or the library's error."""

    ok: bool
    error: str | None
    acs: tuple[AcReport, ...]
    code: int | None = None  # libvomsapi verror_type on failure


def _unavailable(message: str) -> None:
    if REQUIRE_INTEROP:
        pytest.fail(f"PROXYD_REQUIRE_INTEROP=1 but {message}", pytrace=False)
    pytest.skip(message)


def _pkg_config(pkg_config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [pkg_config, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def build_checker() -> Path:
    """Compile vomscheck.cc once per source version; skip (or fail) without the toolchain."""
    source = SOURCE.read_bytes()
    target = BUILD_DIR / f"vomscheck-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.exists():
        return target
    gxx, pkg_config = shutil.which("g++"), shutil.which("pkg-config")
    if gxx is None or pkg_config is None:
        _unavailable("g++ and pkg-config are needed to build the VOMS checker")
    assert gxx is not None and pkg_config is not None
    if _pkg_config(pkg_config, "--exists", "voms-2.0").returncode != 0:
        _unavailable("pkg-config cannot find voms-2.0 (Debian package voms-dev)")
    # voms-2.0.pc lists OpenSSL only under Requires.private, but we call it directly.
    flags = _pkg_config(pkg_config, "--cflags", "--libs", "voms-2.0", "libcrypto")
    if flags.returncode != 0:
        flags = _pkg_config(pkg_config, "--cflags", "--libs", "voms-2.0")
        flags.stdout += " -lcrypto"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=BUILD_DIR)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        compile_cmd = [gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE)]
        proc = subprocess.run(
            [*compile_cmd, *flags.stdout.split()],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"compiling {SOURCE.name} failed:\n{proc.stdout}{proc.stderr}", pytrace=False
            )
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


_FAIL = re.compile(r"FAIL (?P<message>.*) \[code (?P<code>\d+)\]", re.DOTALL)
_SINGLE = {
    "VO": "vo",
    "URI": "uri",
    "ISSUER": "issuer",
    "HOLDER": "holder",
    "NOTBEFORE": "not_before",
    "NOTAFTER": "not_after",
}


def _parse_acs(lines: list[str]) -> tuple[AcReport, ...]:
    acs: list[AcReport] = []
    current: dict[str, str] | None = None
    fqans: list[str] = []
    gas: list[tuple[str, str, str]] = []
    for line in lines:
        key, _, rest = line.partition(" ")
        if current is None:
            if key != "VO":
                raise ValueError(f"expected VO, got {line!r}")
            current, fqans, gas = {}, [], []
        if key in _SINGLE:
            if _SINGLE[key] in current:
                raise ValueError(f"repeated {key}")
            current[_SINGLE[key]] = rest
        elif key == "FQAN":
            fqans.append(rest)
        elif key == "GA":
            # "<name>=<value> <qualifier>": the qualifier (a VO name) has no spaces.
            name, eq, tail = rest.partition("=")
            value, space, qualifier = tail.rpartition(" ")
            if not eq or not space:
                raise ValueError(f"bad GA line {line!r}")
            gas.append((name, value, qualifier))
        elif key == "END" and not rest:
            acs.append(AcReport(fqans=tuple(fqans), generic_attributes=tuple(gas), **current))
            current = None
        else:
            raise ValueError(f"unexpected line {line!r}")
    if current is not None:
        raise ValueError("missing END")
    return tuple(acs)


def check_proxy(checker: Path, proxy: Path, cert_dir: Path, voms_dir: Path) -> Verdict:
    """Verify every VOMS AC in `proxy` strictly against the given trust dirs."""
    env = dict(os.environ, X509_CERT_DIR=str(cert_dir), X509_VOMS_DIR=str(voms_dir))
    try:
        proc = subprocess.run(
            [str(checker), str(proxy)],
            env=env,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"vomscheck timed out after {TIMEOUT}s on {proxy}") from exc
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    shown = f"vomscheck exit {proc.returncode} on {proxy}:\n{out}{err}"
    try:
        if proc.returncode == 0:
            lines = out.split("\n")
            if lines[0] != "OK" or lines[-1] != "":
                raise ValueError("no OK line")
            return Verdict(ok=True, error=None, acs=_parse_acs(lines[1:-1]))
        if proc.returncode == 1:
            match = _FAIL.fullmatch(out.rstrip("\n"))
            if match is None:
                raise ValueError("no FAIL line")
            return Verdict(ok=False, error=match["message"], acs=(), code=int(match["code"]))
    except (ValueError, TypeError) as exc:
        raise AssertionError(f"unparsable output ({exc}); {shown}") from exc
    raise AssertionError(shown)
