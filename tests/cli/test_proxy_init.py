"""proxy-init: local proxies (checked by grid-proxy-info), --voms and --store against a real proxyd."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxyd.cli import common
from proxyd.cli.proxy_init import main
from proxyd.devpki import DevPKI, host_dn, user_dn
from tests.cli.conftest import CliEnv
from tests.support.grid import csr_for, spare_key
from tests.support.https import ApiClient
from tests.support.server import RunningServer, free_port, running_server
from tests.support.tools import run_tool
from tests.support.vomscheck import check_proxy
from voms_ext import (
    Credential,
    ProxyType,
    TrustStore,
    load_credential_file,
    validate_chain,
    write_credential_file,
)

ALICE, BOB, WMS = user_dn("alice"), user_dn("bob"), host_dn("wms.localhost")
DTEAM_FQANS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL")


@pytest.fixture(scope="module")
def trust(dev_pki: DevPKI) -> TrustStore:
    return TrustStore.from_dirs(dev_pki.cert_dir, dev_pki.voms_dir)


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(dev_pki, tmp_path_factory.mktemp("cli-api") / "state") as srv:
        yield srv


def base_url(server: RunningServer) -> str:
    return f"https://localhost:{server.api_port}"


@pytest.fixture
def encrypted_key(dev_pki: DevPKI, workdir: Path) -> Path:
    """alice's key, encrypted with `openssl rsa -aes256` (pass phrase: "correct horse")."""
    out = workdir / "userkey-encrypted.pem"
    proc = run_tool(
        ["openssl", "rsa", "-aes256", "-in", dev_pki.user("alice")[1], "-out", out,
         "-passout", "pass:correct horse"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out.chmod(0o600)
    assert b"ENCRYPTED" in out.read_bytes()
    return out


# --- local proxies ---------------------------------------------------------------------------


@pytest.mark.interop
def test_local_proxy_from_alice(
    cli_env: CliEnv, trust: TrustStore, grid_env: dict[str, str]
) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = cli_env.run(main, ["--valid", "2:30"])
    assert result.rc == 0 and result.err == "", result
    lines = result.lines
    assert lines[0] == f"Your identity: {ALICE}"
    assert lines[1] == "Creating proxy ... Done"
    assert re.fullmatch(
        r"Your proxy is valid until: \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", lines[2]
    )
    assert len(lines) == 3

    assert cli_env.proxy.stat().st_mode & 0o777 == 0o600
    credential = load_credential_file(cli_env.proxy)
    assert credential.private_key is not None and len(credential.certificates) == 2
    result_chain = validate_chain(credential.certificates, trust)
    assert result_chain.identity == ALICE
    assert result_chain.proxy_type == ProxyType.RFC_IMPERSONATION
    assert result_chain.proxy_type.description == "RFC 3820 compliant impersonation proxy"
    proxy = credential.certificate
    assert proxy.not_valid_after_utc - before - dt.timedelta(hours=2, minutes=30) < dt.timedelta(
        seconds=5
    )
    assert proxy.not_valid_after_utc - proxy.not_valid_before_utc == dt.timedelta(
        hours=2, minutes=35
    )
    assert proxy.public_key().key_size == 2048  # type: ignore[union-attr]

    info = run_tool(
        ["grid-proxy-info", "-file", cli_env.proxy, "-identity", "-type", "-strength"], env=grid_env
    )
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines() == [ALICE, "RFC 3820 compliant impersonation proxy", "2048"]
    exists = run_tool(
        ["grid-proxy-info", "-file", cli_env.proxy, "-exists", "-valid", "2:00"], env=grid_env
    )
    assert exists.returncode == 0


@pytest.mark.interop
def test_limited_proxy_default_lifetime(
    cli_env: CliEnv, trust: TrustStore, grid_env: dict[str, str]
) -> None:
    result = cli_env.run(main, ["--limited", "--rfc", "-q"])
    assert (result.rc, result.out, result.err) == (0, "", "")
    credential = load_credential_file(cli_env.proxy)
    checked = validate_chain(credential.certificates, trust)
    assert checked.proxy_type == ProxyType.RFC_LIMITED and checked.is_limited
    proxy = credential.certificate
    assert proxy.not_valid_after_utc - proxy.not_valid_before_utc == dt.timedelta(
        hours=12, minutes=5
    )
    info = run_tool(["grid-proxy-info", "-file", cli_env.proxy, "-type"], env=grid_env)
    assert info.stdout.strip() == "RFC 3820 compliant limited proxy"


def test_lifetime_beyond_the_certificate_is_capped_with_a_warning(cli_env: CliEnv) -> None:
    cert = load_credential_file(cli_env.pki.user("alice")[0]).certificate
    result = cli_env.run(main, ["--valid", "100000:00"])
    assert result.rc == 0
    assert result.err == (
        "proxy-init: warning: the proxy ends earlier than requested, when your certificate "
        "(or a certificate in its chain) expires\n"
    )
    proxy = load_credential_file(cli_env.proxy).certificate
    assert proxy.not_valid_after_utc == cert.not_valid_after_utc


def test_options_for_cert_key_out_and_bits(
    cli_env: CliEnv, dev_pki: DevPKI, workdir: Path, trust: TrustStore
) -> None:
    cli_env.use_user("bob")  # overridden by the options
    cert, key = dev_pki.user("alice")
    out = workdir / "elsewhere.pem"
    result = cli_env.run(
        main, ["--cert", cert, "--key", key, "--out", out, "--bits", "3072", "--verify"]
    )
    assert result.rc == 0, result
    credential = load_credential_file(out)
    assert validate_chain(credential.certificates, trust).identity == ALICE
    assert credential.certificate.public_key().key_size == 3072  # type: ignore[union-attr]
    assert not cli_env.proxy.exists()


@pytest.mark.interop
def test_encrypted_key_with_pwstdin(
    cli_env: CliEnv, encrypted_key: Path, trust: TrustStore
) -> None:
    cli_env.set("X509_USER_KEY", encrypted_key)
    result = cli_env.run(main, ["--pwstdin"], stdin="correct horse\n")
    assert result.rc == 0 and result.err == "", result
    assert validate_chain(load_credential_file(cli_env.proxy).certificates, trust).identity == ALICE


@pytest.mark.interop
def test_encrypted_key_prompts(
    cli_env: CliEnv, encrypted_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "correct horse"

    monkeypatch.setattr(common.getpass, "getpass", fake_getpass)
    cli_env.set("X509_USER_KEY", encrypted_key)
    result = cli_env.run(main, [])
    assert result.rc == 0, result
    assert prompts == ["Enter GRID pass phrase for this identity: "]


@pytest.mark.interop
def test_wrong_passphrase_is_a_clean_error(cli_env: CliEnv, encrypted_key: Path) -> None:
    cli_env.set("X509_USER_KEY", encrypted_key)
    result = cli_env.run(main, ["--pwstdin"], stdin="wrong horse\n")
    assert (result.rc, result.out) == (1, f"Your identity: {ALICE}\n")
    assert (
        result.err
        == f"proxy-init: {encrypted_key}: wrong pass phrase (the private key could not be decrypted)\n"
    )
    assert not cli_env.proxy.exists()
    empty = cli_env.run(main, ["--pwstdin"], stdin="")
    assert empty.rc == 1 and "end of input" in empty.err


@pytest.mark.parametrize(
    "problem", ["readable_key", "missing_cert", "missing_key", "wrong_key", "not_a_cert"]
)
def test_bad_user_credential_is_a_clean_error(
    problem: str, cli_env: CliEnv, dev_pki: DevPKI, workdir: Path
) -> None:
    key = dev_pki.user("alice")[1]
    expected = {
        "readable_key": "must be accessible only by its owner",
        "missing_cert": "cannot read the user certificate",
        "missing_key": "cannot read the user key",
        "wrong_key": "does not belong to the certificate in",
        "not_a_cert": "no certificate found",
    }[problem]
    if problem == "readable_key":
        copy = workdir / "key644.pem"
        copy.write_bytes(key.read_bytes())
        copy.chmod(0o644)
        cli_env.set("X509_USER_KEY", copy)
    elif problem == "missing_cert":
        cli_env.set("X509_USER_CERT", workdir / "none.pem")
    elif problem == "missing_key":
        cli_env.set("X509_USER_KEY", workdir / "none.pem")
    elif problem == "wrong_key":
        cli_env.set("X509_USER_KEY", dev_pki.user("bob")[1])
    else:
        cli_env.set("X509_USER_CERT", key)
    result = cli_env.run(main, [])
    assert result.rc == 1 and result.out in ("", f"Your identity: {ALICE}\n"), result
    assert result.err.startswith("proxy-init: ") and result.err.count("\n") == 1, result
    assert expected in result.err and "Traceback" not in result.err
    assert not cli_env.proxy.exists()


def test_default_cert_and_key_are_in_home_globus(cli_env: CliEnv, dev_pki: DevPKI) -> None:
    cli_env.set("X509_USER_CERT", None)
    cli_env.set("X509_USER_KEY", None)
    missing = cli_env.run(main, ["-q"])
    assert missing.rc == 1 and str(cli_env.home / ".globus" / "usercert.pem") in missing.err
    globus = cli_env.home / ".globus"
    globus.mkdir()
    cert, key = dev_pki.user("bob")
    (globus / "usercert.pem").write_bytes(cert.read_bytes())
    (globus / "userkey.pem").write_bytes(key.read_bytes())
    (globus / "userkey.pem").chmod(0o400)
    result = cli_env.run(main, [])
    assert result.rc == 0 and result.lines[0] == f"Your identity: {BOB}", result


def test_usage_errors(cli_env: CliEnv) -> None:
    for argv in (["--bits", "1024"], ["--valid", "0:00"], ["--valid", "12"], ["--name", "x"],
                 ["--voms", "dteam:/ops"], ["--voms", "dteam:Role=x"], ["--store", "--no-passphrase", "--store-pwstdin"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv


def test_server_needed_for_voms_and_store(cli_env: CliEnv) -> None:
    for argv in (["--voms", "dteam"], ["--store", "--no-passphrase"]):
        result = cli_env.run(main, argv)
        assert result.rc == 1 and result.out == ""
        assert (
            result.err
            == "proxy-init: no proxyd server: give --server URL or set PROXYD_URL (e.g. https://localhost:8443)\n"
        )
    plain = cli_env.run(main, ["--voms", "dteam", "--server", "http://localhost:1"])
    assert plain.rc == 1 and "only https://" in plain.err


def test_unreachable_server_is_a_clean_error(cli_env: CliEnv) -> None:
    port = free_port()
    result = cli_env.run(main, ["--voms", "dteam", "--server", f"https://localhost:{port}"])
    assert result.rc == 1
    assert f"proxy-init: cannot reach https://localhost:{port}: Connection refused" in result.err
    assert not cli_env.proxy.exists()
    assert result.out.endswith("VOMS attributes (dteam) ... Failed\n")


def test_store_passphrases_must_match(cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["first secret", "second secret"])
    monkeypatch.setattr(common.getpass, "getpass", lambda prompt: next(answers))
    cli_env.set("PROXYD_URL", f"https://localhost:{free_port()}")
    result = cli_env.run(main, ["--store"])
    assert (result.rc, result.out) == (1, f"Your identity: {ALICE}\n")
    assert result.err == "proxy-init: the pass phrases do not match\n"


def test_problem_details_become_one_line_with_the_rule() -> None:
    body = json.dumps(
        {"type": "about:blank", "title": "Forbidden", "status": 403,
         "detail": "not a holder of: /dteam/Role=admin\n", "rule": "voms.fqan_not_held"}
    ).encode()  # fmt: skip
    error = common.problem_message(403, "Forbidden", body)
    assert str(error) == (
        "server refused the request (HTTP 403 Forbidden): not a holder of: /dteam/Role=admin "
        "[rule voms.fqan_not_held]"
    )
    assert error.rule == "voms.fqan_not_held"
    plain = common.problem_message(502, "Bad Gateway", b"<html>" + b"x" * 1000)
    assert str(plain).startswith("server refused the request (HTTP 502 Bad Gateway): <html>xxx")
    assert len(str(plain)) < 400 and plain.rule is None


# --- against proxyd: --voms and --store ------------------------------------------------------------


@pytest.mark.interop
def test_voms_proxy_has_the_fqans_alice_holds(
    cli_env: CliEnv,
    server: RunningServer,
    voms_checker: Path,
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    trust: TrustStore,
) -> None:
    cli_env.set("PROXYD_URL", base_url(server))
    result = cli_env.run(main, ["--voms", "dteam", "--valid", "6:00"])
    assert result.rc == 0 and result.err == "", result
    assert result.lines[1] == f"Contacting {base_url(server)} for VOMS attributes (dteam) ... Done"

    verdict = check_proxy(voms_checker, cli_env.proxy, dev_pki.cert_dir, dev_pki.voms_dir)
    assert verdict.ok, verdict
    (ac,) = verdict.acs
    assert ac.fqans == DTEAM_FQANS and ac.vo == "dteam" and ac.holder == ALICE
    info = run_tool(["voms-proxy-info", "-fqan", "-file", cli_env.proxy], env=grid_env)
    assert info.returncode == 0 and tuple(info.stdout.splitlines()) == DTEAM_FQANS, info
    checked = validate_chain(load_credential_file(cli_env.proxy).certificates, trust)
    assert checked.fqans == DTEAM_FQANS
    (voms,) = checked.voms
    proxy_end = checked.chain[0].not_valid_after_utc
    assert voms.not_after >= proxy_end - dt.timedelta(minutes=10)


def test_voms_fqan_not_held_is_refused_with_the_rule(
    cli_env: CliEnv, server: RunningServer
) -> None:
    cli_env.set("PROXYD_URL", base_url(server))
    result = cli_env.run(main, ["--voms", "dteam:/dteam/Role=admin"])
    assert result.rc == 1, result
    assert result.err.startswith("proxy-init: server refused the request (HTTP 403")
    assert "voms.fqan_not_held" in result.err and result.err.count("\n") == 1
    assert not cli_env.proxy.exists()


def test_voms_with_a_role_alice_holds(
    cli_env: CliEnv, server: RunningServer, trust: TrustStore
) -> None:
    cli_env.set("PROXYD_URL", base_url(server))
    result = cli_env.run(main, ["--voms", "dteam:/dteam/Role=production", "--limited", "-q"])
    assert (result.rc, result.out, result.err) == (0, "", "")
    checked = validate_chain(load_credential_file(cli_env.proxy).certificates, trust)
    assert checked.fqans[0] == "/dteam/Role=production/Capability=NULL"
    assert checked.is_limited


def _wms_fetch(
    server: RunningServer, dev_pki: DevPKI, workdir: Path, username: str, **body: object
) -> tuple[int, dict[str, object]]:
    """The WMS asks for a proxy of a stored credential, with its host certificate."""
    cert, key = dev_pki.host("wms")
    wms_file = workdir / "wms.pem"
    wms = load_credential_file(cert)
    wms_key = serialization.load_pem_private_key(key.read_bytes(), None)
    write_credential_file(wms_file, Credential(wms.certificates, wms_key))  # type: ignore[arg-type]
    client = ApiClient(server.api_port, dev_pki.cert_dir, wms_file)
    csr = csr_for(spare_key(4)).public_bytes(serialization.Encoding.PEM).decode()
    reply = client.request(
        "POST", f"/v1/credentials/default/proxy?username={_quote(username)}", {"csr": csr, **body}
    )
    return reply.status, reply.json


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def test_store_without_passphrase_then_the_wms_gets_a_limited_proxy(
    cli_env: CliEnv, server: RunningServer, dev_pki: DevPKI, workdir: Path, trust: TrustStore
) -> None:
    cli_env.use_user("carol")
    cli_env.set("PROXYD_URL", base_url(server))
    result = cli_env.run(main, ["--store", "--no-passphrase", "--store-lifetime", "48:00"])
    assert result.rc == 0 and result.err == "", result
    assert result.lines[3] == f"Storing a proxy in {base_url(server)} ... Done"
    assert re.fullmatch(
        rf"A proxy valid for 4[78] hours \(2\.0 days\) for user {re.escape(user_dn('carol'))} "
        rf"now exists on {re.escape(base_url(server))} \(credential default\)\.",
        result.lines[4],
    ), result.lines
    assert cli_env.proxy.exists()  # the local proxy is made too

    status, answer = _wms_fetch(server, dev_pki, workdir, user_dn("carol"))
    assert status == 200, answer
    assert answer["limited"] is True
    chain = [x509.load_pem_x509_certificate(b) for b in _pem_blocks(str(answer["chain"]))]
    checked = validate_chain(chain, trust)
    assert checked.identity == user_dn("carol") and checked.proxy_type == ProxyType.RFC_LIMITED
    # the stored chain: the proxy we signed for the server's key, then carol's certificate
    assert checked.proxy_depth == 2


@pytest.mark.interop
def test_store_with_passphrase_from_stdin_and_options(
    cli_env: CliEnv, server: RunningServer, dev_pki: DevPKI, encrypted_key: Path, workdir: Path
) -> None:
    cli_env.set("X509_USER_KEY", encrypted_key)
    cli_env.set("PROXYD_URL", base_url(server))
    result = cli_env.run(
        main,
        ["--pwstdin", "--store", "--store-pwstdin", "--name", "analysis", "--store-lifetime", "24:00", "--max-proxy-lifetime", "6:00",
         "--retrievers", f"{BOB},/C=XX/O=proxyd dev/OU=Hosts/*", "--renewers", WMS,
         "--description", "for the analysis jobs"],
        stdin="correct horse\nrepository secret 123\n",
    )  # fmt: skip
    assert result.rc == 0 and result.err == "", result
    alice_file = workdir / "alice.pem"
    user = common.load_user_credential(
        dev_pki.user("alice")[0], dev_pki.user("alice")[1], pwstdin=False
    )
    write_credential_file(alice_file, user.credential)
    listing = ApiClient(server.api_port, dev_pki.cert_dir, alice_file).request(
        "GET", "/v1/credentials"
    )
    assert listing.status == 200, listing.body
    (stored,) = [c for c in listing.json if c["name"] == "analysis"]
    assert stored["has_passphrase"] is True
    assert stored["description"] == "for the analysis jobs"
    assert stored["retrievers"] == [BOB, "/C=XX/O=proxyd dev/OU=Hosts/*"]
    assert stored["renewers"] == [WMS]
    assert stored["owner"] == ALICE
    assert stored["max_lifetime"] == 6 * 3600
    not_before = dt.datetime.fromisoformat(stored["not_before"].replace("Z", "+00:00"))
    not_after = dt.datetime.fromisoformat(stored["not_after"].replace("Z", "+00:00"))
    assert abs(not_after - not_before - dt.timedelta(hours=24, minutes=5)) < dt.timedelta(minutes=1)


def test_store_refusal_keeps_the_local_proxy_and_reports_the_rule(
    cli_env: CliEnv, server: RunningServer
) -> None:
    """bob may not replace a credential alice stored: policy rule store.not_owner."""
    cli_env.set("PROXYD_URL", base_url(server))
    argv = ["--store", "--no-passphrase", "--username", "shared", "--name", "taken"]
    assert cli_env.run(main, argv).rc == 0
    cli_env.use_user("bob")
    result = cli_env.run(main, argv)
    assert result.rc == 1
    assert result.err.startswith("proxy-init: server refused the request (HTTP 403"), result.err
    assert result.err.endswith(" [rule store.not_owner]\n") and result.err.count("\n") == 1
    assert result.lines[-1] == f"Storing a proxy in {base_url(server)} ... Failed"
    assert (
        validate_chain(
            load_credential_file(cli_env.proxy).certificates,
            TrustStore.from_dirs(cli_env.pki.cert_dir),
        ).identity
        == BOB
    )


def test_short_repository_passphrase_is_refused_cleanly(
    cli_env: CliEnv, server: RunningServer
) -> None:
    cli_env.set("PROXYD_URL", base_url(server))
    result = cli_env.run(main, ["--store", "--store-pwstdin", "--name", "short"], stdin="abc\n")
    assert result.rc == 1
    assert result.err.startswith("proxy-init: server refused the request (HTTP 400"), result.err
    assert "Pass phrase too short" in result.err


def _pem_blocks(text: str) -> list[bytes]:
    return [
        m.encode()
        for m in re.findall(
            r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", text, re.DOTALL
        )
    ]
