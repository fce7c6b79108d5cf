"""Issue 15, finding 9: /metrics (decision counts by rule) is no longer open to anyone.

On the HTTPS API it is a decided, audited read for `metrics_readers`, admins and
auditors; a Prometheus that should not write an audit event per scrape reads the
plain `[metrics] listen` address instead, which serves /metrics and nothing else.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI, host_dn, user_dn
from tests.support.grid import load_identity
from tests.support.https import ApiClient
from tests.support.server import free_port, running_server, write_config
from tests.support.waiting import eventually
from voms_ext import Credential, write_credential_file

WMS = host_dn("wms.localhost")


def _creds(dev_pki: DevPKI, workdir: Path) -> dict[str, Path]:
    out = {}
    for who in ("alice", "wms"):
        ident = load_identity(dev_pki, who)
        out[who] = workdir / f"{who}.pem"
        write_credential_file(out[who], Credential(ident.certificates, ident.key))
    return out


def test_https_metrics_need_a_listed_reader_and_are_audited(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, metrics_readers=(WMS,))
    creds = _creds(dev_pki, workdir)
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        anonymous = ApiClient(server.api_port, dev_pki.cert_dir).request("GET", "/metrics")
        alice = ApiClient(server.api_port, dev_pki.cert_dir, creds["alice"]).request(
            "GET", "/metrics"
        )
        reader = ApiClient(server.api_port, dev_pki.cert_dir, creds["wms"]).request(
            "GET", "/metrics"
        )
        events = server.repo.audit.query(operation="metrics_read", newest_first=False)
    assert anonymous.status == 403 and b"anonymous.denied" in anonymous.body
    assert alice.status == 403 and b"metrics_read.readers" in alice.body
    assert b"proxyd_decisions_total" not in anonymous.body + alice.body
    assert reader.status == 200 and b"proxyd_decisions_total" in reader.body
    assert [(e.event.decision, e.event.rule, e.event.actor_dn) for e in events] == [
        ("deny", "anonymous.denied", "<anonymous>"),
        ("deny", "metrics_read.readers", user_dn("alice")),
        ("allow", "metrics_read.readers", WMS),
    ]


def test_the_metrics_listener_serves_only_metrics(dev_pki: DevPKI, tmp_path: Path) -> None:
    mp, api, port = free_port(), free_port(), free_port()
    config = write_config(
        dev_pki, tmp_path / "state", mp, api, extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxyd.cli.main", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def scrape(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as reply:  # noqa: S310
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            assert proc.poll() is None, proc.communicate()[1].decode()
            return 0, b""

    try:
        status, body = eventually(lambda: scrape("/metrics"), lambda r: r[0] != 0, "the listener")
        assert status == 200 and b"proxyd_decisions_total" in body
        for path in ("/healthz", "/v1/credentials", "/v1/audit", "/ui/"):
            assert scrape(path)[0] == 404, path
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"metrics listening on http://127.0.0.1:" in err


@pytest.mark.parametrize("value", ['"0.0.0.0"', '"127.0.0.1:99999"', "42"])
def test_a_bad_metrics_listen_address_is_a_config_error(dev_pki: DevPKI, value: str) -> None:
    from proxyd.config import ConfigError, parse_config

    text = dev_pki.config.read_text() + f"\n[metrics]\nlisten = {value}\n"
    with pytest.raises(ConfigError, match=r"\[metrics\] listen must be"):
        parse_config(text, dev_pki.config)
