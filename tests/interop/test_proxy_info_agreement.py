"""proxy-info against voms-proxy-info and grid-proxy-info: same options, same exit status.

Site scripts test credentials by the grid tools' exit codes
(`voms-proxy-info -fqan`, `-acexists VO`, `-e -valid H:M`,
`grid-proxy-info -exists`) and read a few printed values (time left,
FQANs, VO, identity). Each row below runs one real tool and proxy-info with
the *same* argument vector (the grid tools' single-dash spelling) and the
same environment, and requires the same exit status and the same parsed
values. Rows where proxyd differs on purpose carry a `Difference`; each is
listed in docs/cli.md, "Differences from voms-proxy-info and grid-proxy-info".

The proxies are made by grid-proxy-init and voms-proxy-fake (PROTOCOLS.md
§3), the broken ones with voms_ext and tests/support/tamper.py. proxy-info
runs in-process (its console script is run by tests/cli/test_proxy_info.py).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.cli.proxy_info import main
from proxyd.devpki import DevPKI
from tests.support.tamper import flip_bit, load_leaf, make_aa_certificate, write_proxy
from tests.support.tools import require_tool, run_tool
from voms_ext import Credential, ProxyBuilder, load_credential_file, write_credential_file

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

URI = "voms.localhost:15000"
FQANS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL")
ROGUE_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=rogue.localhost"
TIME_SLACK = 2  # seconds between the two runs of a row


# --- the proxies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    """How a test proxy is made: a real tool's arguments, or a named special case."""

    tool: str  # grid-proxy-init, voms-proxy-fake, or "special"
    args: tuple[str, ...] = ()
    source: str | None = None  # the proxy this one is made from
    ac: bool = False  # voms-proxy-fake: with an AC for dteam
    hours: str = "12"
    untrusted: bool = False  # looked at with an X509_CERT_DIR that lacks alice's CA


PROXIES: dict[str, Proxy] = {
    "voms_ac": Proxy("voms-proxy-fake", ("-vomslife", "6"), ac=True),
    "voms_ac_limited": Proxy("voms-proxy-fake", ("-limited", "-vomslife", "6"), ac=True),
    "second_level_of_voms": Proxy("grid-proxy-init", ("-valid", "11:00"), source="voms_ac"),
    "plain": Proxy("grid-proxy-init", ("-valid", "12:00")),
    "plain_limited": Proxy("grid-proxy-init", ("-valid", "12:00", "-limited")),
    "plain_legacy": Proxy("grid-proxy-init", ("-valid", "12:00", "-old")),
    "fake_without_ac": Proxy("voms-proxy-fake"),
    "thirty_minutes": Proxy("grid-proxy-init", ("-valid", "0:30")),
    "bits_1024": Proxy("grid-proxy-init", ("-valid", "12:00", "-bits", "1024")),
    "expired": Proxy("voms-proxy-fake", ("-pastproxy", "3:00"), hours="1"),
    "expired_with_valid_ac": Proxy(
        "voms-proxy-fake", ("-pastproxy", "3:00", "-vomslife", "12"), ac=True, hours="1"
    ),
    "expired_with_expired_ac": Proxy(
        "voms-proxy-fake",
        ("-pastproxy", "3:00", "-pastac", "3:00", "-vomslife", "1"),
        ac=True,
        hours="1",
    ),
    "expired_ac": Proxy("voms-proxy-fake", ("-pastac", "2:00", "-vomslife", "1"), ac=True),
    "ac_of_unknown_aa": Proxy("voms-proxy-fake", ("-vomslife", "6"), ac=True),
    "untrusted_ca": Proxy("voms-proxy-fake", ("-vomslife", "6"), ac=True, untrusted=True),
    "expired_voms_ext": Proxy("special"),
    "broken_signature": Proxy("special", source="voms_ac"),
    "missing": Proxy("special"),
    "garbage": Proxy("special"),
    "empty": Proxy("special"),
}


@dataclass(frozen=True)
class Made:
    path: Path
    env: dict[str, str]


def _run_maker(args: list[str | Path], env: Mapping[str, str]) -> None:
    proc = run_tool(args, env=env)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"


