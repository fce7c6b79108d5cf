"""proxy-destroy: the local proxy file, and with --remote a credential stored in proxyd."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyd.cli import proxy_destroy, proxy_init
from proxyd.devpki import DevPKI, user_dn
from tests.cli.conftest import CliEnv
from tests.support.grid import load_identity, spare_key
from tests.support.https import ApiClient
from tests.support.server import RunningServer, running_server
from voms_ext import Credential, ProxyBuilder, write_credential_file

ALICE = user_dn("alice")


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(dev_pki, tmp_path_factory.mktemp("cli-destroy") / "state") as srv:
        yield srv


def make_proxy(cli_env: CliEnv, *extra: str) -> None:
    result = cli_env.run(proxy_init.main, ["-q", "--valid", "1:00", *extra])
    assert result.rc == 0, result


def test_removes_the_local_proxy(cli_env: CliEnv) -> None:
    make_proxy(cli_env)
    result = cli_env.run(proxy_destroy.main, [])
    assert (result.rc, result.out, result.err) == (0, f"Removed proxy file {cli_env.proxy}\n", "")
    assert not cli_env.proxy.exists()


def test_file_option_and_quiet(cli_env: CliEnv, workdir: Path) -> None:
    out = workdir / "other-proxy.pem"
    make_proxy(cli_env, "--out", str(out))
    result = cli_env.run(proxy_destroy.main, ["--file", out, "-q"])
    assert (result.rc, result.out, result.err) == (0, "", "")
    assert not out.exists()


def test_missing_file_is_a_clean_error(cli_env: CliEnv) -> None:
    result = cli_env.run(proxy_destroy.main, [])
    assert (result.rc, result.out) == (1, "")
    assert result.err == f"proxy-destroy: no proxy file at {cli_env.proxy}\n"


def test_dry_run_removes_nothing(cli_env: CliEnv) -> None:
    make_proxy(cli_env)
    result = cli_env.run(proxy_destroy.main, ["--dry-run"])
    assert (result.rc, result.out) == (0, f"Would remove proxy file {cli_env.proxy}\n")
    assert cli_env.proxy.exists()


def test_refuses_to_remove_a_user_certificate(cli_env: CliEnv, dev_pki: DevPKI) -> None:
    cert = dev_pki.user("alice")[0]
    result = cli_env.run(proxy_destroy.main, ["--file", cert])
    assert result.rc == 1 and result.out == ""
    assert result.err == (
        f"proxy-destroy: {cert} holds a certificate that is not a proxy ({ALICE}, "
        "end entity credential); not removing it\n"
    )
    assert cert.exists()


def test_removes_a_damaged_proxy_file(cli_env: CliEnv) -> None:
    cli_env.proxy.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    result = cli_env.run(proxy_destroy.main, [])
    assert result.rc == 0 and not cli_env.proxy.exists()


def test_refuses_a_directory(cli_env: CliEnv) -> None:
    cli_env.proxy.mkdir()
    result = cli_env.run(proxy_destroy.main, [])
    assert result.rc == 1 and "is not a regular file" in result.err
    assert cli_env.proxy.is_dir()


def test_usage_errors(cli_env: CliEnv) -> None:
    for argv in (["--name", "x"], ["--username", "u"]):
        with pytest.raises(SystemExit) as exc:
            proxy_destroy.main(argv)
        assert exc.value.code == 2


@pytest.fixture(scope="module")
def alice_api(
    server: RunningServer, dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> ApiClient:
    ident = load_identity(dev_pki, "alice")
    path = tmp_path_factory.mktemp("alice-api") / "alice.pem"
    write_credential_file(path, Credential(ident.certificates, ident.key))
    return ApiClient(server.api_port, dev_pki.cert_dir, path)


def stored(api: ApiClient, username: str = ALICE) -> set[str]:
    """Names of alice's credentials under `username`, as the API lists them."""
    reply = api.request("GET", f"/v1/credentials?username={urllib.parse.quote(username)}")
    assert reply.status == 200, reply.body
    return {c["name"] for c in reply.json}


def test_remote_destroys_the_stored_credential_then_the_local_proxy(
    cli_env: CliEnv, server: RunningServer, alice_api: ApiClient
) -> None:
    cli_env.set("PROXYD_URL", f"https://localhost:{server.api_port}")
    make_proxy(cli_env, "--store", "--no-passphrase", "--name", "to-destroy")
    assert "to-destroy" in stored(alice_api)

    dry = cli_env.run(proxy_destroy.main, ["--remote", "--name", "to-destroy", "--dry-run"])
    assert dry.rc == 0 and dry.lines == [
        f"Would destroy credential 'to-destroy' of your DN on https://localhost:{server.api_port}",
        f"Would remove proxy file {cli_env.proxy}",
    ]
    assert "to-destroy" in stored(alice_api) and cli_env.proxy.exists()

    result = cli_env.run(proxy_destroy.main, ["--remote", "--name", "to-destroy"])
    assert result.rc == 0 and result.err == "", result
    assert result.lines == [
        f"Destroyed credential 'to-destroy' of your DN on https://localhost:{server.api_port}",
        f"Removed proxy file {cli_env.proxy}",
    ]
    assert "to-destroy" not in stored(alice_api)
    assert not cli_env.proxy.exists()


def test_remote_without_local_proxy_uses_the_user_certificate(
    cli_env: CliEnv, server: RunningServer, alice_api: ApiClient
) -> None:
    cli_env.set("PROXYD_URL", f"https://localhost:{server.api_port}")
    make_proxy(cli_env, "--store", "--no-passphrase", "--name", "nolocal", "--username", "alice")
    assert "nolocal" in stored(alice_api, "alice")
    cli_env.proxy.unlink()
    result = cli_env.run(
        proxy_destroy.main, ["--remote", "--name", "nolocal", "--username", "alice"]
    )
    assert result.rc == 0, result
    assert result.lines == [
        f"Destroyed credential 'nolocal' of user alice on https://localhost:{server.api_port}",
        f"No local proxy file at {cli_env.proxy}",
    ]
    assert "nolocal" not in stored(alice_api, "alice")


def test_remote_refusal_keeps_the_local_proxy(cli_env: CliEnv, server: RunningServer) -> None:
    cli_env.set("PROXYD_URL", f"https://localhost:{server.api_port}")
    make_proxy(cli_env)
    result = cli_env.run(proxy_destroy.main, ["--remote", "--name", "never-stored"])
    assert result.rc == 1 and result.out == ""
    assert result.err.startswith("proxy-destroy: server refused the request (HTTP 404")
    assert "[rule credential.not_found]" in result.err
    assert cli_env.proxy.exists()


def test_remote_with_an_expired_local_proxy_uses_the_user_certificate(
    cli_env: CliEnv, server: RunningServer, alice_api: ApiClient
) -> None:
    cli_env.set("PROXYD_URL", f"https://localhost:{server.api_port}")
    make_proxy(cli_env, "--store", "--no-passphrase", "--name", "stale")
    ident = load_identity(cli_env.pki, "alice")
    now = dt.datetime.now(dt.UTC)
    builder = (
        ProxyBuilder(ident.cert)
        .public_key(spare_key(0))
        .not_before(now - dt.timedelta(hours=2))
        .lifetime(dt.timedelta(hours=1))
    )
    write_credential_file(
        cli_env.proxy, Credential((builder.sign(ident.key), ident.cert), spare_key(0))
    )
    result = cli_env.run(proxy_destroy.main, ["--remote", "--name", "stale"])
    assert result.rc == 0, result
    assert "stale" not in stored(alice_api) and not cli_env.proxy.exists()
