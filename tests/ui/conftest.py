"""A proxyd with a little of everything for the dashboard to show.

carol is the auditor; bob is an administrator but *not* an auditor (the
dashboard must refuse him). The seed: alice's credential retrieved by the
WMS (an issuance with a serial), bob refused twice (`retrieve.not_trusted`),
a passphrase credential of bob's with markup in its description, three
tasks of alice's (one done with accounting at SITE-A, one matched, one
waiting) and a masked site.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.config import load_config
from proxyd.devpki import DevPKI, host_dn, user_dn
from proxyd.repository import StoreOptions
from tests.support.grid import csr_for, delegate, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from voms_ext import Credential, write_credential_file

ALICE, BOB, CAROL = user_dn("alice"), user_dn("bob"), user_dn("carol")
WMS = host_dn("wms.localhost")
PILOT = "/C=XX/O=proxyd dev/OU=Pilots/CN=pilot"
MARKUP = '<script>alert("x")</script> & <b>bold</b>'


@dataclasses.dataclass
class Seeded:
    server: RunningServer
    creds: dict[str, Path]
    task_ids: list[int]
    serial: str  # of the WMS's issuance
    started: dt.datetime  # before anything was seeded

    def client(self, who: str | None) -> ApiClient:
        return ApiClient(
            self.server.api_port, self.server.pki.cert_dir, self.creds[who] if who else None
        )

    def get(self, who: str | None, path: str) -> Reply:
        return self.client(who).request("GET", path)


def _csr() -> str:
    return csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()


def _ok(reply: Reply, status: int = 200) -> Reply:
    assert reply.status == status, reply.body
    return reply


@pytest.fixture(scope="module")
def seeded(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    base = load_config(dev_pki.config).policy
    policy = dataclasses.replace(base, auditors=(CAROL,), admins=(BOB,))
    root = tmp_path_factory.mktemp("ui")
    root.chmod(0o700)
    started = dt.datetime.now(dt.UTC)
    with running_server(dev_pki, root / "state", policy=policy) as server:
        creds: dict[str, Path] = {}
        for who in ("alice", "bob", "carol", "wms", "pilot"):
            ident = load_identity(dev_pki, who)
            creds[who] = root / f"{who}.pem"
            write_credential_file(creds[who], Credential(ident.certificates, ident.key))
        seed = Seeded(server, creds, [], "", started)

        repo = server.repo
        delegate(
            repo, load_identity(dev_pki, "alice"), StoreOptions("alice", trusted_retrievers=(WMS,))
        )
        delegate(
            repo,
            load_identity(dev_pki, "bob"),
            StoreOptions("bob", name="pp", passphrase="bob's passphrase", description=MARKUP),
        )
        body = {"csr": _csr(), "lifetime": 3600, "voms": ["dteam"]}
        issued = _ok(
            seed.client("wms").request("POST", "/v1/credentials/default/proxy?username=alice", body)
        )
        seed.serial = issued.json["serial"]
        for _ in range(2):
            denied = seed.client("bob").request(
                "POST", "/v1/credentials/default/proxy?username=alice", body
            )
            assert denied.status == 403 and denied.json["rule"] == "retrieve.not_trusted"

        task = {
            "vo": "dteam",
            "group": "/dteam",
            "fqans": ["/dteam"],
            "credential": {"username": "alice", "name": "default"},
            "payload": {"command": "/bin/true"},
            "max_wall_s": 600,
        }
        seed.task_ids = [
            _ok(seed.client("alice").request("POST", "/v1/tasks", task), 201).json["id"]
            for _ in range(3)
        ]
        pilot = seed.client("pilot")
        caps = {"site": "SITE-A", "pilot_id": "job-1"}
        matched = _ok(pilot.request("POST", "/v1/pilot/match", caps)).json
        first, secret = matched["id"], {"assignment_secret": matched["assignment_secret"]}
        _ok(pilot.request("POST", f"/v1/tasks/{first}/start", secret))
        _ok(
            pilot.request(
                "POST",
                f"/v1/tasks/{first}/complete",
                {"cpu_s": 1800.0, "wall_s": 3600.0, **secret},
            )
        )
        _ok(pilot.request("POST", "/v1/pilot/match", caps))
        _ok(
            seed.client("bob").request(
                "PUT", "/v1/admin/sites/SITE-B", {"masked": True, "reason": "downtime"}
            )
        )
        yield seed