def _make(
    name: str, spec: Proxy, out: Path, made: Mapping[str, Made], pki: DevPKI, env: dict[str, str]
) -> None:
    cert, key = pki.user("alice")
    if spec.source is not None:
        cert = key = made[spec.source].path
    if spec.tool == "grid-proxy-init":
        _run_maker(
            ["grid-proxy-init", "-q", "-cert", cert, "-key", key, *spec.args, "-out", out], env
        )
    elif spec.tool == "voms-proxy-fake":
        args: list[str | Path] = [
            "voms-proxy-fake",
            "-rfc",
            "-newformat",
            "-cert",
            cert,
            "-key",
            key,
        ]
        if spec.ac:
            aa = pki.host("aa")
            if name == "ac_of_unknown_aa":
                aa = make_aa_certificate(
                    out.parent / "rogue-aa",
                    ROGUE_DN,
                    ca_cert_path=pki.ca_cert,
                    ca_key_path=pki.ca_key,
                )
            args += ["-hostcert", aa[0], "-hostkey", aa[1], "-voms", "dteam", "-uri", URI]
            for fqan in FQANS:
                args += ["-fqan", fqan]
        _run_maker([*args, *spec.args, "-hours", spec.hours, "-out", out], env)
    elif name == "expired_voms_ext":
        _expired_by_voms_ext(pki, out)
    elif name == "broken_signature":
        leaf = load_leaf(cert).public_bytes(serialization.Encoding.DER)
        write_proxy(out, flip_bit(leaf, -1), cert)
    elif name == "garbage":
        out.write_text("this is not a proxy\n")
    elif name == "empty":
        out.write_bytes(b"")
    else:
        assert name == "missing"
        return
    out.chmod(0o600)


