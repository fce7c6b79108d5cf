"""The strict VOMS checker (libvomsapi) is strict, and voms-proxy-info is not.

Inputs come from the real voms-proxy-fake, then are forged or tampered with
tests.support.tamper. Every forgery must FAIL in the checker, while
voms-proxy-info happily prints it and exits 0.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from tests.support.tamper import (
    VOMS_AC_OID,
    extension_value,
    flip_bit,
    make_aa_certificate,
    patch_leaf_bytes,
    rebuild_leaf_with_extension,
)
from tests.support.tools import run_tool
from tests.support.vomscheck import Verdict, check_proxy

pytestmark = pytest.mark.interop

AA_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
CA_DN = "/C=XX/O=proxyd dev/CN=proxyd dev CA"
ROGUE_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=rogue.localhost"
URI = "voms.localhost:15000"
FQANS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL")


def fake_proxy(
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    out: Path,
    *,
    user: str = "alice",
    aa: tuple[Path, Path] | None = None,
    fqans: Sequence[str] = FQANS,
    extra: Sequence[str] = (),
    vomslife: int = 12,
) -> Path:
    cert, key = dev_pki.user(user)
    host_cert, host_key = aa or dev_pki.host("aa")
    args: list[str | Path] = [
        "voms-proxy-fake", "-rfc", "-newformat", "-cert", cert, "-key", key,
        "-hostcert", host_cert, "-hostkey", host_key, "-voms", "dteam", "-uri", URI,
    ]  # fmt: skip
    for fqan in fqans:
        args += ["-fqan", fqan]
    args += [*extra, "-hours", "12", "-vomslife", str(vomslife), "-out", out]
    proc = run_tool(args, env=grid_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def check(voms_checker: Path, dev_pki: DevPKI, proxy: Path) -> Verdict:
    return check_proxy(voms_checker, proxy, dev_pki.cert_dir, dev_pki.voms_dir)


def assert_fails(
    voms_checker: Path, dev_pki: DevPKI, grid_env: dict[str, str], proxy: Path, message: str
) -> Verdict:
    verdict = check(voms_checker, dev_pki, proxy)
    assert not verdict.ok, verdict
    assert verdict.error is not None and message in verdict.error, verdict
    # ... while voms-proxy-info falls back to unverified parsing and succeeds.
    info = run_tool(["voms-proxy-info", "-all", "-file", proxy], env=grid_env)
    assert info.returncode == 0, info.stdout + info.stderr
    assert "VO        : dteam" in info.stdout, info.stdout
    return verdict


@pytest.fixture
def good_proxy(dev_pki: DevPKI, grid_env: dict[str, str], workdir: Path) -> Path:
    return fake_proxy(dev_pki, grid_env, workdir / "good.pem", extra=["-ga", "name=value(qual)"])


def test_good_ac_verifies(voms_checker: Path, dev_pki: DevPKI, good_proxy: Path) -> None:
    verdict = check(voms_checker, dev_pki, good_proxy)
    assert verdict.ok and verdict.error is None, verdict
    (ac,) = verdict.acs
    assert ac.vo == "dteam"
    assert ac.uri == URI
    assert ac.issuer == AA_DN
    assert ac.holder == "/C=XX/O=proxyd dev/OU=Users/CN=alice"
    assert ac.fqans == FQANS
    assert ac.generic_attributes == (("name", "value", "qual"),)
    assert ac.not_before.endswith("Z") and ac.not_after.endswith("Z")


def test_rebuilt_leaf_without_change_still_verifies(
    voms_checker: Path, dev_pki: DevPKI, good_proxy: Path, workdir: Path
) -> None:
    """Control for the forgeries below: re-issuing the leaf by itself changes nothing.

    PKCS#1 v1.5 signatures are deterministic and the copy is faithful, so an
    unchanged extension gives back the very same proxy file.
    """
    out = workdir / "rebuilt.pem"
    rebuild_leaf_with_extension(
        good_proxy, out, VOMS_AC_OID, extension_value(good_proxy), dev_pki.user("alice")[1]
    )
    assert out.read_bytes() == good_proxy.read_bytes()
    verdict = check(voms_checker, dev_pki, out)
    assert verdict.ok, verdict
    assert verdict.acs[0].fqans == FQANS


def _ac_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def test_pastac_shifts_the_whole_ac_validity(
    voms_checker: Path, dev_pki: DevPKI, grid_env: dict[str, str], workdir: Path
) -> None:
    """-pastac S moves notBefore *and* notAfter S seconds back (the length stays -vomslife)."""
    proxy = fake_proxy(dev_pki, grid_env, workdir / "p.pem", extra=["-pastac", "1:00"], vomslife=3)
    verdict = check(voms_checker, dev_pki, proxy)
    assert verdict.ok, verdict
    (ac,) = verdict.acs
    now = dt.datetime.now(dt.UTC)
    before, after = _ac_time(ac.not_before), _ac_time(ac.not_after)
    assert after - before == dt.timedelta(hours=3)
    assert abs(now - dt.timedelta(hours=1) - before) < dt.timedelta(minutes=5)


def test_expired_ac_fails(
    voms_checker: Path, dev_pki: DevPKI, grid_env: dict[str, str], workdir: Path
) -> None:
    proxy = fake_proxy(dev_pki, grid_env, workdir / "p.pem", extra=["-pastac", "2:00"], vomslife=1)
    assert_fails(voms_checker, dev_pki, grid_env, proxy, "AC not valid anymore.")


def test_aa_not_in_vomsdir_fails(
    voms_checker: Path, dev_pki: DevPKI, grid_env: dict[str, str], workdir: Path
) -> None:
    """A second AA, certified by the trusted CA but not listed in the .lsc, for the same URI."""
    aa = make_aa_certificate(
        workdir / "rogue", ROGUE_DN, ca_cert_path=dev_pki.ca_cert, ca_key_path=dev_pki.ca_key
    )
    proxy = fake_proxy(dev_pki, grid_env, workdir / "p.pem", aa=aa)
    assert_fails(voms_checker, dev_pki, grid_env, proxy, "Cannot verify AC signature!")


@pytest.mark.parametrize(
    ("subject", "issuer"),
    [
        pytest.param(ROGUE_DN, None, id="self-signed"),
        # Subject and issuer DNs match the .lsc lines, but the "CA" is forged.
        pytest.param(AA_DN, CA_DN, id="forged-ca-name"),
    ],
)
def test_aa_from_unknown_ca_fails(
    voms_checker: Path,
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    workdir: Path,
    subject: str,
    issuer: str | None,
) -> None:
    aa = make_aa_certificate(workdir / "rogue", subject, issuer_dn=issuer)
    proxy = fake_proxy(dev_pki, grid_env, workdir / "p.pem", aa=aa)
    assert_fails(voms_checker, dev_pki, grid_env, proxy, "Cannot verify AC signature!")


@pytest.mark.parametrize("resign", [False, True], ids=["leaf-signature-broken", "leaf-resigned"])
def test_tampered_ac_signature_fails(
    voms_checker: Path,
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    good_proxy: Path,
    workdir: Path,
    resign: bool,
) -> None:
    value = extension_value(good_proxy)
    # The only AC is last in the extension; its signature BIT STRING ends it.
    tampered = flip_bit(value, -10)
    out = workdir / "tampered.pem"
    if resign:
        rebuild_leaf_with_extension(
            good_proxy, out, VOMS_AC_OID, tampered, dev_pki.user("alice")[1]
        )
    else:
        patch_leaf_bytes(good_proxy, out, value, tampered)
    assert extension_value(out) == tampered
    assert_fails(voms_checker, dev_pki, grid_env, out, "Failed to verify AC signature.")


def test_tampered_fqan_fails(
    voms_checker: Path,
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    good_proxy: Path,
    workdir: Path,
) -> None:
    value = extension_value(good_proxy)
    assert value.count(b"/dteam/analysis/") == 1
    tampered = value.replace(b"/dteam/analysis/", b"/dteam/analysiS/")
    out = workdir / "tampered.pem"
    rebuild_leaf_with_extension(good_proxy, out, VOMS_AC_OID, tampered, dev_pki.user("alice")[1])
    assert_fails(voms_checker, dev_pki, grid_env, out, "Failed to verify AC signature.")


def test_ac_of_another_user_fails(
    voms_checker: Path, dev_pki: DevPKI, grid_env: dict[str, str], workdir: Path
) -> None:
    """Bob's genuine AC grafted into a proxy of alice, correctly signed by alice."""
    alice = fake_proxy(dev_pki, grid_env, workdir / "alice.pem")
    bob = fake_proxy(dev_pki, grid_env, workdir / "bob.pem", user="bob")
    assert check(voms_checker, dev_pki, bob).ok
    out = workdir / "grafted.pem"
    rebuild_leaf_with_extension(
        alice, out, VOMS_AC_OID, extension_value(bob), dev_pki.user("alice")[1]
    )
    assert_fails(
        voms_checker,
        dev_pki,
        grid_env,
        out,
        "AC has been granted to a different certificate than the passed one.",
    )
