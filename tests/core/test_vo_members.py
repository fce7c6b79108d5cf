"""VO members in the database (issue 17 item 3): the store, migration 0007, the core's
decisions and audit events, the seed from `[voms.members]`, and issuance reading it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, select

from proxyd.core.members import normalise_fqans, seed_configured_members
from proxyd.devpki import MEMBERS, DevPKI, user_dn
from proxyd.issuer import VomsRequest
from proxyd.principal import local_operator
from proxyd.repository import BadRequest, Denied, NotFound, Repository
from proxyd.store import make_engine, migrate
from proxyd.store.db import alembic_config, write_transaction
from proxyd.store.members import (
    MemberReads,
    add_member,
    list_members,
    remove_member,
    seed_vo,
    seeded_vos,
    set_fqans,
)
from proxyd.store.models import AuditRow, VoMemberRow
from tests.store_fixtures import BACKENDS, database_url, engine  # noqa: F401 - a fixture
from tests.support.grid import Identity, load_identity, make_repository, principal
from voms_ext import parse_fqan

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ALICE = user_dn("alice")
BOB = user_dn("bob")
CAROL = user_dn("carol")
DAVE = "/DC=org/DC=example/OU=Users/CN=dave"
OP = local_operator()


# --- the store --------------------------------------------------------------------------------


def test_store_adds_lists_changes_and_removes_members(engine: Engine) -> None:  # noqa: F811
    reads = MemberReads(engine)
    with write_transaction(engine) as conn:
        assert add_member(conn, "dteam", DAVE, ("/dteam", "/dteam/Role=x"), "/CN=op", T0)
        assert not add_member(conn, "dteam", DAVE, ("/dteam",), "/CN=op", T0)
        assert add_member(conn, "ops", DAVE, ("/ops",), "/CN=op", T0)
    assert reads.held("dteam", DAVE) == ("/dteam", "/dteam/Role=x")
    assert reads.held("ops", DAVE) == ("/ops",)
    assert reads.held("dteam", BOB) == ()
    with write_transaction(engine) as conn:
        assert set_fqans(conn, "dteam", DAVE, ("/dteam",), T0 + dt.timedelta(hours=1))
        assert not set_fqans(conn, "dteam", BOB, ("/dteam",), T0)
    with engine.connect() as conn:
        (member,) = list_members(conn, "dteam")
    assert (member.dn, member.fqans, member.added_at, member.changed_at) == (
        DAVE,
        ("/dteam",),
        T0,
        T0 + dt.timedelta(hours=1),
    )
    with write_transaction(engine) as conn:
        assert remove_member(conn, "dteam", DAVE) == ("/dteam",)
        assert remove_member(conn, "dteam", DAVE) is None
    assert reads.held("dteam", DAVE) == ()
    with engine.connect() as conn:
        assert [(m.vo, m.dn) for m in list_members(conn)] == [("ops", DAVE)]


def test_a_vo_is_seeded_once_and_seeding_keeps_members_added_before(
    engine: Engine,  # noqa: F811
) -> None:
    with write_transaction(engine) as conn:
        add_member(conn, "dteam", ALICE, ("/dteam/Role=admin",), "/CN=op", T0)
        assert seed_vo(conn, "dteam", {ALICE: ("/dteam",), BOB: ("/dteam",)}, "/CN=op", T0) == 1
        assert seed_vo(conn, "dteam", {DAVE: ("/dteam",)}, "/CN=op", T0) is None
        assert seeded_vos(conn) == {"dteam"}
    reads = MemberReads(engine)
    assert reads.held("dteam", ALICE) == ("/dteam/Role=admin",)
    assert reads.held("dteam", BOB) == ("/dteam",)
    assert reads.held("dteam", DAVE) == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0007_creates_the_tables_and_downgrades(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    eng = make_engine(database_url(request, backend, tmp_path))
    try:
        cfg = alembic_config()
        with write_transaction(eng) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
        assert "vo_members" not in inspect(eng).get_table_names()
        migrate(eng)
        assert {"vo_members", "vo_seeds"} <= set(inspect(eng).get_table_names())
        with write_transaction(eng) as conn:
            assert add_member(conn, "dteam", DAVE, ("/dteam",), "/CN=op", T0)
        with write_transaction(eng) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        assert "vo_members" not in inspect(eng).get_table_names()
        assert "vo_seeds" not in inspect(eng).get_table_names()
        migrate(eng)
        assert MemberReads(eng).held("dteam", DAVE) == ()
    finally:
        eng.dispose()


def test_fqans_are_normalised_in_order_and_checked() -> None:
    assert normalise_fqans("dteam", ["/dteam/Role=NULL", "/dteam/x", "/dteam"]) == (
        "/dteam",
        "/dteam/x",
    )
    with pytest.raises(ValueError, match="not in VO dteam"):
        normalise_fqans("dteam", ["/ops"])
    with pytest.raises(ValueError, match="must start with '/'"):
        normalise_fqans("dteam", ["dteam"])


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


def _short(fqans: tuple[str, ...]) -> tuple[str, ...]:
    """An AC's FQANs as members hold them (`/vo/Role=NULL/Capability=NULL` is `/vo`)."""
    return tuple(str(parse_fqan(f)) for f in fqans)