def _expired_by_voms_ext(pki: DevPKI, out: Path) -> None:
    """A proxy of alice that expired an hour ago, made without the C tools."""
    cert_path, key_path = pki.user("alice")
    user = load_credential_file(cert_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    proxy_key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    builder = (
        ProxyBuilder(user.certificate)
        .public_key(proxy_key.public_key())
        .not_before(now - dt.timedelta(hours=3))
        .lifetime(dt.timedelta(hours=2))
    )
    write_credential_file(out, Credential((builder.sign(key), *builder.chain), proxy_key))


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> dict[str, Made]:
    base = tmp_path_factory.mktemp("agreement")
    base.chmod(0o700)
    other_ca_dir = base / "other-cas"  # trusts some other CA, not alice's
    other_ca_dir.mkdir()
    other_ca = make_aa_certificate(base / "other-ca", "/C=XX/O=elsewhere/CN=other CA")[0]
    shutil.copy(other_ca, other_ca_dir / "12345678.0")
    made: dict[str, Made] = {}
    for name, spec in PROXIES.items():  # sources come first
        out = base / f"{name}.pem"
        env = {
            "X509_CERT_DIR": str(other_ca_dir if spec.untrusted else dev_pki.cert_dir),
            "X509_VOMS_DIR": str(dev_pki.voms_dir),
            "X509_USER_PROXY": str(out),
            "RANDFILE": "/dev/null",
        }
        maker_env = {**env, "X509_CERT_DIR": str(dev_pki.cert_dir)}
        _make(name, spec, out, made, dev_pki, maker_env)
        made[name] = Made(out, env)
    return made


# --- the checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One command line, given to a real tool and to proxy-info alike."""

    tool: str
    args: tuple[str, ...]
    compare_output: bool = True
    timed: bool = False  # the output holds seconds left: compared within TIME_SLACK


VPI, GPI = "voms-proxy-info", "grid-proxy-info"
CHECKS: dict[str, Check] = {
    # exit status only, as in `if voms-proxy-info -exists -valid 1:00; then`
    "vpi_exists": Check(VPI, ("-exists",)),
    "gpi_exists": Check(GPI, ("-exists",)),
    "vpi_exists_valid_1h": Check(VPI, ("-exists", "-valid", "1:00")),
    "gpi_exists_valid_1h": Check(GPI, ("-e", "-valid", "1:00")),
    "gpi_exists_v_10m": Check(GPI, ("-e", "-v", "0:10")),
    "vpi_exists_hours_1": Check(VPI, ("-exists", "-hours", "1")),
    "gpi_exists_h_1": Check(GPI, ("-e", "-h", "1")),
    "gpi_exists_bits_2048": Check(GPI, ("-exists", "-b", "2048")),
    "vpi_exists_bits_4096": Check(VPI, ("-exists", "-bits", "4096")),
    "vpi_acexists_dteam": Check(VPI, ("-acexists", "dteam")),
    "vpi_acexists_atlas": Check(VPI, ("-acexists", "atlas")),
    # values scripts read
    "vpi_fqan": Check(VPI, ("-fqan",)),
    "vpi_vo": Check(VPI, ("-vo",)),
    "vpi_actimeleft": Check(VPI, ("-actimeleft",), timed=True),
    "vpi_timeleft": Check(VPI, ("-timeleft",), timed=True),
    "gpi_timeleft": Check(GPI, ("-timeleft",), timed=True),
    "gpi_identity": Check(GPI, ("-identity",)),
    "vpi_subject_fqan": Check(VPI, ("-subject", "-fqan")),
    "gpi_subject_issuer": Check(GPI, ("-s", "-i")),
    "vpi_subject_issuer": Check(VPI, ("-subject", "-issuer")),
    "gpi_type": Check(GPI, ("-type",)),
    "gpi_strength_path": Check(GPI, ("-strength", "-path")),
    "gpi_exists_with_identity": Check(GPI, ("-identity", "-exists", "-valid", "1:00")),
    # human-readable layouts: the exit status is what scripts use
    "gpi_summary": Check(GPI, (), compare_output=False),
    "vpi_all": Check(VPI, ("-all",), compare_output=False),
}

# Options that look at VOMS ACs (proxy-info verifies them; voms-proxy-info does not).
AC_CHECKS = {
    "vpi_acexists_dteam",
    "vpi_fqan",
    "vpi_vo",
    "vpi_actimeleft",
    "vpi_subject_fqan",
    "vpi_all",
}


@dataclass(frozen=True)
class Difference:
    """A deliberate difference: the real tool exits 0, proxy-info 1 with the reason."""

    reason: str  # what docs/cli.md says about it


BAD_AC = Difference("an AC that does not verify is an error; voms-proxy-info shows it")
BAD_CHAIN = Difference("a chain that does not validate is an error; the grid tools do not check")
# grid-proxy-info -all is its summary; proxy-info --all adds the VOMS sections, so it verifies ACs.
GPI_ALL = Check(GPI, ("-all",), compare_output=False)
CHECKS["gpi_all"] = GPI_ALL


def _difference(proxy: str, check: str) -> Difference | None:
    bad_ac = proxy in {"expired_ac", "ac_of_unknown_aa", "expired_with_expired_ac"}
    if bad_ac and (check in AC_CHECKS or check == "gpi_all"):
        return BAD_AC
    if proxy in {"untrusted_ca", "broken_signature"} and check not in {
        "vpi_exists_bits_4096",  # fails for the key size in all three
        "vpi_acexists_atlas",  # no such AC in all three
    }:
        return BAD_CHAIN
    return None


@dataclass(frozen=True)
class Row:
    proxy: str
    check: str
    difference: Difference | None


def rows() -> list[pytest.ParameterSet]:
    return [
        pytest.param(Row(proxy, check, _difference(proxy, check)), id=f"{check}-{proxy}")
        for proxy in PROXIES
        for check in CHECKS
    ]


# --- running both ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    rc: int
    lines: list[str]
    err: str


def theirs(check: Check, made: Made) -> Outcome:
    proc = run_tool([check.tool, "-file", made.path, *check.args], env=made.env)
    return Outcome(proc.returncode, proc.stdout.splitlines(), proc.stderr)


def ours(
    check: Check,
    made: Made,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Outcome:
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    rc = main(["-file", str(made.path), *check.args])
    captured = capsys.readouterr()
    return Outcome(rc, captured.out.splitlines(), captured.err)


def _seconds(line: str) -> int:
    # grid-proxy-info says -1 for an expired proxy, voms-proxy-info and proxy-info 0.
    assert re.fullmatch(r"-?\d+", line), line
    return max(int(line), 0)


def assert_same_values(check: Check, mine: list[str], their: list[str]) -> None:
    if not check.timed:
        assert mine == their
        return
    assert len(mine) == len(their), (mine, their)
    for a, b in zip(mine, their, strict=True):
        assert abs(_seconds(a) - _seconds(b)) <= TIME_SLACK, (mine, their)


@pytest.mark.parametrize("row", rows())
def test_same_status_and_values(
    row: Row,
    proxies: dict[str, Made],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    check, made = CHECKS[row.check], proxies[row.proxy]
    their = theirs(check, made)
    mine = ours(check, made, monkeypatch, capsys)
    assert "Traceback" not in mine.err
    if row.difference is not None:
        assert their.rc == 0, (row.difference.reason, their)
        assert (mine.rc, mine.lines) == (1, []), mine
        assert mine.err.startswith("proxy-info: ") and mine.err.count("\n") == 1, mine
        return
    assert mine.rc == their.rc, (mine, their)
    if check.compare_output:
        assert_same_values(check, mine.lines, their.lines)
    assert mine.err.count("\n") <= 1, mine  # at most one line saying why


def test_unreadable_file_is_no_proxy_to_all_three(
    proxies: dict[str, Made],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "unreadable.pem"
    path.write_bytes(proxies["plain"].path.read_bytes())
    path.chmod(0)
    made = Made(path, {**proxies["plain"].env, "X509_USER_PROXY": str(path)})
    checks = (CHECKS["vpi_exists"], CHECKS["gpi_exists"], CHECKS["vpi_fqan"])
    if os.geteuid() != 0:
        for check in checks:
            assert (ours(check, made, monkeypatch, capsys).rc, theirs(check, made).rc) == (1, 1)
        return
    # Root reads mode-000 files: all three run as nobody instead (CI runs as root).
    nobody = [require_tool("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
    proxy_info = str(Path(sys.executable).parent / "proxy-info")
    for check in checks:
        mine = run_tool([*nobody, proxy_info, "-file", str(path), *check.args], env=made.env)
        their = run_tool([*nobody, check.tool, "-file", str(path), *check.args], env=made.env)
        assert (mine.returncode, their.returncode) == (1, 1), (check, mine, their)
        assert "Traceback" not in mine.stderr
    # proxy-info ran (as nobody) and failed on the file, not on its own installation.
    said = run_tool([*nobody, proxy_info, "-file", str(path)], env=made.env)
    assert said.returncode == 1 and "cannot read credential file: Permission denied" in said.stderr


# --- controls: the table means what it says ----------------------------------------------


def test_the_table_covers_what_scripts_test(proxies: dict[str, Made]) -> None:
    """Every proxy answers at least one status check each way, so no row passes vacuously."""
    answers: dict[str, set[int]] = {}
    for made in proxies.values():
        for check in ("vpi_exists", "vpi_acexists_dteam", "vpi_fqan"):
            answers.setdefault(check, set()).add(theirs(CHECKS[check], made).rc)
    assert all(codes == {0, 1} for codes in answers.values()), answers


def test_differences_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    section = doc.split("### Differences from voms-proxy-info and grid-proxy-info", 1)[1]
    section = section.split("\n## ", 1)[0]
    for phrase in ("does not verify", "does not validate", "-identity", "-type", "-timeleft"):
        assert phrase in section, phrase


def test_no_fqans_without_an_ac_is_exit_1_like_voms_proxy_info(
    proxies: dict[str, Made], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disagreement issue 18 reported: `--fqan` on a proxy without an AC."""
    made = proxies["plain"]
    for check in ("vpi_fqan", "vpi_vo", "vpi_actimeleft"):
        assert theirs(CHECKS[check], made).rc == 1
        mine = ours(CHECKS[check], made, monkeypatch, capsys)
        assert (mine.rc, mine.lines) == (1, [])
        assert "no VOMS attributes" in mine.err


def test_identity_of_a_second_level_proxy_is_grid_proxy_infos(
    proxies: dict[str, Made], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """voms-proxy-info -identity prints the leaf's issuer; proxy-info prints whom it speaks for."""
    made = proxies["second_level_of_voms"]
    check = Check(VPI, ("-identity",))
    their = theirs(check, made)
    first_level = theirs(Check(GPI, ("-subject",)), proxies["voms_ac"]).lines
    assert (their.rc, their.lines) == (0, first_level)
    mine = ours(check, made, monkeypatch, capsys)
    assert (mine.rc, mine.lines) == (0, theirs(Check(GPI, ("-identity",)), made).lines)
    assert mine.lines != their.lines
