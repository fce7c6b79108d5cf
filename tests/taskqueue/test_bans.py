"""`store.bans`, the one reader and writer of the `bans` table, and the queue judging owners
with `policy.Bans`, the policy's own evaluator."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from proxyd import policy
from proxyd.config import PolicyConfig
from proxyd.policy import Bans, Operation
from proxyd.principal import Principal, PrincipalKind
from proxyd.store.bans import (
    add_ban,
    list_bans,
    read_bans,
    read_site_bans,
    remove_ban,
)
from proxyd.store.db import write_transaction
from proxyd.taskqueue.sql import SqlTaskQueue
from tests.store_fixtures import engine  # noqa: F401 - the fixture, per backend
from tests.taskqueue.support import Clock, owner_dn, pilot, spec

ADMIN = owner_dn("admin")


def test_add_remove_read(engine: Engine) -> None:  # noqa: F811
    with write_transaction(engine) as conn:
        assert add_ban(conn, "user", "/CN=mallory", ADMIN, "compromised") is True
        assert add_ban(conn, "user", "/CN=mallory", ADMIN, "again") is False  # left as it was
        assert add_ban(conn, "host", "/CN=host.example", ADMIN, "rogue") is True
        assert add_ban(conn, "site", "SITE-*", ADMIN, "downtime") is True
    with engine.connect() as conn:
        assert read_bans(conn) == Bans(users=("/CN=mallory",), hosts=("/CN=host.example",))
        assert read_site_bans(conn) == ("SITE-*",)
        listed = list_bans(conn)
    assert [(b.kind, b.pattern, b.reason, b.created_by) for b in listed] == [
        ("host", "/CN=host.example", "rogue", ADMIN),
        ("site", "SITE-*", "downtime", ADMIN),
        ("user", "/CN=mallory", "compromised", ADMIN),
    ]
    with write_transaction(engine) as conn:
        assert remove_ban(conn, "user", "/CN=mallory") is True
        assert remove_ban(conn, "user", "/CN=mallory") is False
    with engine.connect() as conn:
        assert read_bans(conn).users == ()


def test_a_ban_change_rolls_back_with_its_transaction(engine: Engine) -> None:  # noqa: F811
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        add_ban(conn, "user", "/CN=mallory", ADMIN, "compromised")
        raise RuntimeError("the audit append failed, say")
    with engine.connect() as conn:
        assert read_bans(conn) == Bans()


@pytest.mark.parametrize(
    ("kind", "pattern"), [("user", ""), ("admin", "/CN=x"), ("user", "/CN=" + "x" * 1024)]
)
def test_bad_bans_are_refused(engine: Engine, kind: str, pattern: str) -> None:  # noqa: F811
    with pytest.raises(ValueError), write_transaction(engine) as conn:
        add_ban(conn, kind, pattern, ADMIN, "")


def test_the_queue_drops_the_owners_the_policy_refuses(engine: Engine) -> None:  # noqa: F811
    """The queue leaves out exactly the owners `policy.decide` refuses with ban.owner: any
    spelling of a banned DN, and host bans too."""
    q = SqlTaskQueue(engine, clock=Clock())
    alice, bob, carol = (q.submit(spec(n)).id for n in ("alice", "bob", "carol"))
    q.ban_owner("CN=alice, OU=Users, O=proxyd dev, C=XX", by=ADMIN)  # OpenSSL's comma form
    with write_transaction(engine) as conn:
        add_ban(conn, "host", owner_dn("bob"), ADMIN, "a host ban on a person's DN")
    with engine.connect() as conn:
        bans = read_bans(conn)
    for name in ("alice", "bob", "carol"):
        request = policy.Request(Operation.TASK_SUBMIT, owner=owner_dn(name))
        principal = Principal(ADMIN, PrincipalKind.USER)
        decision = policy.decide(request, principal, None, _config(), bans)
        assert (decision.rule == "ban.owner") == bans.matches(owner_dn(name)) == (name != "carol")
    got = q.match(pilot())
    assert got is not None and got.id == carol
    assert q.match(pilot()) is None
    assert q.unban_owner("CN=alice, OU=Users, O=proxyd dev, C=XX", by=ADMIN) is True
    again = q.match(pilot())
    assert again is not None and again.id == alice and bob != alice


def _config() -> PolicyConfig:
    return PolicyConfig()
