"""voms_ext against the real grid tools, both ways (acceptance of the voms_ext issue).

A. Ours → theirs: proxies and VOMS ACs built with voms_ext are accepted by
   the strict VOMS checker (libvomsapi), `voms-proxy-info`, `grid-proxy-info`
   and `openssl verify -allow_proxy_certs`, which report exactly what we put
   in; our own `validate_chain` agrees with them. ACs we forge on purpose are
   rejected by the checker *and* by `validate_chain`.
B. Theirs → ours: proxies made by `grid-proxy-init` and `voms-proxy-fake`
   validate with voms_ext to the identity, proxy type and attributes the
   real tools report, and we accept an AC exactly when libvomsapi does.
   Tampered copies are rejected with a reason.

Every credential file is made once per module (module-scoped fixtures) and
each claim is one test parametrised over the files, so a failure names the
claim and the input.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.devpki import DevPKI
from tests.support.tamper import (
    VOMS_AC_OID,
    extension_value,
    flip_bit,
    load_leaf,
    make_aa_certificate,
    patch_leaf_bytes,
    rebuild_leaf_with_extension,
)
from tests.support.tools import run_tool
from tests.support.vomscheck import Verdict, check_proxy
from voms_ext import (
    AttributeCertificateBuilder,
    AttributeCertificateError,
    Credential,
    ProxyBuilder,
    ProxyError,
    ProxyType,
    TrustStore,
    ValidationResult,
    VomsExtError,
    load_credential_file,
    parse_fqan,
    slash_to_name,
    validate_chain,
    write_credential_file,
)

pytestmark = pytest.mark.interop

ALICE_DN = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
AA_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost"
CA_DN = "/C=XX/O=proxyd dev/CN=proxyd dev CA"
ROGUE_DN = "/C=XX/O=proxyd dev/OU=Hosts/CN=rogue.localhost"
MALLORY_PROXY_DN = "/C=XX/O=proxyd dev/OU=Users/CN=mallory/CN=123"
URI = "voms.localhost:15000"
THREE_FQANS = ("/dteam", "/dteam/analysis", "/dteam/Role=production")
RFC_IMPERSONATION = "RFC 3820 compliant impersonation proxy"
RFC_LIMITED = "RFC 3820 compliant limited proxy"
PCI_OID = "1.3.6.1.5.5.7.1.14"
INHERIT_ALL_PCI = bytes.fromhex("300c300a06082b06010505071501")  # PROTOCOLS.md §2


# --- helpers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """A certificate with its key, and where both live on disk."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path


def load_signer(cert_path: Path, key_path: Path) -> Signer:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = load_credential_file(cert_path).certificate
    return Signer(cert, key, cert_path, key_path)


def long_form(fqans: Sequence[str]) -> tuple[str, ...]:
    return tuple(parse_fqan(f).long for f in fqans)


def strict_check(checker: Path, dev_pki: DevPKI, proxy: Path) -> Verdict:
    return check_proxy(checker, proxy, dev_pki.cert_dir, dev_pki.voms_dir)


def ours(trust: TrustStore, proxy: Path, *, check_voms: bool = True) -> ValidationResult:
    return validate_chain(load_credential_file(proxy).certificates, trust, check_voms=check_voms)


def ours_or_error(trust: TrustStore, proxy: Path) -> ValidationResult | VomsExtError:
    try:
        return ours(trust, proxy)
    except VomsExtError as exc:
        return exc


