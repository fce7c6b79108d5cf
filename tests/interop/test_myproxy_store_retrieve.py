"""myproxy-store / myproxy-retrieve against proxyd: encrypted keys stay encrypted."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI, user_dn
from tests.support.server import running_server
from tests.support.tools import run_tool

pytestmark = pytest.mark.interop
ALICE = user_dn("alice")


def _encrypted_key(src: Path, dst: Path, passphrase: str) -> None:
    subprocess.run(
        [
            "openssl",
            "rsa",
            "-in",
            str(src),
            "-aes256",
            "-passout",
            f"pass:{passphrase}",
            "-out",
            str(dst),
        ],
        check=True,
        capture_output=True,
    )
    dst.chmod(0o600)


def test_store_encrypted_key_then_logon_and_retrieve(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    from proxyd.config import load_config

    policy = dataclasses.replace(load_config(dev_pki.config).policy, key_retrievers=(ALICE,))
    cert, key = dev_pki.user("alice")
    enc = workdir / "userkey.enc.pem"
    _encrypted_key(key, enc, "keypass123")
    proxy = workdir / "alice.pem"
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        env = server.myproxy_env()
        made = run_tool(
            ["grid-proxy-init", "-q", "-cert", cert, "-key", key, "-out", proxy], env=env
        )
        assert made.returncode == 0, made.stderr
        user = env | {"X509_USER_PROXY": str(proxy)}
        stored = run_tool(
            ["myproxy-store", "-l", "alice", "-c", cert, "-y", enc, "-E", "alice"],
            env=user,
            timeout=30,
        )
        assert stored.returncode == 0, stored.stdout + stored.stderr

        out = workdir / "got.pem"
        logon = run_tool(
            ["myproxy-logon", "-l", "alice", "-S", "-o", out],
            env=env,
            input=b"keypass123\n",
            timeout=30,
        )
        assert logon.returncode == 0, logon.stdout + logon.stderr
        info = run_tool(["grid-proxy-info", "-file", out, "-identity"], env=env)
        assert info.stdout.strip() == ALICE
        wrong = run_tool(
            ["myproxy-logon", "-l", "alice", "-S", "-o", workdir / "x.pem"],
            env=env,
            input=b"wrongpass1\n",
            timeout=30,
        )
        assert (
            wrong.returncode != 0 and "invalid credential passphrase" in wrong.stdout + wrong.stderr
        )

        got_cert, got_key = workdir / "r-cert.pem", workdir / "r-key.pem"
        retrieved = run_tool(
            ["myproxy-retrieve", "-l", "alice", "-S", "-c", got_cert, "-y", got_key],
            env=user,
            input=b"keypass123\n",
            timeout=30,
        )
        assert retrieved.returncode == 0, retrieved.stdout + retrieved.stderr
        # The server sends the key encrypted; run as root, the client decrypts it on the way to disk.
        same = subprocess.run(
            [
                "openssl",
                "rsa",
                "-in",
                str(got_key),
                "-passin",
                "pass:keypass123",
                "-noout",
                "-modulus",
            ],
            capture_output=True,
            text=True,
        )
        orig = subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-noout", "-modulus"],
            capture_output=True,
            text=True,
        )
        assert same.stdout == orig.stdout and same.stdout.startswith("Modulus=")
        rules = [
            (e.event.operation, e.event.rule)
            for e in reversed(server.repo.audit.query(owner=ALICE))
        ]
        assert rules == [
            ("store", "store.owner"),
            ("retrieve", "retrieve.passphrase"),
            ("retrieve", "auth.bad_passphrase"),
            ("retrieve_key", "retrieve_key.authorized"),
        ]


def test_retrieve_refused_by_default(dev_pki: DevPKI, tmp_path: Path, workdir: Path) -> None:
    cert, key = dev_pki.user("alice")
    proxy = workdir / "alice.pem"
    with running_server(dev_pki, tmp_path / "state") as server:
        env = server.myproxy_env()
        run_tool(["grid-proxy-init", "-q", "-cert", cert, "-key", key, "-out", proxy], env=env)
        user = env | {"X509_USER_PROXY": str(proxy)}
        enc = workdir / "k.pem"
        _encrypted_key(key, enc, "keypass123")
        assert (
            run_tool(
                ["myproxy-store", "-l", "alice", "-c", cert, "-y", enc], env=user, timeout=30
            ).returncode
            == 0
        )
        out = run_tool(
            ["myproxy-retrieve", "-l", "alice", "-S", "-c", workdir / "c", "-y", workdir / "k"],
            env=user,
            input=b"keypass123\n",
            timeout=30,
        )
        assert out.returncode != 0
        assert "retrieve_key.not_authorized" in out.stdout + out.stderr
