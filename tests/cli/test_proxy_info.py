"""proxy-info against the real tools: grid-proxy-info and the strict VOMS checker.

The proxies are made by the real tools (grid-proxy-init in every format,
voms-proxy-fake with good, expired and untrusted ACs) once per module; each
claim is one test parametrised over them. proxy-info runs in-process (its
main() with the test environment); one test runs the console script.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.cli.proxy_info import main
from proxyd.devpki import DevPKI
from tests.cli.conftest import CliEnv
from tests.support.tamper import make_aa_certificate
from tests.support.tools import run_tool
from tests.support.vomscheck import check_proxy
from voms_ext import (
    Credential,
    ProxyBuilder,
    dn_to_slash,
    load_credential_file,
    write_credential_file,
)

pytestmark = pytest.mark.interop

ALICE_DN = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
AA_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
ROGUE_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=rogue.localhost"
URI = "voms.localhost:15000"
FQANS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL")
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@dataclass(frozen=True)
class Case:
    """A proxy made by a real tool; `source` names the proxy it is made from."""

    tool: str  # grid-proxy-init or voms-proxy-fake
    args: tuple[str, ...] = ()
    source: str | None = None
    voms: bool = True  # voms-proxy-fake: with an AC
    vomslife: int = 12
    rogue_aa: bool = False
    valid: str = "12:00"


CASES: dict[str, Case] = {
    "gpi_rfc": Case("grid-proxy-init"),
    "gpi_limited": Case("grid-proxy-init", ("-limited",)),
    "gpi_old": Case("grid-proxy-init", ("-old",)),
    "gpi_old_limited": Case("grid-proxy-init", ("-old", "-limited")),
    "gpi_draft": Case("grid-proxy-init", ("-draft",)),
    "gpi_independent": Case("grid-proxy-init", ("-independent",)),
    "gpi_second_level": Case("grid-proxy-init", source="gpi_rfc", valid="11:00"),
    "gpi_30_minutes": Case("grid-proxy-init", valid="0:30"),
    "fake_without_ac": Case("voms-proxy-fake", voms=False),
    "fake_ac": Case("voms-proxy-fake", ("-ga", "name=value(qual)")),
    "fake_ac_limited": Case("voms-proxy-fake", ("-limited",)),
    "fake_expired_ac": Case("voms-proxy-fake", ("-pastac", "2:00"), vomslife=1),
    "fake_aa_not_in_vomsdir": Case("voms-proxy-fake", rogue_aa=True),
}
AC_CASES = [n for n, c in CASES.items() if c.tool == "voms-proxy-fake" and c.voms]


def make_proxy(
    case: Case,
    out: Path,
    env: Mapping[str, str],
    user: tuple[Path, Path],
    aa: tuple[Path, Path],
    source: Path | None,
) -> None:
    cert, key = (source, source) if source is not None else user
    if case.tool == "grid-proxy-init":
        args: list[str | Path] = ["grid-proxy-init", "-q", "-cert", cert, "-key", key, *case.args]
        args += ["-valid", case.valid, "-out", out]
    else:
        args = ["voms-proxy-fake", "-rfc", "-newformat", *case.args, "-cert", cert, "-key", key]
        if case.voms:
            args += ["-hostcert", aa[0], "-hostkey", aa[1], "-voms", "dteam", "-uri", URI]
            for fqan in FQANS:
                args += ["-fqan", fqan]
            args += ["-vomslife", str(case.vomslife)]
        args += ["-hours", "12", "-out", out]
    proc = run_tool(args, env=env)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def proxies(
    tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI, grid_env: dict[str, str]
) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("proxy_info")
    base.chmod(0o700)
    rogue = make_aa_certificate(
        base / "rogue-aa", ROGUE_DN, ca_cert_path=dev_pki.ca_cert, ca_key_path=dev_pki.ca_key
    )
    made: dict[str, Path] = {}
    for name, case in CASES.items():  # sources come first
        out = base / f"{name}.pem"
        aa = rogue if case.rogue_aa else dev_pki.host("aa")
        source = made[case.source] if case.source else None
        make_proxy(case, out, grid_env, dev_pki.user("alice"), aa, source)
        made[name] = out
    return made


@pytest.fixture(scope="module")
def expired_proxy(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> Path:
    """A proxy of alice that expired an hour ago (made with voms_ext)."""
    cert_path, key_path = dev_pki.user("alice")
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
    out = tmp_path_factory.mktemp("expired") / "expired.pem"
    write_credential_file(out, Credential((builder.sign(key), *builder.chain), proxy_key))
    return out


def grid_proxy_info(env: Mapping[str, str], proxy: Path, *options: str) -> list[str]:
    proc = run_tool(["grid-proxy-info", "-file", proxy, *options], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def ours(cli_env: CliEnv, proxy: Path, *options: str) -> list[str]:
    result = cli_env.run(main, ["--file", proxy, *options])
    assert result.rc == 0 and result.err == "", result
    return result.lines


# --- agreement with grid-proxy-info ------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_identity_matches_grid_proxy_info(
    name: str, proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    theirs = grid_proxy_info(grid_env, proxies[name], "-identity")
    assert ours(cli_env, proxies[name], "--identity") == theirs
    if name != "gpi_independent":
        assert theirs == [ALICE_DN]


@pytest.mark.parametrize("name", CASES)
def test_type_matches_grid_proxy_info(
    name: str, proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    theirs = grid_proxy_info(grid_env, proxies[name], "-type")
    assert ours(cli_env, proxies[name], "--type") == theirs


@pytest.mark.parametrize("name", CASES)
def test_subject_issuer_strength_match_grid_proxy_info(
    name: str, proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    options = ("-subject", "-issuer", "-strength", "-path")
    theirs = grid_proxy_info(grid_env, proxies[name], *options)
    assert ours(cli_env, proxies[name], *(f"-{o}" for o in options)) == theirs


@pytest.mark.parametrize("name", CASES)
def test_timeleft_matches_grid_proxy_info(
    name: str, proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    (theirs,) = grid_proxy_info(grid_env, proxies[name], "-timeleft")
    (mine,) = ours(cli_env, proxies[name], "--timeleft")
    assert re.fullmatch(r"\d+", mine)
    assert abs(int(mine) - int(theirs)) <= 2


@pytest.mark.parametrize("name", CASES)
def test_exists_matches_grid_proxy_info(
    name: str, proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    theirs = run_tool(["grid-proxy-info", "-file", proxies[name], "-exists"], env=grid_env)
    result = cli_env.run(main, ["--file", proxies[name], "--exists"])
    assert (result.rc, result.out, result.err) == (theirs.returncode, "", "")
    assert result.rc == 0


@pytest.mark.parametrize(("valid", "expected"), [("1:00", 1), ("0:20", 0), ("0:00", 0)])
def test_exists_valid_on_a_30_minute_proxy(
    valid: str,
    expected: int,
    proxies: dict[str, Path],
    grid_env: dict[str, str],
    cli_env: CliEnv,
) -> None:
    proxy = proxies["gpi_30_minutes"]
    theirs = run_tool(["grid-proxy-info", "-file", proxy, "-exists", "-valid", valid], env=grid_env)
    result = cli_env.run(main, ["--file", proxy, "--exists", "--valid", valid])
    assert (result.rc, result.out, result.err) == (expected, "", "")
    assert theirs.returncode == expected


@pytest.mark.parametrize("which", ["missing", "expired", "garbage"])
def test_exists_is_false_like_grid_proxy_info(
    which: str, expired_proxy: Path, grid_env: dict[str, str], cli_env: CliEnv, workdir: Path
) -> None:
    path = {"missing": workdir / "nothing-here", "expired": expired_proxy}.get(which)
    if path is None:
        path = workdir / "garbage.pem"
        path.write_text("not a proxy\n")
        path.chmod(0o600)
    theirs = run_tool(["grid-proxy-info", "-file", path, "-exists"], env=grid_env)
    result = cli_env.run(main, ["--file", path, "--exists"])
    assert (result.rc, result.out, result.err) == (1, "", "")
    assert theirs.returncode == 1


def test_default_summary_has_grid_proxy_info_fields(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    proxy = proxies["gpi_limited"]
    theirs = grid_proxy_info(grid_env, proxy)
    mine = ours(cli_env, proxy)

    def fields(lines: list[str]) -> dict[str, str]:
        return dict(line.split(" : ", 1) for line in lines)

    assert [line.split(":")[0] for line in mine] == [line.split(":")[0] for line in theirs]
    assert {k: v for k, v in fields(mine).items() if k.strip() != "timeleft"} == {
        k: v for k, v in fields(theirs).items() if k.strip() != "timeleft"
    }
    assert re.fullmatch(r"timeleft : 1[12]:\d\d:\d\d", mine[-1])


def test_several_fields_print_one_line_each_in_the_order_given(
    proxies: dict[str, Path], cli_env: CliEnv
) -> None:
    proxy = proxies["gpi_second_level"]
    lines = ours(cli_env, proxy, "--type", "--identity", "--issuer", "--timeleft")
    first_level = dn_to_slash(load_credential_file(proxies["gpi_rfc"]).certificate.subject)
    assert lines[:3] == ["RFC 3820 compliant impersonation proxy", ALICE_DN, first_level]
    assert re.fullmatch(r"\d+", lines[3]) and len(lines) == 4


# --- VOMS: agreement with the strict checker ------------------------------------------------


@pytest.mark.parametrize("name", AC_CASES)
def test_fqan_matches_strict_checker(
    name: str,
    proxies: dict[str, Path],
    voms_checker: Path,
    dev_pki: DevPKI,
    cli_env: CliEnv,
) -> None:
    verdict = check_proxy(voms_checker, proxies[name], dev_pki.cert_dir, dev_pki.voms_dir)
    result = cli_env.run(main, ["--file", proxies[name], "--fqan"])
    if verdict.ok:
        (ac,) = verdict.acs
        assert result.rc == 0 and result.err == "", result
        assert tuple(result.lines) == ac.fqans == FQANS
    else:
        assert (result.rc, result.out) == (1, ""), result
        assert result.err.startswith(f"proxy-info: {proxies[name]}: ")
        assert result.err.count("\n") == 1 and "Traceback" not in result.err


def test_fqan_verdicts_cover_accept_and_reject(
    proxies: dict[str, Path], voms_checker: Path, dev_pki: DevPKI, cli_env: CliEnv
) -> None:
    """Control: the checker rejects exactly the two forged inputs, and we say why."""
    rejected = {}
    for name in AC_CASES:
        verdict = check_proxy(voms_checker, proxies[name], dev_pki.cert_dir, dev_pki.voms_dir)
        if not verdict.ok:
            rejected[name] = cli_env.run(main, ["--file", proxies[name], "--fqan"]).err
    assert set(rejected) == {"fake_expired_ac", "fake_aa_not_in_vomsdir"}
    assert "not valid anymore" in rejected["fake_expired_ac"]
    assert (
        "not trusted" in rejected["fake_aa_not_in_vomsdir"]
        or "rogue" in (rejected["fake_aa_not_in_vomsdir"])
    )


@pytest.mark.parametrize("name", ["fake_expired_ac", "fake_aa_not_in_vomsdir"])
def test_bad_ac_fails_every_attribute_output_but_not_the_chain_fields(
    name: str, proxies: dict[str, Path], cli_env: CliEnv
) -> None:
    for options in (["--vo"], ["--all"], ["--json"], ["--identity", "--fqan"], ["--actimeleft"]):
        result = cli_env.run(main, ["--file", proxies[name], *options])
        assert (result.rc, result.out) == (1, ""), (options, result)
    assert ours(cli_env, proxies[name], "--identity") == [ALICE_DN]


@pytest.mark.parametrize("option", ["--fqan", "--vo", "--actimeleft"])
@pytest.mark.parametrize("name", ["fake_without_ac", "gpi_rfc"])
def test_attributes_of_a_proxy_without_an_ac_exit_1_like_voms_proxy_info(
    name: str, option: str, proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    """Issue 18: `--fqan` without an AC exited 0 with no output; voms-proxy-info exits 1."""
    theirs = run_tool(["voms-proxy-info", "-file", proxies[name], option], env=grid_env)
    result = cli_env.run(main, ["--file", proxies[name], option])
    assert (result.rc, result.out) == (theirs.returncode, theirs.stdout) == (1, "")
    assert result.err == f"proxy-info: {proxies[name]}: the proxy carries no VOMS attributes\n"


def test_fields_before_missing_attributes_are_still_printed(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    proxy = proxies["gpi_rfc"]
    theirs = run_tool(["voms-proxy-info", "-file", proxy, "-subject", "-fqan"], env=grid_env)
    result = cli_env.run(main, ["--file", proxy, "--subject", "--fqan"])
    assert (result.rc, result.out) == (theirs.returncode, theirs.stdout)
    assert result.rc == 1 and len(result.lines) == 1


@pytest.mark.parametrize(
    ("name", "vo", "expected"),
    [
        ("fake_ac", "dteam", 0),
        ("fake_ac_limited", "dteam", 0),
        ("fake_ac", "atlas", 1),
        ("fake_without_ac", "dteam", 1),
        ("gpi_rfc", "dteam", 1),
    ],
)
def test_acexists_matches_voms_proxy_info(
    name: str,
    vo: str,
    expected: int,
    proxies: dict[str, Path],
    grid_env: dict[str, str],
    cli_env: CliEnv,
) -> None:
    theirs = run_tool(["voms-proxy-info", "-file", proxies[name], "-acexists", vo], env=grid_env)
    result = cli_env.run(main, ["--file", proxies[name], "--acexists", vo])
    assert (result.rc, result.out, result.err) == (theirs.returncode, "", "")
    assert result.rc == expected


@pytest.mark.parametrize("name", ["fake_expired_ac", "fake_aa_not_in_vomsdir"])
def test_acexists_on_an_ac_that_does_not_verify_is_1_with_the_reason(
    name: str, proxies: dict[str, Path], cli_env: CliEnv
) -> None:
    """voms-proxy-info says 0 here; proxyd does not count an AC it cannot verify."""
    result = cli_env.run(main, ["--file", proxies[name], "--acexists", "dteam"])
    assert (result.rc, result.out) == (1, "")
    assert result.err.startswith(f"proxy-info: {proxies[name]}: VOMS AC for VO dteam")
    assert result.err.count("\n") == 1


def test_acexists_without_a_proxy_is_a_silent_1(cli_env: CliEnv, workdir: Path) -> None:
    result = cli_env.run(main, ["--file", workdir / "nothing", "--acexists", "dteam"])
    assert (result.rc, result.out, result.err) == (1, "", "")


def test_actimeleft_matches_voms_proxy_info(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    proxy = proxies["fake_ac"]
    theirs = run_tool(["voms-proxy-info", "-file", proxy, "-actimeleft"], env=grid_env)
    (mine,) = ours(cli_env, proxy, "--actimeleft")
    assert abs(int(mine) - int(theirs.stdout)) <= 2
    assert 11 * 3600 < int(mine) <= 12 * 3600


def test_fqans_of_a_proxy_made_from_a_voms_proxy(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv, workdir: Path
) -> None:
    """Relying parties look up the chain: a plain proxy of a VOMS proxy has its FQANs."""
    out = workdir / "second.pem"
    source = proxies["fake_ac"]
    proc = run_tool(
        ["grid-proxy-init", "-q", "-cert", source, "-key", source, "-valid", "1:00", "-out", out],
        env=grid_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert ours(cli_env, out, "--fqan") == list(FQANS)
    assert ours(cli_env, out, "--vo") == ["dteam"]


def test_all_shows_a_voms_proxy_info_section_per_ac(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    proxy = proxies["fake_ac"]
    proc = run_tool(["voms-proxy-info", "-all", "-file", proxy], env=grid_env)
    assert proc.returncode == 0, proc.stderr
    theirs = proc.stdout.splitlines()
    mine = ours(cli_env, proxy, "--all")
    start = mine.index("=== VO dteam extension information ===")

    def without_timeleft(lines: list[str]) -> list[str]:
        # Two runs may straddle a second boundary, so time left is compared by pattern only.
        return [line for line in lines if not line.startswith("timeleft")]

    summary = ours(cli_env, proxy)
    assert without_timeleft(mine[:start]) == without_timeleft(summary)  # the summary comes first
    assert [line.split(":")[0] for line in mine[:start]] == [line.split(":")[0] for line in summary]
    section = mine[start:]
    their_section = theirs[theirs.index("=== VO dteam extension information ===") :]

    assert without_timeleft(section) == without_timeleft(their_section)
    assert section == [
        "=== VO dteam extension information ===",
        "VO        : dteam",
        f"subject   : {ALICE_DN}",
        f"issuer    : {AA_DN}",
        *(f"attribute : {f}" for f in FQANS),
        "attribute : name = value (qual)",
        section[-2],
        f"uri       : {URI}",
    ]
    assert re.fullmatch(r"timeleft  : 1[12]:\d\d:\d\d", section[-2])


def test_json_has_every_field(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    proxy = proxies["fake_ac_limited"]
    data = json.loads("\n".join(ours(cli_env, proxy, "--json")))
    subject, issuer = grid_proxy_info(grid_env, proxy, "-subject", "-issuer")
    timeleft = data.pop("timeleft")
    not_after = data.pop("not_after")
    (voms,) = data.pop("voms")
    assert data == {
        "path": str(proxy),
        "subject": subject,
        "issuer": issuer,
        "identity": ALICE_DN,
        "identity_issuer": "/C=XX/O=proxyd dev/CN=proxyd dev CA",
        "type": "RFC 3820 compliant limited proxy",
        "proxy_type": "rfc3820-limited",
        "limited": True,
        "proxy_depth": 1,
        "strength": 2048,
        "fqans": list(FQANS),
    }
    assert 11 * 3600 < timeleft <= 12 * 3600
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", not_after)
    assert {k: voms[k] for k in ("vo", "uri", "issuer", "holder", "fqans", "targets")} == {
        "vo": "dteam",
        "uri": URI,
        "issuer": AA_DN,
        "holder": ALICE_DN,
        "fqans": list(FQANS),
        "targets": [],
    }
    assert voms["generic_attributes"] == [] and voms["serial_number"] == "1"
    assert 11 * 3600 < voms["timeleft"] <= 12 * 3600


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["missing", "garbage", "untrusted"])
def test_bad_file_is_one_clean_error_line(
    which: str,
    proxies: dict[str, Path],
    cli_env: CliEnv,
    workdir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = workdir / "input.pem"
    expected = ""
    if which == "missing":
        expected = "cannot read credential file: No such file or directory"
    elif which == "garbage":
        path.write_text("hello\n")
        expected = "no PEM CERTIFICATE block found"
    else:  # a trust dir with some other CA: alice's CA is not trusted
        other = tmp_path_factory.mktemp("other-ca")
        ca_pem = make_aa_certificate(other / "ca", "/C=XX/O=elsewhere/CN=other CA")[0]
        shutil.copy(ca_pem, other / "12345678.0")
        cli_env.set("X509_CERT_DIR", other)
        path = proxies["gpi_rfc"]
        expected = "trusted"
    for options in ([], ["--identity"], ["--all"], ["--json"]):
        result = cli_env.run(main, ["--file", path, *options])
        assert (result.rc, result.out) == (1, ""), result
        assert result.err.startswith("proxy-info: ") and result.err.count("\n") == 1, result
        assert expected in result.err, result


def test_expired_proxy_is_described_with_no_time_left(
    expired_proxy: Path, grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    """As both grid tools do: scripts read --timeleft to decide to renew."""
    theirs = run_tool(["voms-proxy-info", "-file", expired_proxy, "-timeleft"], env=grid_env)
    assert (theirs.returncode, theirs.stdout) == (0, "0\n")
    assert ours(cli_env, expired_proxy, "--timeleft") == ["0"]
    assert ours(cli_env, expired_proxy, "--identity", "--type") == [
        ALICE_DN,
        "RFC 3820 compliant impersonation proxy",
    ]
    assert ours(cli_env, expired_proxy)[-1] == "timeleft : 0:00:00"
    result = cli_env.run(main, ["--file", expired_proxy, "--exists"])
    assert (result.rc, result.out, result.err) == (1, "", "")
    result = cli_env.run(main, ["--file", expired_proxy, "--identity", "--exists"])
    assert (result.rc, result.lines, result.err) == (1, [ALICE_DN], "")


def test_expired_proxy_with_a_broken_chain_is_still_an_error(
    expired_proxy: Path, cli_env: CliEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other-ca-2")
    ca_pem = make_aa_certificate(other / "ca", "/C=XX/O=elsewhere/CN=other CA")[0]
    shutil.copy(ca_pem, other / "12345678.0")
    cli_env.set("X509_CERT_DIR", other)
    result = cli_env.run(main, ["--file", expired_proxy, "--timeleft"])
    assert (result.rc, result.out) == (1, "")
    assert result.err.startswith(f"proxy-info: {expired_proxy}: ") and "expired" in result.err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--hours", "1"], 1),
        (["--hours", "0"], 0),
        (["--bits", "2048"], 0),
        (["--bits", "4096"], 1),
        (["--valid", "0:20", "--bits", "1024"], 0),
        (["--valid", "0:20", "--hours", "1"], 1),
    ],
)
def test_exists_hours_and_bits_match_grid_proxy_info(
    options: list[str],
    expected: int,
    proxies: dict[str, Path],
    grid_env: dict[str, str],
    cli_env: CliEnv,
) -> None:
    proxy = proxies["gpi_30_minutes"]
    single_dash = [o.removeprefix("-") if o.startswith("--") else o for o in options]
    theirs = run_tool(["grid-proxy-info", "-file", proxy, "-exists", *single_dash], env=grid_env)
    result = cli_env.run(main, ["--file", proxy, "--exists", *options])
    assert (result.rc, result.out, result.err) == (expected, "", "")
    assert theirs.returncode == expected


def test_exists_with_fields_prints_them_and_answers_by_status(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    proxy = proxies["gpi_30_minutes"]
    for valid, expected in (("1:00", 1), ("0:10", 0)):
        argv = ["-file", str(proxy), "-identity", "-exists", "-valid", valid]
        theirs = run_tool(["grid-proxy-info", *argv], env=grid_env)
        result = cli_env.run(main, argv)
        assert (result.rc, result.out) == (theirs.returncode, theirs.stdout)
        assert (result.rc, result.lines) == (expected, [ALICE_DN])


def test_the_grid_tools_single_dash_spellings(proxies: dict[str, Path], cli_env: CliEnv) -> None:
    proxy = str(proxies["fake_ac"])
    pairs = [
        (["-f", proxy, "-s", "-i"], ["--file", proxy, "--subject", "--issuer"]),
        (
            ["-file", proxy, "-identity", "-fqan", "-vo"],
            ["--file", proxy, "--identity", "--fqan", "--vo"],
        ),
        (
            ["-file", proxy, "-e", "-v", "1:00", "-h", "1", "-b", "2048"],
            ["--file", proxy, "--exists"],
        ),
        (
            ["-file", proxy, "-exists", "-valid", "24:00"],
            ["--file", proxy, "--exists", "--valid", "24:00"],
        ),
        (["-file", proxy, "-acexists", "dteam"], ["--file", proxy, "--acexists", "dteam"]),
        (
            ["-file", proxy, "-path", "-strength", "-type"],
            ["--file", proxy, "--path", "--strength", "--type"],
        ),
    ]
    for single, double in pairs:
        one, two = cli_env.run(main, single), cli_env.run(main, double)
        assert one == two, (single, one, two)
    assert cli_env.run(main, pairs[3][0]).rc == 1 and cli_env.run(main, pairs[2][0]).rc == 0


def test_exists_on_an_untrusted_proxy_says_why(
    proxies: dict[str, Path], cli_env: CliEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """grid-proxy-info -exists says 0 here (it does not validate); proxyd says 1, and why."""
    other = tmp_path_factory.mktemp("other-ca-3")
    ca_pem = make_aa_certificate(other / "ca", "/C=XX/O=elsewhere/CN=other CA")[0]
    shutil.copy(ca_pem, other / "12345678.0")
    cli_env.set("X509_CERT_DIR", other)
    result = cli_env.run(main, ["--file", proxies["gpi_rfc"], "--exists"])
    assert (result.rc, result.out) == (1, "")
    assert result.err.startswith("proxy-info: ") and "trusted" in result.err
    assert result.err.count("\n") == 1


def test_default_file_is_x509_user_proxy_then_tmp(
    proxies: dict[str, Path], cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(proxies["gpi_limited"], cli_env.proxy)
    assert ours(cli_env, cli_env.proxy, "--path") == [str(cli_env.proxy)]
    result = cli_env.run(main, ["--path", "--type"])
    assert result.lines == [str(cli_env.proxy), "RFC 3820 compliant limited proxy"]
    cli_env.set("X509_USER_PROXY", None)
    monkeypatch.setattr("os.getuid", lambda: 4242424)
    result = cli_env.run(main, ["--path"])
    assert result.rc == 1 and "/tmp/x509up_u4242424" in result.err


def test_usage_errors(cli_env: CliEnv) -> None:
    for argv in (
        ["--valid", "1:00"],
        ["--bits", "2048"],
        ["-h", "1"],
        ["-h"],
        ["--identity", "--json"],
        ["--exists", "--valid", "1h"],
        ["--exists", "--hours", "one"],
        ["--exists", "--bits", "-5"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_console_script(proxies: dict[str, Path], grid_env: dict[str, str]) -> None:
    proxy = proxies["fake_ac"]
    proc = run_tool(
        [VENV_BIN / "proxy-info", "--file", proxy, "--identity", "--type", "--fqan"], env=grid_env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [ALICE_DN, "RFC 3820 compliant impersonation proxy", *FQANS]
    missing = run_tool([VENV_BIN / "proxy-info", "--file", "/nonexistent/x"], env=grid_env)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("proxy-info: /nonexistent/x: ")
    assert "Traceback" not in missing.stderr


def test_valid_and_hours_together_must_both_be_met_as_in_voms_proxy_info(
    proxies: dict[str, Path], grid_env: dict[str, str], cli_env: CliEnv
) -> None:
    """grid-proxy-info takes whichever comes last; voms-proxy-info and proxyd need both."""
    proxy = proxies["gpi_30_minutes"]
    for argv in (["-valid", "1:00", "-hours", "0"], ["-hours", "0", "-valid", "1:00"]):
        theirs = run_tool(["voms-proxy-info", "-file", proxy, "-exists", *argv], env=grid_env)
        result = cli_env.run(main, ["-file", proxy, "-exists", *argv])
        assert (result.rc, result.out, result.err) == (theirs.returncode, "", "") == (1, "", "")