def grid_proxy_info(env: Mapping[str, str], proxy: Path) -> tuple[str, str]:
    """(identity, type) as `grid-proxy-info -identity -type` prints them."""
    proc = run_tool(["grid-proxy-info", "-file", proxy, "-identity", "-type"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    identity, kind = proc.stdout.splitlines()
    return identity, kind


@dataclass(frozen=True)
class VomsInfo:
    """The `=== VO ... ===` section of `voms-proxy-info -all` (one AC)."""

    vo: str
    attributes: tuple[str, ...]  # FQAN lines, then `name = value (qualifier)` lines
    uri: str


def voms_proxy_info(env: Mapping[str, str], proxy: Path) -> VomsInfo:
    proc = run_tool(["voms-proxy-info", "-all", "-file", proxy], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, sep, section = proc.stdout.partition("=== VO ")
    assert sep, proc.stdout
    fields: dict[str, list[str]] = {}
    for line in section.splitlines()[1:]:
        key, colon, value = line.partition(" : ")
        if colon:
            fields.setdefault(key.strip(), []).append(value)
    assert len(fields.get("VO", [])) == 1 and len(fields.get("uri", [])) == 1, proc.stdout
    return VomsInfo(fields["VO"][0], tuple(fields.get("attribute", [])), fields["uri"][0])


def openssl_verify(
    dev_pki: DevPKI, workdir: Path, certificates: Sequence[x509.Certificate]
) -> tuple[int, str]:
    """`openssl verify -allow_proxy_certs` of the leaf with the rest as -untrusted."""
    leaf, untrusted = workdir / "leaf.pem", workdir / "untrusted.pem"
    pem = serialization.Encoding.PEM
    leaf.write_bytes(certificates[0].public_bytes(pem))
    untrusted.write_bytes(b"".join(c.public_bytes(pem) for c in certificates[1:]))
    proc = run_tool(
        ["openssl", "verify", "-allow_proxy_certs", "-CApath", dev_pki.cert_dir,
         "-untrusted", untrusted, leaf]
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def ga_tuples(result: ValidationResult) -> list[tuple[str, str, str]]:
    return [(g.name, g.value, g.qualifier) for v in result.voms for g in v.generic_attributes]


def both_messages(verdict: Verdict, our: ValidationResult | VomsExtError) -> str:
    """Both relying parties' verdicts, for assertion messages."""
    theirs = f"FAIL {verdict.error!r}" if not verdict.ok else f"OK {[a.fqans for a in verdict.acs]}"
    if isinstance(our, ValidationResult):
        mine = f"OK {our.identity} {our.proxy_type.description} {list(our.fqans)}"
    else:
        mine = f"{type(our).__name__}: {our}"
    return f"\n  strict checker: {theirs}\n  voms_ext:       {mine}"


# --- module-wide material ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mod_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voms_ext_interop")
    path.chmod(0o700)
    return path


@pytest.fixture(scope="module")
def trust(dev_pki: DevPKI) -> TrustStore:
    return TrustStore.from_dirs(dev_pki.cert_dir, dev_pki.voms_dir)


@pytest.fixture(scope="module")
def alice(dev_pki: DevPKI) -> Signer:
    return load_signer(*dev_pki.user("alice"))


@pytest.fixture(scope="module")
def bob(dev_pki: DevPKI) -> Signer:
    return load_signer(*dev_pki.user("bob"))


@pytest.fixture(scope="module")
def aa(dev_pki: DevPKI) -> Signer:
    return load_signer(*dev_pki.host("aa"))


@pytest.fixture(scope="module")
def rogue_aa(dev_pki: DevPKI, mod_dir: Path) -> Signer:
    """An AA certified by the trusted CA, but not listed in the vomsdir `.lsc`."""
    return load_signer(
        *make_aa_certificate(
            mod_dir / "rogue-aa", ROGUE_DN, ca_cert_path=dev_pki.ca_cert, ca_key_path=dev_pki.ca_key
        )
    )


@pytest.fixture(scope="module")
def impostor_aa(mod_dir: Path) -> Signer:
    """A self-signed AA with the real AA's subject and the CA as claimed issuer.

    Its DN lines match the vomsdir `.lsc`; only the chain to the CA gives it away.
    """
    return load_signer(*make_aa_certificate(mod_dir / "impostor-aa", AA_DN, issuer_dn=CA_DN))


@pytest.fixture(scope="module")
def proxy_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """The only RSA keys this module makes itself: the proxies' (first and second level)."""
    first, second = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    return first, second


# --- A. ours → theirs ---------------------------------------------------------------------


@dataclass(frozen=True)
class OurCase:
    """One proxy built with voms_ext from alice's certificate, with one dteam AC."""

    fqans: tuple[str, ...] = ("/dteam",)
    limited: bool = False
    depth: int = 1  # 2: a plain proxy made from the VOMS proxy (AC on the first proxy)
    generic: tuple[tuple[str, str, str], ...] = ()
    legacy_holder: bool = False
    targets: tuple[str, ...] = ()
    # Only for forgeries:
    holder: str = "alice"
    signer: str = "aa"
    window: tuple[dt.timedelta, dt.timedelta] = (dt.timedelta(minutes=-5), dt.timedelta(hours=12))
    patch: tuple[bytes, bytes] | None = None  # byte patch of the AC, leaf re-signed (depth 1)

    @property
    def type_line(self) -> str:
        return RFC_LIMITED if self.limited else RFC_IMPERSONATION


OUR_CASES: dict[str, OurCase] = {
    "full": OurCase(fqans=("/dteam", "/dteam/Role=production")),
    "limited": OurCase(limited=True),
    "proxy_of_proxy": OurCase(depth=2, fqans=("/dteam", "/dteam/analysis")),
    "one_fqan": OurCase(fqans=("/dteam/analysis",)),
    "three_fqans": OurCase(fqans=THREE_FQANS),
    "generic_attributes": OurCase(
        generic=(("nickname", "alice", "dteam"), ("site", "CERN-PROD", "qual"))
    ),
    "legacy_holder": OurCase(legacy_holder=True),
    "targets": OurCase(targets=("https://host.localhost:8443/", "https://wms.localhost/")),
}

# name -> (case, what the strict checker says)
FORGED_CASES: dict[str, tuple[OurCase, str]] = {
    "wrong_holder_serial": (
        OurCase(holder="bob"),
        "AC has been granted to a different certificate than the passed one.",
    ),
    "tampered_fqan": (
        OurCase(fqans=("/dteam/Role=pilot",), patch=(b"Role=pilot", b"Role=admin")),
        "Failed to verify AC signature.",
    ),
    "aa_not_in_vomsdir": (OurCase(signer="rogue"), "Cannot verify AC signature!"),
    "aa_impostor_with_lsc_dn": (OurCase(signer="impostor"), "Cannot verify AC signature!"),
    "expired_ac": (  # ended 10 minutes ago: beyond the 300 s both sides allow
        OurCase(window=(dt.timedelta(hours=-3), dt.timedelta(minutes=-10))),
        "AC not valid anymore.",
    ),
}


@pytest.fixture(scope="module")
def build_ours(
    mod_dir: Path,
    alice: Signer,
    bob: Signer,
    aa: Signer,
    rogue_aa: Signer,
    impostor_aa: Signer,
    proxy_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> Callable[[str, OurCase], Path]:
    holders = {"alice": alice, "bob": bob}
    signers = {"aa": aa, "rogue": rogue_aa, "impostor": impostor_aa}

    def build(name: str, case: OurCase) -> Path:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        acb = (
            AttributeCertificateBuilder()
            .vo("dteam")
            .uri(URI)
            .fqans(case.fqans)
            .holder(holders[case.holder].cert, legacy=case.legacy_holder)
            .validity(now + case.window[0], now + case.window[1])
        )
        for ga in case.generic:
            acb = acb.generic_attribute(*ga)
        for target in case.targets:
            acb = acb.target(target)
        signer = signers[case.signer]
        ac = acb.sign(signer.cert, signer.key)
        key1, key2 = proxy_keys
        builder = (
            ProxyBuilder(alice.cert)
            .public_key(key1)
            .lifetime(dt.timedelta(hours=12))
            .attribute_certificates([ac])
        )
        proxy1 = (builder.limited() if case.limited else builder).sign(alice.key)
        out = mod_dir / f"ours-{name}.pem"
        if case.depth == 1:
            write_credential_file(out, Credential((proxy1, alice.cert), key1))
        else:
            proxy2 = (
                ProxyBuilder(proxy1, [alice.cert])
                .public_key(key2)
                .lifetime(dt.timedelta(hours=11))
                .sign(key1)
            )
            write_credential_file(out, Credential((proxy2, proxy1, alice.cert), key2))
        if case.patch is not None:
            old, new = case.patch
            value = extension_value(out)
            assert value.count(old) == 1, value
            tampered = mod_dir / f"ours-{name}-tampered.pem"
            rebuild_leaf_with_extension(
                out, tampered, VOMS_AC_OID, value.replace(old, new), alice.key_path
            )
            return tampered
        return out

    return build


@pytest.fixture(scope="module")
def our_proxies(build_ours: Callable[[str, OurCase], Path]) -> dict[str, Path]:
    return {name: build_ours(name, case) for name, case in OUR_CASES.items()}


@pytest.fixture(scope="module")
def forged_proxies(build_ours: Callable[[str, OurCase], Path]) -> dict[str, Path]:
    return {name: build_ours(name, case) for name, (case, _) in FORGED_CASES.items()}


@pytest.mark.parametrize("name", OUR_CASES)
def test_ours_strict_checker_accepts_and_reports_our_attributes(
    name: str, our_proxies: dict[str, Path], voms_checker: Path, dev_pki: DevPKI
) -> None:
    case = OUR_CASES[name]
    verdict = strict_check(voms_checker, dev_pki, our_proxies[name])
    assert verdict.ok, verdict
    (ac,) = verdict.acs
    assert (ac.vo, ac.uri, ac.issuer, ac.holder) == ("dteam", URI, AA_DN, ALICE_DN)
    assert ac.fqans == long_form(case.fqans)
    assert ac.generic_attributes == case.generic


@pytest.mark.parametrize("name", OUR_CASES)
def test_ours_voms_proxy_info_shows_our_attributes(
    name: str, our_proxies: dict[str, Path], grid_env: dict[str, str]
) -> None:
    case = OUR_CASES[name]
    info = voms_proxy_info(grid_env, our_proxies[name])
    ga_lines = tuple(f"{n} = {v} ({q})" for n, v, q in case.generic)
    assert info == VomsInfo("dteam", long_form(case.fqans) + ga_lines, URI)


@pytest.mark.parametrize("name", OUR_CASES)
def test_ours_grid_proxy_info_type(
    name: str, our_proxies: dict[str, Path], grid_env: dict[str, str]
) -> None:
    assert grid_proxy_info(grid_env, our_proxies[name]) == (ALICE_DN, OUR_CASES[name].type_line)


@pytest.mark.parametrize("name", OUR_CASES)
def test_ours_openssl_verify_accepts(
    name: str, our_proxies: dict[str, Path], dev_pki: DevPKI, workdir: Path
) -> None:
    certificates = load_credential_file(our_proxies[name]).certificates
    assert len(certificates) == OUR_CASES[name].depth + 1
    rc, output = openssl_verify(dev_pki, workdir, certificates)
    assert rc == 0 and output.strip().endswith(": OK"), output


@pytest.mark.parametrize("name", OUR_CASES)
def test_ours_validate_chain_agrees(
    name: str, our_proxies: dict[str, Path], trust: TrustStore
) -> None:
    case = OUR_CASES[name]
    result = ours(trust, our_proxies[name])
    assert result.identity == ALICE_DN
    assert result.proxy_type == (
        ProxyType.RFC_LIMITED if case.limited else ProxyType.RFC_IMPERSONATION
    )
    assert result.proxy_type.description == case.type_line
    assert result.is_limited is case.limited
    assert result.proxy_depth == case.depth
    assert result.fqans == long_form(case.fqans)
    assert ga_tuples(result) == list(case.generic)
    (voms,) = result.voms
    assert (voms.vo, voms.uri, voms.issuer, voms.targets) == ("dteam", URI, AA_DN, case.targets)


@pytest.mark.parametrize("name", FORGED_CASES)
def test_forged_ac_rejected_by_strict_checker_and_by_us(
    name: str,
    forged_proxies: dict[str, Path],
    voms_checker: Path,
    dev_pki: DevPKI,
    trust: TrustStore,
) -> None:
    expected_checker_error = FORGED_CASES[name][1]
    verdict = strict_check(voms_checker, dev_pki, forged_proxies[name])
    our = ours_or_error(trust, forged_proxies[name])
    messages = both_messages(verdict, our)
    assert not verdict.ok, messages
    assert verdict.error == expected_checker_error, messages  # the forgery is the one we meant
    assert isinstance(our, AttributeCertificateError) and str(our), messages


# --- B. theirs → ours ---------------------------------------------------------------------


@dataclass(frozen=True)
class TheirCase:
    """A proxy made by a real tool; `source` names a proxy this one is made from."""

    tool: str  # grid-proxy-init or voms-proxy-fake
    args: tuple[str, ...] = ()
    source: str | None = None
    fqans: tuple[str, ...] = ("/dteam/Role=NULL/Capability=NULL",)
    vomslife: int = 12
    rogue_aa: bool = False
    xfail_identity: str | None = None

    @property
    def has_ac(self) -> bool:
        source = THEIR_CASES[self.source] if self.source else None
        return self.tool == "voms-proxy-fake" or (source is not None and source.has_ac)


INDEPENDENT_IDENTITY_BUG = (
    "BUG: validate_chain reports the end-entity subject as the identity of an RFC 3820 "
    "independent proxy; grid-proxy-info (and RFC 3820 §3.8: an independent proxy inherits "
    "no rights from its issuer) give the proxy's own subject"
)

THEIR_CASES: dict[str, TheirCase] = {
    "gpi_rfc": TheirCase("grid-proxy-init"),
    "gpi_limited": TheirCase("grid-proxy-init", ("-limited",)),
    "gpi_old": TheirCase("grid-proxy-init", ("-old",)),
    "gpi_old_limited": TheirCase("grid-proxy-init", ("-old", "-limited")),
    "gpi_draft": TheirCase("grid-proxy-init", ("-draft",)),
    "gpi_draft_limited": TheirCase("grid-proxy-init", ("-draft", "-limited")),
    "gpi_independent": TheirCase("grid-proxy-init", ("-independent",)),
    "gpi_second_level": TheirCase("grid-proxy-init", source="gpi_rfc"),
    "gpi_second_level_of_limited": TheirCase("grid-proxy-init", source="gpi_limited"),
    "fake_newformat": TheirCase("voms-proxy-fake", ("-newformat",), fqans=THREE_FQANS),
    "fake_generic_attributes": TheirCase(
        "voms-proxy-fake", ("-newformat", "-ga", "name=value(qual)", "-ga", "site=CERN-PROD")
    ),
    "fake_oldformat": TheirCase("voms-proxy-fake"),
    "fake_limited": TheirCase("voms-proxy-fake", ("-newformat", "-limited")),
    "fake_expired_ac": TheirCase("voms-proxy-fake", ("-newformat", "-pastac", "2:00"), vomslife=1),
    "fake_aa_not_in_vomsdir": TheirCase("voms-proxy-fake", ("-newformat",), rogue_aa=True),
    "fake_path_length_0": TheirCase("voms-proxy-fake", ("-newformat", "-path-length", "0")),
    "gpi_from_voms_proxy": TheirCase("grid-proxy-init", source="fake_newformat"),
}
AC_CASES = [name for name, case in THEIR_CASES.items() if case.has_ac]


def make_their_proxy(
    case: TheirCase,
    out: Path,
    env: Mapping[str, str],
    *,
    user: Signer,
    source: Path | None = None,
    aa: Signer | None = None,
) -> None:
    """Run the real tool: from `user`'s certificate, or from the proxy file `source`."""
    cert, key = (source, source) if source is not None else (user.cert_path, user.key_path)
    if case.tool == "grid-proxy-init":
        args: list[str | Path] = ["grid-proxy-init", "-q", "-cert", cert, "-key", key]
        args += [*case.args, "-valid", "11:00" if source else "12:00", "-out", out]
    else:
        assert aa is not None, "voms-proxy-fake needs an AA"
        args = ["voms-proxy-fake", "-rfc", *case.args, "-cert", cert, "-key", key,
                "-hostcert", aa.cert_path, "-hostkey", aa.key_path,
                "-voms", "dteam", "-uri", URI]  # fmt: skip
        for fqan in case.fqans:
            args += ["-fqan", fqan]
        args += ["-hours", "12", "-vomslife", str(case.vomslife), "-out", out]
    proc = run_tool(args, env=env)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def their_proxies(
    mod_dir: Path, alice: Signer, aa: Signer, rogue_aa: Signer, grid_env: dict[str, str]
) -> dict[str, Path]:
    made: dict[str, Path] = {}
    for name, case in THEIR_CASES.items():  # sources come first in THEIR_CASES
        out = mod_dir / f"theirs-{name}.pem"
        source = made[case.source] if case.source else None
        signer = rogue_aa if case.rogue_aa else aa
        make_their_proxy(case, out, grid_env, user=alice, source=source, aa=signer)
        made[name] = out
    return made


def _identity_param(name: str) -> object:
    reason = THEIR_CASES[name].xfail_identity
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_identity_param(n) for n in THEIR_CASES])
def test_theirs_identity_matches_grid_proxy_info(
    name: str, their_proxies: dict[str, Path], grid_env: dict[str, str], trust: TrustStore
) -> None:
    identity, _ = grid_proxy_info(grid_env, their_proxies[name])
    assert ours(trust, their_proxies[name], check_voms=False).identity == identity


@pytest.mark.parametrize("name", THEIR_CASES)
def test_theirs_type_matches_grid_proxy_info(
    name: str, their_proxies: dict[str, Path], grid_env: dict[str, str], trust: TrustStore
) -> None:
    _, kind = grid_proxy_info(grid_env, their_proxies[name])
    result = ours(trust, their_proxies[name], check_voms=False)
    assert result.proxy_type.description == kind
    assert result.is_limited is ("limited" in kind)


@pytest.mark.parametrize("name", AC_CASES)
def test_theirs_acs_accepted_exactly_when_strict_checker_accepts(
    name: str,
    their_proxies: dict[str, Path],
    voms_checker: Path,
    dev_pki: DevPKI,
    trust: TrustStore,
) -> None:
    verdict = strict_check(voms_checker, dev_pki, their_proxies[name])
    our = ours_or_error(trust, their_proxies[name])
    messages = both_messages(verdict, our)
    if not verdict.ok:
        assert isinstance(our, AttributeCertificateError) and str(our), messages
        return
    assert isinstance(our, ValidationResult), messages
    (ac,) = verdict.acs
    (voms,) = our.voms
    assert our.fqans == ac.fqans
    assert ga_tuples(our) == list(ac.generic_attributes)
    assert (voms.vo, voms.uri, voms.issuer) == (ac.vo, ac.uri, ac.issuer)


def test_theirs_verdicts_cover_accept_and_reject(
    their_proxies: dict[str, Path], voms_checker: Path, dev_pki: DevPKI
) -> None:
    """Control: the AC cases above include both outcomes, with the errors we expect."""
    verdicts = {n: strict_check(voms_checker, dev_pki, their_proxies[n]) for n in AC_CASES}
    rejected = {n: v.error for n, v in verdicts.items() if not v.ok}
    assert rejected == {
        "fake_expired_ac": "AC not valid anymore.",
        "fake_aa_not_in_vomsdir": "Cannot verify AC signature!",
    }
    assert verdicts["fake_generic_attributes"].acs[0].generic_attributes == (
        ("name", "value", "qual"),
        ("site", "CERN-PROD", "dteam"),
    )
    assert verdicts["fake_newformat"].acs[0].fqans == THREE_FQANS


def test_ac_without_fqans_is_accepted_like_libvomsapi(
    mod_dir: Path,
    alice: Signer,
    aa: Signer,
    voms_checker: Path,
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    trust: TrustStore,
) -> None:
    """An AC whose FQAN list is empty (`voms-proxy-fake` without `-fqan`).

    libvomsapi verifies it and reports no FQAN; a relying party must agree
    with the strict checker, so voms_ext accepts it too, with no FQANs.
    """
    case = TheirCase("voms-proxy-fake", ("-newformat",), fqans=())
    proxy = mod_dir / "theirs-no-fqan.pem"
    make_their_proxy(case, proxy, grid_env, user=alice, aa=aa)
    verdict = strict_check(voms_checker, dev_pki, proxy)
    assert verdict.ok and verdict.acs[0].fqans == (), verdict
    result = ours(trust, proxy)
    assert result.fqans == () and [v.vo for v in result.voms] == ["dteam"]


# Tampered copies, and what a real tool says about each:
#   ("checker", error) - the strict VOMS checker fails with that error;
#   ("openssl", None)  - `openssl verify -allow_proxy_certs` refuses the chain.
@dataclass(frozen=True)
class Tampered:
    error: type[VomsExtError]
    cause: str  # regular expression our exception message must match
    real_tool: tuple[str, str | None]


TAMPERED: dict[str, Tampered] = {
    "ac_signature_bit_flipped": Tampered(
        AttributeCertificateError, r"signature does not verify",
        ("checker", "Failed to verify AC signature."),
    ),
    "proxy_signature_bit_flipped": Tampered(
        ProxyError, r"signature does not verify", ("openssl", None)
    ),
    "expired_ac": Tampered(
        AttributeCertificateError, r"not valid anymore", ("checker", "AC not valid anymore.")
    ),
    "aa_not_in_vomsdir": Tampered(
        AttributeCertificateError, r"rogue\.localhost.*\.lsc",
        ("checker", "Cannot verify AC signature!"),
    ),
    "subject_not_extending_issuer": Tampered(
        ProxyError, r"CN=mallory/CN=123: subject must be its issuer's subject plus one CN",
        ("openssl", None),
    ),
    "path_length_exceeded": Tampered(  # grid-proxy-init makes it without complaint
        ProxyError, r"path length constraint", ("openssl", None)
    ),
}  # fmt: skip


def _subject_not_extending_issuer(out: Path, alice: Signer, proxy_key: rsa.RSAPrivateKey) -> None:
    """A proxy named for mallory, issued and signed by alice, otherwise well-formed."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    usage = x509.KeyUsage(True, False, True, True, False, False, False, False, False)
    pci = x509.UnrecognizedExtension(x509.ObjectIdentifier(PCI_OID), INHERIT_ALL_PCI)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(slash_to_name(MALLORY_PROXY_DN))
        .issuer_name(alice.cert.subject)
        .public_key(proxy_key.public_key())
        .serial_number(123)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=12))
        .add_extension(usage, critical=True)
        .add_extension(pci, critical=True)
        .sign(alice.key, hashes.SHA256())
    )
    write_credential_file(out, Credential((leaf, alice.cert), proxy_key))


@pytest.fixture(scope="module")
def tampered_proxies(
    mod_dir: Path,
    their_proxies: dict[str, Path],
    alice: Signer,
    proxy_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    grid_env: dict[str, str],
) -> dict[str, Path]:
    made = {name: mod_dir / f"tampered-{name}.pem" for name in TAMPERED}
    voms_proxy = their_proxies["fake_newformat"]
    value = extension_value(voms_proxy)  # one AC, so its signature ends the value
    rebuild_leaf_with_extension(
        voms_proxy, made["ac_signature_bit_flipped"], VOMS_AC_OID, flip_bit(value, -1),
        alice.key_path,
    )  # fmt: skip
    der = load_leaf(their_proxies["gpi_rfc"]).public_bytes(serialization.Encoding.DER)
    tail = der[-8:]  # inside the leaf's own signature; the leaf is not re-signed
    patch_leaf_bytes(
        their_proxies["gpi_rfc"], made["proxy_signature_bit_flipped"], tail, flip_bit(tail, -1)
    )
    made["expired_ac"] = their_proxies["fake_expired_ac"]
    made["aa_not_in_vomsdir"] = their_proxies["fake_aa_not_in_vomsdir"]
    _subject_not_extending_issuer(made["subject_not_extending_issuer"], alice, proxy_keys[0])
    # A second-level proxy under a pCPathLenConstraint of 0: grid-proxy-init makes it
    # without complaint (and its own `-path-length 0` writes no constraint at all).
    make_their_proxy(
        TheirCase("grid-proxy-init"),
        made["path_length_exceeded"],
        grid_env,
        user=alice,
        source=their_proxies["fake_path_length_0"],
    )
    return made


@pytest.mark.parametrize("name", TAMPERED)
def test_tampered_rejected_by_us_with_reason(
    name: str, tampered_proxies: dict[str, Path], trust: TrustStore
) -> None:
    expected = TAMPERED[name]
    with pytest.raises(expected.error) as info:
        ours(trust, tampered_proxies[name])
    message = str(info.value)
    assert message.strip(), "rejected without a reason"
    assert re.search(expected.cause, message), message


@pytest.mark.parametrize("name", TAMPERED)
def test_tampered_rejected_by_the_real_tools_too(
    name: str,
    tampered_proxies: dict[str, Path],
    voms_checker: Path,
    dev_pki: DevPKI,
    workdir: Path,
) -> None:
    """Control for the tampering: the damage is what a real relying party sees."""
    tool, error = TAMPERED[name].real_tool
    if tool == "checker":
        verdict = strict_check(voms_checker, dev_pki, tampered_proxies[name])
        assert verdict.error == error, verdict
    else:
        certificates = load_credential_file(tampered_proxies[name]).certificates
        rc, output = openssl_verify(dev_pki, workdir, certificates)
        assert rc != 0, f"openssl accepted it:\n{output}"
