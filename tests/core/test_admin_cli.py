"""proxyd admin: bans, master key rotation, inventory, expiry, import from myproxy-server."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.cli.main import main
from proxyd.config import load_config
from proxyd.devpki import DevPKI, host_dn, user_dn
from proxyd.repository import Denied, Repository, StoreOptions
from tests.support.grid import csr_for, delegate, load_identity, make_proxy, principal, spare_key
from tests.support.server import write_config
from voms_ext import validate_chain

ALICE, BOB = user_dn("alice"), user_dn("bob")


@pytest.fixture
def config(dev_pki: DevPKI, tmp_path: Path) -> Path:
    from tests.support.server import free_port

    return write_config(dev_pki, tmp_path / "state", free_port(), free_port())


def repo_of(config: Path) -> Repository:
    return Repository.open(load_config(config))


def admin(config: Path, *args: str) -> int:
    return main(["admin", "--config", str(config), *args])


def test_ban_and_unban(config: Path, dev_pki: DevPKI, capsys: pytest.CaptureFixture[str]) -> None:
    repo = repo_of(config)
    delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
    assert (
        admin(
            config, "ban", "--host", host_dn("wms.localhost"), "--reason", "compromised 2026-11-25"
        )
        == 0
    )
    with pytest.raises(Denied) as err:
        repo.retrieve(
            principal(repo, load_identity(dev_pki, "wms")), "alice", csr_for(spare_key(3))
        )
    assert err.value.rule == "ban.peer"
    assert admin(config, "bans") == 0
    assert "compromised 2026-11-25" in capsys.readouterr().out
    assert admin(config, "ban", "--host", host_dn("wms.localhost"), "--reason", "again") == 1
    assert "already banned" in capsys.readouterr().err
    assert admin(config, "unban", "--host", host_dn("wms.localhost")) == 0
    repo.retrieve(principal(repo, load_identity(dev_pki, "wms")), "alice", csr_for(spare_key(3)))
    actions = [
        e.event.detail for e in repo.audit.query(operation="admin", rule="admin.local_operator")
    ]
    assert any(a.startswith("ban host") for a in actions) and any(
        a.startswith("unban host") for a in actions
    )


def test_rotate_list_expire(
    config: Path, dev_pki: DevPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = repo_of(config)
    delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
    delegate(repo, load_identity(dev_pki, "bob"), StoreOptions("bob", passphrase="bob's secret"))
    # a credential that ends in 3 seconds
    short = make_proxy(load_identity(dev_pki, "carol"), lifetime_h=1)
    pending = repo.begin_store(principal(repo, short), StoreOptions("carol"))
    from voms_ext import ProxyBuilder

    three_s = (
        ProxyBuilder(short.cert, short.chain)
        .from_csr(pending.csr)
        .lifetime(dt.timedelta(seconds=3))
        .sign(short.key)
    )
    repo.finish_store(pending, (three_s, *short.certificates))

    assert admin(config, "rotate-master-key") == 0
    assert (
        "2 credential(s) re-wrapped" in capsys.readouterr().out
    )  # alice's and carol's; bob's is passphrase-only
    repo.retrieve(principal(repo, load_identity(dev_pki, "wms")), "alice", csr_for(spare_key(3)))

    assert admin(config, "list") == 0
    listing = capsys.readouterr()
    assert (
        "3 credential(s)" in listing.err
        and "bob\tdefault" in listing.out
        and "passphrase" in listing.out
    )
    time.sleep(3.5)
    assert admin(config, "expire", "--dry-run") == 0
    assert "would remove carol/default" in capsys.readouterr().out
    assert admin(config, "expire") == 0
    assert "1 expired credential(s) removed" in capsys.readouterr().err
    assert repo.challenge_facts("carol") is None


def _myproxy_store(dev_pki: DevPKI, directory: Path) -> None:
    """A storage directory as myproxy-server 6.2 writes it (observed with the Debian server)."""
    directory.mkdir(mode=0o700)
    alice = load_identity(dev_pki, "alice")
    proxy = make_proxy(alice, lifetime_h=24)
    certs = [c.public_bytes(serialization.Encoding.PEM) for c in proxy.certificates]
    plain_key = proxy.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (directory / "alice.creds").write_bytes(certs[0] + plain_key + b"".join(certs[1:]))
    (directory / "alice.data").write_text(
        f"OWNER={ALICE}\nLIFETIME=43200\nTRUSTED_RETRIEVERS=*/CN=wms.localhost\nUSERNAME=alice\nEND_OPTIONS\n"
    )
    key_file = directory / "k.pem"
    key_file.write_bytes(plain_key)
    encrypted = subprocess.run(
        ["openssl", "rsa", "-in", str(key_file), "-aes256", "-passout", "pass:keypass123"],
        capture_output=True,
        check=True,
    ).stdout
    key_file.unlink()
    (directory / "alice-work.creds").write_bytes(certs[0] + encrypted + b"".join(certs[1:]))
    (directory / "alice-work.data").write_text(
        f"OWNER={ALICE}\nLIFETIME=3600\nNAME=work\nDESCRIPTION=work cred\nUSERNAME=alice\nEND_OPTIONS\n"
    )
    (directory / "broken.data").write_text("OWNER=/CN=x\nUSERNAME=broken\nEND_OPTIONS\n")
    (directory / "broken.creds").write_text("not a credential")


def test_import_from_myproxy_server(
    config: Path, dev_pki: DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "myproxy"
    _myproxy_store(dev_pki, store)
    assert admin(config, "import-myproxy", str(store), "--dry-run") == 0
    assert capsys.readouterr().out.count("would import") == 3
    assert admin(config, "import-myproxy", str(store)) == 0
    out = capsys.readouterr()
    assert "imported alice/default" in out.out and "imported alice/work" in out.out
    assert "skipped broken.data" in out.err and "2 imported, 1 skipped" in out.err

    repo = repo_of(config)
    issued = repo.retrieve(
        principal(repo, load_identity(dev_pki, "wms")), "alice", csr_for(spare_key(3))
    )
    assert validate_chain(issued.certificates, repo.trust).is_limited
    issued = repo.retrieve(
        principal(repo, None), "alice", csr_for(spare_key(3)), name="work", passphrase="keypass123"
    )
    assert validate_chain(issued.certificates, repo.trust).identity == ALICE
    [work] = [
        c
        for c in repo.info(principal(repo, load_identity(dev_pki, "alice")), "alice")
        if c.name == "work"
    ]
    assert work.description == "work cred" and work.max_lifetime == dt.timedelta(hours=1)
    assert {e.event.rule for e in repo.audit.query(operation="store")} == {"admin.local_operator"}


def test_startup_problems_are_one_line_not_tracebacks(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin", "--config", str(config.with_name("missing.toml")), "list"]) == 1
    err = capsys.readouterr().err
    assert "cannot read configuration" in err and "Traceback" not in err
    repo_of(config).engine.dispose()  # creates the state dir and the master key
    key = load_config(config).server.master_key_file
    key.chmod(0o644)
    assert main(["admin", "--config", str(config), "list"]) == 1
    err = capsys.readouterr().err
    assert f"{key} is mode 0644" in err and "Traceback" not in err
