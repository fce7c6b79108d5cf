"""`proxyd serve` as a real process: both listeners answer; --workers shares the ports; clean errors."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from proxyd.myproxy.client import MyProxyClient, MyProxyClientError
from tests.support.server import free_port, write_config


def _config(pki: DevPKI, tmp_path: Path, mp: int, api: int) -> Path:
    return write_config(pki, tmp_path / "state", mp, api)


def _serve(config: Path, *args: str) -> subprocess.Popen[bytes]:
    """`proxyd serve` on `config` as a child process, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "proxyd.cli.main", "serve", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"proxyd exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_on_both_ports_and_stops_cleanly(
    dev_pki: DevPKI, tmp_path: Path, workers: int
) -> None:
    mp, api = free_port(), free_port()
    config = _config(dev_pki, tmp_path, mp, api)
    proc = _serve(config, "--workers", str(workers))
    try:
        _wait_port(mp, proc)
        _wait_port(api, proc)
        ctx = ssl.create_default_context(cafile=str(dev_pki.ca_cert))
        for _ in range(4):  # several connections, spread over the workers
            with urllib.request.urlopen(
                f"https://localhost:{api}/healthz", context=ctx, timeout=10
            ) as r:
                assert json.load(r)["status"] == "ok"
            client = MyProxyClient("localhost", mp, cert_dir=dev_pki.cert_dir)
            with pytest.raises(
                MyProxyClientError, match='No credentials exist for username "nobody"'
            ):
                client.get("nobody", "some passphrase")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


