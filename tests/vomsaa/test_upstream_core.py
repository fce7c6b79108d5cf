"""The core with an upstream VO: the VO's server decides what the owner holds, refusals are audited."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from proxyd.core.errors import Denied
from proxyd.core.values import StoreOptions
from proxyd.devpki import DevPKI
from proxyd.devpki import user_dn as _user_dn
from proxyd.issuer import VomsRequest
from proxyd.repository import Repository
from proxyd.sealing import MasterKeyring
from proxyd.store.db import make_engine, migrate
from proxyd.taskqueue import Payload, PilotCapabilities, TaskSpec
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskService
from proxyd.vomsaa import wire
from proxyd.vomsaa.vomses import UpstreamVoConfig
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_test_config,
    principal,
    spare_key,
    trust_of,
)
from tests.vomsaa.standin import StandIn, make_ac, rest_ok
from voms_ext import validate_chain

ROLE_ADMIN = "/dteam/Role=admin"  # alice does not hold it in the dev configuration's dteam


def upstream_repo(pki: DevPKI, state: Path, server: StandIn) -> Repository:
    state.mkdir(mode=0o700)
    config = make_test_config(pki, f"sqlite:///{state / 'proxyd.db'}", state)
    upstream = UpstreamVoConfig("dteam", pki.vomses, (server.entry(),), dt.timedelta(seconds=5))
    config = dataclasses.replace(
        config,
        voms=tuple(v for v in config.voms if v.vo != "dteam"),
        upstream_voms=(upstream,),
    )
    engine = make_engine(config.server.database)
    migrate(engine)
    keyring = MasterKeyring.load_or_create(config.server.master_key_file)
    return Repository(config, engine, keyring, trust_of(pki))


def alice_stored(repo: Repository, pki: DevPKI) -> tuple[Identity, Identity]:
    alice, wms = load_identity(pki, "alice"), load_identity(pki, "wms")
    delegate(repo, alice, StoreOptions("alice"))
    return alice, wms


def test_the_vo_server_decides_what_the_owner_holds(
    dev_pki: DevPKI, tmp_path: Path, stand_in: Callable[..., StandIn]
) -> None:
    alice = load_identity(dev_pki, "alice")
    der = make_ac(dev_pki, alice.cert, (ROLE_ADMIN, "/dteam"))
    server = stand_in(rest_ok(der))
    repo = upstream_repo(dev_pki, tmp_path / "state", server)
    _, wms = alice_stored(repo, dev_pki)
    issued = repo.retrieve(
        principal(repo, wms),
        "alice",
        csr_for(spare_key(3)),
        voms=[VomsRequest.parse(f"dteam:{ROLE_ADMIN}")],
    )
    # Not voms.fqan_not_held: for an upstream VO the policy passes the request on.
    assert [ac.der for ac in issued.acs] == [der]
    assert validate_chain(issued.certificates, repo.trust).fqans[0].startswith(ROLE_ADMIN)
    assert wire.parse_rest_request(server.requests[0]).fqans == (ROLE_ADMIN,)
    (event,) = repo.audit.query(operation="retrieve")
    assert (event.event.decision, event.event.rule) == ("allow", "retrieve.trusted")
    assert event.event.fqans[0].startswith(ROLE_ADMIN)


def test_a_refusal_of_the_vo_server_is_an_audited_refusal(
    dev_pki: DevPKI, tmp_path: Path, stand_in: Callable[..., StandIn]
) -> None:
    unknown = wire.AaError(wire.LEGACY_NOT_MEMBER, "dteam: User unknown to this VO.")
    server = stand_in(lambda r: None, lambda r: wire.encode_legacy_answer(unknown))
    repo = upstream_repo(dev_pki, tmp_path / "state", server)
    alice, wms = alice_stored(repo, dev_pki)
    with pytest.raises(Denied) as info:
        repo.retrieve(
            principal(repo, wms), "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("dteam")]
        )
    assert info.value.rule == "voms.upstream_unknown_user"
    assert "User unknown to this VO" in info.value.message
    (event,) = repo.audit.query(operation="retrieve")
    assert (event.event.decision, event.event.rule) == ("deny", "voms.upstream_unknown_user")
    assert "User unknown to this VO" in (event.event.detail or "")

    # proxyd signs no AC for an upstream VO itself: it has no key of the caller to ask with.
    with pytest.raises(Denied) as refused:
        repo.issue_acs(principal(repo, alice), [VomsRequest.parse("dteam")], dt.timedelta(hours=1))
    assert refused.value.rule == "voms.unknown_vo"
    assert "VO dteam's ACs come from its own VOMS server" in refused.value.message


def test_a_payload_proxy_carries_the_vo_servers_ac(
    dev_pki: DevPKI, tmp_path: Path, stand_in: Callable[..., StandIn]
) -> None:
    alice = load_identity(dev_pki, "alice")
    der = make_ac(dev_pki, alice.cert, ("/dteam/Role=production", "/dteam"))
    server = stand_in(rest_ok(der))
    repo = upstream_repo(dev_pki, tmp_path / "state", server)
    alice_stored(repo, dev_pki)
    queue = SqlTaskQueue(repo.engine, audit=repo.audit)
    spec = TaskSpec(
        owner=_user_dn("alice"),
        vo="dteam",
        group="/dteam",
        fqans=("/dteam/Role=production",),
        credential_username="alice",
        payload=Payload("/usr/bin/analysis", ()),
        max_wall_s=3600,
    )
    task = queue.submit(spec)
    pilot = principal(repo, load_identity(dev_pki, "pilot"))
    matched = queue.match(PilotCapabilities(pilot.identity, "p-1", "SITE-A", cpu_time_left=10**5))
    assert matched is not None and matched.id == task.id
    issued = TaskService(repo, queue).payload_proxy(
        pilot, task.id, csr_for(spare_key(3)), matched.assignment_secret
    )
    assert [ac.der for ac in issued.acs] == [der]
    result = validate_chain(issued.certificates, repo.trust)
    assert result.is_limited and result.fqans[0] == "/dteam/Role=production/Capability=NULL"
    assert wire.parse_rest_request(server.requests[0]).fqans == ("/dteam/Role=production",)
