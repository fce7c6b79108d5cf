"""Finding 1 replayed with the real grid tools: proxies minted with `grid-proxy-init
-independent` (RFC 3820 and, with -draft, pre-RFC) are refused on both edges, by the
real myproxy clients and over HTTPS, while ordinary proxies of the same users work.
"""

from __future__ import annotations

import dataclasses
import http.client
from pathlib import Path

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI
from tests.interop.test_myproxy_clients import Clients, ok, refused, text
from tests.support.https import ApiClient
from tests.support.server import running_server

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]

PASS = "secret123"
BOB = "/C=XX/O=proxyd dev/OU=Users/CN=bob"

# grid-proxy-init flags of each minted form (Debian's globus-proxy-utils 7.3).
MINTED = {"rfc-independent": ("-independent",), "draft-independent": ("-draft", "-independent")}


def _proxy(c: Clients, who: str, *flags: str, name: str) -> Path:
    cert, key = c.pki.user(who)
    out = c.workdir / f"{who}-{name}.pem"
    made = c.run("grid-proxy-init", "-q", "-cert", cert, "-key", key, *flags, "-out", out)
    assert made.returncode == 0, text(made)
    return out


@pytest.mark.parametrize("form", sorted(MINTED))
def test_minted_proxies_are_refused_on_both_edges(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, form: str
) -> None:
    with running_server(dev_pki, tmp_path / "state") as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S", stdin=PASS)
        honest = c.proxy_of("alice")
        minted = _proxy(c, "alice", *MINTED[form], name=form)
        # The control: an ordinary proxy of alice sees her credential.
        assert "owner: /C=XX/O=proxyd dev/OU=Users/CN=alice" in ok(
            c.run("myproxy-info", "-l", "alice", proxy=honest)
        )
        # The minted identity is refused before any rule, on the MyProxy edge ...
        refused(c.run("myproxy-info", "-l", "alice", proxy=minted))
        refused(c.run("myproxy-init", "-l", "alice2", "-c", "1", "-t", "1", proxy=minted))
        # ... and over HTTPS (the client certificate is the minted proxy with its chain).
        # Draft proxies never pass the TLS handshake (OpenSSL verifies RFC 3820 only).
        api = ApiClient(server.api_port, dev_pki.cert_dir, minted)
        try:
            reply = api.request("GET", "/v1/credentials?username=alice")
        except (OSError, http.client.HTTPException):
            assert form == "draft-independent"
        else:
            assert reply.status in (401, 403), reply.body[:300]
            assert b"independent proxy" in reply.body


@pytest.mark.parametrize("form", sorted(MINTED))
def test_a_banned_user_stays_banned_with_a_minted_proxy(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path, form: str
) -> None:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, banned_dns=(BOB.lower(),))
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        c = Clients(server, dev_pki, workdir)
        minted = _proxy(c, "bob", *MINTED[form], name=form)
        refused(c.run("myproxy-init", "-l", "bob", "-c", "1", "-t", "1", "-n", proxy=minted))
        # Nor with an ordinary proxy: the ban is written in another spelling of bob's DN.
        honest = c.proxy_of("bob")
        refused(c.run("myproxy-init", "-l", "bob", "-c", "1", "-t", "1", "-n", proxy=honest))
        stores = server.repo.audit.query(operation="store", decision="allow", limit=10)
        assert stores == []