def test_port_in_use_is_a_clear_error(dev_pki: DevPKI, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        mp = busy.getsockname()[1]
        config = _config(dev_pki, tmp_path, mp, free_port())
        proc = subprocess.run(
            [sys.executable, "-m", "proxyd.cli.main", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"cannot listen for MyProxy on 127.0.0.1:{mp}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nhost_cert = "x"\nhost_key = "y"\n[policy]\nmax_proxy_lifetime = "forever"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "proxyd.cli.main", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "[policy] max_proxy_lifetime must be a positive duration" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_logs_are_json_lines_without_secrets(dev_pki: DevPKI, tmp_path: Path) -> None:
    mp, api = free_port(), free_port()
    config = _config(dev_pki, tmp_path, mp, api)
    proc = _serve(config, "--debug")
    secret = "my very secret passphrase"
    try:
        _wait_port(mp, proc)
        _wait_port(api, proc)
        with pytest.raises(MyProxyClientError):
            MyProxyClient("localhost", mp, cert_dir=dev_pki.cert_dir).get("nobody", secret)
        ctx = ssl.create_default_context(cafile=str(dev_pki.ca_cert))
        with urllib.request.urlopen(f"https://localhost:{api}/healthz", context=ctx, timeout=10):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    access = [x for x in lines if x["logger"] == "proxyd.access"]
    assert {x["interface"] for x in access} == {"myproxy", "https"}
    myproxy = next(x for x in access if x["interface"] == "myproxy")
    assert (myproxy["command"], myproxy["outcome"], myproxy["rule"]) == (
        "GET",
        "not_found",
        "credential.not_found",
    )
    assert secret not in err.decode()


@pytest.mark.parametrize("which", ["host/hostkey.pem", "aa/vomskey.pem", "state/master.key"])
def test_refuses_to_start_with_readable_key_files(
    dev_pki: DevPKI, tmp_path: Path, which: str
) -> None:
    import shutil

    pki_copy = tmp_path / "pki"
    shutil.copytree(
        dev_pki.root, pki_copy, ignore=shutil.ignore_patterns("serve-*.toml", "audit-*.toml")
    )
    (pki_copy / "state").mkdir(mode=0o700, exist_ok=True)
    from proxyd.sealing import MasterKeyring

    MasterKeyring.load_or_create(pki_copy / "state" / "master.key")
    target = pki_copy / which
    target.chmod(0o644)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxyd.cli.main",
            "serve",
            "--config",
            str(pki_copy / "proxyd.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{target} is mode 0644" in proc.stderr
    assert f"chmod 600 {target}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_step_delegation_works_across_workers(dev_pki: DevPKI, tmp_path: Path) -> None:
    """Regression: pending API delegations lived in one worker's memory, so with --workers 2
    the second request often reached the other worker ("no such delegation", 4 of 6 failed)."""
    import datetime as dt

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import serialization

    from tests.support.grid import load_identity
    from tests.support.https import ApiClient
    from voms_ext import Credential, ProxyBuilder, write_credential_file

    mp, api, metrics_port = free_port(), free_port(), free_port()
    config = write_config(
        dev_pki, tmp_path / "state", mp, api,
        extra=f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
    )  # fmt: skip
    proc = _serve(config, "--workers", "2")
    alice = load_identity(dev_pki, "alice")
    cred = tmp_path / "alice.pem"
    tmp_path.chmod(0o700)
    write_credential_file(cred, Credential(alice.certificates, alice.key))
    try:
        _wait_port(api, proc)
        for i in range(8):
            client = ApiClient(api, dev_pki.cert_dir, cred)
            started = client.request("POST", "/v1/delegations", {"name": f"d{i}"})
            assert started.status == 201, started.body
            csr = cx509.load_pem_x509_csr(started.json["csr"].encode())
            proxy = (
                ProxyBuilder(alice.cert)
                .from_csr(csr)
                .lifetime(dt.timedelta(days=1))
                .sign(alice.key)
            )
            chain = b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in (proxy, alice.cert)
            )
            done = ApiClient(api, dev_pki.cert_dir, cred).request(
                "PUT", f"/v1/delegations/{started.json['id']}", {"chain": chain.decode()}
            )
            assert done.status == 201, done.body
        # /metrics sums every worker: 8 delegations, each two store decisions (begun, stored),
        # counted whichever worker answers, every time
        # (here on the plain [metrics] listener, which each worker binds too).
        _wait_port(metrics_port, proc)
        for _ in range(4):
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
                text = reply.read().decode()
            stores = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("proxyd_decisions_total{")
                and 'operation="store"' in line
                and 'decision="allow"' in line
            ]
            assert sum(stores) == 2 * 8, text[:2000]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.parametrize("how", ["poll", "sighup"])
def test_a_new_crl_takes_effect_without_a_restart(
    dev_pki: DevPKI, tmp_path: Path, how: str
) -> None:
    """fetch-crl writes a CRL revoking alice: the running server refuses her (I6 still audits)."""
    import shutil

    from tests.support.grid import install_crl, load_identity
    from tests.support.https import ApiClient
    from voms_ext import Credential, write_credential_file

    cert_dir = tmp_path / "certificates"
    shutil.copytree(dev_pki.cert_dir, cert_dir)
    mp, api = free_port(), free_port()
    config = _config(dev_pki, tmp_path, mp, api)
    interval = "1" if how == "poll" else '"1h"'
    config.write_text(
        config.read_text().replace(
            'cert_dir = "certificates"',
            f'cert_dir = "{cert_dir}"\ntrust_reload_interval = {interval}',
        )
    )
    alice = load_identity(dev_pki, "alice")
    alice_pem = tmp_path / "alice.pem"
    write_credential_file(alice_pem, Credential(alice.certificates, alice.key))
    proc = _serve(config)
    try:
        _wait_port(api, proc)
        client = ApiClient(api, cert_dir, alice_pem)
        before = client.request("GET", "/v1/credentials")
        assert before.status != 401, before.body
        install_crl(dev_pki, cert_dir, alice.cert.serial_number)
        if how == "sighup":
            proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while (reply := client.request("GET", "/v1/credentials")).status != 401:
            assert time.monotonic() < deadline, "the new CRL never took effect"
            time.sleep(0.2)
        assert b"revoked" in reply.body, reply.body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"trust directories reloaded: " in err and b"1 CRLs" in err