def _last(repo: Repository) -> dict[str, object]:
    with repo.engine.connect() as conn:
        row = conn.execute(select(AuditRow.__table__).order_by(AuditRow.seq.desc()).limit(1)).one()
    return dict(row._mapping)


def test_the_configured_members_are_seeded_once_with_one_audited_event(repo: Repository) -> None:
    listed = repo.list_members(OP)
    expected = sorted(
        (vo, dn, tuple(fqans)) for vo, members in MEMBERS.items() for dn, fqans in members.items()
    )
    assert [(m.vo, m.dn, m.fqans) for m in listed] == expected
    with repo.engine.connect() as conn:
        seeds = conn.execute(
            select(AuditRow.detail, AuditRow.rule, AuditRow.operation).where(
                AuditRow.detail.like("vo seed%")
            )
        ).all()
    assert len(seeds) == 1
    assert seeds[0].rule == "vo.seed" and seeds[0].operation == "vo_members"
    assert "dteam (3 member(s))" in seeds[0].detail
    # A later start seeds nothing, even when the TOML table has changed: the database wins.
    changed = dataclasses.replace(
        repo.config.voms[0], members={**repo.config.voms[0].members, DAVE: ("/dteam",)}
    )
    assert seed_configured_members(repo.gate, (changed,), repo.clock) == {}
    assert repo.authorities["dteam"].held_fqans(DAVE) == ()
    # A VO configured later is seeded when it first appears, with its own event.
    later = dataclasses.replace(changed, vo="later", members={DAVE: ("/later/Role=NULL",)})
    assert seed_configured_members(repo.gate, (changed, later), repo.clock) == {"later": 1}
    with repo.engine.connect() as conn:
        assert list_members(conn, "later")[0].fqans == ("/later",)
        details = conn.execute(
            select(AuditRow.detail).where(AuditRow.rule == "vo.seed").order_by(AuditRow.seq)
        ).scalars()
        assert list(details)[1:] == ["vo seed from [voms.members]: later (1 member(s))"]


def test_add_member_is_decided_audited_and_read_by_the_next_issuance(
    repo: Repository, ids: dict[str, Identity]
) -> None:
    carol = principal(repo, ids["carol"])
    aa = repo.authorities["dteam"]
    # carol is no dteam member: refused, with the rule.
    with pytest.raises(Denied) as refused:
        repo.issue_acs(carol, [VomsRequest("dteam")], dt.timedelta(hours=1))
    assert refused.value.rule == "voms.not_member"

    held = repo.add_member(carol, "dteam", CAROL, ["/dteam", "/dteam/Role=NULL", "/dteam/ops"])
    assert held == ("/dteam", "/dteam/ops")
    event = _last(repo)
    assert (event["operation"], event["decision"], event["rule"]) == (
        "vo_members",
        "allow",
        "vo_members.admins",
    )
    assert event["owner_dn"] == CAROL and event["fqans"] == ["/dteam", "/dteam/ops"]
    assert aa.held_fqans(CAROL) == ("/dteam", "/dteam/ops")

    (ac,) = repo.issue_acs(carol, [VomsRequest("dteam")], dt.timedelta(hours=1))
    assert _short(ac.fqans) == ("/dteam", "/dteam/ops")

    assert repo.grant(carol, "dteam", CAROL, "/dteam/Role=production") == (
        "/dteam",
        "/dteam/ops",
        "/dteam/Role=production",
    )
    (ac,) = repo.issue_acs(
        carol, [VomsRequest.parse("dteam:/dteam/Role=production")], dt.timedelta(hours=1)
    )
    assert _short(ac.fqans)[0] == "/dteam/Role=production"
    assert repo.revoke(carol, "dteam", CAROL, "/dteam/Role=production") == ("/dteam", "/dteam/ops")
    with pytest.raises(Denied) as refused:
        repo.issue_acs(
            carol, [VomsRequest.parse("dteam:/dteam/Role=production")], dt.timedelta(hours=1)
        )
    assert refused.value.rule == "voms.fqan_not_held"

    assert repo.remove_member(carol, "dteam", CAROL) == ("/dteam", "/dteam/ops")
    assert _last(repo)["owner_dn"] == CAROL
    with pytest.raises(Denied) as refused:
        repo.issue_acs(carol, [VomsRequest("dteam")], dt.timedelta(hours=1))
    assert refused.value.rule == "voms.not_member"


