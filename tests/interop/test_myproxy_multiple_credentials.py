"""check_multiple_credentials with the real myproxy-logon (issue 18, item 2).

With `[policy] check_multiple_credentials = true`, a GET that names no
credential (no `-k`) takes the first of the user's credentials the client may
use, the default one first, as myproxy-server does; the audit log shows the
decision on the credential used, and, when none is usable, the default
credential's refusal only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI
from tests.interop.test_myproxy_clients import (
    ALICE,
    ANONYMOUS,
    FULL,
    LIMITED,
    NEW_PASS,
    PASS,
    WMS,
    Clients,
    assert_proxy_of,
    ok,
    refused,
)
from tests.support.server import running_server
from tests.support.tools import require_tool

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]


def test_logon_without_a_name_tries_each_credential(
    dev_pki: DevPKI, tmp_path: Path, workdir: Path
) -> None:
    require_tool("myproxy-logon")
    policy = dataclasses.replace(
        load_config(dev_pki.config).policy, check_multiple_credentials=True
    )
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        c = Clients(server, dev_pki, workdir)
        c.init("alice", "-S", stdin=PASS)
        c.init("alice", "-k batch -S", stdin=NEW_PASS)
        c.init("alice", "-k wms-use -n -Z wms.localhost")

        # The passphrase of "batch", no -k: "default" refuses it, "batch" opens.
        batch = c.out("batch")
        ok(c.logon("-S", batch, stdin=NEW_PASS))
        assert_proxy_of(batch, ALICE, FULL)
        # The trusted host without a passphrase gets "wms-use", limited (I3).
        trusted = c.out("trusted")
        ok(c.logon("-n", trusted, who="wms"))
        assert_proxy_of(trusted, ALICE, LIMITED)
        # Named, only that credential is tried, as before.
        refused(
            c.logon("-S -k default", c.out("named"), stdin=NEW_PASS),
            "invalid credential passphrase",
        )
        # None usable: the default credential's refusal, as without the option.
        refused(c.logon("-S", c.out("none"), stdin="no such passphrase"), "invalid credential")

        events = server.repo.audit.query(
            operation="retrieve", owner=ALICE, newest_first=False, limit=100
        )
        assert [
            (
                e.event.decision,
                e.event.rule,
                e.event.actor_dn,
                e.event.credential_name,
                e.event.detail,
            )
            for e in events
        ] == [
            (
                "allow",
                "retrieve.passphrase",
                ANONYMOUS,
                "batch",
                "full; check_multiple_credentials took 'batch' of 2 tried",
            ),
            (
                "allow",
                "retrieve.trusted",
                WMS,
                "wms-use",
                "limited; check_multiple_credentials took 'wms-use' of 3 tried",
            ),
            ("deny", "auth.bad_passphrase", ANONYMOUS, "default", "invalid credential passphrase"),
            ("deny", "auth.bad_passphrase", ANONYMOUS, "default", "invalid credential passphrase"),
        ]
        assert server.repo.audit.verify().ok
