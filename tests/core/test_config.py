"""The configuration loader: every mistake names the file, the key and the fix."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from proxyd.config import ConfigError, load_config, parse_config

BASE = '[server]\nhost_cert = "h.pem"\nhost_key = "k.pem"\n'


def test_minimal_config_has_sane_defaults() -> None:
    c = parse_config(BASE, "/etc/proxyd/proxyd.toml")
    assert c.server.host_cert == Path("/etc/proxyd/h.pem")
    assert c.server.database == "sqlite:////etc/proxyd/state/proxyd.db"
    assert str(c.myproxy.listen) == "127.0.0.1:7512" and str(c.api.listen) == "127.0.0.1:8443"
    assert c.policy.max_proxy_lifetime == dt.timedelta(hours=12)
    assert c.policy.trusted_retrievers == () and c.policy.full_delegation_hosts == ()
    assert c.voms == ()
    assert c.server.trust_reload_interval == dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[policy]\nmax_proxy_lifetime = "forever"\n',
            "[policy] max_proxy_lifetime must be a positive duration",
        ),
        (
            "[policy]\nmax_proxy_lifetime = 0\n",
            "[policy] max_proxy_lifetime must be a positive duration",
        ),
        ('[policy]\ntrusted_retriever = ["x"]\n', "[policy] has unknown key(s) trusted_retriever"),
        (
            'trust_reload_interval = "often"\n',
            "[server] trust_reload_interval must be a positive duration",
        ),
        (
            '[policy]\ntrusted_retrievers = "x"\n',
            "[policy] trusted_retrievers must be a list of non-empty strings",
        ),
        (
            '[policy]\nallow_self_authorization = "yes"\n',
            "allow_self_authorization must be true or false",
        ),
        ('[myproxy]\nlisten = "7512"\n', '[myproxy] listen must be "HOST:PORT"'),
        ('[myproxy]\ntls_min_version = "1.1"\n', 'tls_min_version must be "1.2" or "1.3"'),
        ("[bogus]\nx = 1\n", "unknown section(s) bogus"),
        ("[server]\n", "not valid TOML"),
        (
            '[[voms]]\nvo = "dteam"\nuri = "voms.example.org"\naa_cert = "a"\naa_key = "b"\n',
            "must be HOST:PORT",
        ),
        (
            '[[voms]]\nvo = "dteam"\nuri = "h:1"\naa_cert = "a"\naa_key = "b"\n[voms.members]\n"/CN=a" = ["/ops"]\n',
            "is not in VO 'dteam'",
        ),
        (
            '[[voms]]\nvo = "dteam"\nuri = "h:1"\naa_cert = "a"\naa_key = "b"\n[voms.members]\n"/CN=a" = ["dteam"]\n',
            "must start with '/'",
        ),
        ('[[voms]]\nuri = "h:1"\naa_cert = "a"\naa_key = "b"\n', "[voms #1] vo is required"),
    ],
)
def test_mistakes_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + extra, "/etc/proxyd/proxyd.toml")
    assert message in str(err.value)
    assert "/etc/proxyd/proxyd.toml" in str(err.value)


def test_unsupported_database_url() -> None:
    with pytest.raises(ConfigError, match="must be an sqlite:/// or postgresql:// URL"):
        parse_config(BASE + 'database = "mysql://x"\n', "p.toml")


def test_missing_host_cert_names_it() -> None:
    with pytest.raises(ConfigError, match=r"\[server\] host_cert is required"):
        parse_config("[server]\n", "p.toml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.toml")


def test_durations_and_listen_off() -> None:
    c = parse_config(
        BASE
        + 'trust_reload_interval = "10s"\n'
        + '[policy]\nmax_proxy_lifetime = "90m"\nmax_stored_lifetime = 3600\n[api]\nlisten = "off"\n',
        "/x/p.toml",
    )
    assert c.policy.max_proxy_lifetime == dt.timedelta(minutes=90)
    assert c.policy.max_stored_lifetime == dt.timedelta(hours=1)
    assert c.api.listen is None
    assert c.server.trust_reload_interval == dt.timedelta(seconds=10)


def test_connection_limits() -> None:
    c = parse_config(BASE, "/etc/proxyd/proxyd.toml")
    for edge in (c.myproxy, c.api):
        assert (edge.max_connections, edge.max_connections_per_peer) == (1024, 64)
    c = parse_config(
        BASE
        + "[myproxy]\nmax_connections = 5000\nmax_connections_per_peer = 200\n"
        + "[api]\nmax_connections = 10\n",
        "/x/p.toml",
    )
    assert (c.myproxy.max_connections, c.myproxy.max_connections_per_peer) == (5000, 200)
    # An unset per-peer limit never exceeds the total.
    assert (c.api.max_connections, c.api.max_connections_per_peer) == (10, 10)


@pytest.mark.parametrize("section", ["myproxy", "api"])
@pytest.mark.parametrize("key", ["max_connections", "max_connections_per_peer"])
@pytest.mark.parametrize("value", ["0", "-1", '"100"', "true", "1.5", "10000000", "[]"])
def test_bad_connection_limits_name_the_key(section: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f"[{section}]\n{key} = {value}\n", "/etc/proxyd/proxyd.toml")
    assert str(err.value) == (
        f"/etc/proxyd/proxyd.toml: [{section}] {key} must be an integer from 1 to 1000000, "
        f"got {tomllib.loads(f'v = {value}')['v']!r}"
    )


def test_per_peer_limit_above_the_total_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            BASE + "[api]\nmax_connections = 100\nmax_connections_per_peer = 200\n", "p.toml"
        )
    assert "[api] max_connections_per_peer (200) is larger than [api] max_connections (100)" in (
        str(err.value)
    )


def test_unknown_connection_limit_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"\[myproxy\] has unknown key\(s\) max_connection\b"):
        parse_config(BASE + "[myproxy]\nmax_connection = 5\n", "p.toml")
