"""Suspended VO members: the store and migration 0012, the core's suspend and restore
(decided, audited), issuance refusing a suspended member by rule `voms.member_suspended`
with the reason, and the `proxyd admin vo` commands."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, select

from proxyd.cli.main import main
from proxyd.devpki import DevPKI, user_dn
from proxyd.issuer import VomsRequest
from proxyd.principal import local_operator
from proxyd.repository import BadRequest, Denied, NotFound, Repository, StoreOptions
from proxyd.store import make_engine, migrate
from proxyd.store.db import alembic_config, write_transaction
from proxyd.store.members import (
    MemberReads,
    add_member,
    list_members,
    member_suspension,
    restore_member,
    suspend_member,
)
from proxyd.store.models import AuditRow
from tests.store_fixtures import BACKENDS, database_url, engine  # noqa: F401 - a fixture
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_repository,
    principal,
    spare_key,
)
from tests.support.server import free_port, write_config

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ALICE = user_dn("alice")
BOB = user_dn("bob")
CAROL = user_dn("carol")
DAVE = "/DC=org/DC=example/OU=Users/CN=dave"
OP = local_operator()
HOUR = dt.timedelta(hours=1)


# --- the store ----------------------------------------------------------------------------------


def test_store_suspends_keeps_the_fqans_and_restores(engine: Engine) -> None:  # noqa: F811
    reads = MemberReads(engine)
    with write_transaction(engine) as conn:
        add_member(conn, "dteam", DAVE, ("/dteam", "/dteam/x"), "/CN=op", T0)
        assert not suspend_member(conn, "dteam", BOB, "no member", T0)
        assert suspend_member(conn, "dteam", DAVE, "AUP expired", T0 + HOUR)
    # Suspended: holds nothing for issuance, and says why.
    assert reads.held("dteam", DAVE) == ()
    assert reads.suspension("dteam", DAVE) == "AUP expired"
    assert reads.suspension("dteam", BOB) is None
    with engine.connect() as conn:
        (m,) = list_members(conn, "dteam")
        assert member_suspension(conn, "dteam", DAVE) == ("AUP expired",)
        assert member_suspension(conn, "dteam", BOB) is None
    assert (m.fqans, m.suspended_reason, m.suspended_at, m.changed_at) == (
        ("/dteam", "/dteam/x"),
        "AUP expired",
        T0 + HOUR,
        T0 + HOUR,
    )
    with write_transaction(engine) as conn:
        assert restore_member(conn, "dteam", DAVE, T0 + 2 * HOUR)
        assert not restore_member(conn, "dteam", DAVE, T0 + 2 * HOUR)  # not suspended now
        assert not restore_member(conn, "dteam", BOB, T0)
    assert reads.held("dteam", DAVE) == ("/dteam", "/dteam/x")
    assert reads.suspension("dteam", DAVE) is None
    with engine.connect() as conn:
        (m,) = list_members(conn, "dteam")
    assert (m.suspended_reason, m.suspended_at) == (None, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0012_adds_the_columns_keeps_members_and_downgrades(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    eng = make_engine(database_url(request, backend, tmp_path))

    def columns() -> set[str]:
        return {c["name"] for c in inspect(eng).get_columns("vo_members")}

    try:
        cfg = alembic_config()
        with write_transaction(eng) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0011")
        assert not {"suspended_reason", "suspended_at"} & columns()
        with write_transaction(eng) as conn:  # a member from before the migration
            conn.exec_driver_sql(
                "INSERT INTO vo_members (vo, dn, fqans, added_by, added_at, changed_at) "
                "VALUES ('dteam', '/CN=old', '[\"/dteam\"]', '/CN=op', "
                "'2030-01-01 00:00:00+00:00', '2030-01-01 00:00:00+00:00')"
            )
        migrate(eng)
        assert {"suspended_reason", "suspended_at"} <= columns()
        reads = MemberReads(eng)
        assert reads.held("dteam", "/CN=old") == ("/dteam",)  # in good standing
        assert reads.suspension("dteam", "/CN=old") is None
        with write_transaction(eng) as conn:
            assert suspend_member(conn, "dteam", "/CN=old", "left", T0)
        assert reads.suspension("dteam", "/CN=old") == "left"
        with write_transaction(eng) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0011")
        assert not {"suspended_reason", "suspended_at"} & columns()
        migrate(eng)
        assert reads.held("dteam", "/CN=old") == ("/dteam",)  # the downgrade kept the row
    finally:
        eng.dispose()


# --- the core -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ids(dev_pki: DevPKI) -> dict[str, Identity]:
    return {n: load_identity(dev_pki, n) for n in ("alice", "bob", "carol", "wms")}


@pytest.fixture(params=BACKENDS)
def repo(request: pytest.FixtureRequest, dev_pki: DevPKI, tmp_path: Path) -> Iterator[Repository]:
    database = None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    repo = make_repository(dev_pki, tmp_path / "state", database=database)
    repo.config = dataclasses.replace(
        repo.config, policy=dataclasses.replace(repo.config.policy, admins=(CAROL,))
    )
    yield repo
    repo.engine.dispose()


def _last(repo: Repository) -> dict[str, object]:
    with repo.engine.connect() as conn:
        row = conn.execute(select(AuditRow.__table__).order_by(AuditRow.seq.desc()).limit(1)).one()
    return dict(row._mapping)


def _suspended(repo: Repository) -> dict[str, str | None]:
    return {m.dn: m.suspended_reason for m in repo.list_members(OP, "dteam")}


def test_a_suspended_member_gets_no_ac_until_restored(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    carol, alice = principal(repo, ids["carol"]), principal(repo, ids["alice"])
    (ac,) = repo.issue_acs(alice, [VomsRequest("dteam")], HOUR)

    assert repo.suspend(carol, "dteam", ALICE, "AUP not signed") == "AUP not signed"
    event = _last(repo)
    assert (event["operation"], event["decision"], event["rule"], event["owner_dn"]) == (
        "vo_members",
        "allow",
        "vo_members.admins",
        ALICE,
    )
    assert event["detail"] == "vo dteam suspend: AUP not signed"
    assert _suspended(repo)[ALICE] == "AUP not signed"

    for voms in ([VomsRequest("dteam")], [VomsRequest.parse("dteam:/dteam/Role=production")]):
        with pytest.raises(Denied) as refused:
            repo.issue_acs(alice, voms, HOUR)
        assert refused.value.rule == "voms.member_suspended"
        assert refused.value.message == (
            f'"{ALICE}" is currently suspended in VO dteam: AUP not signed'
        )
        event = _last(repo)
        assert (event["operation"], event["decision"], event["rule"]) == (
            "issue_ac",
            "deny",
            "voms.member_suspended",
        )
    # Another VO is another matter: alice is no ops member, which says so.
    with pytest.raises(Denied) as refused:
        repo.issue_acs(alice, [VomsRequest("ops")], HOUR)
    assert refused.value.rule == "voms.not_member"

    # Suspending again replaces the reason; the audit event says what it was.
    repo.suspend(carol, "dteam", ALICE, "left the experiment")
    assert "(again; it was: AUP not signed)" in str(_last(repo)["detail"])
    with pytest.raises(Denied) as refused:
        repo.issue_acs(alice, [VomsRequest("dteam")], HOUR)
    assert refused.value.message.endswith(": left the experiment")

    assert repo.restore(carol, "dteam", ALICE) == "left the experiment"
    event = _last(repo)
    assert (event["decision"], event["rule"], event["owner_dn"]) == (
        "allow",
        "vo_members.admins",
        ALICE,
    )
    assert _suspended(repo)[ALICE] is None
    (again,) = repo.issue_acs(alice, [VomsRequest("dteam")], HOUR)
    assert again.fqans == ac.fqans  # what it held was kept through the suspension


def test_a_suspended_owners_proxy_gets_no_ac_of_the_vo(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    delegate(repo, ids["alice"], StoreOptions("alice"))
    wms = principal(repo, ids["wms"])
    repo.suspend(OP, "dteam", ALICE, "AUP expired")
    with pytest.raises(Denied) as refused:
        repo.retrieve(wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("dteam")])
    assert refused.value.rule == "voms.member_suspended"
    assert "is currently suspended in VO dteam: AUP expired" in refused.value.message
    assert (_last(repo)["decision"], _last(repo)["rule"]) == ("deny", "voms.member_suspended")
    repo.retrieve(wms, "alice", csr_for(spare_key(3)))  # without an AC: served
    repo.restore(OP, "dteam", ALICE)
    repo.retrieve(wms, "alice", csr_for(spare_key(3)), voms=[VomsRequest.parse("dteam")])


@pytest.mark.parametrize(
    ("call", "error", "rule"),
    [
        (lambda r, p: r.suspend(p, "dteam", DAVE, "why"), NotFound, "vo.not_member"),
        (lambda r, p: r.restore(p, "dteam", DAVE), NotFound, "vo.not_member"),
        (lambda r, p: r.restore(p, "dteam", BOB), NotFound, "vo.not_suspended"),
        (lambda r, p: r.suspend(p, "dteam", BOB, ""), BadRequest, "vo.bad_reason"),
        (lambda r, p: r.suspend(p, "dteam", BOB, "   "), BadRequest, "vo.bad_reason"),
        (lambda r, p: r.suspend(p, "dteam", BOB, "x" * 201), BadRequest, "vo.bad_reason"),
        (lambda r, p: r.suspend(p, "dteam", BOB, "a\nb"), BadRequest, "vo.bad_reason"),
        (lambda r, p: r.suspend(p, "dteam", BOB, "a\u202eb"), BadRequest, "vo.bad_reason"),
        (lambda r, p: r.suspend(p, "atlas", BOB, "why"), BadRequest, "voms.unknown_vo"),
        (lambda r, p: r.restore(p, "atlas", BOB), BadRequest, "voms.unknown_vo"),
    ],
)
def test_refusals_name_their_rule_and_are_audited_with_nothing_changed(
    repo: Repository, call: object, error: type[Exception], rule: str
) -> None:
    before = repo.list_members(OP)
    with pytest.raises(error) as refused:
        call(repo, OP)  # type: ignore[operator]
    assert refused.value.rule == rule  # type: ignore[attr-defined]
    event = _last(repo)
    assert (event["decision"], event["rule"]) == ("deny", rule)
    assert repo.list_members(OP) == before


def test_a_reason_of_200_characters_is_taken(repo: Repository) -> None:
    repo.suspend(OP, "dteam", BOB, "é" * 200)
    assert _suspended(repo)[BOB] == "é" * 200


def test_only_admins_suspend_or_restore(repo: Repository, ids: dict[str, Identity]) -> None:
    alice = principal(repo, ids["alice"])
    for call in (
        lambda: repo.suspend(alice, "dteam", BOB, "why"),
        lambda: repo.restore(alice, "dteam", BOB),
    ):
        with pytest.raises(Denied) as refused:
            call()
        assert refused.value.rule == "vo_members.admins"
        assert (_last(repo)["decision"], _last(repo)["rule"]) == ("deny", "vo_members.admins")
    assert _suspended(repo)[BOB] is None


# --- proxyd admin vo ------------------------------------------------------------------------------


@pytest.fixture
def config(dev_pki: DevPKI, tmp_path: Path) -> Path:
    return write_config(dev_pki, tmp_path / "state", free_port(), free_port())


def admin(config: Path, *args: str) -> int:
    return main(["admin", "--config", str(config), "vo", *args])


def test_admin_vo_suspend_list_and_restore(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(config, "suspend", "dteam", BOB, "--reason", "AUP expired") == 0
    assert f"suspended {BOB} in VO dteam: AUP expired" in capsys.readouterr().out
    assert admin(config, "list", "dteam") == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"dteam\t{BOB}\t/dteam\tSUSPENDED: AUP expired" in lines
    assert f"dteam\t{ALICE}\t/dteam /dteam/analysis /dteam/Role=production" in lines
    assert admin(config, "list", "dteam", "--json") == 0
    members = {m["dn"]: m for m in json.loads(capsys.readouterr().out)["members"]}
    assert (members[BOB]["suspended"], members[BOB]["suspended_reason"]) == (True, "AUP expired")
    assert members[BOB]["suspended_at"] is not None
    assert (members[ALICE]["suspended"], members[ALICE]["suspended_reason"]) == (False, None)

    assert admin(config, "restore", "dteam", BOB) == 0
    assert f"restored {BOB} in VO dteam (was suspended: AUP expired)" in capsys.readouterr().out
    assert admin(config, "restore", "dteam", BOB) == 1
    err = capsys.readouterr().err
    assert "is not suspended in VO dteam (nothing to restore) [rule vo.not_suspended]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_admin_vo_suspend_needs_a_reason(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        admin(config, "suspend", "dteam", BOB)
    assert exit_.value.code == 2
    assert "--reason" in capsys.readouterr().err
    assert admin(config, "suspend", "dteam", BOB, "--reason", "") == 1
    err = capsys.readouterr().err
    assert "[rule vo.bad_reason]" in err and len(err.strip().splitlines()) == 1