@pytest.mark.parametrize(
    ("call", "error", "rule"),
    [
        (lambda r, p: r.add_member(p, "dteam", ALICE, ["/dteam"]), BadRequest, "vo.already_member"),
        (lambda r, p: r.remove_member(p, "dteam", DAVE), NotFound, "vo.not_member"),
        (lambda r, p: r.grant(p, "dteam", DAVE, "/dteam"), NotFound, "vo.not_member"),
        (lambda r, p: r.grant(p, "dteam", BOB, "/dteam"), BadRequest, "vo.fqan_held"),
        (lambda r, p: r.revoke(p, "dteam", BOB, "/dteam/x"), NotFound, "vo.fqan_not_held"),
        (lambda r, p: r.add_member(p, "dteam", DAVE, ["/ops"]), BadRequest, "vo.bad_fqan"),
        (lambda r, p: r.add_member(p, "dteam", DAVE, ["dteam"]), BadRequest, "vo.bad_fqan"),
        (lambda r, p: r.add_member(p, "dteam", "/CN=*", []), BadRequest, "vo.bad_dn"),
        (lambda r, p: r.add_member(p, "dteam", "CN=dave", []), BadRequest, "vo.bad_dn"),
        (lambda r, p: r.add_member(p, "dteam", "/CN=a\x1b", []), BadRequest, "vo.bad_dn"),
        (lambda r, p: r.add_member(p, "atlas", DAVE, []), BadRequest, "voms.unknown_vo"),
    ],
)
def test_refusals_name_their_rule_and_are_audited_with_nothing_changed(
    repo: Repository, call: object, error: type[Exception], rule: str
) -> None:
    before = [(m.vo, m.dn, m.fqans) for m in repo.list_members(OP)]
    with pytest.raises(error) as refused:
        call(repo, OP)  # type: ignore[operator]
    assert refused.value.rule == rule  # type: ignore[attr-defined]
    event = _last(repo)
    assert (event["decision"], event["rule"]) == ("deny", rule)
    assert [(m.vo, m.dn, m.fqans) for m in repo.list_members(OP)] == before


def test_only_admins_change_or_list_members(repo: Repository, ids: dict[str, Identity]) -> None:
    alice = principal(repo, ids["alice"])
    for call in (
        lambda: repo.add_member(alice, "dteam", DAVE, ["/dteam"]),
        lambda: repo.remove_member(alice, "dteam", BOB),
        lambda: repo.grant(alice, "dteam", ALICE, "/dteam/x"),
        lambda: repo.revoke(alice, "dteam", ALICE, "/dteam/analysis"),
        lambda: repo.list_members(alice),
    ):
        with pytest.raises(Denied) as refused:
            call()
        assert refused.value.rule == "vo_members.admins"
        event = _last(repo)
        assert (event["decision"], event["rule"], event["actor_dn"]) == (
            "deny",
            "vo_members.admins",
            ALICE,
        )
    assert repo.authorities["dteam"].held_fqans(DAVE) == ()
    assert repo.authorities["dteam"].held_fqans(BOB) == ("/dteam",)


def test_a_change_by_another_repository_applies_to_the_next_issuance(
    repo: Repository, dev_pki: DevPKI, ids: dict[str, Identity], tmp_path: Path
) -> None:
    """Two instances on one database: what one changes, the other reads at once."""
    other = Repository(
        repo.config, make_engine(str(repo.engine.url.render_as_string(hide_password=False))),
        repo.keyring, repo.trust,
    )  # fmt: skip
    try:
        carol = principal(repo, ids["carol"])
        other.add_member(OP, "dteam", CAROL, ["/dteam"])
        (ac,) = repo.issue_acs(carol, [VomsRequest("dteam")], dt.timedelta(hours=1))
        assert _short(ac.fqans) == ("/dteam",)
        other.remove_member(OP, "dteam", CAROL)
        with pytest.raises(Denied):
            repo.issue_acs(carol, [VomsRequest("dteam")], dt.timedelta(hours=1))
    finally:
        other.engine.dispose()


def test_listing_is_an_audited_read(repo: Repository) -> None:
    members = repo.list_members(OP, "ops")
    assert [(m.dn, m.fqans) for m in members] == [(CAROL, ("/ops",))]
    event = _last(repo)
    assert (event["decision"], event["detail"]) == ("allow", "list members of VO ops")
    with repo.engine.connect() as conn:
        assert conn.execute(select(VoMemberRow.dn).where(VoMemberRow.vo == "ops")).scalars().all()


def test_a_banned_member_can_still_be_removed(repo: Repository) -> None:
    """The member is not the owner of anything: a ban of the DN does not block managing it."""
    repo.ban(OP, "user", BOB, "compromised")
    assert repo.remove_member(OP, "dteam", BOB) == ("/dteam",)
    assert repo.authorities["dteam"].held_fqans(BOB) == ()
    event = _last(repo)
    assert (event["operation"], event["decision"], event["owner_dn"]) == (
        "vo_members",
        "allow",
        BOB,
    )
