"""Payload tokens are decided as payload proxies are: the matched pilot instance only, while the
assignment is live, never longer than the payload proxy (issue 19, I2 for tokens)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from proxyd.core.tokens import WLCG_ANY_AUDIENCE, wlcg_groups
from proxyd.devpki import DevPKI
from proxyd.repository import Denied, Repository, StoreOptions
from proxyd.sealing import MasterKeyring
from proxyd.store.db import make_engine, migrate
from proxyd.taskqueue.model import Accounting
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tokens.settings import TokensConfig
from tests.support.grid import Identity, delegate, load_identity, make_test_config, trust_of
from tests.taskqueue.support import Clock
from tests.taskqueue.test_payload import ALICE, CAROL, World, task_of

ISSUER = "https://proxyd.example.org:8443"


@pytest.fixture
def world(dev_pki: DevPKI, tmp_path: Path) -> Iterator[World]:
    ids: dict[str, Identity] = {n: load_identity(dev_pki, n) for n in ("alice", "carol", "pilot")}
    config = make_test_config(
        dev_pki, f"sqlite:///{tmp_path / 'state' / 'p.db'}", tmp_path / "state"
    )
    policy = dataclasses.replace(config.policy, pilot_dns=(*config.policy.pilot_dns, CAROL))
    tokens = TokensConfig(
        issuer=ISSUER, max_lifetime=dt.timedelta(hours=4), scopes={"dteam": ("storage.read:/",)}
    )
    config = dataclasses.replace(config, policy=policy, tokens=tokens)
    config.server.state_dir.mkdir(mode=0o700, exist_ok=True)
    engine = make_engine(config.server.database)
    migrate(engine)
    clock = Clock(dt.datetime.now(dt.UTC))
    keyring = MasterKeyring.load_or_create(config.server.master_key_file)
    repo = Repository(config, engine, keyring, trust_of(dev_pki), clock=clock)
    delegate(repo, ids["alice"], StoreOptions("alice"))
    yield World(repo, SqlTaskQueue(engine, audit=repo.audit, clock=clock), ids, clock)
    engine.dispose()


def _token(world: World, who: str, task_id: int, secret: str | None = None) -> str:
    presented = world.secrets.get(task_id) if secret is None else secret
    return world.service.payload_token(world.who(who), task_id, presented).token


def _refused(world: World, who: str, task_id: int, secret: str | None = None) -> str:
    with pytest.raises(Denied) as err:
        _token(world, who, task_id, secret)
    assert err.value.rule is not None
    return err.value.rule


def _claims(repo: Repository, token: str) -> dict[str, object]:
    keys = repo.jwks()["keys"]
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWK(next(k for k in keys if k["kid"] == header["kid"]))
    return jwt.decode(token, key, algorithms=["ES256"], audience=WLCG_ANY_AUDIENCE, issuer=ISSUER)


def test_the_matched_pilot_gets_a_token_no_longer_than_its_proxy(world: World) -> None:
    task = world.queue.submit(task_of(ALICE, "alice", "/dteam"))
    assert _refused(world, "pilot", task.id) == "payload.not_assigned"  # queued: nobody's yet
    world.match()
    claims = _claims(world.repo, _token(world, "pilot", task.id))
    assert claims["sub"] == ALICE and claims["wlcg.groups"] == ["/dteam"]
    assert claims["scope"] == "storage.read:/" and claims["wlcg.ver"] == "1.0"
    proxy = world.issue("pilot", task.id).proxy
    assert claims["exp"] <= proxy.not_valid_after_utc.timestamp() + 1  # type: ignore[operator]
    assert _refused(world, "carol", task.id) == "payload.not_assigned"  # another pilot
    assert _refused(world, "pilot", task.id, "not-the-secret") == "payload.wrong_instance"
    assert _refused(world, "alice", task.id) == "payload.not_pilot"  # the owner is no pilot

    pilot = world.who("pilot").identity
    world.queue.start(task.id, pilot)
    world.queue.complete(task.id, pilot, Accounting(cpu_s=1, wall_s=2))
    assert _refused(world, "pilot", task.id) == "payload.assignment_ended"
    rules = [
        (e.event.decision, e.event.rule)
        for e in world.repo.audit.query(operation="payload_token", newest_first=False)
    ]
    assert rules == [
        ("deny", "payload.not_assigned"),
        ("allow", "payload.assigned"),
        ("deny", "payload.not_assigned"),
        ("deny", "payload.wrong_instance"),
        ("deny", "payload.not_pilot"),
        ("deny", "payload.assignment_ended"),
    ]


def test_a_token_never_outlives_the_assignment(world: World) -> None:
    task = world.queue.submit(dataclasses.replace(task_of(ALICE, "alice"), max_wall_s=600))
    world.match()
    claims = _claims(world.repo, _token(world, "pilot", task.id))
    margin = world.repo.config.policy.payload_lifetime_margin.total_seconds()
    assert claims["exp"] - claims["iat"] <= 600 + margin  # type: ignore[operator]


def test_a_server_without_tokens_says_so(world: World) -> None:
    world.repo.config = dataclasses.replace(world.repo.config, tokens=TokensConfig())
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    assert _refused(world, "pilot", task.id) == "token.not_issuing"


def test_rotation_keeps_old_tokens_verifiable(world: World) -> None:
    task = world.queue.submit(task_of(ALICE, "alice"))
    world.match()
    before = _token(world, "pilot", task.id)
    from proxyd.principal import local_operator

    world.repo.rotate_token_key(local_operator())
    after = _token(world, "pilot", task.id)
    assert jwt.get_unverified_header(before)["kid"] != jwt.get_unverified_header(after)["kid"]
    assert _claims(world.repo, before)["sub"] == _claims(world.repo, after)["sub"] == ALICE


def test_wlcg_groups_are_the_group_paths_of_fqans() -> None:
    assert wlcg_groups(("/dteam/Role=production", "/dteam", "/dteam/prod/Role=NULL")) == (
        "/dteam",
        "/dteam/prod",
    )
